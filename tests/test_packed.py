"""Variable lengths (PackedSequence and lengths=) against running each sequence on its own."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn

# float64, the same maths in another batch layout: only summation order may differ
EXACT = {"rtol": 1e-12, "atol": 1e-13}

LENGTHS = [5, 2, 7, 1, 7]


def _alone(layer, x, h0, lengths, gy, gh):
    """Each sequence alone, unpadded: outputs, h_n and gradients (x, h0, parameters)."""
    ys, hns = [], []
    gx = torch.zeros_like(x)
    gh0 = torch.zeros_like(h0)
    gparams = [torch.zeros_like(p) for p in layer.parameters()]
    for b, n in enumerate(lengths):
        xb = x[:n, b : b + 1].clone().requires_grad_(True)
        hb = h0[:, b : b + 1].clone().requires_grad_(True)
        layer.zero_grad()
        y, hn = layer(xb, hb)
        ((y * gy[:n, b : b + 1]).sum() + (hn * gh[:, b : b + 1]).sum()).backward()
        ys.append(y.detach())
        hns.append(hn.detach())
        gx[:n, b] = xb.grad[:, 0]
        gh0[:, b] = hb.grad[:, 0]
        for acc, p in zip(gparams, layer.parameters(), strict=True):
            acc += p.grad
    return ys, torch.cat(hns, dim=1), gx, gh0, gparams


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("mode", ["packed", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_variable_lengths_equal_each_sequence_alone(variant, mode, bidirectional, engine):
    layer = gatedrnn.GRU(
        3, 4, num_layers=2, bidirectional=bidirectional, variant=variant, dtype=torch.float64, engine=engine
    )
    dirs = 2 if bidirectional else 1
    steps, batch = max(LENGTHS), len(LENGTHS)
    x = torch.randn(steps, batch, 3, dtype=torch.float64)
    h0 = torch.randn(2 * dirs, batch, 4, dtype=torch.float64)
    gy = torch.randn(steps, batch, 4 * dirs, dtype=torch.float64)
    gh = torch.randn(2 * dirs, batch, 4, dtype=torch.float64)
    ys, hn_want, gx_want, gh0_want, gp_want = _alone(layer, x, h0, LENGTHS, gy, gh)

    layer.zero_grad()
    xx = x.clone().requires_grad_(True)
    hh = h0.clone().requires_grad_(True)
    if mode == "packed":
        packed = pack_padded_sequence(xx, torch.tensor(LENGTHS), enforce_sorted=False)
        out, hn = layer(packed, hh)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        y, _ = pad_packed_sequence(out)
    else:
        y, hn = layer(xx, hh, lengths=LENGTHS)
    ((y * gy[: y.shape[0]]).sum() + (hn * gh).sum()).backward()

    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(y[:n, b : b + 1].detach(), ys[b], **EXACT)
        assert (y[n:, b] == 0).all(), "padding positions must output zeros"
    torch.testing.assert_close(hn.detach(), hn_want, **EXACT)
    torch.testing.assert_close(xx.grad, gx_want, **EXACT)
    for b, n in enumerate(LENGTHS):
        assert (xx.grad[n:, b] == 0).all(), "padding positions must receive zero gradient"
    torch.testing.assert_close(hh.grad, gh0_want, **EXACT)
    for p, want in zip(layer.parameters(), gp_want, strict=True):
        torch.testing.assert_close(p.grad, want, **EXACT)


def test_packed_sorted_and_batch_first():
    layer = gatedrnn.GRU(3, 4, batch_first=True, bidirectional=True)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([6, 4, 2])
    out, hn = layer(pack_padded_sequence(x, lengths, batch_first=True))
    y, got_lengths = pad_packed_sequence(out, batch_first=True)
    assert torch.equal(got_lengths, lengths)
    y2, hn2 = layer(x, lengths=lengths, enforce_sorted=True)
    torch.testing.assert_close(y, y2[:, : y.shape[1]])
    torch.testing.assert_close(hn, hn2)


def test_reverse_index_is_an_involution():
    from gatedrnn._functional import reverse_index

    lengths = torch.tensor([3, 1, 5])
    idx = reverse_index(lengths, 5)
    assert idx[:, 0].tolist() == [2, 1, 0, 3, 4]
    assert idx[:, 1].tolist() == [0, 1, 2, 3, 4]
    assert idx[:, 2].tolist() == [4, 3, 2, 1, 0]
    assert torch.equal(idx.gather(0, idx), torch.arange(5).unsqueeze(1).expand(5, 3))
