"""The driver: stacking, directions, inter-layer dropout and lengths around one engine call.

The driver owns the loops over layers and directions and never touches a variant's maths: each
(layer, direction) is one call of ``engine.layer``, which runs forward in time. The reverse
direction reverses every sequence within its own length, runs forward, and reverses back.

It also draws every random mask of the options (:mod:`gatedrnn._options`) in one place
(:func:`draw_masks`), applies the two that act outside the recurrence (input dropout on ``x``,
DropConnect on ``U``) and hands the others to the engine with the layer norm's parameters and the
resets in the direction's own time order (:class:`gatedrnn._options.Extras`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._engines import Engine, in_compile, resolve
from ._options import NONE, Extras, Options
from ._specs import Spec

__all__ = ["LayerWeights", "Masks", "draw_masks", "reverse_index", "reverse_resets", "rnn"]


@dataclass(frozen=True)
class LayerWeights:
    """The parameters of one layer and direction (layouts in :mod:`gatedrnn._specs`)."""

    w_ih: Tensor
    w_hh: Tensor | None
    b_ih: Tensor | None
    b_hh: Tensor | None
    ln_ih: tuple[Tensor, Tensor] | None = None  # (gain, shift) with layer_norm
    ln_hh: tuple[Tensor, Tensor] | None = None


@dataclass(frozen=True)
class Masks:
    """One layer-direction's random masks (None where the option is off or in eval)."""

    x: Tensor | None = None  # [B, I] input dropout, scaled
    h: Tensor | None = None  # [B, H] recurrent dropout, scaled
    u: Tensor | None = None  # weight_hh's shape: DropConnect, scaled
    zoneout: Tensor | None = None  # [T, B, H] ζ: 1 keeps h(t-1)


def bernoulli(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Ones with probability ``p``, else zeros, of ``like``'s dtype and device: ``u < p`` for
    ``u ~ U[0, 1)`` drawn in float32 or float64 (half types draw in float32). (``bernoulli_`` on a
    float tensor took 1.7x as long as ``rand().lt_()``; zoneout draws ``[T, B, H]`` every call.)"""
    draw = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.rand(shape, dtype=draw, device=like.device).lt_(p).to(like.dtype)


def _keep(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A dropout mask with keep probability ``1 - p``, scaled by ``1 / (1 - p)``."""
    return bernoulli(shape, 1.0 - p, like).div_(1.0 - p)


def draw_masks(
    options: Options, training: bool, weights: Sequence[Sequence[LayerWeights]], x: Tensor, hidden: int
) -> list[list[Masks]]:
    """Every random mask of one forward call, ``[layer][direction]``, from torch's default generator
    in a fixed order (per layer, per direction: input, recurrent, DropConnect, zoneout), so that
    ``torch.manual_seed`` fixes them and every engine sees the same masks. None in eval.

    Args:
        x: ``[T, B, I]`` the layer's input (shape, dtype and device of the masks).
    """
    steps, batch = x.shape[0], x.shape[1]
    out = []
    for k, layer in enumerate(weights):
        width = x.shape[2] if k == 0 else hidden * len(layer)
        dirs = []
        for w in layer:
            if not training:
                dirs.append(Masks())
                continue
            m_x = _keep((batch, width), options.input_dropout, x) if options.input_dropout else None
            m_h = (
                _keep((batch, hidden), options.recurrent_dropout, x)
                if options.recurrent_dropout and w.w_hh is not None
                else None
            )
            m_u = (
                _keep(tuple(w.w_hh.shape), options.weight_drop, x)
                if options.weight_drop and w.w_hh is not None
                else None
            )
            zeta = bernoulli((steps, batch, hidden), options.zoneout, x) if options.zoneout else None
            dirs.append(Masks(m_x, m_h, m_u, zeta))
        out.append(dirs)
    return out


def reverse_resets(resets: Tensor, lengths: Tensor | None) -> Tensor:
    """The reverse direction's resets, in forward time: a segment that starts at ``t`` (forward)
    ends at ``t - 1``, where the reverse direction starts it afresh. ``[T, B]`` bool in, out."""
    shifted = torch.zeros_like(resets)
    shifted[:-1] = resets[1:]
    if lengths is not None:  # the last step of each sequence: where the reverse direction starts anyway
        last = (lengths - 1).unsqueeze(0)
        shifted = shifted.scatter(0, last, False)
    return shifted


def reverse_index(lengths: Tensor, steps: int) -> Tensor:
    """``[T, B]`` time indices that reverse each sequence within its length.

    ``idx[t, b] = lengths[b] - 1 - t`` for ``t < lengths[b]``, else ``t`` (padding stays put).
    The map is its own inverse.
    """
    t = torch.arange(steps, device=lengths.device).unsqueeze(1)
    rev = lengths.unsqueeze(0) - 1 - t
    return torch.where(rev >= 0, rev, t.expand_as(rev))


def _reverse(x: Tensor, lengths: Tensor | None, idx: Tensor | None) -> Tensor:
    if lengths is None:
        return x.flip(0)
    assert idx is not None
    return x.gather(0, idx if x.dim() == 2 else idx.unsqueeze(-1).expand_as(x))


def rnn(
    x: Tensor,
    h0: Tensor,
    weights: Sequence[Sequence[LayerWeights]],
    spec: Spec,
    reset_after: bool,
    *,
    dropout: float = 0.0,
    training: bool = False,
    engine: str | Engine = "auto",
    lengths: Tensor | None = None,
    options: Options | None = None,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor, str]:
    """Run a stacked (bi)directional recurrent layer, time-major, inputs already validated.

    Args:
        x: ``[T, B, I]``.
        h0: ``[L*D, B, H]`` (index ``layer*D + direction``, as ``torch.nn.GRU``).
        weights: ``weights[layer][direction]``.
        lengths: ``[B]`` int64 on x's device, or None.
        options: the layer's options (:mod:`gatedrnn._options`); None: all off.
        resets: ``[T, B]`` bool on x's device, or None: zero the state before these steps.

    Returns:
        ``y`` ``[T, B, D*H]``, ``h_n`` ``[L*D, B, H]``, and the engine's name.
    """
    options = options or Options()
    hidden = h0.shape[-1]
    masks = draw_masks(options, training, weights, x, hidden)
    zoneout_eval = options.zoneout if (options.zoneout and not training) else None
    num_dirs = len(weights[0])
    idx = reverse_index(lengths, x.shape[0]) if lengths is not None else None
    resets_rev = None
    if resets is not None and num_dirs == 2:
        resets_rev = _reverse(reverse_resets(resets, lengths), lengths, idx)

    def extras(w: LayerWeights, m: Masks, d: int) -> Extras:
        zoneout = m.zoneout if m.zoneout is not None else zoneout_eval
        if w.ln_ih is None and m.h is None and zoneout is None and resets is None:
            return NONE
        return Extras(w.ln_ih, w.ln_hh, m.h, zoneout, resets if d == 0 else resets_rev)

    first = extras(weights[0][0], masks[0][0], 0)
    eng = resolve(engine, spec, x, first) if isinstance(engine, str) else engine
    run_layer = in_compile(eng, eng.layer)
    finals: list[Tensor] = []
    layer_in = x
    for k, layer in enumerate(weights):
        if k > 0 and dropout > 0.0 and training:
            layer_in = F.dropout(layer_in, dropout, training=True)
        outs = []
        for d, w in enumerate(layer):
            m = masks[k][d]
            inp = layer_in if d == 0 else _reverse(layer_in, lengths, idx)
            if m.x is not None:
                inp = inp * m.x
            w_hh = w.w_hh * m.u if m.u is not None else w.w_hh
            y, hn = run_layer(
                spec, reset_after, inp, h0[k * num_dirs + d], w.w_ih, w_hh, w.b_ih, w.b_hh, lengths, extras(w, m, d)
            )
            outs.append(y if d == 0 else _reverse(y, lengths, idx))
            finals.append(hn)
        layer_in = outs[0] if num_dirs == 1 else torch.cat(outs, dim=-1)
    return layer_in, finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals), eng.name
