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
    resets: torch.Tensor | None = None,
    **kw,
) -> None:
    """Export (in the model's current mode) and compare with the model in eval mode."""
    proto = export_onnx(
        model, None, initial_state=initial_state, lengths=lengths is not None, resets=resets is not None, **kw
    )
    sess = _session(proto)
    d = model.num_directions
    shape = (batch, steps, model.input_size) if model.batch_first else (steps, batch, model.input_size)
    gen = torch.Generator().manual_seed(steps + batch)
    x = torch.randn(shape, generator=gen)
    h0 = torch.randn(model.num_layers * d, batch, model.hidden_size, generator=gen) if initial_state else None
    training = model.training
    model.eval()
    with torch.no_grad():
        y, hn = model(x, h0, lengths=lengths, resets=resets)
    model.train(training)
    feed = {"input": x.numpy()}
    if initial_state:
        feed["h0"] = h0.numpy()
    if lengths is not None:
        feed["lengths"] = lengths.numpy()
    if resets is not None:
        feed["resets"] = resets.numpy()
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


# every option at once: layer norm and zoneout change the eval function, the others are identities
OPTIONS = {"layer_norm": True, "zoneout": 0.3, "recurrent_dropout": 0.2, "input_dropout": 0.1, "weight_drop": 0.4}


def _op_types(graph) -> set[str]:
    types = set()
    for node in graph.node:
        types.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                types |= _op_types(attr.g)
    return types


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_parity_options(variant: str, reset_after: bool) -> None:
    """Layer norm, zoneout (its expectation), the dropouts and DropConnect (identities) and
    resets: the export of a model in training mode equals the model in eval mode."""
    model = gatedrnn.GRU(
        3,
        4,
        num_layers=2,
        bidirectional=True,
        batch_first=True,
        variant=variant,
        reset_after=reset_after,
        engine="reference",
        **OPTIONS,
    )
    _randomize(model, 9)  # gains and shifts away from 1 and 0 too
    lengths = torch.tensor([5, 9, 1, 3])
    resets = torch.zeros(4, 9, dtype=torch.bool)
    resets[0, [0, 4, 8]] = resets[1, [3, 4]] = resets[3, 2] = resets[2, 6] = True  # past a length too
    assert model.training
    _check(model, 9, 4, lengths=lengths, resets=resets)
    _check(model, 9, 4, resets=resets, initial_state=False)
    _check(model, 9, 4)
    assert "LayerNormalization" in _op_types(export_onnx(model, None).graph)


@pytest.mark.parametrize("opset", [13, 16, 17, 20])
@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru2", False), ("mingru", True)])
def test_layer_norm_opsets(variant: str, reset_after: bool, opset: int) -> None:
    """The LayerNormalization operator from opset 17, written out below it: the same function."""
    model = gatedrnn.GRU(3, 4, variant=variant, reset_after=reset_after, engine="reference", layer_norm=True)
    _randomize(model, 10)
    _check(model, 6, 2, lengths=torch.tensor([6, 2]), opset=opset)
    types = _op_types(export_onnx(model, None, opset=opset).graph)
    assert ("LayerNormalization" in types) == (opset >= 17)
    assert ("ReduceMean" in types) == (opset < 17)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_resets_forward_and_reverse(bidirectional: bool) -> None:
    """Resets at the first and last steps, at every step, and none; with and without lengths."""
    model = gatedrnn.GRU(3, 4, bidirectional=bidirectional, variant="mgu", reset_after=False, engine="reference")
    _randomize(model, 11)
    every = torch.ones(7, 3, dtype=torch.bool)
    edges = torch.zeros(7, 3, dtype=torch.bool)
    edges[0, 0] = edges[6, 1] = edges[2, 2] = edges[3, 2] = True
    for resets in (every, edges, torch.zeros(7, 3, dtype=torch.bool)):
        _check(model, 7, 3, resets=resets)
        _check(model, 7, 3, resets=resets, lengths=torch.tensor([7, 3, 4]))


def test_gru_operator_where_it_computes_the_model() -> None:
    """gru0 stays the GRU operator with the identity options, and becomes a Scan with layer norm,
    zoneout or resets; use_gru_op=True refuses those by name."""
    plain = gatedrnn.GRU(
        3, 4, num_layers=2, bidirectional=True, recurrent_dropout=0.5, weight_drop=0.5, engine="reference"
    )
    _randomize(plain, 12)
    assert "GRU" in _op_types(export_onnx(plain, None).graph)
    _check(plain, 6, 2)
    resets = torch.zeros(6, 2, dtype=torch.bool)
    resets[3, 1] = True
    assert "GRU" not in _op_types(export_onnx(plain, None, resets=True).graph)
    _check(plain, 6, 2, resets=resets)
    for option, blocked in (({"layer_norm": True}, "layer_norm"), ({"zoneout": 0.5}, "zoneout")):
        model = gatedrnn.GRU(3, 4, engine="reference", **option)
        assert "GRU" not in _op_types(export_onnx(model, None).graph)
        with pytest.raises(ValueError, match=rf"use_gru_op: the ONNX GRU operator has no {blocked}"):
            export_onnx(model, None, use_gru_op=True)
    with pytest.raises(ValueError, match="use_gru_op: the ONNX GRU operator has no resets"):
        export_onnx(plain, None, resets=True, use_gru_op=True)
    with pytest.raises(ValueError, match=r"use_gru_op: .*gru0\) only, got variant 'mgu'"):
        export_onnx(gatedrnn.GRU(3, 4, variant="mgu"), None, use_gru_op=True)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_cell_options(variant: str, reset_after: bool) -> None:
    cell = gatedrnn.GRUCell(3, 4, variant=variant, reset_after=reset_after, layer_norm=True, zoneout=0.25)
    _randomize(cell, 13)
    sess = _session(export_onnx(cell, None))  # exported in training mode: eval semantics
    x, h = torch.randn(6, 3), torch.randn(6, 4)
    with torch.no_grad():
        want = cell.eval()(x, h)
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


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_initializer_is_used_with_options(variant: str, reset_after: bool, opset: int) -> None:
    model = gatedrnn.GRU(2, 3, num_layers=2, bidirectional=True, variant=variant, reset_after=reset_after, **OPTIONS)
    used: set[str] = set()
    inits: set[str] = set()
    _names(export_onnx(model, None, lengths=True, resets=True, opset=opset).graph, used, inits)
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
    with pytest.raises(ValueError, match="resets: a GRUCell runs one step"):
        export_onnx(gatedrnn.GRUCell(2, 3), None, resets=True)
    with pytest.raises(ValueError, match="resets: expected True or False, got 'yes'"):
        export_onnx(gatedrnn.GRU(2, 3), None, resets="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use_gru_op: expected None, True or False"):
        export_onnx(gatedrnn.GRU(2, 3), None, use_gru_op=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("variant", ["gru0", "gru2"])
def test_opsets(variant: str, opset: int) -> None:
    model = gatedrnn.GRU(3, 4, bidirectional=True, variant=variant, reset_after=False)
    _randomize(model, 8)
    _check(model, 6, 2, lengths=torch.tensor([6, 2]), opset=opset)
