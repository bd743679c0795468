"""Gradients never depend on what the caller does to its tensors after the forward, nor on what
the padding past ``lengths`` holds: every engine, both directions, outputs and every gradient
against an untouched run (random upstream gradients, float64).

The triton engine runs in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1`` for its
cases only, as in ``test_triton.py``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import gatedrnn
from gatedrnn._engines import get_engine

HAS_TRITON = importlib.util.find_spec("triton") is not None

# (engine, variant, reset_after): every engine, both reset forms, a variant without recurrent weights
CASES = [
    ("reference", "gru0", True),
    ("reference", "gru2", False),
    ("fused", "gru0", True),
    ("fused", "mgu", False),
    ("fused", "mingru", True),
    ("scan", "mingru", True),
    ("triton", "gru0", False),
    ("triton", "mingru", True),
]
IDS = [f"{e}-{v}-{'after' if ra else 'before'}" for e, v, ra in CASES]
T, B, H = 8, 4, 3
LENGTHS = [8, 3, 6, 1]


@pytest.fixture
def engine_case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, bool]:
    engine, variant, reset_after = request.param
    if engine == "triton":
        if not HAS_TRITON:
            pytest.skip("triton is not installed")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return engine, variant, reset_after


def _layer(case: tuple[str, str, bool], inp: int) -> gatedrnn.GRU:
    engine, variant, reset_after = case
    torch.manual_seed(1)
    layer = gatedrnn.GRU(inp, H, variant=variant, reset_after=reset_after, bidirectional=True, engine=engine)
    return layer.double()


def _run(layer: gatedrnn.GRU, x: torch.Tensor, lengths: torch.Tensor, between=None) -> list[torch.Tensor]:
    """Output, h_n and the gradients of x, h0 and every parameter (fixed random upstream gradients)."""
    g = torch.Generator().manual_seed(2)
    x = x.clone().requires_grad_()
    h0 = torch.randn(2, B, H, generator=g, dtype=torch.float64, requires_grad=True)
    y, hn = layer(x, h0, lengths=lengths)
    if between is not None:
        between()
    gy, gh = torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(hn.shape, generator=g, dtype=hn.dtype)
    params = list(layer.parameters())
    grads = torch.autograd.grad((y * gy).sum() + (hn * gh).sum(), [x, h0, *params])
    assert layer.last_engine == layer.engine
    return [y.detach(), hn.detach(), *grads]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    names = ["output", "h_n", "x.grad", "h0.grad"] + [f"grad {i}" for i in range(len(want) - 4)]
    for name, a, b in zip(names, got, want, strict=True):
        assert bool(a.isfinite().all()), f"{name} is not finite"
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("engine_case", CASES, ids=IDS, indirect=True)
def test_lengths_changed_in_place_after_the_forward(engine_case) -> None:
    """A reused lengths buffer refilled before ``backward()`` (the engine must keep its own copy)."""
    layer = _layer(engine_case, 5)
    x = torch.randn(T, B, 5, dtype=torch.float64)
    want = _run(layer, x, torch.tensor(LENGTHS))
    lengths = torch.tensor(LENGTHS)
    got = _run(layer, x, lengths, between=lambda: lengths.fill_(T))
    _assert_same(got, want)
    # the engine itself, called with the caller's tensor (the layer may hand it through unchanged)
    engine = get_engine(layer.engine)
    w = layer.layer_weights()[0][0]
    lengths = torch.tensor(LENGTHS)
    outs = []
    for refill in (False, True):
        xl = x.clone().requires_grad_()
        y, hn = engine.layer(
            layer.spec, layer.reset_after, xl, x.new_zeros(B, H), w.w_ih, w.w_hh, w.b_ih, w.b_hh, lengths
        )
        if refill:
            lengths.fill_(T)
        outs.append(torch.autograd.grad((y * y).sum() + hn.sum(), [xl, *layer.parameters()], allow_unused=True))
        lengths.copy_(torch.tensor(LENGTHS))
    for a, b in zip(*outs, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("engine_case", CASES, ids=IDS, indirect=True)
def test_in_place_change_of_inputs_raises_as_torch(engine_case) -> None:
    """x and h0 changed in place between forward and backward: autograd refuses, as for torch.nn.GRU."""
    layer = _layer(engine_case, 3)

    def backward_after_change(module: torch.nn.Module, which: int) -> None:
        x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True) * 1  # not a leaf: may change in place
        h0 = torch.randn(2, B, H, dtype=torch.float64, requires_grad=True) * 1
        y, hn = module(x, h0)
        (x, h0)[which].mul_(2)
        (y.sum() + hn.sum()).backward()

    native = torch.nn.GRU(3, H, bidirectional=True).double()
    for which in (0, 1):
        with pytest.raises(RuntimeError, match="inplace") as want:
            backward_after_change(native, which)
        with pytest.raises(type(want.value), match="modified by an inplace operation"):
            backward_after_change(layer, which)


@pytest.mark.parametrize("inp", [2, 5], ids=["I2", "I5"])  # the fused engine folds dW_ih into its loop up to 4
@pytest.mark.parametrize("engine_case", CASES, ids=IDS, indirect=True)
def test_nan_and_inf_in_the_padding_reach_nothing(engine_case, inp: int) -> None:
    """NaN, inf and -inf past ``lengths`` (a batch made with ``torch.empty``): outputs and every
    gradient finite and equal to the run with zero padding."""
    layer = _layer(engine_case, inp)
    lengths = torch.tensor(LENGTHS)
    padding = (torch.arange(T).unsqueeze(1) >= lengths).unsqueeze(-1).expand(T, B, inp)
    x = torch.randn(T, B, inp, dtype=torch.float64).masked_fill(padding, 0)
    want = _run(layer, x, lengths)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=x.dtype)[torch.arange(x.numel()) % 3]
    poisoned = torch.where(padding, junk.view_as(x), x)
    assert not bool(poisoned.isfinite().all())
    _assert_same(_run(layer, poisoned, lengths), want)


def test_cell_in_place_change_of_inputs_raises_as_torch() -> None:
    """GRUCell: x and h changed in place between forward and backward raise as for torch.nn.GRUCell."""

    def backward_after_change(cell: torch.nn.Module, which: int) -> None:
        x = torch.randn(B, 3, dtype=torch.float64, requires_grad=True) * 1
        h = torch.randn(B, H, dtype=torch.float64, requires_grad=True) * 1
        out = cell(x, h)
        (x, h)[which].mul_(2)
        out.sum().backward()

    for which in (0, 1):
        with pytest.raises(RuntimeError, match="inplace") as want:
            backward_after_change(torch.nn.GRUCell(3, H).double(), which)
        with pytest.raises(type(want.value), match="inplace"):
            backward_after_change(gatedrnn.GRUCell(3, H).double(), which)
