"""The fused CPU engine: one autograd Function per layer and direction, compiled time loops.

Forward: the input projection of every step as one matrix product (the biases that can be folded
are folded into it; gates that do not read ``x`` skip it), then the compiled loop of
:mod:`gatedrnn._engines._kernels` (one BLAS call per step on the recurrent weights, two dependent
ones for the reset-before form, and one fused elementwise pass). It saves the states, the gate
activations (GRU3's, from the bias alone, once), the candidates and, for the reset-after form, the
pre-reset recurrent term (one flat buffer; large ones are reused from a pool once autograd lets go
of them: :mod:`gatedrnn._engines._pool`). Without gradients nothing is saved: the gates, candidates
and pre-reset terms are one step's scratch rows, and (without lengths) the states are written
into the outputs' memory.

With several torch threads the batch rows are split between torch's OpenMP threads, each running
the loop on its rows (:mod:`gatedrnn._engines._threads`).

Backward: the compiled reverse loop (one BLAS call per step) produces the gradients of the
projection and of the recurrent products for every step, and sums them into the bias gradients
as it goes; the weight gradients are then single matrix products over all steps, in torch. No
Python runs per time step.

Calls of a few steps (up to ``_step.SHORT_MAX_STEPS``) whose rows would not be split across threads
run instead as one compiled call each way, projection and weight gradients included
(:mod:`gatedrnn._engines._step`): there the Python around the loop is most of the call.

minGRU has no recurrent weights: the same loops with no per-step product, forward and backward.
Its log-space parallel scan is the separate engine ``"scan"`` (:mod:`gatedrnn._engines._scan`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _reference
from .._options import NONE, Extras
from .._specs import Spec, join_bias, split
from . import not_yet, recording
from ._pool import NP_DTYPE, cached_bytes, carve, carved_size, saved_buffer, scratch, unused, zeros
from ._pool import empty_cache as empty_cache
from ._second_order import first_order
from ._threads import PARALLEL_MIN_FLOPS, SPLIT_MIN_FLOPS, SPLIT_MIN_ROWS, openmp, row_ranges
from ._threads import run_rows as run_rows

__all__ = ["ENGINE", "FusedEngine"]


def _np(t: Tensor) -> np.ndarray:
    """A NumPy view of a tensor the caller handed in (it may require grad)."""
    return t.detach().numpy()


def _k() -> Any:
    """:mod:`gatedrnn._engines._kernels`, imported on first use (it imports numba)."""
    global _KERNELS
    if _KERNELS is None:
        from . import _kernels

        _KERNELS = _kernels
    return _KERNELS


_KERNELS: Any = None


@functools.cache
def _kernel_for(spec: Spec, reset_after: bool, dtype: torch.dtype):
    return _k().kernels(spec.wiring(reset_after), dtype == torch.float32)


def _gemm_address(dtype: torch.dtype) -> int:
    s, d, _ = _k().blas()
    return s if dtype == torch.float32 else d


def _biases(
    spec: Spec, b_ih: np.ndarray | None, b_hh: np.ndarray | None, hid: int, dt: type
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(projection bias [ihb*H] or None, gates' constant pre-activation [G*H], b_hn [H])``.

    NumPy views of the parameters in, NumPy out: this glue runs on every call, and NumPy's
    small-array operations cost a tenth of torch's. The constant zero vectors are shared (the
    kernels only read them).
    """
    gh = spec.num_gates * hid
    blocks = split(spec, None, None, b_ih, b_hh, hid)
    bhn = blocks.b_hn if blocks.b_hn is not None else zeros(dt, hid)
    gbias = blocks.gate_bias()
    if not spec.gates_read_x:
        return blocks.b_n, (gbias if gbias is not None else zeros(dt, gh)), bhn
    if gbias is None and blocks.b_n is None:
        return None, zeros(dt, gh), bhn
    pbias = np.empty(gh + hid, dt)
    pbias[:gh] = gbias if gbias is not None else 0.0
    pbias[gh:] = blocks.b_n if blocks.b_n is not None else 0.0
    return pbias, zeros(dt, gh), bhn


# Up to this many input features the backward loop also produces dx and dW_ih while each row of
# the projection gradient is in cache (that gradient is then never stored for all steps): with one
# feature (pixel-by-pixel MNIST, adding, sine) they are otherwise two memory-bound passes over a
# [T, B, 3H] buffer.
FOLD_MAX_INPUT = int(os.environ.get("GATEDRNN_FOLD_MAX_INPUT", 4))


def _small(products: bool, batch: int, hid: int, hhw: int) -> bool:
    """Whether the per-step products run as the kernels' own loops instead of BLAS: a few rows,
    and products too small for multi-threaded BLAS (see ``_kernels.SMALL_MAX_BATCH``). The
    forward's loops also need enough steps (``SMALL_MIN_STEPS``)."""
    return products and batch <= _k().SMALL_MAX_BATCH and 2 * batch * hid * hhw < PARALLEL_MIN_FLOPS


# The forward's row loops read a transposed copy of W_hh, made on every call; below this many steps
# the copy costs more than the loops save, and the forward keeps BLAS (one-step streaming calls).
SMALL_MIN_STEPS = int(os.environ.get("GATEDRNN_SMALL_MIN_STEPS", 16))


def _forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save):  # type: ignore[no-untyped-def]
    """The forward of :class:`_Layer`; ``ctx`` is None (and ``save`` False) when it is called
    directly, with nothing to differentiate: no autograd node then (about 20 µs less a call).
    Either way no torch operation here records a graph (autograd.Function runs its forward in
    no-grad mode), so the inputs are used as they come, without detaching them."""
    steps, batch, _ = x.shape
    hid = h0.shape[-1]
    ra = bool(reset_after and spec.has_reset)
    ng = spec.num_gates * hid
    hhw = spec.hh_blocks() * hid
    dt = NP_DTYPE[x.dtype]
    pbias, gb, bhn = _biases(
        spec, _np(b_ih) if b_ih is not None else None, _np(b_hh) if b_hh is not None else None, hid, dt
    )
    whh = _np(w_hh) if w_hh is not None else unused(dt, 2)
    if lengths is not None:
        lens = lengths.numpy()
    else:
        lens = np.empty(batch, np.int64)
        lens.fill(steps)
    ihw = w_ih.shape[0]
    gconst = not (spec.gates_read_x or spec.gates_read_h)  # GRU3: the gates are one constant row
    copy_y = True
    if save:
        # what the backward reads: one flat tensor, carved
        shapes = [
            (steps + 1, batch, hid),
            (1, 1, ng) if gconst else (steps, batch, ng),
            (steps, batch, hid),
            (steps if ra else 1, batch, hid),
        ]
        flat, flat_t = saved_buffer(carved_size(shapes), x.dtype)
        hs, gs, ns, hn = carve(flat, shapes)
        # The outputs are their own tensor (not a view of the saved states): like torch.nn.GRU's,
        # they may be modified in place (e.g. ReLU(inplace=True)) without touching the saves.
        y_t = torch.empty((steps, batch, hid), dtype=x.dtype)
    else:
        # inference: gates, candidates and pre-reset terms are one step's scratch rows, and
        # without lengths the states are written straight into the outputs' memory
        shapes = [(1, 1, ng) if gconst else (1, batch, ng), (1, batch, hid), (1, batch, hid)]
        gs, ns, hn = (scratch(n, s, x.dtype)[1] for n, s in zip(("gs", "ns", "hn"), shapes, strict=True))
        if lengths is None:
            states = torch.empty((steps + 1, batch, hid), dtype=x.dtype)
            hs, y_t, copy_y = states.numpy(), states[1:], False
        else:
            hs = scratch("hs", (steps + 1, batch, hid), x.dtype)[1]
            y_t = torch.empty((steps, batch, hid), dtype=x.dtype)
    xp_t, xp = scratch("xp", (steps * batch, ihw), x.dtype)
    x2, w_t = x.view(steps * batch, -1), w_ih.t()
    if pbias is None:
        torch.mm(x2, w_t, out=xp_t)
    else:
        torch.addmm(torch.from_numpy(pbias), x2, w_t, out=xp_t)
    xp = xp.reshape(steps, batch, ihw)
    hs[0] = _np(h0)
    work = scratch("work", (batch, hhw), x.dtype)[1]
    small = _small(spec.candidate_reads_h, batch, hid, hhw)  # the backward's
    small_f = small and steps >= SMALL_MIN_STEPS
    whh_t = w_hh.detach().t().contiguous().numpy() if small_f else unused(dt, 2)
    fwd, _ = _kernel_for(spec, ra, x.dtype)
    args = (
        _gemm_address(x.dtype),
        xp,
        gb,
        whh,
        whh_t,
        bhn,
        lens,
        hs,
        y_t.numpy() if copy_y else unused(dt, 3),
        gs,
        ns,
        hn,
        work,
        copy_y,
        small_f,
    )
    ranges = row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    run_rows(lambda _, b0, b1: fwd(*args, b0, b1), ranges, 2 * batch * hid * hhw)
    h_n = torch.from_numpy(hs[steps].copy())
    if save:
        ctx.spec, ctx.ra, ctx.shapes, ctx.lens, ctx.small = spec, ra, shapes, lens, small
        ctx.reset_after, ctx.lengths = reset_after, lengths
        ctx.save_for_backward(x, w_ih, w_hh, flat_t, h0, b_ih, b_hh)
    return y_t, h_n


class _Layer(torch.autograd.Function):
    """One layer, one direction, forward in time (see the module docstring).

    The per-call glue works on NumPy views (a NumPy slice or allocation costs a tenth of torch's,
    and the kernels take NumPy arrays): what is saved for the backward is one flat tensor holding
    the states, gates, candidates and pre-reset terms, carved into views on both sides.
    """

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save):  # type: ignore[override]
        return _forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save)

    @staticmethod
    def backward(ctx, gy, ghn):  # type: ignore[override]
        # unpacked once: non-reentrant activation checkpointing refuses a second unpack
        saved = ctx.saved_tensors
        x, w_ih, w_hh, _, h0, b_ih, b_hh = saved
        spec, reset_after, lengths = ctx.spec, ctx.reset_after, ctx.lengths

        def reference(*ins: Tensor | None) -> tuple[Tensor, Tensor]:
            return _reference.run_layer(spec, reset_after, *ins, lengths)  # type: ignore[arg-type]

        grads = first_order(
            lambda: _backward(ctx, saved, gy, ghn), reference, (gy, ghn), (x, h0, w_ih, w_hh, b_ih, b_hh)
        )
        return (*grads, None, None, None, None)


def _without_padding(x: Tensor, lens: np.ndarray) -> Tensor:
    """``x`` ``[T, B, I]`` as ``[T*B, I]`` rows for the dW_ih product, with zero rows past each
    length: the product multiplies the padding by its zero gradient, and ``0 * NaN`` is NaN.
    (The loops never read the padding; NumPy's row assignment is several times faster than
    ``masked_fill`` on small inputs.) ``x`` itself when nothing is padded."""
    steps, batch, inp = x.shape
    rows = _np(x).reshape(steps * batch, inp)
    if batch == 0 or lens.min() >= steps:
        return torch.from_numpy(rows)
    rows = rows.copy()
    rows[(np.arange(steps)[:, None] >= lens[None, :]).reshape(-1)] = 0
    return torch.from_numpy(rows)


def _backward(ctx, saved, gy, ghn):  # type: ignore[no-untyped-def]
    """The backward of :class:`_Layer`: gradients for (x, h0, w_ih, w_hh, b_ih, b_hh). It runs with
    grad mode off (see :func:`first_order`); ``gy``/``ghn`` reach the kernels through ``_np``.
    ``saved``: ``ctx.saved_tensors``, unpacked once by the caller."""
    x, w_ih, w_hh, flat_t = saved[:4]
    spec: Spec = ctx.spec
    ra: bool = ctx.ra
    lens = ctx.lens
    hs, gs, ns, hn = carve(flat_t.numpy(), ctx.shapes)
    steps, batch, inp = x.shape
    hid = hs.shape[-1]
    ng = spec.num_gates * hid
    ihw = spec.ih_blocks() * hid
    hhw = spec.hh_blocks() * hid
    dtype, dt = x.dtype, NP_DTYPE[x.dtype]
    gy_n = _np(gy.contiguous()) if gy is not None else np.zeros((steps, batch, hid), dt)
    ghn_n = _np(ghn.contiguous()) if ghn is not None else np.zeros((batch, hid), dt)
    whh = _np(w_hh) if w_hh is not None else unused(dt, 2)
    need = ctx.needs_input_grad
    # A few input features: dx and dW_ih are folded into the loop, and dgx is one step's scratch.
    fold = inp <= FOLD_MAX_INPUT
    # in the forward's projection scratch (the same shape, and dead once a forward has returned:
    # one buffer less at the peak of a training step, e.g. 19 MiB at T=100, B=64, 3H=768)
    dgx_t, dgx = scratch("xp", ((1 if fold else steps) * batch, ihw), dtype)
    dgx = dgx.reshape(-1, batch, ihw)
    dgh_t, dgh = scratch("dgh", (steps, batch, hhw), dtype)
    small: bool = ctx.small
    ranges = row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    # accumulated per concurrent call (a row each), summed below
    nr = len(ranges)
    dgbs = np.zeros((nr, ng), dt)
    fold_dx, fold_dw = bool(fold and need[0]), bool(fold and need[2])
    dx_t = torch.empty((steps, batch, inp), dtype=dtype) if fold_dx else None
    dxo = dx_t.numpy() if dx_t is not None else unused(dt, 3)
    dwihs = np.zeros((nr, inp, ihw)) if fold_dw else unused(np.float64, 3)
    wih_t = np.ascontiguousarray(_np(w_ih).T) if fold_dx else unused(dt, 2)
    xin = _np(x) if fold_dw else unused(dt, 3)
    sums = bool(need[4] or need[5])
    dbxs = np.zeros((nr, ihw))  # float64 sums: T*B terms
    dbhs = np.zeros((nr, hhw))
    two_gemm = spec.candidate_reads_h and not ra
    qs_t, qs = scratch("qs", (steps, batch, hid), dtype) if two_gemm else (None, unused(dt, 3))
    dh0_t = torch.empty((batch, hid), dtype=dtype)
    dh, dhp, dzs = (scratch(n, (batch, hid), dtype)[1] for n in ("dh", "dhp", "dzs"))
    _, bwd = _kernel_for(spec, ra, dtype)
    args = (_gemm_address(dtype), gy_n, ghn_n, whh, lens, hs, gs, ns, hn, dgx, dgh)
    rest = (qs, dh0_t.numpy(), dh, dhp, dzs)

    def run(i: int, b0: int, b1: int) -> None:
        sums_i = (dbxs[i], dbhs[i], sums, xin, wih_t, dxo, dwihs[i if fold_dw else 0], fold_dx, fold_dw, small)
        bwd(*args, dgbs[i], *rest, *sums_i, b0, b1)

    run_rows(run, ranges, 2 * batch * hid * hhw)
    if fold:
        dx = dx_t if need[0] else None
        dw_ih = torch.from_numpy(np.ascontiguousarray(dwihs.sum(0).T, dtype=dt)) if need[2] else None
    else:
        dgx2 = dgx_t.view(steps * batch, ihw)
        dx = (dgx2 @ w_ih).view(steps, batch, inp) if need[0] else None  # (grad mode is off: see first_order)
        dw_ih = dgx2.t() @ _without_padding(x, lens) if need[2] else None
    dh0 = dh0_t if need[1] else None
    dw_hh = None
    if need[3]:
        dgh2 = dgh_t.view(steps * batch, hhw)
        hprev = torch.from_numpy(hs[:-1].reshape(steps * batch, hid))
        if two_gemm:
            assert qs_t is not None
            dw_hh = torch.empty((hhw, hid), dtype=dtype)
            if spec.gates_read_h:
                torch.mm(dgh2[:, :ng].t(), hprev, out=dw_hh[:ng])
            torch.mm(dgh2[:, hhw - hid :].t(), qs_t.view(steps * batch, hid), out=dw_hh[hhw - hid :])
        else:
            dw_hh = dgh2.t() @ hprev
    db_ih = db_hh = None
    if sums:
        dbx, dbh = (dbxs[0], dbhs[0]) if nr == 1 else (dbxs.sum(0), dbhs.sum(0))
        if spec.gates_read_x:
            dgate = dbx[:ng]
        elif spec.gates_read_h:
            dgate = dbh[:ng]
        else:
            dgate = dgbs[0] if nr == 1 else dgbs.sum(0)
        b_ih, b_hh = join_bias(spec, dgate, dbx[ihw - hid :], dbh[hhw - hid :] if ra else None, np.concatenate)
        db_ih = torch.from_numpy(b_ih.astype(dt)) if need[4] else None
        db_hh = torch.from_numpy(b_hh.astype(dt)) if (need[5] and b_hh is not None) else None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


@functools.lru_cache(maxsize=1)
def _runtime_problem() -> str | None:
    """Why the kernels cannot run in this process (numba or BLAS missing), or None."""
    try:
        import numba  # noqa: F401
    except ImportError as e:  # pragma: no cover - numba is a dependency
        return f"numba cannot be imported ({e})"
    try:
        _k().blas()
    except RuntimeError as e:  # pragma: no cover - depends on the install
        return str(e)
    return None


class FusedEngine:
    """Compiled CPU loops (numba) with hand-written backpropagation through time."""

    name = "fused"
    traceable = False  # NumPy views and numba calls: run eagerly under torch.compile

    def unavailable(self, spec: Spec, x: Tensor, extras: Extras = NONE) -> str | None:
        why = not_yet(extras)
        if why is not None:
            return why
        rec = recording()
        if rec is not None:
            return (
                f"{rec} sees only torch operations, and this engine's loops are compiled NumPy/numba "
                "code outside them; use engine='reference' (what engine='auto' picks there)"
            )
        if x.device.type != "cpu":
            return f"it runs on CPU tensors, got a tensor on {x.device}"
        if x.dtype not in (torch.float32, torch.float64):
            return f"it runs float32 and float64, got {x.dtype}"
        return _runtime_problem()

    def details(self) -> dict[str, Any]:
        import numba

        omp = openmp()
        split = (
            f"batch rows split across torch's threads (>= {SPLIT_MIN_ROWS} rows each, loops of >= "
            f"{SPLIT_MIN_FLOPS / 1e6:g} MFLOP; OpenMP {omp[3]})"
            if omp is not None and _k().mkl_local_threads() is not None
            else "off (needs torch's MKL and GNU OpenMP): the loop runs on one thread"
        )
        return {
            "blas": _k().blas()[2],
            "numba": numba.__version__,
            "threads": split,
            "cached_bytes": cached_bytes(),  # gatedrnn.empty_cache() frees them
        }

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
            raise RuntimeError(f"engine='fused' cannot run here: {why}")
        for name, t in (("h0", h0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
            if t is not None and t.dtype != x.dtype:
                raise ValueError(f"{name}: expected dtype {x.dtype} (the input's), got {t.dtype}")
        save = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh)
        )
        if lengths is not None:
            # the backward reads it: its own copy, as the caller may refill theirs before backward()
            lengths = lengths.to(dtype=torch.int64, memory_format=torch.contiguous_format, copy=save)
        if self.short(spec, x.shape[0], x.shape[1], h0.shape[-1]):
            return _step().layer(spec, reset_after, x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
        args = (
            x.contiguous(),
            h0.contiguous(),
            w_ih.contiguous(),
            w_hh.contiguous() if w_hh is not None else None,
            b_ih.contiguous() if b_ih is not None else None,
            b_hh.contiguous() if b_hh is not None else None,
            lengths,
            spec,
            reset_after,
            save,
        )
        return _Layer.apply(*args) if save else _forward(None, *args)

    def short(self, spec: Spec, steps: int, batch: int, hid: int) -> bool:
        """Whether a layer call of this size runs the one-call step kernels (:mod:`._step`): at most
        ``SHORT_MAX_STEPS`` steps, and rows that the long form would not split across threads
        (where it would, its threads pay off; docs/step.md, "Dispatch")."""
        if steps > _step().SHORT_MAX_STEPS:
            return False
        hhw = spec.hh_blocks() * hid
        small = _small(spec.candidate_reads_h, batch, hid, hhw)
        return len(row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))) == 1

    # the options a cell's step runs (GRUCell's engine="auto" picks this engine only with these)
    cell_options: tuple[str, ...] = ()

    def cell(
        self,
        spec: Spec,
        reset_after: bool,
        x: Tensor,
        h: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor | None,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
    ) -> Tensor:
        """One step of a cell, by the step kernels: ``x`` ``[B, m]`` or ``[m]``, ``h`` of the
        output's shape or None (zeros); inputs checked by the caller (:class:`gatedrnn.GRUCell`)."""
        why = self.unavailable(spec, x)
        if why is not None:
            raise RuntimeError(f"engine='fused' cannot run here: {why}")
        return _step().cell(spec, reset_after, x, h, w_ih, w_hh, b_ih, b_hh)


def _step() -> Any:
    """:mod:`gatedrnn._engines._step` (imported on first use, as the kernels)."""
    from . import _step

    return _step


ENGINE = FusedEngine()
