"""The options (layer norm, dropout masks, zoneout, DropConnect, resets) against their equations,
written out here by hand in NumPy float64 for every variant and reset form, with the masks the
layer drew; gradcheck for each; what the masks must be; resets against running segments apart.

Nothing from gatedrnn's step code is used by the hand-written equations: they read the parameters
by the layout documented in gatedrnn._specs and the options' equations in gatedrnn._options.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn._functional import draw_masks, reverse_resets
from gatedrnn._options import Options

VARIANTS = sorted(gatedrnn.SPECS)


EPS = 1e-5


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def ln(a, g, s):
    mu = a.mean(-1, keepdims=True)
    var = ((a - mu) ** 2).mean(-1, keepdims=True)
    return (a - mu) / np.sqrt(var + EPS) * g + s


def cut(p, n, hidden):
    assert p.shape[0] == n * hidden, (p.shape, n, hidden)
    return [p[k * hidden : (k + 1) * hidden] for k in range(n)]


def hand_layer(variant, reset_after, P, x, h0, *, m_x=None, m_h=None, m_u=None, zeta=None, resets=None, lengths=None):
    """One layer-direction, [T, B, I] -> ([T, B, H], [B, H]), every option by its equations.

    ``P``: ``weight_ih`` ... and, with layer norm, ``ln_weight_ih`` ... (base names)."""
    hidden = h0.shape[-1]
    W, U, b, bh = P["weight_ih"], P.get("weight_hh"), P["bias_ih"], P.get("bias_hh")
    ln_on = "ln_weight_ih" in P
    if m_x is not None:
        x = x * m_x  # input dropout: one mask per sequence
    if m_u is not None:
        U = U * m_u  # DropConnect on the recurrent weights
    wx = x @ W.T
    if ln_on:
        wx = ln(wx, P["ln_weight_ih"], P["ln_bias_ih"])  # over every block of W x
    gh, sh = (P["ln_weight_hh"], P["ln_bias_hh"]) if (ln_on and U is not None) else (None, None)

    def norm(a, lo, hi):
        return a if gh is None else ln(a, gh[lo:hi], sh[lo:hi])

    H = hidden
    h = h0
    ys = []
    for t in range(x.shape[0]):
        hp = h if resets is None else np.where(resets[t][:, None], 0.0, h)
        hd = hp if m_h is None else hp * m_h  # what enters the recurrent products
        xt = wx[t]
        if variant == "gru0":
            xr, xz, xn = cut(xt.T, 3, H)
            br, bz, bn = cut(b, 3, H)
            if reset_after:
                ur, uz, un = cut(norm(hd @ U.T, 0, 3 * H).T, 3, H)
                bhr, bhz, bhn = cut(bh, 3, H)
                r = sig(xr.T + br + ur.T + bhr)
                z = sig(xz.T + bz + uz.T + bhz)
                n = np.tanh(xn.T + bn + r * (un.T + bhn))
            else:
                ur, uz = cut(norm(hd @ U[: 2 * H].T, 0, 2 * H).T, 2, H)
                r = sig(xr.T + ur.T + br)
                z = sig(xz.T + uz.T + bz)
                n = np.tanh(xn.T + norm((r * hd) @ U[2 * H :].T, 2 * H, 3 * H) + bn)
            hn = (1 - z) * n + z * hp
        elif variant in ("gru1", "gru2"):
            if variant == "gru1":
                br, bz, bn = cut(b, 3, H)
            else:
                br = bz = 0.0
                (bn,) = cut(b, 1, H)
            if reset_after:
                ur, uz, un = cut(norm(hd @ U.T, 0, 3 * H).T, 3, H)
                r, z = sig(ur.T + br), sig(uz.T + bz)
                n = np.tanh(xt + bn + r * (un.T + bh))
            else:
                ur, uz = cut(norm(hd @ U[: 2 * H].T, 0, 2 * H).T, 2, H)
                r, z = sig(ur.T + br), sig(uz.T + bz)
                n = np.tanh(xt + norm((r * hd) @ U[2 * H :].T, 2 * H, 3 * H) + bn)
            hn = (1 - z) * n + z * hp
        elif variant == "gru3":
            br, bz, bn = cut(b, 3, H)
            r, z = sig(br) + 0 * hp, sig(bz) + 0 * hp  # the gates from the bias alone
            if reset_after:
                n = np.tanh(xt + bn + r * (norm(hd @ U.T, 0, H) + bh))
            else:
                n = np.tanh(xt + norm((r * hd) @ U.T, 0, H) + bn)
            hn = (1 - z) * n + z * hp
        elif variant == "mgu":
            xf, xn = cut(xt.T, 2, H)
            bf, bn = cut(b, 2, H)
            if reset_after:
                uf, un = cut(norm(hd @ U.T, 0, 2 * H).T, 2, H)
                f = sig(xf.T + bf + uf.T)
                n = np.tanh(xn.T + bn + f * (un.T + bh))
            else:
                f = sig(xf.T + bf + norm(hd @ U[:H].T, 0, H))
                n = np.tanh(xn.T + norm((f * hd) @ U[H:].T, H, 2 * H) + bn)
            hn = (1 - f) * hp + f * n  # Zhou et al. 2016
        elif variant == "mingru":
            xz, xn = cut(xt.T, 2, H)
            bz, bn = cut(b, 2, H)
            z = sig(xz.T + bz)
            hn = (1 - z) * (xn.T + bn) + z * hp
        else:
            raise AssertionError(variant)
        if zeta is not None:  # zoneout: a mask per step in training, the probability in eval
            zt = zeta[t] if isinstance(zeta, np.ndarray) else zeta
            hn = zt * hp + (1 - zt) * hn
        if lengths is not None:
            alive = (t < lengths)[:, None]
            hn = np.where(alive, hn, h)
            ys.append(np.where(alive, hn, 0.0))
        else:
            ys.append(hn)
        h = hn
    return np.stack(ys), h


def _params(layer, suffix="_l0"):
    return {k[: -len(suffix)]: v.detach().numpy() for k, v in layer.named_parameters() if k.endswith(suffix)}


def _np(t):
    return None if t is None else t.detach().numpy()


OPTIONS = {
    "layer_norm": {"layer_norm": True},
    "recurrent_dropout": {"recurrent_dropout": 0.4},
    "input_dropout": {"input_dropout": 0.3},
    "zoneout": {"zoneout": 0.3},
    "weight_drop": {"weight_drop": 0.5},
    "all": {"layer_norm": True, "recurrent_dropout": 0.3, "input_dropout": 0.2, "zoneout": 0.25, "weight_drop": 0.4},
}


def _layer(variant, reset_after, **kw):
    layer = gatedrnn.GRU(3, 4, variant=variant, reset_after=reset_after, dtype=torch.float64, engine="reference", **kw)
    with torch.no_grad():  # gains and shifts away from 1 and 0, so that a swapped pair shows
        for name, p in layer.named_parameters():
            if name.startswith("ln_"):
                p.add_(torch.randn_like(p) * 0.3)
    return layer


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("option", [*OPTIONS, "resets"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_option_matches_hand_written_equations(variant, reset_after, option, training):
    kw = OPTIONS.get(option, {})
    layer = _layer(variant, reset_after, **kw).train(training)
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    h0 = torch.randn(1, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1, 4])
    resets = None
    if option in ("resets", "all"):
        resets = torch.rand(6, 5) < 0.3
        resets[0, 2] = True  # a reset at the first step drops h0
    torch.manual_seed(7)
    y, hn = layer(x, h0, lengths=lengths, resets=resets)
    torch.manual_seed(7)  # the masks the layer drew, in the order it drew them
    (masks,) = draw_masks(layer.options, training, layer.layer_weights(), x, 4)
    (m,) = masks
    zeta = _np(m.zoneout) if m.zoneout is not None else (layer.options.zoneout if layer.options.zoneout else None)
    want, want_hn = hand_layer(
        variant,
        reset_after,
        _params(layer),
        x.numpy(),
        h0[0].numpy(),
        m_x=_np(m.x),
        m_h=_np(m.h),
        m_u=_np(m.u),
        zeta=zeta,
        resets=_np(resets),
        lengths=lengths.numpy(),
    )
    if training:
        for name, mask in (("input_dropout", m.x), ("recurrent_dropout", m.h), ("weight_drop", m.u)):
            on = bool(layer.options.non_default().get(name)) and not (name != "input_dropout" and variant == "mingru")
            assert (mask is not None) == on, name
    else:
        assert m == type(m)()  # eval: no mask at all
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(hn[0].detach().numpy(), want_hn, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_cell_options_match_hand_written_equations(variant, reset_after):
    """GRUCell: layer norm and zoneout (a mask drawn at the call in training, p in eval)."""
    cell = gatedrnn.GRUCell(3, 4, variant=variant, reset_after=reset_after, layer_norm=True, zoneout=0.4)
    cell = cell.double()
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith("ln_"):
                p.add_(torch.randn_like(p) * 0.3)
    x, h = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    P = {k: v.detach().numpy() for k, v in cell.named_parameters()}
    cell.eval()
    want, _ = hand_layer(variant, reset_after, P, x.numpy()[None], h.numpy(), zeta=0.4)
    np.testing.assert_allclose(cell(x, h).detach().numpy(), want[0], rtol=1e-11, atol=1e-12)
    cell.train()
    torch.manual_seed(3)
    got = cell(x, h)
    torch.manual_seed(3)
    zeta = torch.empty(5, 4, dtype=torch.float64).bernoulli_(0.4).numpy()
    want, _ = hand_layer(variant, reset_after, P, x.numpy()[None], h.numpy(), zeta=zeta[None])
    np.testing.assert_allclose(got.detach().numpy(), want[0], rtol=1e-11, atol=1e-12)


def test_stacked_bidirectional_masks_per_layer_and_direction():
    """Two layers, both directions: each (layer, direction) has its own masks, in the documented
    order, and the reverse direction reads its input reversed within each length."""
    layer = _layer("gru0", True, num_layers=2, bidirectional=True, **OPTIONS["all"])
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 2])
    torch.manual_seed(11)
    y, hn = layer(x, lengths=lengths)
    torch.manual_seed(11)
    masks = draw_masks(layer.options, True, layer.layer_weights(), x, 4)
    inp = x.numpy()
    finals = []
    for k in range(2):
        outs = []
        for d, suffix in enumerate((f"_l{k}", f"_l{k}_reverse")):
            m = masks[k][d]
            seq = inp.copy()
            if d == 1:  # reverse each sequence within its length
                for b, n in enumerate(lengths.tolist()):
                    seq[:n, b] = inp[:n, b][::-1]
            out, h = hand_layer(
                "gru0",
                True,
                _params(layer, suffix),
                seq,
                np.zeros((3, 4)),
                m_x=_np(m.x),
                m_h=_np(m.h),
                m_u=_np(m.u),
                zeta=_np(m.zoneout),
                lengths=lengths.numpy(),
            )
            if d == 1:
                back = out.copy()
                for b, n in enumerate(lengths.tolist()):
                    back[:n, b] = out[:n, b][::-1]
                out = back
            outs.append(out)
            finals.append(h)
        inp = np.concatenate(outs, -1)
    np.testing.assert_allclose(y.detach().numpy(), inp, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(hn.detach().numpy(), np.stack(finals), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("option", [*OPTIONS, "resets"])
@pytest.mark.parametrize("variant", ["gru0", "gru3", "mgu", "mingru"])
def test_gradcheck_each_option(option, variant):
    """Every parameter (the layer norm's gains and shifts too), the input and h0, with the same
    masks at every evaluation (the seed is set inside the function)."""
    layer = _layer(variant, variant != "mgu", **OPTIONS.get(option, {})).train()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
    resets = torch.tensor([[False, False], [True, False], [False, True], [False, False]])
    params = list(layer.parameters())
    names = [n for n, _ in layer.named_parameters()]

    def f(x, h0, *ps):
        torch.manual_seed(5)
        state = dict(zip(names, ps, strict=True))
        y, hn = torch.func.functional_call(layer, state, (x, h0), {"resets": resets if option == "resets" else None})
        return y, hn

    assert torch.autograd.gradcheck(f, (x, h0, *params), fast_mode=True)


def test_zoneout_masks_are_fresh_at_every_step():
    """haste's GRU zoneout reused the first step's mask at every step: here each step has its own."""
    opts = Options(zoneout=0.5)
    layer = gatedrnn.GRU(3, 16, zoneout=0.5)
    x = torch.randn(10, 8, 3)
    ((m,),) = draw_masks(opts, True, layer.layer_weights(), x, 16)
    assert m.zoneout is not None and m.zoneout.shape == (10, 8, 16)
    assert all(not torch.equal(m.zoneout[t], m.zoneout[0]) for t in range(1, 10))


def test_recurrent_dropout_mask_is_per_sequence():
    """One mask per sequence: the same at every step (it has no time axis, and the layer applies
    it at every step: the equations test), different between sequences and between calls."""
    opts = Options(recurrent_dropout=0.5, input_dropout=0.5)
    layer = gatedrnn.GRU(8, 16)
    x = torch.randn(10, 8, 8)
    ((a,),) = draw_masks(opts, True, layer.layer_weights(), x, 16)
    ((b,),) = draw_masks(opts, True, layer.layer_weights(), x, 16)
    assert a.h is not None and a.h.shape == (8, 16) and a.x is not None and a.x.shape == (8, 8)
    assert len({tuple(row.tolist()) for row in a.h}) > 1
    assert b.h is not None and not torch.equal(a.h, b.h)


@pytest.mark.parametrize("name", ["recurrent_dropout", "input_dropout", "weight_drop", "zoneout"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rates_within_three_sigma(name, p):
    opts = Options(**{name: p})
    layer = gatedrnn.GRU(256, 256)
    x = torch.randn(4 if name == "zoneout" else 1, 256, 256)
    torch.manual_seed(1)  # a fixed draw: 12 cases at 3 sigma would each fail for 0.3% of seeds
    ((m,),) = draw_masks(opts, True, layer.layer_weights(), x, 256)
    mask = {"recurrent_dropout": m.h, "input_dropout": m.x, "weight_drop": m.u, "zoneout": m.zoneout}[name]
    assert mask is not None
    n = mask.numel()
    if name == "zoneout":
        rate, target = mask.mean().item(), p  # ζ = 1 keeps h(t-1): probability p
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    else:
        rate, target = (mask != 0).double().mean().item(), 1 - p  # kept with probability 1 - p ...
        kept = mask[mask != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))  # ... and scaled by 1/(1-p)
    assert abs(rate - target) <= 3 * np.sqrt(target * (1 - target) / n)


@pytest.mark.parametrize("variant", ["gru0", "mgu"])
def test_eval_is_deterministic_and_the_dropouts_are_identity(variant):
    kw = {"recurrent_dropout": 0.5, "input_dropout": 0.5, "weight_drop": 0.5}
    layer = _layer(variant, True, **kw, zoneout=0.3).eval()
    plain = _layer(variant, True, zoneout=0.3).eval()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    y1, _ = layer(x)
    y2, _ = layer(x)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(y1, plain(x)[0], rtol=0, atol=0)


def test_weight_drop_never_modifies_the_parameter():
    layer = _layer("gru0", True, weight_drop=0.6).train()
    before = layer.weight_hh_l0.detach().clone()
    y, _ = layer(torch.randn(4, 2, 3, dtype=torch.float64))
    y.sum().backward()
    assert torch.equal(layer.weight_hh_l0, before)
    assert layer.weight_hh_l0.grad is not None and (layer.weight_hh_l0.grad == 0).any()  # dropped entries


def _segments(resets_col: list[bool], length: int) -> list[tuple[int, int]]:
    starts = [0] + [t for t in range(1, length) if resets_col[t]]
    return list(itertools.pairwise([*starts, length]))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("variant", ["gru0", "mgu"])
def test_resets_equal_running_segments_apart(bidirectional, variant):
    """Each sequence cut at its resets and run segment by segment from a zero state (the first
    from h0; the reverse direction's last segment from its h0) gives the same outputs, and no
    gradient reaches an earlier segment from a later one."""
    layer = _layer(variant, True, bidirectional=bidirectional, num_layers=1)
    T, B = 9, 3
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layer.num_directions, B, 4, dtype=torch.float64)
    lengths = torch.tensor([9, 6, 7])
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[3, 0] = resets[7, 0] = resets[0, 1] = resets[4, 1] = resets[6, 2] = True
    resets[8, 1] = True  # past sequence 1's length: nothing happens
    y, hn = layer(x, h0, lengths=lengths, resets=resets)
    for b in range(B):
        segs = _segments(resets[:, b].tolist(), int(lengths[b]))
        outs, last_fwd, first_rev = [], None, None
        for i, (s, e) in enumerate(segs):
            h_start = torch.zeros(layer.num_directions, 1, 4, dtype=torch.float64)
            if i == 0 and not resets[0, b]:
                h_start[0] = h0[0, b]
            if bidirectional and i == len(segs) - 1:
                h_start[1] = h0[1, b]
            ys, hs = layer(x[s:e, b : b + 1].detach(), h_start)
            outs.append(ys)
            last_fwd = hs[0]
            if i == 0 and bidirectional:
                first_rev = hs[1]
        torch.testing.assert_close(y[: int(lengths[b]), b : b + 1], torch.cat(outs), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hn[0, b : b + 1], last_fwd, rtol=1e-12, atol=1e-12)
        if bidirectional:
            torch.testing.assert_close(hn[1, b : b + 1], first_rev, rtol=1e-12, atol=1e-12)
    # the output of sequence 0's second segment does not depend on its first segment's inputs
    (g,) = torch.autograd.grad(y[3:7, 0, :4].sum(), x)
    assert torch.count_nonzero(g[:3, 0]) == 0 and torch.count_nonzero(g[3:7, 0]) > 0


def test_reverse_resets_mark_segment_ends():
    resets = torch.tensor([[False], [False], [True], [False], [True], [False]])
    assert reverse_resets(resets, None)[:, 0].tolist() == [False, True, False, True, False, False]
    lengths = torch.tensor([4])  # the last step starts the reverse direction anyway; past it, nothing
    assert reverse_resets(resets, lengths)[:, 0].tolist() == [False, True, False, False, False, False]


def test_resets_with_packed_input_and_batch_first():
    layer = _layer("gru1", False)
    x = torch.randn(3, 5, 3, dtype=torch.float64)  # batch first
    resets = torch.rand(3, 5) < 0.4
    lengths = torch.tensor([5, 2, 4])
    bf = _layer("gru1", False, batch_first=True)
    bf.load_state_dict(layer.state_dict())
    y_bf, h_bf = bf(x, lengths=lengths, resets=resets)
    y_tm, _ = layer(x.transpose(0, 1), lengths=lengths, resets=resets.t())
    torch.testing.assert_close(y_bf, y_tm.transpose(0, 1))
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_resets = pack_padded_sequence(resets, lengths, batch_first=True, enforce_sorted=False)
    y_p, h_p = bf(packed, resets=packed_resets)
    torch.testing.assert_close(h_p, h_bf)
    torch.testing.assert_close(
        y_p.data, pack_padded_sequence(y_bf, lengths, batch_first=True, enforce_sorted=False).data
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zoneout": 1.0}, r"zoneout: expected a probability in \[0, 1\), got 1.0"),
        ({"recurrent_dropout": -0.1}, "recurrent_dropout: expected a probability"),
        ({"input_dropout": "0.1"}, "input_dropout: expected a probability"),
        ({"weight_drop": True}, "weight_drop: expected a probability"),
        ({"layer_norm": 1}, "layer_norm: expected True or False"),
    ],
)
def test_bad_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gatedrnn.GRU(3, 4, **kwargs)


def test_bad_resets_name_the_argument():
    layer = gatedrnn.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(gatedrnn.InputError, match=r"resets: expected dtype torch.bool, got torch.int64"):
        layer(x, resets=torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(gatedrnn.InputError, match=r"resets: expected shape \(5, 2\) \(time, batch\)"):
        layer(x, resets=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(gatedrnn.InputError, match="resets: expected a bool tensor"):
        layer(x, resets=[[False, True]] * 5)
    with pytest.raises(gatedrnn.InputError, match=r"resets: expected shape \(5,\) \(time,\)"):
        layer(x[:, 0], resets=torch.zeros(5, 2, dtype=torch.bool))
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.raises(gatedrnn.InputError, match="resets: for a PackedSequence input expected a PackedSequence"):
        layer(packed, resets=torch.zeros(5, 2, dtype=torch.bool))
    if torch.device("meta") != x.device:
        with pytest.raises(gatedrnn.InputError, match="resets: expected device cpu"):
            layer(x, resets=torch.zeros(5, 2, dtype=torch.bool, device="meta"))


def test_layer_norm_parameters_and_counts():
    layer = gatedrnn.GRU(3, 4, layer_norm=True, bidirectional=True)
    names = [n for n, _ in layer.named_parameters()]
    for side in ("ih", "hh"):
        assert f"ln_weight_{side}_l0" in names and f"ln_bias_{side}_l0_reverse" in names
    assert torch.equal(layer.ln_weight_hh_l0, torch.ones(12)) and torch.equal(layer.ln_bias_ih_l0, torch.zeros(12))
    for variant in VARIANTS:
        spec = gatedrnn.SPECS[variant]
        extra = 2 * (spec.ih_blocks() + spec.hh_blocks()) * 4
        plain = gatedrnn.count_parameters(variant, 3, 4)
        assert gatedrnn.count_parameters(variant, 3, 4, layer_norm=True) == plain + extra
        one = gatedrnn.GRU(3, 4, variant=variant, layer_norm=True)
        assert sum(p.numel() for p in one.parameters()) == plain + extra
    assert "layer_norm=True" in repr(layer)
