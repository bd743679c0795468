"""The reference engine: the spec's equations as one step function, and a plain autograd loop.

This is the oracle every fast engine is tested against. It is written for clarity, not speed:
:func:`project` is the input projection for all time steps at once (one matrix product),
:func:`step` is one time step of the recurrence, and :func:`run_layer` loops over time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._specs import Spec, split

__all__ = ["project", "run_layer", "step"]


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
    blocks = split(spec, w_ih, None, b_ih, b_hh, hidden_size)
    xp = x @ w_ih.t()
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
    blocks = split(spec, None, w_hh, None, b_hh, hidden)
    pre = gx
    if blocks.u_g is not None:
        hg = h @ blocks.u_g.t()
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
        if reset_after:
            hn = h @ blocks.u_n.t()
            if blocks.b_hn is not None:
                hn = hn + blocks.b_hn
            npre = npre + r * hn
        else:
            npre = npre + (r * h) @ blocks.u_n.t()
    n = torch.tanh(npre) if spec.candidate_tanh else npre
    return (1 - z) * n + z * h


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
            ``t >= lengths[b]`` the state of sequence ``b`` is frozen and its output is zero.

    Returns:
        ``y`` ``[T, B, H]`` and ``h_n`` ``[B, H]``.
    """
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
