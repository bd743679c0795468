"""The reference engine: the spec's equations as one step function, and a plain autograd loop.

This is the oracle every fast engine is tested against. It is written for clarity, not speed:
:func:`project` is the input projection for all time steps at once (one matrix product),
:func:`step` is one time step of the recurrence, :func:`carry` what becomes of the state around
it (resets, zoneout), and :func:`run_layer` loops over time. The options' equations are in
:mod:`gatedrnn._options`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._options import LN_EPS, NONE, Extras
from ._specs import Spec, split

__all__ = ["carry", "layer_norm", "mask_padding", "project", "run_layer", "step"]


def layer_norm(a: Tensor, gain_shift: tuple[Tensor, Tensor] | None, start: int = 0, stop: int | None = None) -> Tensor:
    """``LN(a; γ, β)`` over the last axis (:mod:`gatedrnn._options`) with ``γ, β`` the slice
    ``[start:stop]`` of the layer's gain and shift; ``a`` unchanged when ``gain_shift`` is None."""
    if gain_shift is None:
        return a
    gain, shift = (v[start:stop] for v in gain_shift)
    return F.layer_norm(a, (a.shape[-1],), gain, shift, LN_EPS)


def project(
    spec: Spec,
    x: Tensor,
    w_ih: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    hidden_size: int,
    ln_ih: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Input projection of every time step at once.

    Args:
        spec: the variant.
        x: ``[..., I]`` inputs (any leading shape, e.g. ``[T, B, I]``).
        w_ih: ``[spec.ih_blocks()*H, I]``.
        b_ih: ``[spec.bias_ih_blocks()*H]`` or None.
        b_hh: ``[spec.bias_hh_blocks(reset_after)*H]`` or None; only gru0's ``b_hr, b_hz`` are
            folded here (``b_hn`` stays inside the reset product).
        hidden_size: H.
        ln_ih: ``(γ_ih, β_ih)``: layer norm of ``W x`` (before the biases), or None.

    Returns:
        ``gx``: the gates' input-side pre-activation ``[..., G*H]`` (``W x + b``), a constant
        ``[G*H]`` for gates fed by the bias alone, or None for gates with neither x nor bias.
        ``nx``: the candidate's input side ``[..., H]`` (``W_n x + b_n``).
    """
    blocks = split(spec, w_ih, None, b_ih, b_hh, hidden_size)
    xp = layer_norm(x @ w_ih.t(), ln_ih)
    gx: Tensor | None = xp[..., : spec.num_gates * hidden_size] if spec.gates_read_x else None
    nx = xp[..., spec.num_gates * hidden_size :] if spec.gates_read_x else xp
    gbias = blocks.gate_bias()
    if gbias is not None:
        gx = gbias if gx is None else gx + gbias
    if blocks.b_n is not None:
        nx = nx + blocks.b_n
    return gx, nx


def step(
    spec: Spec,
    reset_after: bool,
    gx: Tensor | None,
    nx: Tensor,
    h: Tensor,
    w_hh: Tensor | None,
    b_hh: Tensor | None,
    ln_hh: tuple[Tensor, Tensor] | None = None,
    h_mask: Tensor | None = None,
) -> Tensor:
    """One time step of the recurrence (the spec's equations, written once).

    Args:
        gx: ``[B, G*H]`` (or ``[G*H]``, or None): the gates' input side from :func:`project`.
        nx: ``[B, H]``: the candidate's input side from :func:`project`.
        h: ``[B, H]``: h(t-1).
        w_hh: ``[spec.hh_blocks()*H, H]`` or None (minGRU).
        b_hh: the recurrent bias (only its last block ``b_hn`` is read here) or None.
        ln_hh: ``(γ_hh, β_hh)``: layer norm of the recurrent products, or None.
        h_mask: ``[B, H]`` recurrent-dropout mask (scaled): ``h ⊙ h_mask`` enters the recurrent
            products, ``h`` the update. None: ``h`` everywhere.

    Returns:
        the new state h'(t), ``[B, H]`` (before zoneout: :func:`carry`).
    """
    hidden = h.shape[-1]
    gh = spec.num_gates * hidden
    blocks = split(spec, None, w_hh, None, b_hh, hidden)
    hd = h if h_mask is None else h * h_mask
    hg = hn = None
    if reset_after and blocks.u_n is not None:
        assert w_hh is not None
        ah = layer_norm(hd @ w_hh.t(), ln_hh)  # [B, hh_blocks*H]: one group
        hg = ah[..., :gh] if blocks.u_g is not None else None
        hn = ah[..., -hidden:]
        if blocks.b_hn is not None:
            hn = hn + blocks.b_hn
    elif blocks.u_g is not None:
        hg = layer_norm(hd @ blocks.u_g.t(), ln_hh, 0, gh)
    pre = gx
    if hg is not None:
        pre = hg if pre is None else pre + hg
    assert pre is not None, "a spec's gates read at least one of x, h, bias"
    g = torch.sigmoid(pre)
    if spec.coupled:
        r, z = g, 1 - g
    elif spec.num_gates == 2:
        r, z = g[..., :hidden], g[..., hidden:]
    else:
        r, z = None, g

    npre = nx
    if blocks.u_n is not None:
        assert r is not None
        if hn is not None:
            npre = npre + r * hn
        else:
            npre = npre + layer_norm((r * hd) @ blocks.u_n.t(), ln_hh, -hidden)
    n = torch.tanh(npre) if spec.candidate_tanh else npre
    return (1 - z) * n + z * h


def carry(h_prev: Tensor, h_new: Tensor, zoneout: Tensor | float | None) -> Tensor:
    """The state after a step: zoneout's ``ζ ⊙ h(t-1) + (1 - ζ) ⊙ h'(t)`` (``ζ`` a 0/1 mask in
    training, the probability in eval), or ``h'(t)`` without zoneout."""
    if zoneout is None:
        return h_new
    return zoneout * h_prev + (1 - zoneout) * h_new


def mask_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """``x`` ``[T, B, *]`` with zeros at ``t >= lengths[b]``, whatever the padding held.

    No state reads the padding, but a backward multiplies the zero gradient it gets there by what
    was computed from it (``0 * NaN`` is NaN): NaN or inf past ``lengths`` (a batch made with
    ``torch.empty``) would reach every weight's gradient. ``masked_fill``'s backward only zeroes.
    """
    padding = torch.arange(x.shape[0], device=x.device).unsqueeze(1) >= lengths.unsqueeze(0)
    return x.masked_fill(padding.view(*padding.shape, *([1] * (x.dim() - 2))), 0)


def run_layer(
    spec: Spec,
    reset_after: bool,
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    extras: Extras = NONE,
) -> tuple[Tensor, Tensor]:
    """One layer, one direction (forward in time), by autograd over :func:`step`.

    Args:
        x: ``[T, B, I]``.
        h0: ``[B, H]``.
        lengths: ``[B]`` int64 on x's device, or None (all sequences have length T). At
            ``t >= lengths[b]`` the state of sequence ``b`` is frozen and its output is zero;
            what ``x`` holds there is never read (:func:`mask_padding`).
        extras: the options' per-call inputs (:class:`gatedrnn._options.Extras`).

    Returns:
        ``y`` ``[T, B, H]`` and ``h_n`` ``[B, H]``.
    """
    if lengths is not None:
        x = mask_padding(x, lengths)
    gx, nx = project(spec, x, w_ih, b_ih, b_hh, h0.shape[-1], extras.ln_ih)
    zoneout = extras.zoneout
    h = h0
    ys = []
    for t in range(x.shape[0]):
        gxt = gx[t] if gx is not None and gx.dim() == x.dim() else gx
        # a reset zeroes h(t-1) before the step; no gradient crosses it
        h_prev = h if extras.resets is None else torch.where(extras.resets[t].unsqueeze(1), 0.0, h)
        h_new = step(spec, reset_after, gxt, nx[t], h_prev, w_hh, b_hh, extras.ln_hh, extras.h_mask)
        h_new = carry(h_prev, h_new, zoneout[t] if isinstance(zoneout, Tensor) else zoneout)
        if lengths is not None:
            alive = (lengths > t).unsqueeze(1)
            h_new = torch.where(alive, h_new, h)
            ys.append(torch.where(alive, h_new, torch.zeros_like(h_new)))
        else:
            ys.append(h_new)
        h = h_new
    return torch.stack(ys), h
