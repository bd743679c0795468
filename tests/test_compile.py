"""``torch.compile``, ``torch.export``, ``torch.jit.trace`` and ``torch.func`` transforms of a model
holding gatedrnn layers, as of one holding ``torch.nn.GRU``.

The fused and triton engines are not ``traceable`` (NumPy and numba, Triton launches of their own):
under torch.compile their ``layer`` runs through ``torch.compiler.disable``, each layer and
direction eagerly between compiled graphs, so their numbers are the eager numbers. The reference and scan engines are plain
torch and are traced. Checked against the same module run eagerly: outputs, ``h_n`` and the
gradients of the input, ``h0`` and every parameter, with random upstream gradients. The backend is
``aot_eager`` (Dynamo and AOTAutograd, no code generation) except one test through inductor.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from gatedrnn import GRU, GRUCell

# Dynamo reads .grad of the non-leaf tensors a resumed frame starts from; torch's warning about
# that is silent outside pytest (checked: compiling a two-layer bidirectional GRU prints nothing)
# but an error under this suite's warnings-as-errors. Any other warning still fails a test.
pytestmark = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")

CASES = [
    ("fused", "gru0", True),
    ("fused", "gru0", False),
    ("fused", "gru3", True),
    ("fused", "mgu", True),
    ("fused", "mingru", True),
    ("reference", "gru0", True),
    ("reference", "gru2", False),
    ("scan", "mingru", True),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    # what compiling left (fake tensors in reference cycles) goes now, not in a later test that
    # counts garbage cycles (test_fused's test_split_leaves_no_reference_cycles)
    torch._dynamo.reset()
    gc.collect()


def _grads(mod: torch.nn.Module, inputs: tuple, out_grads: list[torch.Tensor], compiled: bool, **kw):
    fn = torch.compile(mod, **kw) if compiled else mod
    mod.zero_grad(set_to_none=True)
    for t in inputs:
        if isinstance(t, torch.Tensor):
            t.grad = None
        elif isinstance(t, PackedSequence):
            t.data.grad = None
    out = fn(*inputs)  # (warnings are errors in the tests: compiling must not warn)
    outs = [o.data if isinstance(o, PackedSequence) else o for o in (out if isinstance(out, tuple) else (out,))]
    torch.autograd.backward(outs, out_grads[: len(outs)])
    leaves = [t.data if isinstance(t, PackedSequence) else t for t in inputs]
    grads = [t.grad.clone() for t in leaves] + [p.grad.clone() for p in mod.parameters()]
    return [o.detach().clone() for o in outs], grads


def _check(mod: torch.nn.Module, inputs: tuple, tol: float, **kw) -> None:
    with torch.no_grad():
        out = mod(*inputs)
    outs = [o.data if isinstance(o, PackedSequence) else o for o in (out if isinstance(out, tuple) else (out,))]
    out_grads = [torch.randn_like(o) for o in outs]
    eager = _grads(mod, inputs, out_grads, False)
    compiled = _grads(mod, inputs, out_grads, True, **kw)
    for a, b in zip(compiled[0] + compiled[1], eager[0] + eager[1], strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize(("engine", "variant", "reset_after"), CASES, ids=[f"{e}-{v}-{r}" for e, v, r in CASES])
def test_compiled_matches_eager(engine: str, variant: str, reset_after: bool) -> None:
    mod = GRU(4, 6, num_layers=2, bidirectional=True, variant=variant, reset_after=reset_after, engine=engine)
    x = torch.randn(7, 3, 4, requires_grad=True)
    h0 = torch.randn(4, 3, 6, requires_grad=True)
    # the opaque engines give the eager numbers exactly; traced ones may order sums differently
    _check(mod, (x, h0), 0.0 if engine == "fused" else 1e-5, backend="aot_eager")
    assert mod.last_engine == engine


def test_compiled_packed_and_batch_first() -> None:
    mod = GRU(4, 5, batch_first=True, bidirectional=True, engine="fused")
    x = torch.randn(3, 6, 4, requires_grad=True)
    _check(mod, (x,), 0.0, backend="aot_eager")
    packed = pack_padded_sequence(torch.randn(6, 3, 4), torch.tensor([6, 4, 1]))
    packed.data.requires_grad_()
    _check(GRU(4, 5, bidirectional=True, engine="fused"), (packed,), 0.0, backend="aot_eager")


def test_compiled_cell() -> None:
    _check(GRUCell(4, 6, variant="mgu"), (torch.randn(3, 4, requires_grad=True),), 0.0, backend="aot_eager")


def test_compiled_inductor_in_a_model() -> None:
    """The default engine inside a model whose other layers inductor compiles."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    rnn = GRU(4, 6)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre, self.rnn, self.head = model, rnn, torch.nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.rnn(self.pre(x))
            return self.head(y)

    _check(Net(), (torch.randn(7, 3, 4, requires_grad=True),), 1e-5, backend="inductor")
    assert rnn.last_engine == "fused"


def test_fullgraph_needs_a_traceable_engine() -> None:
    """``fullgraph=True`` forbids graph breaks: the fused engine cannot be in one graph, the
    reference engine can."""
    x = torch.randn(5, 2, 4)
    GRU(4, 6, engine="fused")(x)  # the engine's module loaded (an import is a break of its own)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(GRU(4, 6, engine="fused"), backend="aot_eager", fullgraph=True)(x)
    torch._dynamo.reset()
    _check(GRU(4, 6, engine="reference"), (x.requires_grad_(),), 1e-5, backend="aot_eager", fullgraph=True)


@pytest.mark.parametrize("variant", ["gru0", "mgu"])
def test_export_and_trace_record_the_reference_engine(variant: str) -> None:
    """torch.export and torch.jit.trace keep torch operations: ``engine="auto"`` picks the reference
    engine while they record, and the recorded program gives the eager (fused) numbers on new input."""
    mod = GRU(4, 6, num_layers=2, bidirectional=True, variant=variant, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    # the reference engine loops over time in Python: the number of steps is fixed, the batch not
    exported = torch.export.export(mod, (x,), dynamic_shapes=({1: torch.export.Dim("B")},))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; shape checks warn when traced
        traced = torch.jit.trace(mod, (x,))  # (named "fused" would raise: see the next test)
    for program, x2 in ((exported.module(), torch.randn(5, 2, 4, dtype=torch.float64)), (traced, torch.randn_like(x))):
        y, h = mod(x2)
        assert mod.last_engine == "fused"
        y1, h1 = program(x2)
        torch.testing.assert_close(y1, y, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(h1, h, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("engine", ["fused", "triton"])
def test_export_and_trace_refuse_the_compiled_engines(engine: str) -> None:
    """Asked for by name, an engine whose loops run outside torch operations raises, naming the
    recorder and the engine to use (it used to fail inside numba, or on .numpy() of a fake tensor)."""
    mod = GRU(4, 6, engine=engine)
    x = torch.randn(5, 3, 4)
    with pytest.raises(
        RuntimeError, match=rf"engine='{engine}' cannot run here: torch.export sees only torch operations.*'reference'"
    ):
        torch.export.export(mod, (x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=rf"engine='{engine}' cannot run here: torch.jit.trace sees only"):
            torch.jit.trace(mod, (x,))


def test_torch_onnx_export_of_a_default_layer(tmp_path) -> None:
    """torch.onnx.export's tracing exporter on a layer with the default engine (gatedrnn.export_onnx
    writes compact graphs of its own; this is the path a torch.nn.GRU user tries first)."""
    ort = pytest.importorskip("onnxruntime")
    mod = GRU(4, 6, num_layers=2, bidirectional=True, variant="gru2", reset_after=False)
    x = torch.randn(5, 3, 4)
    path = tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's and the tracer's notes
        torch.onnx.export(mod, (x,), str(path), dynamo=False)
    session = ort.InferenceSession(str(path))
    y, h = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    y0, h0 = mod(x)
    torch.testing.assert_close(torch.from_numpy(y), y0.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(h), h0.detach(), atol=1e-5, rtol=1e-5)


def test_torch_func_transforms_use_the_reference_engine() -> None:
    """torch.func's grad, vmap and jvp see only torch operations: ``"auto"`` picks the reference
    engine inside them (torch.nn.GRU itself runs grad and jvp, not vmap), and the numbers match
    the fused engine's eager gradients; ``"fused"`` named explicitly raises there."""
    from torch.func import functional_call, grad, jvp, vmap

    mod = GRU(4, 6, num_layers=2, variant="mgu", dtype=torch.float64)
    params = {k: v.detach() for k, v in mod.named_parameters()}
    x = torch.randn(5, 3, 4, dtype=torch.float64)

    def loss(p: dict, x: torch.Tensor) -> torch.Tensor:
        y, h = functional_call(mod, p, (x,))
        return (y.square() * torch.linspace(0.5, 1.5, y.shape[-1], dtype=y.dtype)).sum() + h.sum()

    def eager_grads(x: torch.Tensor) -> dict:  # the fused engine, plain autograd
        x = x.clone().requires_grad_()
        mod.zero_grad(set_to_none=True)
        out = loss(dict(mod.named_parameters()), x)
        assert mod.last_engine == "fused"
        out.backward()
        return {"x": x.grad, **{k: v.grad for k, v in mod.named_parameters()}}

    want = eager_grads(x)
    got = grad(loss, argnums=(0, 1))(params, x)
    for k, g in {"x": got[1], **got[0]}.items():
        torch.testing.assert_close(g, want[k], atol=1e-12, rtol=1e-10)
    # per-sample gradients: vmap over the batch, against one eager backward per sample
    per_sample = vmap(grad(loss), in_dims=(None, 1))(params, x.unsqueeze(2))
    for b in range(3):
        one = eager_grads(x[:, b : b + 1])
        for k, g in per_sample.items():
            torch.testing.assert_close(g[b], one[k], atol=1e-12, rtol=1e-10)
    # forward mode: d loss(x + e v)/de = <dloss/dx, v>
    v = torch.randn_like(x)
    _, tangent = jvp(lambda xx: loss(params, xx), (x,), (v,))
    torch.testing.assert_close(tangent, (want["x"] * v).sum(), atol=1e-12, rtol=1e-10)
    mod.engine = "fused"
    with pytest.raises(RuntimeError, match=r"engine='fused' cannot run here: a torch.func transform"):
        grad(loss)(params, x)
    scan = GRU(4, 6, variant="mingru", engine="scan")
    scan_params = {k: v.detach() for k, v in scan.named_parameters()}
    with pytest.raises(RuntimeError, match=r"engine='scan' cannot run here: a torch.func transform.*'reference'"):
        grad(lambda p: functional_call(scan, p, (x.float(),))[0].sum())(scan_params)


def test_forward_mode_ad_uses_the_reference_engine() -> None:
    """torch.autograd.forward_ad (dual tensors, no torch.func) sees only torch operations:
    ``"auto"`` picks the reference engine inside a dual level, and the tangents are
    torch.nn.GRU's (which runs forward AD) for gru0, and <dL/dx, v> from the fused engine's eager
    backward for a variant; ``"fused"`` and ``"scan"`` named explicitly raise there."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 6, num_layers=2, dtype=torch.float64)
    mod = GRU(4, 6, num_layers=2, dtype=torch.float64)
    mod.load_state_dict(ref.state_dict())
    x, v = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 3, 4, dtype=torch.float64)
    tangents = []
    for m in (ref, mod):
        with fwAD.dual_level():
            y, h = m(fwAD.make_dual(x, v))
            tangents.append((fwAD.unpack_dual(y).tangent, fwAD.unpack_dual(h).tangent))
    assert mod.last_engine == "reference"
    for a, b in zip(*tangents, strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10)
    mgu = GRU(4, 6, variant="mgu", dtype=torch.float64)
    xg = x.clone().requires_grad_()
    y, _ = mgu(xg)
    assert mgu.last_engine == "fused"
    (y.square().sum()).backward()
    with fwAD.dual_level():
        y, _ = mgu(fwAD.make_dual(x, v))
        tangent = (2 * fwAD.unpack_dual(y).primal * fwAD.unpack_dual(y).tangent).sum()
    torch.testing.assert_close(tangent, (xg.grad * v).sum(), atol=1e-12, rtol=1e-10)
    for engine, variant in (("fused", "gru0"), ("scan", "mingru")):
        named = GRU(4, 6, variant=variant, engine=engine)
        with (
            fwAD.dual_level(),
            pytest.raises(RuntimeError, match=rf"engine='{engine}' cannot run here: forward-mode AD"),
        ):
            named(fwAD.make_dual(x.float(), v.float()))


def test_eager_use_does_not_import_dynamo() -> None:
    """torch._dynamo takes about 2 s to import: an eager forward and backward of every engine that
    runs here must not import it (torch.compile's hooks are made on first use under it)."""
    code = (
        "import sys, torch, gatedrnn\n"
        "x = torch.randn(3, 2, 4, requires_grad=True)\n"
        "for engine, variant in (('fused', 'gru0'), ('reference', 'gru0'), ('scan', 'mingru')):\n"
        "    y, h = gatedrnn.GRU(4, 5, variant=variant, engine=engine)(x)\n"
        "    (y.sum() + h.sum()).backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
