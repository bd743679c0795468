"""minGRU's parallel scan over time in log space (Heinsen 2023; Feng et al. 2024, appendix).

minGRU's recurrence is linear in ``h``: with ``a_t = z_t`` and ``b_t = (1 - z_t) * n_t``,

.. math::

    h_t = a_t h_{t-1} + b_t = A_t \\Big(h_0 + \\sum_{s \\le t} b_s / A_s\\Big), \\qquad A_t = \\prod_{s \\le t} a_s,

so ``log A`` is a cumulative sum and the sum is a ``logcumsumexp``: both are parallel prefix
operations over time. Our candidate ``n_t = W_n x_t + b_n`` is linear and can be negative, so the
sum is split into its positive and negative parts, each scanned in log space
(``h = exp(log A + P) - exp(log A + N)``). ``log a = logsigmoid(pre_z)`` comes straight from the
pre-activation. The scan runs in float64 whatever the input type (``log A`` of a long sequence is
large and float32 would lose its low digits) and the result is cast back.

The gradient is the same kind of scan run backwards in time: the adjoint
``λ_t = g_t + a_{t+1} λ_{t+1}``, then ``∂b_t = λ_t``, ``∂log a_t = λ_t a_t h_{t-1}``, ``∂h_0 = a_1 λ_1``.

For streaming inference :func:`mingru_step` is the one-step form; tests check that both agree
with the sequential recurrence (including ``T = 784``).

Options (:mod:`gatedrnn._options`): ``layer_norm`` normalises the projection ``W x`` before the
scan. Zoneout keeps the recurrence linear, ``h_t = a'_t h_(t-1) + b'_t`` with
``a'_t = ζ_t + (1 - ζ_t) z_t`` and ``b'_t = (1 - ζ_t)(1 - z_t) n_t``: in training ``ζ_t`` is 0 or 1,
so ``log a'_t`` is ``log z_t`` or 0 exactly; in eval ``log a'_t = logaddexp(log p, log(1 - p) +
log z_t)``. minGRU has no recurrent weights, so recurrent dropout never reaches it. Resets would
make ``a_t = 0``, ``log a_t = -inf``, which the log-space scan cannot carry (its cumulative sums
become ``-inf - (-inf)``): the scan refuses them.

The scan is the engine ``"scan"`` (minGRU only, any device: plain torch operations). It is not
what ``"auto"`` picks on CPU: there the fused engine's compiled loop with its hand-written backward
trains minGRU 6-145x faster than this scan (forward+backward, 1 thread, sizes A-E of
``benchmarks/speed.py``), because a 2-core CPU has no parallelism for the scan to use and the four
float64 ``logcumsumexp`` passes cost more than the whole sequential loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _reference
from .._options import NONE, Extras
from .._reference import mask_padding
from .._specs import Spec
from . import FORWARD_AD, FUNC_TRANSFORM, not_yet, recording
from ._second_order import first_order

__all__ = ["ENGINE", "linear_scan", "log_scan", "mingru_layer", "mingru_step"]


def log_scan(log_a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t h_(t-1) + b_t`` for every ``t`` at once, in log space (no autograd).

    Args:
        log_a: ``[T, ...]`` ``log a_t`` (``a_t`` in ``(0, 1]``; 0 keeps the state).
        b: ``[T, ...]`` ``b_t`` of either sign.
        h0: ``[...]`` the initial state, of either sign.

    Returns:
        ``h`` ``[T, ...]`` in float64.
    """
    log_a = log_a.double()
    cum = torch.cat([log_a.new_zeros((1, *log_a.shape[1:])), torch.cumsum(log_a, 0)])  # log A, A_(-1) = 1
    vals = torch.cat([h0.double().unsqueeze(0), b.double()])  # h0 enters as b_(-1)
    with torch.no_grad():
        pos = torch.log(vals.clamp(min=0)) - cum
        neg = torch.log((-vals).clamp(min=0)) - cum
        h = torch.exp(cum + torch.logcumsumexp(pos, 0)) - torch.exp(cum + torch.logcumsumexp(neg, 0))
    return h[1:]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_a: Tensor, b: Tensor, h0: Tensor) -> Tensor:  # type: ignore[override]
        h = log_scan(log_a.detach(), b.detach(), h0.detach())
        ctx.save_for_backward(log_a, b, h0, h)
        return h.to(b.dtype, copy=True)  # its own tensor, never a view of a saved one

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors  # unpacked once: non-reentrant checkpointing refuses a second unpack
        log_a, b, h0, _ = saved

        return first_order(lambda: _LinearScan.first_order(saved, g), _sequential, (g,), (log_a, b, h0))

    @staticmethod
    def first_order(saved: tuple[Tensor, ...], g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The adjoint scan: gradients for (log_a, b, h0), from the forward's saved tensors."""
        log_a, _, h0, h = saved
        la = log_a.double()
        # λ_t = g_t + a_(t+1) λ_(t+1): a forward scan on the time-reversed sequence.
        shifted = torch.cat([la[1:], la.new_zeros((1, *la.shape[1:]))])
        lam = log_scan(shifted.flip(0), g.double().flip(0), torch.zeros_like(h[0])).flip(0)
        hprev = torch.cat([h0.double().unsqueeze(0), h[:-1]])
        a = torch.exp(la)
        d_log_a = lam * a * hprev
        d_h0 = a[0] * lam[0]
        return d_log_a.to(log_a.dtype), lam.to(g.dtype), d_h0.to(h0.dtype)


def _sequential(log_a: Tensor, b: Tensor, h0: Tensor) -> tuple[Tensor]:
    """``h_t = exp(log_a_t) h_(t-1) + b_t`` step by step, by differentiable torch operations: what the
    scan computes, differentiated twice for second-order gradients (:mod:`._second_order`)."""
    a, h, hs = torch.exp(log_a), h0, []
    for t in range(log_a.shape[0]):
        h = a[t] * h + b[t]
        hs.append(h)
    return (torch.stack(hs).to(b.dtype),)


def linear_scan(log_a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """Differentiable ``h_t = exp(log_a_t) h_(t-1) + b_t`` over the first axis (log-space scan)."""
    return _LinearScan.apply(log_a, b, h0)


def mingru_layer(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    b_ih: Tensor | None,
    lengths: Tensor | None,
    ln_ih: tuple[Tensor, Tensor] | None = None,
    zoneout: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """One minGRU layer, one direction, by the parallel scan (the ``"scan"`` engine).

    Args:
        x: ``[T, B, I]``; h0: ``[B, H]``; w_ih: ``[2H, I]`` (``z`` block then ``n``); b_ih: ``[2H]``
        or None; lengths: ``[B]`` int64 or None (steps ``t >= lengths[b]`` keep the state, output 0).
        ln_ih: ``(γ, β)``: layer norm of ``W x`` before the bias, or None.
        zoneout: ``[T, B, H]`` ζ (training), the probability (eval), or None.

    Returns:
        ``y`` ``[T, B, H]`` and ``h_n`` ``[B, H]``, differentiable by autograd.
    """
    hid = h0.shape[-1]
    if lengths is not None:
        x = mask_padding(x, lengths)  # padding never reaches a gradient, whatever it holds
    pre = _reference.layer_norm(x @ w_ih.t(), ln_ih)
    if b_ih is not None:
        pre = pre + b_ih
    zpre, n = pre[..., :hid], pre[..., hid:]
    log_a = F.logsigmoid(zpre)
    b = torch.sigmoid(-zpre) * n
    if isinstance(zoneout, Tensor):  # ζ = 1 keeps h(t-1): a = 1 exactly, b = 0
        keep = zoneout != 0
        log_a = torch.where(keep, torch.zeros_like(log_a), log_a)
        b = torch.where(keep, torch.zeros_like(b), b)
    elif zoneout is not None:
        log_a = torch.logaddexp(torch.full_like(log_a, math.log(zoneout)), math.log1p(-zoneout) + log_a)
        b = (1 - zoneout) * b
    alive = None
    if lengths is not None:
        alive = (torch.arange(x.shape[0], device=x.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)
        log_a = torch.where(alive, log_a, torch.zeros_like(log_a))
        b = torch.where(alive, b, torch.zeros_like(b))
    h = linear_scan(log_a, b, h0)
    y = h if alive is None else torch.where(alive, h, torch.zeros_like(h))
    return y, h[-1].clone()  # h_n is not a view of y (y may be modified in place)


def mingru_step(x_t: Tensor, h: Tensor, w_ih: Tensor, b_ih: Tensor | None) -> Tensor:
    """One minGRU step for streaming inference: ``h_t = z*h_(t-1) + (1-z)*n`` (``x_t [B, I]``, ``h [B, H]``)."""
    hid = h.shape[-1]
    pre = F.linear(x_t, w_ih, b_ih)
    z = torch.sigmoid(pre[..., :hid])
    return z * h + (1 - z) * pre[..., hid:]


class ScanEngine:
    """minGRU by the log-space parallel scan (autograd through :func:`linear_scan`)."""

    name = "scan"
    traceable = True  # torch operations only

    def unavailable(self, spec: Spec, x: Tensor, extras: Extras = NONE) -> str | None:
        why = not_yet(extras, ("layer_norm", "zoneout"))
        if why is not None:
            return why
        rec = recording()
        if rec in (FUNC_TRANSFORM, FORWARD_AD):  # (torch.export and torch.jit.trace record the scan)
            return (
                f"{rec} needs autograd.Functions written for it, and the scan's is not; "
                "use engine='reference' (what engine='auto' picks there)"
            )
        if spec.candidate_reads_h:
            return f"the parallel scan runs only minGRU (a recurrence linear in h), got variant {spec.name!r}"
        if not x.dtype.is_floating_point:
            return f"it runs floating-point tensors, got {x.dtype}"
        return None

    def layer(
        self,
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
        why = self.unavailable(spec, x, extras)
        if why is not None:
            raise RuntimeError(f"engine='scan' cannot run here: {why}")
        return mingru_layer(x, h0, w_ih, b_ih, lengths, extras.ln_ih, extras.zoneout)


ENGINE = ScanEngine()
