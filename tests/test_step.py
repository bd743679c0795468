"""The fused engine's short calls against the reference engine.

A layer call of a few steps runs as one compiled call each way (the one-call step kernels).
Everything is compared with the reference engine (plain autograd over the equations) with the
same parameters: outputs and the gradients of the inputs, the initial state and every parameter,
with random upstream gradients.
"""

from __future__ import annotations

import pytest
import torch

import gatedrnn
from gatedrnn import GRU
from gatedrnn._engines import _step
from gatedrnn._specs import SPECS

VARIANTS = sorted(SPECS)
TOL = 1e-10  # float64


def _assert_all_close(a, b, tol: float = TOL) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


def _layers(variant: str, reset_after: bool, **kw):
    torch.manual_seed(5)
    ref = GRU(5, 4, variant=variant, reset_after=reset_after, engine="reference", dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.8, 0.8)
    fused = GRU(5, 4, variant=variant, reset_after=reset_after, engine="fused", dtype=torch.float64, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _layer_grads(mod: GRU, x: torch.Tensor, h0: torch.Tensor | None, lengths=None):
    x = x.detach().clone().requires_grad_(True)
    h0 = h0.detach().clone().requires_grad_(True) if h0 is not None else None
    y, hn = mod(x, h0) if lengths is None else mod(x, h0, lengths=lengths)
    torch.manual_seed(11)
    loss = (y * torch.randn_like(y)).sum() + (hn * torch.randn_like(hn)).sum()
    grads = torch.autograd.grad(loss, [x, *([h0] if h0 is not None else []), *mod.parameters()])
    return [y.detach(), hn.detach(), *grads]


def test_short_calls_through_the_driver() -> None:
    """Stacked, bidirectional, with lengths: every layer and direction a short call of the fused
    engine (the layer's own cache is for one layer, one direction)."""
    for steps in (1, 4):
        ref, fused = _layers("gru0", False, num_layers=2, bidirectional=True)
        x, h0 = torch.randn(steps, 3, 5, dtype=torch.float64), torch.randn(4, 3, 4, dtype=torch.float64)
        lengths = torch.tensor([steps, 1, max(steps - 1, 1)])
        _assert_all_close(_layer_grads(fused, x, h0, lengths), _layer_grads(ref, x, h0, lengths))


def test_short_form_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls of at most SHORT_MAX_STEPS steps run the step kernels; longer ones the long form."""
    eng = gatedrnn._engines.get_engine("fused")
    spec = SPECS["gru0"]
    assert eng.short(spec, 1, 1, 32) and eng.short(spec, _step.SHORT_MAX_STEPS, 3, 64)
    assert not eng.short(spec, _step.SHORT_MAX_STEPS + 1, 3, 64)
    calls, layer_of = [], _step.layer
    monkeypatch.setattr(_step, "layer", lambda *a: calls.append(a[2].shape[0]) or layer_of(*a))
    layer = GRU(5, 4, num_layers=2, engine="fused")
    layer(torch.randn(3, 2, 5))
    assert calls == [3, 3]
    layer(torch.randn(_step.SHORT_MAX_STEPS + 1, 2, 5))
    assert calls == [3, 3]


def test_short_call_under_checkpointing() -> None:
    """Non-reentrant activation checkpointing unpacks what a node saved once; the step's backward
    does too."""
    ref, fused = _layers("gru0", True, num_layers=2)
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    grads = []
    for mod in (ref, fused):
        xi = x.clone().requires_grad_(True)
        y = torch.utils.checkpoint.checkpoint(lambda t, m=mod: m(t)[0], xi, use_reentrant=False)
        grads.append(torch.autograd.grad(y.square().sum(), [xi, *mod.parameters()]))
    _assert_all_close(grads[1], grads[0])
