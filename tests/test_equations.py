"""Every variant × reset form against its equations, written out here by hand in NumPy float64.

Nothing from gatedrnn's step code is used: each variant's papers' equations are spelled out below
(in PyTorch's update convention h = (1 - z) n + z h_prev; MGU as in Zhou et al.), reading the
parameters by the layout documented in gatedrnn._specs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gatedrnn


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def blocks(p, n, hidden):
    """Split a parameter into n blocks of hidden rows."""
    assert p.shape[0] == n * hidden, (p.shape, n, hidden)
    return [p[k * hidden : (k + 1) * hidden] for k in range(n)]


def hand_sequence(variant: str, reset_after: bool, params: dict, x: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """[T, B, I] -> [T, B, H] by each paper's equations, one variant per branch."""
    hidden = h0.shape[-1]
    W = params["weight_ih_l0"]
    U = params.get("weight_hh_l0")
    b = params.get("bias_ih_l0")
    bh = params.get("bias_hh_l0")
    h = h0
    out = []
    for xt in x:
        if variant == "gru0":
            Wr, Wz, Wn = blocks(W, 3, hidden)
            Ur, Uz, Un = blocks(U, 3, hidden)
            br, bz, bn = blocks(b, 3, hidden)
            if reset_after:
                bhr, bhz, bhn = blocks(bh, 3, hidden)
                r = sig(xt @ Wr.T + br + h @ Ur.T + bhr)
                z = sig(xt @ Wz.T + bz + h @ Uz.T + bhz)
                n = np.tanh(xt @ Wn.T + bn + r * (h @ Un.T + bhn))
            else:
                r = sig(xt @ Wr.T + h @ Ur.T + br)
                z = sig(xt @ Wz.T + h @ Uz.T + bz)
                n = np.tanh(xt @ Wn.T + (r * h) @ Un.T + bn)
            h = (1 - z) * n + z * h
        elif variant in ("gru1", "gru2", "gru3"):
            (Wn,) = blocks(W, 1, hidden)
            if variant == "gru3":
                (Un,) = blocks(U, 1, hidden)
                br, bz, bn = blocks(b, 3, hidden)
                r, z = sig(br) + 0 * h, sig(bz) + 0 * h  # Dey & Salem GRU3: gates from the bias alone
            else:
                Ur, Uz, Un = blocks(U, 3, hidden)
                if variant == "gru1":
                    br, bz, bn = blocks(b, 3, hidden)
                    r, z = sig(h @ Ur.T + br), sig(h @ Uz.T + bz)  # GRU1: h(t-1) and bias
                else:
                    (bn,) = blocks(b, 1, hidden)
                    r, z = sig(h @ Ur.T), sig(h @ Uz.T)  # GRU2: h(t-1) only
            if reset_after:
                (bhn,) = blocks(bh, 1, hidden)
                n = np.tanh(xt @ Wn.T + bn + r * (h @ Un.T + bhn))
            else:
                n = np.tanh(xt @ Wn.T + (r * h) @ Un.T + bn)
            h = (1 - z) * n + z * h
        elif variant == "mgu":
            Wf, Wn = blocks(W, 2, hidden)
            Uf, Un = blocks(U, 2, hidden)
            bf, bn = blocks(b, 2, hidden)
            f = sig(xt @ Wf.T + h @ Uf.T + bf)
            if reset_after:
                (bhn,) = blocks(bh, 1, hidden)
                n = np.tanh(xt @ Wn.T + bn + f * (h @ Un.T + bhn))
            else:
                n = np.tanh(xt @ Wn.T + (f * h) @ Un.T + bn)
            h = (1 - f) * h + f * n  # Zhou et al. 2016, eq. (MGU)
        elif variant == "mingru":
            Wz, Wn = blocks(W, 2, hidden)
            bz, bn = blocks(b, 2, hidden)
            z = sig(xt @ Wz.T + bz)
            n = xt @ Wn.T + bn  # minGRU's candidate is linear in x
            h = (1 - z) * n + z * h
        else:
            raise AssertionError(variant)
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_variant_matches_hand_written_equations(variant, reset_after, engine):
    torch.manual_seed(1)
    layer = gatedrnn.GRU(4, 6, variant=variant, reset_after=reset_after, dtype=torch.float64, engine=engine)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64)
    y, hn = layer(x, h0)
    params = {k: v.detach().numpy() for k, v in layer.named_parameters()}
    want = hand_sequence(variant, reset_after, params, x.numpy(), h0[0].numpy())
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hn[0].detach().numpy(), want[-1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("variant", sorted(gatedrnn.SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_is_one_step_of_the_equations(variant, reset_after):
    cell = gatedrnn.GRUCell(4, 6, variant=variant, reset_after=reset_after, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    h = torch.randn(3, 6, dtype=torch.float64)
    params = {k + "_l0": v.detach().numpy() for k, v in cell.named_parameters()}
    want = hand_sequence(variant, reset_after, params, x.numpy()[None], h.numpy())[0]
    np.testing.assert_allclose(cell(x, h).detach().numpy(), want, rtol=1e-12, atol=1e-13)


def test_mingru_is_reset_independent():
    a = gatedrnn.GRU(3, 4, variant="mingru", reset_after=True)
    b = gatedrnn.GRU(3, 4, variant="mingru", reset_after=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(a(x)[0], b(x)[0])
