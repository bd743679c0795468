"""ONNX export checked against onnxruntime: every variant, both reset forms, T up to 784."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gatedrnn
from gatedrnn.interop import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

VARIANTS = sorted(gatedrnn.SPECS)
TOL = 1e-5


def _session(proto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 1.2 - 0.6)


def _check(
    model: gatedrnn.GRU,
    steps: int,
    batch: int,
    *,
    initial_state: bool = True,
    lengths: torch.Tensor | None = None,
    **kw,
) -> None:
    proto = export_onnx(model, None, initial_state=initial_state, lengths=lengths is not None, **kw)
    sess = _session(proto)
    d = model.num_directions
    shape = (batch, steps, model.input_size) if model.batch_first else (steps, batch, model.input_size)
    gen = torch.Generator().manual_seed(steps + batch)
    x = torch.randn(shape, generator=gen)
    h0 = torch.randn(model.num_layers * d, batch, model.hidden_size, generator=gen) if initial_state else None
    with torch.no_grad():
        y, hn = model(x, h0, lengths=lengths)
    feed = {"input": x.numpy()}
    if initial_state:
        feed["h0"] = h0.numpy()
    if lengths is not None:
        feed["lengths"] = lengths.numpy()
    oy, ohn = sess.run(["output", "h_n"], feed)
    assert oy.shape == tuple(y.shape) and ohn.shape == tuple(hn.shape)
    np.testing.assert_allclose(oy, y.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(ohn, hn.numpy(), rtol=0, atol=TOL)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_parity(variant: str, reset_after: bool) -> None:
    torch.manual_seed(0)
    one = gatedrnn.GRU(3, 5, variant=variant, reset_after=reset_after)
    _randomize(one, 1)
    _check(one, 8, 3)
    _check(one, 8, 3, initial_state=False)
    two = gatedrnn.GRU(
        3, 5, num_layers=2, bidirectional=True, batch_first=True, variant=variant, reset_after=reset_after
    )
    _randomize(two, 2)
    _check(two, 8, 3)
    _check(two, 5, 1)  # batch and length are dynamic: the same export, other shapes
    if variant != "gru3":
        nobias = gatedrnn.GRU(
            3, 5, num_layers=2, bias=False, bidirectional=True, variant=variant, reset_after=reset_after
        )
        _randomize(nobias, 3)
        _check(nobias, 8, 2)
    if variant == "gru0":  # the Scan body on the classic GRU too
        _check(two, 8, 3, use_gru_op=False)
        _check(one, 8, 3, initial_state=False, use_gru_op=False)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_parity_lengths(variant: str, reset_after: bool) -> None:
    """Padded batches: outputs past each length are zero, h_n is taken at the last step, and the
    reverse direction runs within each length (compared with gatedrnn.GRU(..., lengths=))."""
    model = gatedrnn.GRU(
        3, 4, num_layers=2, bidirectional=True, batch_first=True, variant=variant, reset_after=reset_after
    )
    _randomize(model, 7)
    lengths = torch.tensor([5, 9, 1, 3])  # unsorted, one full length
    _check(model, 9, 4, lengths=lengths)
    _check(model, 9, 4, lengths=lengths, initial_state=False)
    if variant == "gru0":
        _check(model, 9, 4, lengths=lengths, use_gru_op=False)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_parity_long(variant: str, reset_after: bool) -> None:
    model = gatedrnn.GRU(2, 4, bidirectional=True, variant=variant, reset_after=reset_after)
    _randomize(model, 4)
    _check(model, 784, 2)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_cell(variant: str, reset_after: bool) -> None:
    cell = gatedrnn.GRUCell(3, 4, variant=variant, reset_after=reset_after)
    _randomize(cell, 5)
    sess = _session(export_onnx(cell, None))
    x, h = torch.randn(6, 3), torch.randn(6, 4)
    with torch.no_grad():
        want = cell(x, h)
    (got,) = sess.run(["h"], {"input": x.numpy(), "hx": h.numpy()})
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=TOL)


def _count_nodes(graph) -> int:
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += _count_nodes(attr.g)
    return total


def _names(graph, used: set[str], inits: set[str]) -> None:
    inits.update(i.name for i in graph.initializer)
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _names(attr.g, used, inits)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("initial_state", [True, False])
@pytest.mark.parametrize("lengths", [True, False])
def test_every_initializer_is_used(variant: str, initial_state: bool, lengths: bool) -> None:
    model = gatedrnn.GRU(2, 3, num_layers=2, bidirectional=True, batch_first=True, variant=variant)
    used: set[str] = set()
    inits: set[str] = set()
    _names(export_onnx(model, None, initial_state=initial_state, lengths=lengths).graph, used, inits)
    assert inits <= used, inits - used


@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_size_does_not_grow_with_length(variant: str, tmp_path) -> None:
    model = gatedrnn.GRU(2, 3, num_layers=2, bidirectional=True, variant=variant)
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    proto = onnx.load(path)
    # One layer-direction is a bounded handful of nodes: nothing scales with the sequence length.
    assert _count_nodes(proto.graph) < 120
    assert onnx.checker.check_model(proto, full_check=True) is None
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]]
    assert dims == ["seq_len", "batch"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = {}
    for steps in (8, 784):
        x = np.random.default_rng(steps).standard_normal((steps, 2, 2)).astype(np.float32)
        h0 = np.zeros((4, 2, 3), np.float32)
        y, _ = sess.run(None, {"input": x, "h0": h0})
        with torch.no_grad():
            want, _ = model(torch.from_numpy(x))
        np.testing.assert_allclose(y, want.numpy(), rtol=0, atol=TOL)
        # the file that serves this length is the very same bytes
        sizes[steps] = path.stat().st_size
    assert sizes[8] == sizes[784]


def test_wrong_linear_before_reset_is_detectable() -> None:
    """The classic export mistake (linear_before_reset=0 for a PyTorch GRU) is caught by the parity check."""
    model = gatedrnn.GRU(3, 8, variant="gru0", reset_after=True)
    _randomize(model, 6)
    proto = export_onnx(model, None)
    (gru,) = [n for n in proto.graph.node if n.op_type == "GRU"]
    (attr,) = [a for a in gru.attribute if a.name == "linear_before_reset"]
    assert attr.i == 1
    attr.i = 0
    x = torch.randn(20, 2, 3)
    with torch.no_grad():
        want, _ = model(x)
    y, _ = _session(proto).run(None, {"input": x.numpy(), "h0": np.zeros((1, 2, 8), np.float32)})
    assert np.abs(y - want.numpy()).max() > 1e-3


def test_export_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="model"):
        export_onnx(torch.nn.GRU(2, 3), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opset"):
        export_onnx(gatedrnn.GRU(2, 3), None, opset=12)


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("variant", ["gru0", "gru2"])
def test_opsets(variant: str, opset: int) -> None:
    model = gatedrnn.GRU(3, 4, bidirectional=True, variant=variant, reset_after=False)
    _randomize(model, 8)
    _check(model, 6, 2, lengths=torch.tensor([6, 2]), opset=opset)
