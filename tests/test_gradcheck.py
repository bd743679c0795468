"""torch.autograd.gradcheck (float64) through the layer for every variant × reset form."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import gatedrnn


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_gradcheck_every_variant(variant, reset_after, engine):
    layer = gatedrnn.GRU(
        3,
        2,
        num_layers=2,
        bidirectional=True,
        variant=variant,
        reset_after=reset_after,
        dtype=torch.float64,
        engine=engine,
    )
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 3])

    def f(x, h0, *ps):
        y, hn = functional_call(layer, dict(zip(names, ps, strict=True)), (x, h0), {"lengths": lengths})
        return y, hn

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
