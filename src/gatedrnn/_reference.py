"""The reference engine: the spec's equations as one step function, and a plain autograd loop.

This is the oracle every fast engine is tested against. It is written for clarity, not speed:
:func:`project` is the input projection for all time steps at once (one matrix product),
:func:`step` is one time step of the recurrence, and :func:`run_layer` loops over time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._specs import Spec

__all__ = ["mask_padding", "project", "run_layer", "step"]


def project(
    spec: Spec, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, hidden_size: int
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

    Returns:
        ``gx``: the gates' input-side pre-activation ``[..., G*H]`` (``W x + b``), a constant
        ``[G*H]`` for gates fed by the bias alone, or None for gates with neither x nor bias.
        ``nx``: the candidate's input side ``[..., H]`` (``W_n x + b_n``).
    """
    gh = spec.num_gates * hidden_size
    xp = x @ w_ih.t()
    if spec.gates_read_x:
        gx: Tensor | None = xp[..., :gh]
        nx = xp[..., gh:]
    else:
        gx, nx = None, xp
    if b_ih is not None:
        if spec.gates_have_bias:
            gx = b_ih[:gh] if gx is None else gx + b_ih[:gh]
            nx = nx + b_ih[gh:]
        else:
            nx = nx + b_ih
    if b_hh is not None and spec.torch_hh_bias:
        assert gx is not None
        gx = gx + b_hh[:gh]
    return gx, nx


def step(
    spec: Spec,
    reset_after: bool,
    gx: Tensor | None,
    nx: Tensor,
    h: Tensor,
    w_hh: Tensor | None,
    b_hh: Tensor | None,
) -> Tensor:
    """One time step of the recurrence (the spec's equations, written once).

    Args:
        gx: ``[B, G*H]`` (or ``[G*H]``, or None): the gates' input side from :func:`project`.
        nx: ``[B, H]``: the candidate's input side from :func:`project`.
        h: ``[B, H]``: h(t-1).
        w_hh: ``[spec.hh_blocks()*H, H]`` or None (minGRU).
        b_hh: the recurrent bias (only its last block ``b_hn`` is read here) or None.

    Returns:
        h(t), ``[B, H]``.
    """
    hidden = h.shape[-1]
    gh = spec.num_gates * hidden
    pre = gx
    if spec.gates_read_h:
        assert w_hh is not None
        hg = h @ w_hh[:gh].t()
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
    if spec.candidate_reads_h:
        assert w_hh is not None and r is not None
        w_n = w_hh[-hidden:]
        if reset_after:
            hn = h @ w_n.t()
            if b_hh is not None:
                hn = hn + b_hh[-hidden:]
            npre = npre + r * hn
        else:
            npre = npre + (r * h) @ w_n.t()
    n = torch.tanh(npre) if spec.candidate_tanh else npre
    return (1 - z) * n + z * h


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
) -> tuple[Tensor, Tensor]:
    """One layer, one direction (forward in time), by autograd over :func:`step`.

    Args:
        x: ``[T, B, I]``.
        h0: ``[B, H]``.
        lengths: ``[B]`` int64 on x's device, or None (all sequences have length T). At
            ``t >= lengths[b]`` the state of sequence ``b`` is frozen and its output is zero;
            what ``x`` holds there is never read (:func:`mask_padding`).

    Returns:
        ``y`` ``[T, B, H]`` and ``h_n`` ``[B, H]``.
    """
    if lengths is not None:
        x = mask_padding(x, lengths)
    gx, nx = project(spec, x, w_ih, b_ih, b_hh, h0.shape[-1])
    h = h0
    ys = []
    for t in range(x.shape[0]):
        gxt = gx[t] if gx is not None and gx.dim() == x.dim() else gx
        h_new = step(spec, reset_after, gxt, nx[t], h, w_hh, b_hh)
        if lengths is not None:
            alive = (lengths > t).unsqueeze(1)
            h_new = torch.where(alive, h_new, h)
            ys.append(torch.where(alive, h_new, torch.zeros_like(h_new)))
        else:
            ys.append(h_new)
        h = h_new
    return torch.stack(ys), h
