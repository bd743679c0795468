"""The fused CPU engine: one autograd Function per layer and direction, compiled time loops.

Forward: the input projection of every step as one matrix product (the biases that can be folded
are folded into it; gates that do not read ``x`` skip it), then the compiled loop of
:mod:`gatedrnn._engines._kernels` (one BLAS call per step on the recurrent weights, two dependent
ones for the reset-before form, and one fused elementwise pass). It saves the states, the gate
activations (GRU3's, from the bias alone, once), the candidates and, for the reset-after form, the
pre-reset recurrent term (one flat buffer; large ones are reused from a pool once autograd lets go
of them, see ``SAVED_POOL_MIN_BYTES``). Without gradients nothing is saved: the gates, candidates
and pre-reset terms are one step's scratch rows, and (without lengths) the states are written
into the outputs' memory (forward 1-8% faster, and 2.6x less scratch kept between calls, than
``[T, B, X]`` scratch).

With several torch threads the batch rows are split between torch's OpenMP threads, each running
the loop on its rows (see ``SPLIT_MIN_ROWS``).

Backward: the compiled reverse loop (one BLAS call per step) produces the gradients of the
projection and of the recurrent products for every step, and sums them into the bias gradients
as it goes; the weight gradients are then single matrix products over all steps, in torch. No
Python runs per time step.

minGRU has no recurrent weights: the same loops with no per-step product, forward and backward.
Its log-space parallel scan is the separate engine ``"scan"`` (:mod:`gatedrnn._engines._scan`).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _reference
from .._specs import Spec
from . import recording
from ._second_order import first_order

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
    return _k().kernels(
        spec.gates_read_x,
        spec.gates_read_h,
        spec.num_gates == 2,
        spec.coupled,
        spec.candidate_reads_h,
        spec.candidate_tanh,
        bool(reset_after and spec.has_reset),
        dtype == torch.float32,
    )


def _gemm_address(dtype: torch.dtype) -> int:
    s, d, _ = _k().blas()
    return s if dtype == torch.float32 else d


def _biases(
    spec: Spec, reset_after: bool, b_ih: np.ndarray | None, b_hh: np.ndarray | None, hid: int, dt: type
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(projection bias [ihb*H] or None, gates' constant pre-activation [G*H], b_hn [H])``.

    NumPy views of the parameters in, NumPy out: this glue runs on every call, and NumPy's
    small-array operations cost a tenth of torch's. The constant zero vectors are shared (the
    kernels only read them).
    """
    gh = spec.num_gates * hid
    hh_gates = b_hh is not None and spec.torch_hh_bias and reset_after
    bhn = b_hh[-hid:] if (reset_after and spec.has_reset and b_hh is not None) else _zeros(dt, hid)
    if spec.gates_read_x and b_ih is not None and spec.gates_have_bias:
        # the common case (gru0, MGU): [b_i(gates) (+ b_h(gates)) | b_in], two operations
        pbias = b_ih.copy()
        if hh_gates:
            pbias[:gh] += b_hh[:gh]
        return pbias, _zeros(dt, gh), bhn
    gbias = b_ih[:gh] if (b_ih is not None and spec.gates_have_bias) else None
    if hh_gates:
        gbias = b_hh[:gh] if gbias is None else gbias + b_hh[:gh]
    nbias = b_ih[-hid:] if b_ih is not None else None
    if not spec.gates_read_x:
        return nbias, (gbias if gbias is not None else _zeros(dt, gh)), bhn
    if gbias is None and nbias is None:
        return None, _zeros(dt, gh), bhn
    pbias = np.empty(gh + hid, dt)
    pbias[:gh] = gbias if gbias is not None else 0.0
    pbias[gh:] = nbias if nbias is not None else 0.0
    return pbias, _zeros(dt, gh), bhn


_ZEROS: dict[tuple[type, int], np.ndarray] = {}


def _zeros(dt: type, n: int) -> np.ndarray:
    """A shared zero vector (callers and kernels only read it)."""
    a = _ZEROS.get((dt, n))
    if a is None:
        a = _ZEROS[(dt, n)] = np.zeros(n, dt)
    return a


class _Scratch(dict):  # type: ignore[type-arg]
    """One thread's scratch buffers by name: a dict that can be weakly referenced, and is hashed
    and compared by identity (for the WeakSet of every thread's)."""

    __hash__ = object.__hash__  # type: ignore[assignment]
    __eq__ = object.__eq__  # type: ignore[assignment]


_POOL = threading.local()
_SCRATCH_POOLS: weakref.WeakSet[_Scratch] = weakref.WeakSet()  # every live thread's, for empty_cache
_UNUSED: dict[tuple[type, int], np.ndarray] = {}
_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _unused(dt: type, ndim: int) -> np.ndarray:
    """A shared ``[1, ..., 1]`` stand-in for a kernel argument its flags say it never touches."""
    a = _UNUSED.get((dt, ndim))
    if a is None:
        a = _UNUSED[(dt, ndim)] = np.zeros((1,) * ndim, dt)
    return a


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, np.ndarray]:
    """A reused (per thread) buffer for temporaries that do not outlive one call, as a tensor and
    its NumPy view: large fresh allocations page-fault on first touch, which costs as much as the
    loop itself. One flat buffer per name that only grows: a smaller call (a shorter packed
    batch) takes views of its start, so batches whose longest sequence changes do not allocate."""
    pool = getattr(_POOL, "bufs", None)
    if pool is None:
        pool = _POOL.bufs = _Scratch()
        _SCRATCH_POOLS.add(pool)
    got = pool.get(name)  # (flat tensor, last shape, its tensor view, its array view)
    if got is not None and got[1] == shape and got[0].dtype == dtype:
        return got[2], got[3]
    n = math.prod(shape)
    # never an inference tensor (made under torch.inference_mode), nor a view made there: torch
    # refuses writes into those outside inference mode, and the buffer outlives the call
    with torch.inference_mode(False):
        if got is not None and got[0].dtype == dtype and got[0].numel() >= n:
            flat = got[0]
        else:
            flat = torch.empty(n, dtype=dtype)
        view = flat[:n].view(shape)
    got = pool[name] = (flat, shape, view, view.numpy())
    return got[2], got[3]


_ALIGN = 16  # elements: each carved buffer starts on a 64-byte boundary (float32)


def _padded(shape: tuple[int, ...]) -> int:
    """Elements a carved buffer of this shape takes, rounded up to the alignment."""
    return -(-math.prod(shape) // _ALIGN) * _ALIGN


def _carve(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Consecutive C-contiguous views of ``flat`` with these shapes (``flat`` holds
    ``_carved_size(shapes)`` elements)."""
    out, at = [], 0
    for shape in shapes:
        out.append(flat[at : at + math.prod(shape)].reshape(shape))
        at += _padded(shape)
    return out


def _carved_size(shapes: list[tuple[int, ...]]) -> int:
    return sum(_padded(s) for s in shapes)


# What a forward saves for its backward (states, gates, candidates: [T, B, ~6H]) is one flat buffer
# per layer and direction, and it outlives the call, so it cannot be per-thread scratch. Fresh,
# a large one page-faults on first touch: glibc serves allocations above 32 MiB with a new mmap,
# and a fresh 39 MiB float32 buffer (size C, H=256) costs 17.4 ms to fill against 1.7 ms reused.
# So buffers from SAVED_POOL_MIN_BYTES up come from a pool of NumPy arrays, wrapped for each call
# by torch.from_numpy: the tensor's storage holds a reference to its array, so an array that only
# the pool refers to is free (autograd has released what it saved: after the backward, or when
# the graph is dropped). A call takes the smallest free array that fits, up to twice its size
# (sequence lengths change from batch to batch with packed input). The pool keeps at most
# SAVED_POOL_MAX_BYTES of free arrays, oldest dropped first.
SAVED_POOL_MIN_BYTES = int(os.environ.get("GATEDRNN_SAVED_POOL_MIN_BYTES", 8 << 20))
SAVED_POOL_MAX_BYTES = int(os.environ.get("GATEDRNN_SAVED_POOL_MAX_BYTES", 512 << 20))

_SAVED: list[np.ndarray] = []  # lent and free arrays, oldest first
_SAVED_LOCK = threading.Lock()


def _is_free(i: int) -> bool:
    # two references: the pool's and getrefcount's argument (a lent array also has its tensor's
    # storage, or views carved from it, referring to it)
    return sys.getrefcount(_SAVED[i]) == 2


def _saved_buffer(numel: int, dtype: torch.dtype) -> tuple[np.ndarray, Tensor]:
    """A flat buffer of ``numel`` elements for what a forward saves, as ``(array, tensor)`` over
    the same memory (save the tensor). Pooled from ``SAVED_POOL_MIN_BYTES`` up; below, fresh
    (small ones come from malloc's heap, which does not page-fault)."""
    if numel * dtype.itemsize < SAVED_POOL_MIN_BYTES:
        t = torch.empty(numel, dtype=dtype)
        return t.numpy(), t
    dt = _NP_DTYPE[dtype]
    with _SAVED_LOCK:
        # the smallest free array that holds numel elements and is at most twice that: sequence
        # lengths that change from batch to batch (packed batches) still reuse arrays
        best = None
        for i in range(len(_SAVED)):
            size = _SAVED[i].size
            if numel <= size <= 2 * numel and _SAVED[i].dtype == dt and (best is None or size < _SAVED[best].size):
                if _is_free(i):
                    best = i
        found = _SAVED.pop(best) if best is not None else None
        if found is None:
            with torch.inference_mode(False):  # never an inference tensor (see _scratch)
                found = torch.empty(numel, dtype=dtype).numpy()  # 64-byte aligned
        _SAVED.append(found)
        free = [i for i in range(len(_SAVED)) if _is_free(i)]
        total = sum(_SAVED[i].nbytes for i in free)
        drop: set[int] = set()
        for i in free:  # oldest first
            if total <= SAVED_POOL_MAX_BYTES:
                break
            drop.add(i)
            total -= _SAVED[i].nbytes
        if drop:
            _SAVED[:] = [a for i, a in enumerate(_SAVED) if i not in drop]
    flat = found[:numel]
    with torch.inference_mode(False):
        return flat, torch.from_numpy(flat)


def saved_pool_bytes() -> tuple[int, int]:
    """``(free, lent)`` bytes of the saved-state pool."""
    with _SAVED_LOCK:
        free = sum(_SAVED[i].nbytes for i in range(len(_SAVED)) if _is_free(i))
        return free, sum(a.nbytes for a in _SAVED) - free


def clear_saved_pool() -> None:
    """Let go of the saved-state pool's arrays (lent ones are freed when autograd releases them)."""
    with _SAVED_LOCK:
        _SAVED.clear()


def cached_bytes() -> int:
    """Bytes the engine holds for reuse and no call is using: free arrays of the saved-state pool
    and every thread's scratch buffers."""
    scratch = sum(got[0].nbytes for pool in list(_SCRATCH_POOLS) for got in list(pool.values()))
    return saved_pool_bytes()[0] + scratch


def empty_cache() -> None:
    """Free what :func:`cached_bytes` counts (the next calls allocate afresh)."""
    clear_saved_pool()
    for pool in list(_SCRATCH_POOLS):
        pool.clear()


# Up to this many input features the backward loop also produces dx (a dot product per feature
# and row) and dW_ih (a scaled add per feature and row, float64) while each row of the projection
# gradient is in cache, and that gradient is never stored for all steps: with one feature
# (pixel-by-pixel MNIST, the adding problem, sine) dx and dW_ih are otherwise two memory-bound
# passes over a [T, B, 3H] buffer. Forward+backward, products after the loop -> folded, ms,
# (B,T,m,H): gru0 2 threads (32,784,1,128) 100 -> 79, (64,200,2,64) 21.1 -> 19.1, (16,500,4,128)
# 34.1 -> 31.9, but (32,100,8,128) 15.1 -> 15.7; 1 thread 143 -> 124, 27.6 -> 22.2, 50.4 -> 45.8.
FOLD_MAX_INPUT = int(os.environ.get("GATEDRNN_FOLD_MAX_INPUT", 4))


# Per-step products smaller than this (flops) run BLAS on one thread: waking a second OpenMP
# thread for a tiny gemm costs more than it saves (and far more on a loaded machine). Measured on
# 2 idle cores: size C's 25 MFLOP steps gain from 2 threads (gru0 fwd+bwd 176 -> 153 ms), sizes
# A, B (6 and 3 MFLOP) are within noise either way, D and E (< 0.4 MFLOP) lose.
PARALLEL_MIN_FLOPS = int(os.environ.get("GATEDRNN_PARALLEL_MIN_FLOPS", 16_000_000))


def _small(products: bool, batch: int, hid: int, hhw: int) -> bool:
    """Whether the per-step products run as the kernels' own loops instead of BLAS: a few rows,
    and products too small for multi-threaded BLAS (see ``_kernels.SMALL_MAX_BATCH``). The
    forward's loops also need enough steps (``SMALL_MIN_STEPS``)."""
    return products and batch <= _k().SMALL_MAX_BATCH and 2 * batch * hid * hhw < PARALLEL_MIN_FLOPS


# The forward's row loops read a transposed copy of W_hh, made on every call: torch transposes a
# [3H, H] float32 matrix in 14 us at H=64, 143 us at H=256, 582 us at H=512, while the loops save
# 0.8, 7.5 and about 25 us a step over MKL. Below this many steps the forward keeps BLAS (one-step
# streaming calls above all: B=1, H=512, T=1 took 4.8 ms with the copy, 0.3 ms for torch.nn.GRU).
# The backward's loops read W_hh as it is and need no copy.
SMALL_MIN_STEPS = int(os.environ.get("GATEDRNN_SMALL_MIN_STEPS", 16))


@contextmanager
def _blas_threads(step_flops: int) -> Iterator[None]:
    """Run the compiled loop's BLAS calls on one thread when the per-step products are small."""
    setter = _k().mkl_local_threads() if step_flops < PARALLEL_MIN_FLOPS and torch.get_num_threads() > 1 else None
    prev = setter(1) if setter is not None else None
    try:
        yield
    finally:
        if setter is not None and prev is not None:
            setter(prev)


# With several torch threads the batch rows are split between them: each thread runs the compiled
# loop on its own rows (rows are independent through time) with one-thread BLAS, so the elementwise
# passes run in parallel too and each small per-step product stays on one core. The threads are
# torch's own OpenMP team (a ``GOMP_parallel`` region entered through ctypes): a second pool would
# fight torch's OpenMP workers, which spin for milliseconds after each parallel op. gru0, 2 idle
# cores, forward+backward (ms, whole -> split): A 9.6 -> 6.3, B 115 -> 77, C 162 -> 147, D 6.8 -> 5.2.
# At least SPLIT_MIN_ROWS rows per thread, and a loop of at least SPLIT_MIN_FLOPS (recurrent
# product flops, 2*T*B*H*width): entering the region costs about 65 us a call, measured against
# the whole loop (gru0, fwd+bwd, us): (B,T,m,H) (32,10,32,32) 1.97 MFLOP 861 -> 954, (16,50,16,32)
# 4.9 MFLOP 1289 -> 1032, (64,8,64,64) 12.6 MFLOP 1867 -> 1868, (128,28,28,64) 10350 -> 7597.
# Without torch's libgomp the loop runs whole.
SPLIT_MIN_ROWS = int(os.environ.get("GATEDRNN_SPLIT_MIN_ROWS", 4))
SPLIT_MIN_FLOPS = int(os.environ.get("GATEDRNN_SPLIT_MIN_FLOPS", 4_000_000))

_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.lru_cache(maxsize=1)
def openmp() -> tuple[Any, Any, Any, str] | None:
    """``(GOMP_parallel, omp_get_thread_num, omp_get_num_threads, path)`` of the GNU OpenMP
    runtime torch has loaded (found in ``/proc/self/maps``; torch's own copy first where another
    one is loaded too, e.g. by numba's OpenMP layer), or None where there is none."""
    try:
        with open("/proc/self/maps") as f:
            found = {line.split()[-1] for line in f if "libgomp" in line and "/" in line}
    except OSError:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    paths = sorted(found, key=lambda p: (not p.startswith(torch_dir), p))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            par, tid, num = lib.GOMP_parallel, lib.omp_get_thread_num, lib.omp_get_num_threads
        except (OSError, AttributeError):
            continue
        par.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        par.restype = None
        tid.restype = num.restype = ctypes.c_int
        return par, tid, num, path
    return None


def _row_ranges(batch: int, small: bool, loop_flops: int) -> list[tuple[int, int]]:
    """The batch row ranges ``[(b0, b1), ...]`` the compiled loop runs on, one per thread."""
    k = min(torch.get_num_threads(), batch // max(SPLIT_MIN_ROWS, 1))
    if k <= 1 or small or loop_flops < SPLIT_MIN_FLOPS or _k().mkl_local_threads() is None or openmp() is None:
        return [(0, batch)]
    cuts = [(i * batch) // k for i in range(k + 1)]
    return list(itertools.pairwise(cuts))


# The regions in flight: GOMP_parallel hands each thread the key of its job. One ctypes callback
# for all regions, made once: a callback made per call (a closure over the job) sits in a
# reference cycle with its thunk, so every buffer the job refers to (the saved tensors among
# them) would live until the garbage collector ran, and each step would allocate afresh.
_JOBS: dict[int, tuple[Any, ...]] = {}
_JOB_KEYS = itertools.count(1)


def _region_body(key: int | None) -> None:
    """One thread of a region: run its row ranges (``i`` = thread number, stepping by the team
    size, so a smaller team than asked for, as inside another OpenMP region, still runs all)."""
    run, ranges, errors, setter, thread_num, num_threads = _JOBS[int(key or 0)]
    prev = setter(1)
    try:
        for i in range(thread_num(), len(ranges), max(num_threads(), 1)):
            run(i, *ranges[i])
    except BaseException as e:  # re-raised in the calling thread
        errors.append(e)
    finally:
        setter(prev)


@functools.lru_cache(maxsize=1)
def _region_callback() -> Any:
    return _BODY(_region_body)


def _run_rows(run: Callable[[int, int, int], None], ranges: list[tuple[int, int]], step_flops: int) -> None:
    """``run(i, b0, b1)`` for every row range ``i``: one range in this thread (BLAS threads by the
    per-step product's size); several at once in an OpenMP region, one-thread BLAS each."""
    if len(ranges) == 1:
        with _blas_threads(step_flops):
            run(0, *ranges[0])
        return
    omp = openmp()
    setter = _k().mkl_local_threads()
    assert omp is not None and setter is not None  # _row_ranges splits only with both
    parallel, thread_num, num_threads, _ = omp
    errors: list[BaseException] = []
    key = next(_JOB_KEYS)
    _JOBS[key] = (run, ranges, errors, setter, thread_num, num_threads)
    try:
        parallel(ctypes.cast(_region_callback(), ctypes.c_void_p), key, len(ranges), 0)
    finally:
        del _JOBS[key]
    if errors:
        raise errors[0]


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
    dt = _NP_DTYPE[x.dtype]
    pbias, gb, bhn = _biases(
        spec, ra, _np(b_ih) if b_ih is not None else None, _np(b_hh) if b_hh is not None else None, hid, dt
    )
    whh = _np(w_hh) if w_hh is not None else _unused(dt, 2)
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
        flat, flat_t = _saved_buffer(_carved_size(shapes), x.dtype)
        hs, gs, ns, hn = _carve(flat, shapes)
        # The outputs are their own tensor (not a view of the saved states): like torch.nn.GRU's,
        # they may be modified in place (e.g. ReLU(inplace=True)) without touching the saves.
        y_t = torch.empty((steps, batch, hid), dtype=x.dtype)
    else:
        # inference: gates, candidates and pre-reset terms are one step's scratch rows, and
        # without lengths the states are written straight into the outputs' memory
        shapes = [(1, 1, ng) if gconst else (1, batch, ng), (1, batch, hid), (1, batch, hid)]
        gs, ns, hn = (_scratch(n, s, x.dtype)[1] for n, s in zip(("gs", "ns", "hn"), shapes, strict=True))
        if lengths is None:
            states = torch.empty((steps + 1, batch, hid), dtype=x.dtype)
            hs, y_t, copy_y = states.numpy(), states[1:], False
        else:
            hs = _scratch("hs", (steps + 1, batch, hid), x.dtype)[1]
            y_t = torch.empty((steps, batch, hid), dtype=x.dtype)
    xp_t, xp = _scratch("xp", (steps * batch, ihw), x.dtype)
    x2, w_t = x.view(steps * batch, -1), w_ih.t()
    if pbias is None:
        torch.mm(x2, w_t, out=xp_t)
    else:
        torch.addmm(torch.from_numpy(pbias), x2, w_t, out=xp_t)
    xp = xp.reshape(steps, batch, ihw)
    hs[0] = _np(h0)
    work = _scratch("work", (batch, hhw), x.dtype)[1]
    small = _small(spec.candidate_reads_h, batch, hid, hhw)  # the backward's
    small_f = small and steps >= SMALL_MIN_STEPS
    whh_t = w_hh.detach().t().contiguous().numpy() if small_f else _unused(dt, 2)
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
        y_t.numpy() if copy_y else _unused(dt, 3),
        gs,
        ns,
        hn,
        work,
        copy_y,
        small_f,
    )
    ranges = _row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    _run_rows(lambda _, b0, b1: fwd(*args, b0, b1), ranges, 2 * batch * hid * hhw)
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


def _backward(ctx, saved, gy, ghn):  # type: ignore[no-untyped-def]
    """The backward of :class:`_Layer`: gradients for (x, h0, w_ih, w_hh, b_ih, b_hh). It runs with
    grad mode off (see :func:`first_order`); ``gy``/``ghn`` reach the kernels through ``_np``.
    ``saved``: ``ctx.saved_tensors``, unpacked once by the caller."""
    x, w_ih, w_hh, flat_t = saved[:4]
    spec: Spec = ctx.spec
    ra: bool = ctx.ra
    lens = ctx.lens
    hs, gs, ns, hn = _carve(flat_t.numpy(), ctx.shapes)
    steps, batch, inp = x.shape
    hid = hs.shape[-1]
    ng = spec.num_gates * hid
    ihw = spec.ih_blocks() * hid
    hhw = spec.hh_blocks() * hid
    dtype, dt = x.dtype, _NP_DTYPE[x.dtype]
    gy_n = _np(gy.contiguous()) if gy is not None else np.zeros((steps, batch, hid), dt)
    ghn_n = _np(ghn.contiguous()) if ghn is not None else np.zeros((batch, hid), dt)
    whh = _np(w_hh) if w_hh is not None else _unused(dt, 2)
    need = ctx.needs_input_grad
    # A few input features: dx and dW_ih are folded into the loop, and dgx is one step's scratch.
    fold = inp <= FOLD_MAX_INPUT
    # in the forward's projection scratch (the same shape, and dead once a forward has returned:
    # one buffer less at the peak of a training step, e.g. 19 MiB at T=100, B=64, 3H=768)
    dgx_t, dgx = _scratch("xp", ((1 if fold else steps) * batch, ihw), dtype)
    dgx = dgx.reshape(-1, batch, ihw)
    dgh_t, dgh = _scratch("dgh", (steps, batch, hhw), dtype)
    small: bool = ctx.small
    ranges = _row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    # accumulated per concurrent call (a row each), summed below
    nr = len(ranges)
    dgbs = np.zeros((nr, ng), dt)
    fold_dx, fold_dw = bool(fold and need[0]), bool(fold and need[2])
    dx_t = torch.empty((steps, batch, inp), dtype=dtype) if fold_dx else None
    dxo = dx_t.numpy() if dx_t is not None else _unused(dt, 3)
    dwihs = np.zeros((nr, inp, ihw)) if fold_dw else _unused(np.float64, 3)
    wih_t = np.ascontiguousarray(_np(w_ih).T) if fold_dx else _unused(dt, 2)
    xin = _np(x) if fold_dw else _unused(dt, 3)
    sums = bool(need[4] or need[5])
    dbxs = np.zeros((nr, ihw))  # float64 sums: T*B terms
    dbhs = np.zeros((nr, hhw))
    two_gemm = spec.candidate_reads_h and not ra
    qs_t, qs = _scratch("qs", (steps, batch, hid), dtype) if two_gemm else (None, _unused(dt, 3))
    dh0_t = torch.empty((batch, hid), dtype=dtype)
    dh, dhp, dzs = (_scratch(n, (batch, hid), dtype)[1] for n in ("dh", "dhp", "dzs"))
    _, bwd = _kernel_for(spec, ra, dtype)
    args = (_gemm_address(dtype), gy_n, ghn_n, whh, lens, hs, gs, ns, hn, dgx, dgh)
    rest = (qs, dh0_t.numpy(), dh, dhp, dzs)

    def run(i: int, b0: int, b1: int) -> None:
        sums_i = (dbxs[i], dbhs[i], sums, xin, wih_t, dxo, dwihs[i if fold_dw else 0], fold_dx, fold_dw, small)
        bwd(*args, dgbs[i], *rest, *sums_i, b0, b1)

    _run_rows(run, ranges, 2 * batch * hid * hhw)
    if fold:
        dx = dx_t if need[0] else None
        dw_ih = torch.from_numpy(np.ascontiguousarray(dwihs.sum(0).T, dtype=dt)) if need[2] else None
    else:
        dgx2 = dgx_t.view(steps * batch, ihw)
        dx = (dgx2 @ w_ih).view(steps, batch, inp) if need[0] else None  # (grad mode is off: see first_order)
        dw_ih = dgx2.t() @ x.view(steps * batch, inp) if need[2] else None
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
        if need[4]:
            dn = dbx[ihw - hid :]
            db_ih = torch.from_numpy(np.concatenate([dgate, dn], dtype=dt) if spec.gates_have_bias else dn.astype(dt))
        if need[5] and ra:
            dbhn = dbh[hhw - hid :]
            db_hh = torch.from_numpy(np.concatenate([dgate, dbhn], dtype=dt) if spec.torch_hh_bias else dbhn.astype(dt))
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

    def unavailable(self, spec: Spec, x: Tensor) -> str | None:
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
    ) -> tuple[Tensor, Tensor]:
        why = self.unavailable(spec, x)
        if why is not None:
            raise RuntimeError(f"engine='fused' cannot run here: {why}")
        for name, t in (("h0", h0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
            if t is not None and t.dtype != x.dtype:
                raise ValueError(f"{name}: expected dtype {x.dtype} (the input's), got {t.dtype}")
        if lengths is not None:
            lengths = lengths.to(torch.int64).contiguous()
        save = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh)
        )
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


ENGINE = FusedEngine()
