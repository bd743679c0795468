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
from . import autocast_cpu_dtype, not_yet, recording
from ._pool import NP_DTYPE, cached_bytes, carve, carved_size, saved_buffer, scratch, unused, zeros
from ._pool import empty_cache as empty_cache
from ._second_order import first_order
from ._threads import PARALLEL_MIN_FLOPS, SPLIT_MIN_FLOPS, SPLIT_MIN_ROWS, openmp, row_ranges
from ._threads import run_rows as run_rows

__all__ = ["ENGINE", "FusedEngine"]


def _np(t: Tensor) -> np.ndarray:
    """A NumPy view of a tensor the caller handed in (it may require grad)."""
    return t.detach().numpy()


_BF16 = torch.bfloat16
_DTYPES = frozenset((torch.float32, torch.float64, _BF16, torch.float16))  # float16: refused with a reason


def _np32(t: Tensor, half: bool) -> np.ndarray:
    """``t`` as the kernels read it: a NumPy view where ``half`` is off, else a float32 copy
    (the kernels run float32 on bfloat16 layers and under autocast)."""
    return _np(t) if not half or t.dtype == torch.float32 else t.detach().float().numpy()


def _bf16_values(t: Tensor) -> np.ndarray:
    """A float32 copy of ``t`` rounded to bfloat16: the weights of the per-step products in bfloat16
    mode (exact for bfloat16 parameters, rounded for float32 ones under autocast)."""
    return t.detach().to(_BF16).float().numpy()


def _mm_bf16(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in bfloat16 with float32 accumulation (torch's bfloat16 product: oneDNN, which uses
    AVX512-BF16 or AMX where the CPU has them); the result is bfloat16."""
    return torch.mm(a.to(_BF16), b.to(_BF16))


# The float32 products over all steps (input projection, dx, dW_ih, dW_hh) run through oneDNN where
# torch has it: on a CPU where MKL runs a narrower code path than the CPU has (AVX2 on an AMD EPYC
# with AVX-512) oneDNN's is 1.3-2.5x faster (docs/fused.md, "Products over all steps").
# GATEDRNN_ONEDNN=0 keeps torch.mm (MKL) for them; float64 always uses it.
ONEDNN = os.environ.get("GATEDRNN_ONEDNN", "1") == "1"


@functools.lru_cache(maxsize=1)
def _onednn_linear() -> Any:
    """torch's oneDNN linear on dense tensors (``torch.ops.mkldnn._linear_pointwise``), or None
    where this torch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return None


_FRESH_MAX_BYTES = 32 << 20  # glibc's largest mmap threshold: bigger allocations are fresh pages
ONEDNN_MIN_FLOPS = int(os.environ.get("GATEDRNN_ONEDNN_MIN_FLOPS", 16_000_000))


def _mm_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T (+ bias)``: through oneDNN for float32 (see :data:`ONEDNN`), else torch's ``mm``.
    Products below ``ONEDNN_MIN_FLOPS`` stay with MKL (oneDNN's cost a call outweighs its rate
    there), and so do those with a transposed operand of ``_FRESH_MAX_BYTES`` or more (oneDNN
    copies it first, into fresh pages every call: the weight gradients at size B, 38 MiB)."""
    op = _onednn_linear() if ONEDNN and a.dtype == torch.float32 else None
    big = 2 * a.shape[0] * a.shape[1] * b.shape[0] >= ONEDNN_MIN_FLOPS
    if op is not None and big and all(t.is_contiguous() or t.nbytes < _FRESH_MAX_BYTES for t in (a, b)):
        return op(a, b, bias, "none", [], "")
    return a @ b.t() if bias is None else torch.addmm(bias, a, b.t())


def _onednn_projection(x2: Tensor, w_ih: Tensor, out_bytes: int) -> bool:
    """Whether the input projection runs through oneDNN (:func:`_mm_nt`'s rule, and an output
    below ``_FRESH_MAX_BYTES``: oneDNN writes a fresh tensor, MKL the reused scratch)."""
    if not (ONEDNN and x2.dtype == torch.float32 and _onednn_linear() is not None):
        return False
    return out_bytes < _FRESH_MAX_BYTES and 2 * x2.shape[0] * x2.shape[1] * w_ih.shape[0] >= ONEDNN_MIN_FLOPS


def _mm(a: Tensor, b: Tensor, half: bool) -> Tensor:
    """``a @ b`` for the products over all steps: bfloat16 (:func:`_mm_bf16`) where ``half``."""
    return _mm_bf16(a, b) if half else _mm_nt(a, b.t())


def half_mode(x: Tensor) -> bool | str:
    """Whether a call with input ``x`` runs in bfloat16 mode (bfloat16 products, float32 elementwise
    work and state): a bfloat16 input, or a float32 one under ``torch.autocast("cpu",
    dtype=torch.bfloat16)``. A string says why the call cannot run: float16 (as input, or as the
    autocast type of a float32 input)."""
    if x.dtype == _BF16:
        return True
    if x.dtype == torch.float16:
        return "its half type is bfloat16, got float16 (torch's float16 CPU matrix product is slow)"
    cast = autocast_cpu_dtype()
    if x.dtype != torch.float32 or cast is None:
        return False
    if cast == _BF16:
        return True
    return f"its half type is bfloat16 (torch.autocast('cpu', dtype=torch.bfloat16)), got autocast to {cast}"


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


# The per-step products on MKL's packed recurrent weights (packed once per call and row range, see
# _kernels._mm) instead of one ?gemm call per step. Off by default: it measured no faster on the
# hosts we measured (docs/fused.md, "Packed weights"); GATEDRNN_PACK=1 turns it on where the BLAS
# exports the packed routines (benchmarks/packing.py compares the two on a host).
PACK = os.environ.get("GATEDRNN_PACK", "0") == "1"


@functools.cache
def _blas_fns(dtype: torch.dtype, packed: bool) -> np.ndarray:
    """The kernels' ``fns``: int64[3] = (``?gemm``, ``?gemm_pack``, ``?gemm_compute``) of this data
    type, the last two 0 unless ``packed``."""
    s, d, _ = _k().blas()
    fns = np.zeros(3, np.int64)
    fns[0] = s if dtype == torch.float32 else d
    if packed:
        fns[1], fns[2], _ = _k().packed_blas()[_PREFIX[dtype]]
    return fns


_PREFIX = {torch.float32: "s", torch.float64: "d"}


def _packing(
    dtype: torch.dtype, products: list[tuple[int, int]], ranges: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """``(fns, pk)`` for one compiled loop: whether its per-step products (``(m, k)`` of each weight
    matrix, at most two; empty where the loop runs none through BLAS) run on packed weights, and
    the scratch ``[len(ranges), 2, P]`` the loop packs them into (one ``[2, P]`` per row range).
    Raises where :data:`PACK` asks for packing and the BLAS has no packed routines for the dtype
    (never a silent fall back to plain calls)."""
    if not products:
        return _blas_fns(dtype, False), unused(NP_DTYPE[dtype], 3)
    avail = _PREFIX[dtype] in _k().packed_blas()
    if PACK and not avail:
        name = _PREFIX[dtype]
        raise RuntimeError(
            f"engine='fused': packed per-step products asked for (PACK=True), but the BLAS "
            f"({_k().blas()[2]}) exports no {name}gemm_pack/{name}gemm_compute for {dtype}"
        )
    if not PACK:
        return _blas_fns(dtype, False), unused(NP_DTYPE[dtype], 3)
    rows = max(b1 - b0 for b0, b1 in ranges)
    size = max(_k().pack_size(_PREFIX[dtype], m, rows, k) for m, k in products)
    elems = -(-size // dtype.itemsize // 16) * 16  # whole 64-byte lines: every row stays aligned
    pk = scratch("packed", (len(ranges), 2, elems), dtype)[1]
    return _blas_fns(dtype, True), pk


def _forward_products(spec: Spec, ra: bool, hid: int) -> list[tuple[int, int]]:
    """``(m, k)`` of the forward's per-step products: ``h @ W_hh^T`` (reset-before: the gates' block),
    and reset-before's ``(r*h) @ U_n^T``."""
    if not spec.candidate_reads_h:
        return []
    first = [(spec.hh_blocks() * hid if ra else spec.num_gates * hid, hid)] if ra or spec.gates_read_h else []
    return first + ([] if ra else [(hid, hid)])


def _backward_products(spec: Spec, ra: bool, hid: int) -> list[tuple[int, int]]:
    """``(m, k)`` of the backward's per-step products: ``dh(t-1) += dG @ W_hh`` over the columns that
    feed it, and reset-before's ``dq = c @ U_n``."""
    if not spec.candidate_reads_h:
        return []
    back = (spec.num_gates * hid if spec.gates_read_h else 0) if not ra else spec.hh_blocks() * hid
    return ([(hid, back)] if back else []) + ([] if ra else [(hid, hid)])


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


def _forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save, half):  # type: ignore[no-untyped-def]
    """The forward of :class:`_Layer`; ``ctx`` is None (and ``save`` False) when it is called
    directly, with nothing to differentiate: no autograd node then (about 20 µs less a call).
    Either way no torch operation here records a graph (autograd.Function runs its forward in
    no-grad mode), so the inputs are used as they come, without detaching them.

    ``half`` (:func:`half_mode`): the input projection in bfloat16 (float32 accumulation), the
    kernels in float32 on the weights rounded to bfloat16, outputs in the input's dtype."""
    steps, batch, _ = x.shape
    hid = h0.shape[-1]
    ra = bool(reset_after and spec.has_reset)
    ng = spec.num_gates * hid
    hhw = spec.hh_blocks() * hid
    cdt = torch.float32 if half else x.dtype  # the kernels' dtype
    dt = NP_DTYPE[cdt]
    pbias, gb, bhn = _biases(
        spec,
        _np32(b_ih, half) if b_ih is not None else None,
        _np32(b_hh, half) if b_hh is not None else None,
        hid,
        dt,
    )
    if w_hh is None:
        whh = unused(dt, 2)
    else:
        whh = _bf16_values(w_hh) if half else _np(w_hh)
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
        flat, flat_t = saved_buffer(carved_size(shapes), cdt)
        hs, gs, ns, hn = carve(flat, shapes)
        # The outputs are their own tensor (not a view of the saved states): like torch.nn.GRU's,
        # they may be modified in place (e.g. ReLU(inplace=True)) without touching the saves.
        y_t = torch.empty((steps, batch, hid), dtype=cdt)
    else:
        # inference: gates, candidates and pre-reset terms are one step's scratch rows, and
        # without lengths the states are written straight into the outputs' memory
        shapes = [(1, 1, ng) if gconst else (1, batch, ng), (1, batch, hid), (1, batch, hid)]
        gs, ns, hn = (scratch(n, s, cdt)[1] for n, s in zip(("gs", "ns", "hn"), shapes, strict=True))
        if lengths is None:
            states = torch.empty((steps + 1, batch, hid), dtype=cdt)
            hs, y_t, copy_y = states.numpy(), states[1:], False
        else:
            hs = scratch("hs", (steps + 1, batch, hid), cdt)[1]
            y_t = torch.empty((steps, batch, hid), dtype=cdt)
    xp_t, xp = scratch("xp", (steps * batch, ihw), cdt)
    x2, w_t = x.view(steps * batch, -1), w_ih.t()
    if half:
        prod = _mm_bf16(x2, w_t)
        if pbias is None:
            xp_t.copy_(prod)
        else:
            torch.add(prod, torch.from_numpy(pbias), out=xp_t)  # the bias added in float32
    elif _onednn_projection(x2, w_ih, xp.nbytes):
        # oneDNN writes a tensor of its own (no out=): the kernels read that one. Up to glibc's
        # largest heap block: above it every call maps fresh pages and faults on them (at size B,
        # 38 MiB, that cost more than oneDNN saved), and MKL writes into the reused scratch.
        bias = torch.from_numpy(pbias) if pbias is not None else None
        xp = _mm_nt(x2, w_ih, bias).numpy()
    elif pbias is None:
        torch.mm(x2, w_t, out=xp_t)
    else:
        torch.addmm(torch.from_numpy(pbias), x2, w_t, out=xp_t)
    xp = xp.reshape(steps, batch, ihw)
    hs[0] = _np32(h0, half)
    work = scratch("work", (batch, hhw), cdt)[1]
    small = _small(spec.candidate_reads_h, batch, hid, hhw)  # the backward's
    small_f = small and steps >= SMALL_MIN_STEPS
    whh_t = torch.from_numpy(whh).t().contiguous().numpy() if small_f else unused(dt, 2)
    fwd, _ = _kernel_for(spec, ra, cdt)
    ranges = row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    fns, pk = _packing(cdt, _forward_products(spec, ra, hid) if not small_f else [], ranges)
    head = (fns, xp, gb, whh, whh_t)
    tail = (
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
    run_rows(lambda i, b0, b1: fwd(*head, pk[i % len(pk)], *tail, b0, b1), ranges, 2 * batch * hid * hhw)
    h_n = torch.from_numpy(hs[steps].copy())
    if cdt != x.dtype:
        y_t, h_n = y_t.to(x.dtype), h_n.to(x.dtype)
    if save:
        ctx.spec, ctx.ra, ctx.shapes, ctx.lens, ctx.small = spec, ra, shapes, lens, small
        ctx.reset_after, ctx.lengths, ctx.half = reset_after, lengths, half
        ctx.save_for_backward(x, w_ih, w_hh, flat_t, h0, b_ih, b_hh)
    return y_t, h_n


class _Layer(torch.autograd.Function):
    """One layer, one direction, forward in time (see the module docstring).

    The per-call glue works on NumPy views (a NumPy slice or allocation costs a tenth of torch's,
    and the kernels take NumPy arrays): what is saved for the backward is one flat tensor holding
    the states, gates, candidates and pre-reset terms, carved into views on both sides.
    """

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save, half):  # type: ignore[override]
        return _forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save, half)

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
        return (*grads, None, None, None, None, None)


def _without_padding(x: Tensor, lens: np.ndarray) -> Tensor:
    """``x`` ``[T, B, I]`` as ``[T*B, I]`` rows for the dW_ih product, with zero rows past each
    length: the product multiplies the padding by its zero gradient, and ``0 * NaN`` is NaN.
    (The loops never read the padding; NumPy's row assignment is several times faster than
    ``masked_fill`` on small inputs.) ``x`` itself when nothing is padded."""
    steps, batch, inp = x.shape
    rows = (_np(x) if x.dtype != _BF16 else x.detach().float().numpy()).reshape(steps * batch, inp)
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
    half: bool = ctx.half
    dtype = torch.float32 if half else x.dtype  # the kernels' dtype
    dt = NP_DTYPE[dtype]
    gy_n = _np32(gy.contiguous(), half) if gy is not None else np.zeros((steps, batch, hid), dt)
    ghn_n = _np32(ghn.contiguous(), half) if ghn is not None else np.zeros((batch, hid), dt)
    if w_hh is None:
        whh = unused(dt, 2)
    else:
        whh = _bf16_values(w_hh) if half else _np(w_hh)
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
    wih_t = np.ascontiguousarray((_bf16_values(w_ih) if half else _np(w_ih)).T) if fold_dx else unused(dt, 2)
    xin = _np32(x, half) if fold_dw else unused(dt, 3)
    sums = bool(need[4] or need[5])
    dbxs = np.zeros((nr, ihw))  # float64 sums: T*B terms
    dbhs = np.zeros((nr, hhw))
    two_gemm = spec.candidate_reads_h and not ra
    qs_t, qs = scratch("qs", (steps, batch, hid), dtype) if two_gemm else (None, unused(dt, 3))
    dh0_t = torch.empty((batch, hid), dtype=dtype)
    dh, dhp, dzs = (scratch(n, (batch, hid), dtype)[1] for n in ("dh", "dhp", "dzs"))
    _, bwd = _kernel_for(spec, ra, dtype)
    fns, pk = _packing(dtype, _backward_products(spec, ra, hid) if not small else [], ranges)
    head = (fns, gy_n, ghn_n, whh)
    args = (lens, hs, gs, ns, hn, dgx, dgh)
    rest = (qs, dh0_t.numpy(), dh, dhp, dzs)

    def run(i: int, b0: int, b1: int) -> None:
        sums_i = (dbxs[i], dbhs[i], sums, xin, wih_t, dxo, dwihs[i if fold_dw else 0], fold_dx, fold_dw, small)
        bwd(*head, pk[i % len(pk)], *args, dgbs[i], *rest, *sums_i, b0, b1)

    run_rows(run, ranges, 2 * batch * hid * hhw)
    # the products over all steps (grad mode is off: see first_order); bfloat16 ones in half mode
    if fold:
        dx = dx_t if need[0] else None
        dw_ih = torch.from_numpy(np.ascontiguousarray(dwihs.sum(0).T, dtype=dt)) if need[2] else None
    else:
        dgx2 = dgx_t.view(steps * batch, ihw)
        dx = _mm(dgx2, w_ih, half).view(steps, batch, inp) if need[0] else None
        dw_ih = _mm(dgx2.t(), _without_padding(x, lens), half) if need[2] else None
    dh0 = dh0_t if need[1] else None
    dw_hh = None
    if need[3]:
        dgh2 = dgh_t.view(steps * batch, hhw)
        hprev = torch.from_numpy(hs[:-1].reshape(steps * batch, hid))
        if two_gemm:
            assert qs_t is not None and w_hh is not None
            dw_hh = torch.empty((hhw, hid), dtype=dtype)
            if spec.gates_read_h:
                dw_hh[:ng] = _mm(dgh2[:, :ng].t(), hprev, half)
            dw_hh[hhw - hid :] = _mm(dgh2[:, hhw - hid :].t(), qs_t.view(steps * batch, hid), half)
        else:
            dw_hh = _mm(dgh2.t(), hprev, half)
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
    grads = (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)
    if half:  # each gradient in its input's dtype
        like = (x, saved[4], saved[1], saved[2], saved[5], saved[6])
        return tuple(None if g is None or t is None else g.to(t.dtype) for g, t in zip(grads, like, strict=True))
    return grads


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
        if not x.is_cpu:  # (x.device.type costs 1.5 us a call)
            return f"it runs on CPU tensors, got a tensor on {x.device}"
        if x.dtype not in _DTYPES:
            return f"it runs float32, float64 and bfloat16, got {x.dtype}"
        half = half_mode(x)
        if isinstance(half, str):
            return half
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
        half = half_mode(x) is True
        if lengths is not None:
            # the backward reads it: its own copy, as the caller may refill theirs before backward()
            lengths = lengths.to(dtype=torch.int64, memory_format=torch.contiguous_format, copy=save)
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
            half,
        )
        return _Layer.apply(*args) if save else _forward(None, *args)


ENGINE = FusedEngine()
