"""torch.autograd.gradcheck (float64) through the layer for every variant × reset form."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import gatedrnn


def _bilayer(inp, hid, variant, reset_after, engine):
    """Two bidirectional float64 layers (every stacking and direction path)."""
    return gatedrnn.GRU(
        inp,
        hid,
        num_layers=2,
        bidirectional=True,
        variant=variant,
        reset_after=reset_after,
        dtype=torch.float64,
        engine=engine,
    )


def _layer_fn(layer, lengths):
    names = [n for n, _ in layer.named_parameters()]

    def f(x, h0, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (x, h0), {"lengths": lengths})

    return f


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_gradcheck_every_variant(variant, reset_after, engine):
    layer = _bilayer(3, 2, variant, reset_after, engine)
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    f = _layer_fn(layer, torch.tensor([4, 1, 3]))
    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_gradcheck_cell(variant, reset_after):
    cell = gatedrnn.GRUCell(3, 4, variant=variant, reset_after=reset_after, dtype=torch.float64)
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h, *ps):
        return functional_call(cell, dict(zip(names, ps, strict=True)), (x, h))

    assert torch.autograd.gradcheck(f, (x, h, *params))


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_gradgradcheck_fused_every_variant(variant, reset_after):
    """Second-order gradients (create_graph=True, then a backward through the gradients): the
    fused engine's first-order gradients, differentiated by the reference equations. (The
    reference engine is plain autograd: torch's own second derivatives.)"""
    layer = _bilayer(2, 2, variant, reset_after, "fused")
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    f = _layer_fn(layer, torch.tensor([3, 2]))
    assert torch.autograd.gradgradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def _penalty_grads(engine, variant, reset_after, dtype, order):
    """A gradient penalty (WGAN-GP style) and, for order 3, a derivative of it once more."""
    torch.manual_seed(1)
    layer = gatedrnn.GRU(3, 4, num_layers=2, variant=variant, reset_after=reset_after, dtype=dtype, engine=engine)
    x = torch.randn(5, 3, 3, dtype=dtype, requires_grad=True)
    upstream = torch.randn(5, 3, 4, dtype=dtype)
    y, _ = layer(x)
    (gx,) = torch.autograd.grad((y * upstream).sum(), x, create_graph=True)
    penalty = ((gx.flatten(1).norm(dim=1) - 1) ** 2).sum()
    params = list(layer.parameters())
    grads = torch.autograd.grad(penalty, [x, *params], create_graph=order > 2)
    if order > 2:  # d/dW of <v, d penalty/dx>
        v = torch.randn_like(x)
        grads = torch.autograd.grad((grads[0] * v).sum(), params, allow_unused=True, materialize_grads=True)
    return [g.detach() for g in grads]


@pytest.mark.parametrize("variant", ["gru0", "gru2", "mgu", "mingru"])
@pytest.mark.parametrize("order", [2, 3])
def test_fused_higher_orders_match_reference(variant, order):
    for reset_after in [True, False] if variant != "mingru" else [True]:
        ref = _penalty_grads("reference", variant, reset_after, torch.float64, order)
        fus = _penalty_grads("fused", variant, reset_after, torch.float64, order)
        for r, f in zip(ref, fus, strict=True):
            torch.testing.assert_close(f, r, rtol=1e-9, atol=1e-11)


def test_fused_first_order_is_the_engines_with_or_without_create_graph():
    """create_graph=True changes nothing in the first-order numbers (still the fused kernels'),
    and a plain backward builds no graph."""
    layer = gatedrnn.GRU(3, 5, num_layers=2, bidirectional=True, engine="fused")
    x = torch.randn(7, 4, 3, requires_grad=True)
    up = torch.randn(7, 4, 10)
    inputs = [x, *layer.parameters()]
    plain = torch.autograd.grad((layer(x)[0] * up).sum(), inputs)
    graphed = torch.autograd.grad((layer(x)[0] * up).sum(), inputs, create_graph=True)
    assert not any(g.requires_grad for g in plain)
    assert all(g.requires_grad for g in graphed)
    for p, g in zip(plain, graphed, strict=True):
        assert torch.equal(p, g.detach())


@pytest.mark.parametrize(
    ("engine", "variant"), [("fused", "gru0"), ("fused", "gru3"), ("fused", "mingru"), ("scan", "mingru")]
)
def test_batched_backward_matches_reference(engine, variant):
    """A backward that autograd runs under vmap (``is_grads_batched=True``; what
    ``torch.autograd.functional.jacobian(..., vectorize=True)`` does) gives the reference engine's
    gradients, as it does for torch.nn.GRU (the kernels cannot read batched tensors: the reference's
    vector-Jacobian product serves, as for second order)."""
    results = []
    for eng in ("reference", engine):
        torch.manual_seed(0)
        layer = gatedrnn.GRU(3, 4, num_layers=2, variant=variant, engine=eng, dtype=torch.float64)
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        lengths = torch.tensor([5, 3])
        y, h = layer(x, lengths=lengths)
        vs = torch.randn(3, *y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        wh = torch.randn(3, *h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        got = torch.autograd.grad([y, h], [x, *layer.parameters()], [vs, wh], is_grads_batched=True)
        jac = torch.autograd.functional.jacobian(lambda t, m=layer: m(t)[1], x, vectorize=True)
        results.append([*got, jac])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
