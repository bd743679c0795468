"""The driver: stacking, directions, inter-layer dropout and lengths around one engine call.

The driver owns the loops over layers and directions and never touches a variant's maths: each
(layer, direction) is one call of ``engine.layer``, which runs forward in time. The reverse
direction reverses every sequence within its own length, runs forward, and reverses back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._engines import Engine, in_compile, resolve
from ._specs import Spec

__all__ = ["LayerWeights", "reverse_index", "rnn"]


@dataclass(frozen=True)
class LayerWeights:
    """The parameters of one layer and direction (layouts in :mod:`gatedrnn._specs`)."""

    w_ih: Tensor
    w_hh: Tensor | None
    b_ih: Tensor | None
    b_hh: Tensor | None


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
    return x.gather(0, idx.unsqueeze(-1).expand_as(x))


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
) -> tuple[Tensor, Tensor, str]:
    """Run a stacked (bi)directional recurrent layer, time-major, inputs already validated.

    Args:
        x: ``[T, B, I]``.
        h0: ``[L*D, B, H]`` (index ``layer*D + direction``, as ``torch.nn.GRU``).
        weights: ``weights[layer][direction]``.
        lengths: ``[B]`` int64 on x's device, or None.

    Returns:
        ``y`` ``[T, B, D*H]``, ``h_n`` ``[L*D, B, H]``, and the engine's name.
    """
    eng = resolve(engine, spec, x) if isinstance(engine, str) else engine
    run_layer = in_compile(eng, eng.layer)
    num_dirs = len(weights[0])
    idx = reverse_index(lengths, x.shape[0]) if lengths is not None else None
    finals: list[Tensor] = []
    layer_in = x
    for k, layer in enumerate(weights):
        if k > 0 and dropout > 0.0 and training:
            layer_in = F.dropout(layer_in, dropout, training=True)
        outs = []
        for d, w in enumerate(layer):
            inp = layer_in if d == 0 else _reverse(layer_in, lengths, idx)
            y, hn = run_layer(spec, reset_after, inp, h0[k * num_dirs + d], w.w_ih, w.w_hh, w.b_ih, w.b_hh, lengths)
            outs.append(y if d == 0 else _reverse(y, lengths, idx))
            finals.append(hn)
        layer_in = outs[0] if num_dirs == 1 else torch.cat(outs, dim=-1)
    return layer_in, finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals), eng.name
