"""torch.nn.GRU / GRUCell ⇄ gatedrnn: outputs and gradients compared, refusals checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gatedrnn
from gatedrnn.interop import from_torch, to_torch


def _grads(module: nn.Module, x: torch.Tensor, h0: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of x, h0 and every parameter (in name order) under a random upstream gradient."""
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    y, hn = module(x, h0)
    ((y * up).sum() + hn.sum()).backward()
    params = dict(module.named_parameters())
    return (x.grad, h0.grad, *(params[k].grad for k in sorted(params)))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_round_trip(bidirectional: bool, bias: bool, batch_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.GRU(5, 7, num_layers=2, bias=bias, batch_first=batch_first, bidirectional=bidirectional).double()
    ours = from_torch(ref)
    assert isinstance(ours, gatedrnn.GRU)
    assert (ours.variant, ours.reset_after, ours.batch_first, ours.bias) == ("gru0", True, batch_first, bias)
    d = 2 if bidirectional else 1
    x = torch.randn((4, 6, 5) if batch_first else (6, 4, 5), dtype=torch.float64)
    h0 = torch.randn(2 * d, 4, 7, dtype=torch.float64)
    y_ref, hn_ref = ref(x, h0)
    y, hn = ours(x, h0)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(hn, hn_ref)
    up = torch.randn_like(y)
    for a, b in zip(_grads(ours, x, h0, up), _grads(ref, x, h0, up), strict=True):
        torch.testing.assert_close(a, b)
    # weights are copied, not shared
    with torch.no_grad():
        ours.weight_ih_l0.add_(1.0)
    assert not torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)
    back = to_torch(ours)
    assert isinstance(back, nn.GRU)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(getattr(back, name), p)
    torch.testing.assert_close(back(x, h0)[0], ours(x, h0)[0])


def test_torch_cell_round_trip() -> None:
    torch.manual_seed(1)
    ref = nn.GRUCell(3, 4).double()
    ours = from_torch(ref)
    assert isinstance(ours, gatedrnn.GRUCell)
    x, h = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x, h), ref(x, h))
    back = to_torch(ours)
    assert isinstance(back, nn.GRUCell)
    torch.testing.assert_close(back(x, h), ref(x, h))


_EMBEDDABLE = [
    (v, b) for v in ["gru0", "gru1", "gru2", "gru3", "mgu"] for b in (True, False) if (v, b) != ("gru3", False)
]


@pytest.mark.parametrize(("variant", "bias"), _EMBEDDABLE)
def test_to_torch_embeds_variants(variant: str, bias: bool) -> None:
    torch.manual_seed(2)
    ours = gatedrnn.GRU(3, 4, num_layers=2, bias=bias, bidirectional=True, variant=variant, dtype=torch.float64)
    with torch.no_grad():  # non-trivial biases so that the embedding is really tested
        for p in ours.parameters():
            p.normal_()
    native = to_torch(ours)
    x, h0 = torch.randn(7, 2, 3, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64)
    y, hn = ours(x, h0)
    y2, hn2 = native(x, h0)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(hn2, hn)
    cell = gatedrnn.GRUCell(3, 4, bias=bias, variant=variant, dtype=torch.float64)
    xc, hc = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(to_torch(cell)(xc, hc), cell(xc, hc))


def test_to_torch_refuses_inexact() -> None:
    with pytest.raises(ValueError, match="reset_after=True"):
        to_torch(gatedrnn.GRU(3, 4, reset_after=False))
    with pytest.raises(ValueError, match="mingru"):
        to_torch(gatedrnn.GRU(3, 4, variant="mingru"))
    with pytest.raises(ValueError, match="reset_after"):
        to_torch(gatedrnn.GRUCell(3, 4, variant="gru1", reset_after=False))
    with pytest.raises(TypeError, match=r"gatedrnn\.GRU"):
        to_torch(nn.GRU(3, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "option",
    [
        {"layer_norm": True},
        {"recurrent_dropout": 0.25},
        {"input_dropout": 0.25},
        {"zoneout": 0.25},
        {"weight_drop": 0.25},
    ],
)
def test_to_torch_refuses_every_option(option: dict) -> None:
    """torch.nn.GRU has none of the options: each is refused by name, for a layer and a cell."""
    (name,) = option
    with pytest.raises(ValueError, match=rf"torch\.nn\.GRU has no {name}\b.*{name}="):
        to_torch(gatedrnn.GRU(3, 4, **option))
    if name in ("layer_norm", "zoneout"):
        with pytest.raises(ValueError, match=rf"torch\.nn\.GRU has no {name}\b"):
            to_torch(gatedrnn.GRUCell(3, 4, **option))
    with pytest.raises(ValueError, match=r"no layer_norm and no zoneout"):
        to_torch(gatedrnn.GRU(3, 4, layer_norm=True, zoneout=0.5))
    to_torch(gatedrnn.GRU(3, 4, num_layers=2, dropout=0.5))  # torch's own inter-layer dropout maps


def test_from_torch_refuses_other_modules() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.GRU.*LSTM"):
        from_torch(nn.LSTM(3, 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.nn\.GRU"):
        from_torch(nn.RNN(3, 4))  # type: ignore[arg-type]
