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
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import _reference
from .._options import NONE, Extras
from .._specs import Spec, join_bias, split
from . import autocast_cpu_dtype, recording
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
def _kernel_for(spec: Spec, reset_after: bool, dtype: torch.dtype, options: bool = False):
    return _k().kernels(spec.wiring(reset_after), dtype == torch.float32, options)


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


class _Opts(NamedTuple):
    """The options' tensors of one call (:class:`gatedrnn._options.Extras`, as the Function gets
    them): layer-norm gains and shifts (pairs, or None), the recurrent-dropout mask ``[B, H]``,
    zoneout's ``ζ`` ``[T, B, H]`` (training) or its probability (eval), resets ``[T, B]`` bool."""

    ln_ih: tuple[Tensor, Tensor] | None = None
    ln_hh: tuple[Tensor, Tensor] | None = None
    h_mask: Tensor | None = None
    zeta: Tensor | None = None
    zo_p: float | None = None
    resets: Tensor | None = None

    @classmethod
    def of(cls, extras: Extras) -> _Opts:
        """The options of ``extras``, each tensor C-contiguous."""

        def c(t: Tensor | None) -> Tensor | None:
            return t.contiguous() if t is not None else None

        zeta = extras.zoneout if isinstance(extras.zoneout, Tensor) else None
        zo_p = None if zeta is not None or extras.zoneout is None else float(extras.zoneout)
        ln_ih, ln_hh = extras.ln_ih, extras.ln_hh
        return cls(
            (c(ln_ih[0]), c(ln_ih[1])) if ln_ih is not None else None,  # type: ignore[arg-type]
            (c(ln_hh[0]), c(ln_hh[1])) if ln_hh is not None else None,  # type: ignore[arg-type]
            c(extras.h_mask),
            c(zeta),
            zo_p,
            c(extras.resets),
        )

    def gains_shifts(self) -> tuple[Tensor | None, ...]:
        """``(γ_ih, β_ih, γ_hh, β_hh)``, None where a layer norm is off."""
        return (*(self.ln_ih or (None, None)), *(self.ln_hh or (None, None)))

    def named(self) -> tuple[tuple[str, Tensor | None], ...]:
        """The floating-point tensors by the names an error gives them."""
        names = ("ln_weight_ih", "ln_bias_ih", "ln_weight_hh", "ln_bias_hh")
        masks = (("the recurrent-dropout mask", self.h_mask), ("the zoneout mask", self.zeta))
        return (*zip(names, self.gains_shifts(), strict=True), *masks)


_NO_OPTS = _Opts()


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


def _ln_shapes(
    ln_x: bool, ln_h: bool, steps: int, batch: int, ihw: int, hhw: int, groups: int
) -> list[tuple[int, ...]]:
    """The layer norms' saved buffers: ``â`` and ``1/sqrt(var + eps)`` of the projection's rows
    (``ln_x``) and of the recurrent products' (``ln_h``), with ``steps`` rows each (1: one step's
    scratch, without gradients)."""
    out: list[tuple[int, ...]] = []
    if ln_x:
        out += [(steps, batch, ihw), (steps, batch, 1)]
    if ln_h:
        out += [(steps, batch, hhw), (steps, batch, groups)]
    return out


def _ln_arrays(ln_x: bool, ln_h: bool, bufs: list[np.ndarray], dt: type) -> tuple[np.ndarray, ...]:
    """``(ahat_x, rstd_x, ahat_h, rstd_h)`` from the buffers of :func:`_ln_shapes`, stand-ins for
    those off."""
    it = iter(bufs)
    x = (next(it), next(it)) if ln_x else (unused(dt, 3), unused(dt, 3))
    h = (next(it), next(it)) if ln_h else (unused(dt, 3), unused(dt, 3))
    return (*x, *h)


def _masks(opts: _Opts, hid: int, dt: type, half: bool = False) -> tuple[Any, ...]:
    """The kernels' runtime switches and arrays for recurrent dropout, zoneout and resets:
    ``(masked, hmask, zo, zeta, reset, resets)``, stand-ins where an option is off (zoneout's
    probability in eval as a ``[1, 1, H]`` ζ; float32 copies in ``half`` mode)."""
    h_mask, zeta, zo_p, resets = opts.h_mask, opts.zeta, opts.zo_p, opts.resets
    if zeta is not None:
        zeta_n = _np32(zeta, half)
    elif zo_p is not None:
        zeta_n = np.full((1, 1, hid), zo_p, dt)
    else:
        zeta_n = unused(dt, 3)
    return (
        h_mask is not None,
        _np32(h_mask, half) if h_mask is not None else unused(dt, 2),
        zeta is not None or zo_p is not None,
        zeta_n,
        resets is not None,
        resets.numpy() if resets is not None else unused(np.bool_, 2),
    )


@functools.cache
def _options_off(dt: type, backward: bool) -> tuple[Any, ...]:
    """The kernels' option arguments of a plain call (every option off), made once: a plain call
    runs no per-call glue for the options."""
    masked, hmask, zo, zeta, reset, resets = _masks(_NO_OPTS, 1, dt)
    no1, no2, no3 = unused(dt, 1), unused(dt, 2), unused(dt, 3)
    if backward:  # (masked, hmask, hm, dhm, zo, zeta, gzero, zd, reset, resets, then per layer norm
        # on, gain, ahat, rstd; dgam_x and dgam_h follow, per concurrent call)
        return (masked, hmask, no3, no2, zo, zeta, no3, no2, reset, resets, *(False, no1, no3, no3) * 2)
    # (masked, hmask, hm, zo, zeta, reset, resets, then per layer norm on, gain, shift, ahat, rstd)
    return (masked, hmask, no3, zo, zeta, reset, resets, *(False, no1, no1, no3, no3) * 2)


def _forward_options(
    opts: _Opts,
    ln_x: bool,
    ln_h: bool,
    pbias: np.ndarray | None,
    ln_bufs: list[np.ndarray],
    batch: int,
    hid: int,
    dtype: torch.dtype,
    half: bool,
) -> tuple[Any, ...]:
    """The forward kernel's option arguments (``masked`` ... ``rstd_h``) for this call: ``ln_x``,
    ``ln_h`` say which layer norms run, ``ln_bufs`` are their buffers (:func:`_ln_shapes`);
    ``dtype`` is the kernels', ``half`` as in :func:`_forward`."""
    dt = NP_DTYPE[dtype]
    masked, hmask, zo, zeta, reset, resets = _masks(opts, hid, dt, half)
    hm = scratch("hm", (1, batch, hid), dtype)[1] if masked else unused(dt, 3)
    ahat_x, rstd_x, ahat_h, rstd_h = _ln_arrays(ln_x, ln_h, ln_bufs, dt)
    no = unused(dt, 1)
    ln_xg, ln_xs = (_np32(opts.ln_ih[0], half), _np32(opts.ln_ih[1], half)) if opts.ln_ih is not None else (no, no)
    if ln_x and pbias is not None:  # LN(W x) + b = γ â + (β + b)
        ln_xs = ln_xs + pbias
    if ln_h and opts.ln_hh is not None:
        ln_hg, ln_hs = _np32(opts.ln_hh[0], half), _np32(opts.ln_hh[1], half)
    else:
        ln_hg, ln_hs = no, no
    layer_norms = (ln_x, ln_xg, ln_xs, ahat_x, rstd_x, ln_h, ln_hg, ln_hs, ahat_h, rstd_h)
    return (masked, hmask, hm, zo, zeta, reset, resets, *layer_norms)


def _forward(  # type: ignore[no-untyped-def]
    ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save, half, opts=None
):
    """The forward of :class:`_Layer`; ``ctx`` is None (and ``save`` False) when it is called
    directly, with nothing to differentiate: no autograd node then (about 20 µs less a call).
    Either way no torch operation here records a graph (autograd.Function runs its forward in
    no-grad mode), so the inputs are used as they come, without detaching them.

    ``half`` (:func:`half_mode`): the input projection in bfloat16 (float32 accumulation), the
    kernels in float32 on the weights rounded to bfloat16, outputs in the input's dtype.
    ``opts``: the options' tensors (:class:`_Opts`), or None for a plain layer."""
    steps, batch, _ = x.shape
    hid = h0.shape[-1]
    ra = bool(reset_after and spec.has_reset)
    ng = spec.num_gates * hid
    hhw = spec.hh_blocks() * hid
    cdt = torch.float32 if half else x.dtype  # the kernels' dtype
    dt = NP_DTYPE[cdt]
    ln_x = ln_h = False
    if opts is not None:
        ln_x, ln_h = opts.ln_ih is not None, opts.ln_hh is not None and hhw > 0
        # layer-norm groups of a row of the recurrent products: reset-before with gates that
        # read h has two (the gates', then the candidate's, gatedrnn._options)
        groups = 2 if (not ra and spec.gates_read_h) else 1
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
        # what the backward reads: one flat tensor, carved (with layer norm also its saves)
        shapes = [
            (steps + 1, batch, hid),
            (1, 1, ng) if gconst else (steps, batch, ng),
            (steps, batch, hid),
            (steps if ra else 1, batch, hid),
        ]
        if ln_x or ln_h:
            shapes += _ln_shapes(ln_x, ln_h, steps, batch, ihw, hhw, groups)
        flat, flat_t = saved_buffer(carved_size(shapes), cdt)
        hs, gs, ns, hn, *ln_bufs = carve(flat, shapes)
        # The outputs are their own tensor (not a view of the saved states): like torch.nn.GRU's,
        # they may be modified in place (e.g. ReLU(inplace=True)) without touching the saves.
        y_t = torch.empty((steps, batch, hid), dtype=cdt)
    else:
        # inference: gates, candidates and pre-reset terms are one step's scratch rows, and
        # without lengths the states are written straight into the outputs' memory
        shapes = [(1, 1, ng) if gconst else (1, batch, ng), (1, batch, hid), (1, batch, hid)]
        gs, ns, hn = (scratch(n, s, cdt)[1] for n, s in zip(("gs", "ns", "hn"), shapes, strict=True))
        ln_bufs = []
        if ln_x or ln_h:
            ln_shapes = _ln_shapes(ln_x, ln_h, 1, batch, ihw, hhw, groups)
            ln_bufs = [scratch(f"ln{i}", s, cdt)[1] for i, s in enumerate(ln_shapes)]
        if lengths is None and (opts is None or opts.resets is None):
            states = torch.empty((steps + 1, batch, hid), dtype=cdt)
            hs, y_t, copy_y = states.numpy(), states[1:], False
        else:  # (resets zero states the outputs keep)
            hs = scratch("hs", (steps + 1, batch, hid), cdt)[1]
            y_t = torch.empty((steps, batch, hid), dtype=cdt)
    xp_t, xp = scratch("xp", (steps * batch, ihw), cdt)
    x2, w_t = x.view(steps * batch, -1), w_ih.t()
    # with ln_x the kernel normalises each row of W x at its step, and the biases join its shift
    xbias = pbias if not ln_x else None
    if half:
        prod = _mm_bf16(x2, w_t)
        xp_t.copy_(prod)
        if xbias is not None:
            # the bias added in float32, after the copy: a mixed-dtype add into a float32 output
            # took 8x as long (18 ms against 2.2 ms at size B)
            xp_t.add_(torch.from_numpy(xbias))
    elif _onednn_projection(x2, w_ih, xp.nbytes):
        # oneDNN writes a tensor of its own (no out=): the kernels read that one. Up to glibc's
        # largest heap block: above it every call maps fresh pages and faults on them (at size B,
        # 38 MiB, that cost more than oneDNN saved), and MKL writes into the reused scratch.
        bias = torch.from_numpy(xbias) if xbias is not None else None
        xp = _mm_nt(x2, w_ih, bias).numpy()
    elif xbias is None:
        torch.mm(x2, w_t, out=xp_t)
    else:
        torch.addmm(torch.from_numpy(pbias), x2, w_t, out=xp_t)
    xp = xp.reshape(steps, batch, ihw)
    hs[0] = _np32(h0, half)
    work = scratch("work", (batch, hhw), cdt)[1]
    small = _small(spec.candidate_reads_h, batch, hid, hhw)  # the backward's
    small_f = small and steps >= SMALL_MIN_STEPS
    whh_t = torch.from_numpy(whh).t().contiguous().numpy() if small_f else unused(dt, 2)
    fwd, _ = _kernel_for(spec, ra, cdt, opts is not None)
    ranges = row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    fns, pk = _packing(cdt, _forward_products(spec, ra, hid) if not small_f else [], ranges)
    if opts is None:
        options = _options_off(dt, False)
    else:
        options = _forward_options(opts, ln_x, ln_h, pbias, ln_bufs, batch, hid, cdt, half)
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
        *options,
    )
    run_rows(lambda i, b0, b1: fwd(*head, pk[i % len(pk)], *tail, b0, b1), ranges, 2 * batch * hid * hhw)
    h_n = torch.from_numpy(hs[steps].copy())
    if cdt != x.dtype:
        y_t, h_n = y_t.to(x.dtype), h_n.to(x.dtype)
    if save:
        ctx.spec, ctx.ra, ctx.shapes, ctx.lens, ctx.small = spec, ra, shapes, lens, small
        ctx.reset_after, ctx.lengths, ctx.half = reset_after, lengths, half
        if opts is None:
            ctx.save_for_backward(x, w_ih, w_hh, flat_t, h0, b_ih, b_hh)
        else:
            ctx.zo_p = opts.zo_p
            ctx.save_for_backward(
                x, w_ih, w_hh, flat_t, h0, b_ih, b_hh, *opts.gains_shifts(), opts.h_mask, opts.zeta, opts.resets
            )
    return y_t, h_n


def _pair(a: Tensor | None, b: Tensor | None) -> tuple[Tensor, Tensor] | None:
    return None if a is None or b is None else (a, b)


class _Layer(torch.autograd.Function):
    """One layer, one direction, forward in time (see the module docstring), every option off.

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


class _LayerOptions(torch.autograd.Function):
    """:class:`_Layer` with options (:class:`_Opts`): the layer norms' gains and shifts are
    differentiable inputs besides x, h0, the weights and biases; the masks and resets are not.
    (A class of its own: a plain layer keeps the plain Function's shorter per-call path.)"""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x,
        h0,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        g_ih,
        s_ih,
        g_hh,
        s_hh,
        lengths,
        h_mask,
        zeta,
        resets,
        spec,
        ra,
        save,
        half,
        zo_p,
    ):
        opts = _Opts(_pair(g_ih, s_ih), _pair(g_hh, s_hh), h_mask, zeta, zo_p, resets)
        return _forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, ra, save, half, opts)

    @staticmethod
    def backward(ctx, gy, ghn):  # type: ignore[override]
        saved = ctx.saved_tensors  # (unpacked once, as in _Layer)
        x, w_ih, w_hh, _, h0, b_ih, b_hh, g_ih, s_ih, g_hh, s_hh, h_mask, zeta, resets = saved
        spec, reset_after, lengths = ctx.spec, ctx.reset_after, ctx.lengths
        zoneout = zeta if zeta is not None else ctx.zo_p

        def reference(*ins: Tensor | None) -> tuple[Tensor, Tensor]:
            # the same layer with its options, by autograd (second order): the gains and shifts
            # are inputs like the weights
            extras = Extras(_pair(*ins[6:8]), _pair(*ins[8:10]), h_mask, zoneout, resets)
            return _reference.run_layer(spec, reset_after, *ins[:6], lengths, extras)  # type: ignore[arg-type]

        inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, g_ih, s_ih, g_hh, s_hh)
        grads = first_order(lambda: _backward(ctx, saved, gy, ghn), reference, (gy, ghn), inputs)
        return (*grads, None, None, None, None, None, None, None, None, None)


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
    """The backward of :class:`_Layer` and :class:`_LayerOptions`: gradients for (x, h0, w_ih,
    w_hh, b_ih, b_hh), and with options for the layer norms' gains and shifts (g_ih, s_ih, g_hh,
    s_hh). It runs with grad mode off (see :func:`first_order`); ``gy``/``ghn`` reach the kernels
    through ``_np``. ``saved``: ``ctx.saved_tensors``, unpacked once by the caller."""
    x, w_ih, w_hh, flat_t = saved[:4]
    options = len(saved) > 7
    g_ih, s_ih, g_hh, s_hh, h_mask, zeta, resets = saved[7:] if options else (None,) * 7
    spec: Spec = ctx.spec
    ra: bool = ctx.ra
    lens = ctx.lens
    hs, gs, ns, hn, *ln_bufs = carve(flat_t.numpy(), ctx.shapes)
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
    ln_x, ln_h = g_ih is not None, g_hh is not None and hhw > 0
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
    sums = bool(need[4] or need[5])  # (with a layer norm its side's sums are always made)
    dbxs = np.zeros((nr, ihw))  # float64 sums: T*B terms
    dbhs = np.zeros((nr, hhw))
    two_gemm = spec.candidate_reads_h and not ra
    qs_t, qs = scratch("qs", (steps, batch, hid), dtype) if two_gemm else (None, unused(dt, 3))
    dh0_t = torch.empty((batch, hid), dtype=dtype)
    dh, dhp, dzs = (scratch(n, (batch, hid), dtype)[1] for n in ("dh", "dhp", "dzs"))
    _, bwd = _kernel_for(spec, ra, dtype, options)
    fns, pk = _packing(dtype, _backward_products(spec, ra, hid) if not small else [], ranges)
    head = (fns, gy_n, ghn_n, whh)
    args = (lens, hs, gs, ns, hn, dgx, dgh)
    rest = (qs, dh0_t.numpy(), dh, dhp, dzs)
    no_dgam = unused(np.float64, 1)
    dgams_x = dgams_h = None
    if options:
        # the gains' gradients, per concurrent call (the shifts' are dbx and dbh)
        dgams_x = np.zeros((nr, ihw)) if ln_x else None
        dgams_h = np.zeros((nr, hhw)) if ln_h else None
        masks = _Opts(None, None, h_mask, zeta, ctx.zo_p, resets)
        masked, hmask, zo, zeta_n, reset, resets_n = _masks(masks, hid, dt, half)
        hm = scratch("hm", (1, batch, hid), dtype)[1] if masked and two_gemm else unused(dt, 3)
        dhm = scratch("dhm", (batch, hid), dtype)[1] if masked else unused(dt, 2)
        gzero = np.zeros((1, batch, hid), dt) if zo else unused(dt, 3)
        zd = scratch("zd", (batch, hid), dtype)[1] if zo else unused(dt, 2)
        ahat_x, rstd_x, ahat_h, rstd_h = _ln_arrays(ln_x, ln_h, ln_bufs, dt)
        no = unused(dt, 1)
        ln_xg, ln_hg = _np32(g_ih, half) if ln_x else no, _np32(g_hh, half) if ln_h else no
        opt_args = (masked, hmask, hm, dhm, zo, zeta_n, gzero, zd, reset, resets_n)
        opt_args += (ln_x, ln_xg, ahat_x, rstd_x, ln_h, ln_hg, ahat_h, rstd_h)
    else:
        opt_args = _options_off(dt, True)

    def run(i: int, b0: int, b1: int) -> None:
        sums_i = (dbxs[i], dbhs[i], sums, xin, wih_t, dxo, dwihs[i if fold_dw else 0], fold_dx, fold_dw, small)
        dgam_x = dgams_x[i] if dgams_x is not None else no_dgam
        dgam_h = dgams_h[i] if dgams_h is not None else no_dgam
        bwd(*head, pk[i % len(pk)], *args, dgbs[i], *rest, *sums_i, *opt_args, dgam_x, dgam_h, b0, b1)

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
        if h_mask is not None:  # the products read h̃ = h(t-1) ⊙ m
            hprev = (hprev.view(steps, batch, hid) * h_mask.to(dtype)).view(steps * batch, hid)
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
    grads: tuple[Tensor | None, ...] = (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)
    like: tuple[Tensor | None, ...] = (x, saved[4], saved[1], saved[2], saved[5], saved[6])
    if options:
        # the layer norms' gains and shifts: the shifts' gradients are the sums of dgx, dgh before
        # the layer norms' backward (dbx, dbh)
        dln: list[Tensor | None] = [None] * 4
        for k, (dgams, dbs) in enumerate(((dgams_x, dbxs), (dgams_h, dbhs))):
            if dgams is not None:
                if need[6 + 2 * k]:
                    dln[2 * k] = torch.from_numpy(dgams.sum(0).astype(dt))
                if need[7 + 2 * k]:
                    dln[2 * k + 1] = torch.from_numpy(dbs.sum(0).astype(dt))
        grads, like = (*grads, *dln), (*like, g_ih, s_ih, g_hh, s_hh)
    if half:  # each gradient in its input's dtype
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
            f"{SPLIT_MIN_FLOPS / 1e6:g} MFLOP; OpenMP {os.path.basename(omp[3])})"
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
        opts = _Opts.of(extras) if extras is not NONE and extras.names() else None
        named = (("h0", h0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh))
        for name, t in named if opts is None else named + opts.named():
            if t is not None and t.dtype != x.dtype:
                raise ValueError(f"{name}: expected dtype {x.dtype} (the input's), got {t.dtype}")
        gains_shifts = opts.gains_shifts() if opts is not None else ()
        save = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh, *gains_shifts)
        )
        half = half_mode(x) is True
        if lengths is not None:
            # the backward reads it: its own copy, as the caller may refill theirs before backward()
            lengths = lengths.to(dtype=torch.int64, memory_format=torch.contiguous_format, copy=save)
        # (the step kernels run plain float32/float64 calls: no options, no bfloat16 mode)
        if opts is None and not half and self.short(spec, x.shape[0], x.shape[1], h0.shape[-1]):
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
            half,
        )
        if opts is None:
            return _Layer.apply(*args) if save else _forward(None, *args)
        if save:
            masks = (opts.h_mask, opts.zeta, opts.resets)
            tail = (lengths, *masks, spec, reset_after, True, half, opts.zo_p)
            return _LayerOptions.apply(*args[:6], *gains_shifts, *tail)  # type: ignore[no-any-return]
        return _forward(None, *args, opts)

    def short(self, spec: Spec, steps: int, batch: int, hid: int) -> bool:
        """Whether a layer call of this size runs the one-call step kernels (:mod:`._step`): at most
        ``SHORT_MAX_STEPS`` steps, and rows that the long form would not split across threads
        (where it would, its threads pay off; docs/step.md, "Dispatch")."""
        if steps > _step().SHORT_MAX_STEPS:
            return False
        hhw = spec.hh_blocks() * hid
        small = _small(spec.candidate_reads_h, batch, hid, hhw)
        return len(row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))) == 1

    # the options a cell's step runs (GRUCell's engine="auto" picks this engine only with these):
    # zoneout acts after the step (GRUCell applies the reference's carry to the step's output);
    # layer norm acts inside it, which the step kernels do not run
    cell_options: tuple[str, ...] = ("zoneout",)

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
        if why is None and half_mode(x) is True:
            why = "a cell's step runs float32 and float64 (no bfloat16 mode); engine='reference' runs it"
        if why is not None:
            raise RuntimeError(f"engine='fused' cannot run here: {why}")
        return _step().cell(spec, reset_after, x, h, w_ih, w_hh, b_ih, b_hh)


def _step() -> Any:
    """:mod:`gatedrnn._engines._step` (imported on first use, as the kernels)."""
    from . import _step

    return _step


ENGINE = FusedEngine()
