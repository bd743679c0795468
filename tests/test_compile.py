"""``torch.compile`` of a model holding gatedrnn layers, as of one holding ``torch.nn.GRU``.

The fused and triton engines are opaque to TorchDynamo (``torch.compiler.disable`` on their
``layer``: NumPy and numba are not traceable): each layer and direction runs eagerly between
compiled graphs, so their numbers are the eager numbers. The reference and scan engines are plain
torch and are traced. Checked against the same module run eagerly: outputs, ``h_n`` and the
gradients of the input, ``h0`` and every parameter, with random upstream gradients. The backend is
``aot_eager`` (Dynamo and AOTAutograd, no code generation) except one test through inductor.
"""

from __future__ import annotations

import gc
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
