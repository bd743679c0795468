"""The fused CPU engine: one autograd Function per layer and direction, compiled time loops.

Forward: the input projection of every step as one matrix product (the biases that can be folded
are folded into it; gates that do not read ``x`` skip it), then the compiled loop of
:mod:`gatedrnn._engines._kernels` (one BLAS call per step on the recurrent weights, two dependent
ones for the reset-before form, and one fused elementwise pass). It saves the states, the gate
activations, the candidates and, for the reset-after form, the pre-reset recurrent term.

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
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._specs import Spec

__all__ = ["ENGINE", "FusedEngine"]


def _np(t: Tensor) -> Any:
    return t.detach().numpy()


def _kernel_for(spec: Spec, reset_after: bool, dtype: torch.dtype):
    from ._kernels import kernels

    return kernels(
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
    from ._kernels import blas

    s, d, _ = blas()
    return s if dtype == torch.float32 else d


def _biases(
    spec: Spec, reset_after: bool, b_ih: Tensor | None, b_hh: Tensor | None, hid: int, like: Tensor
) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(projection bias [ihb*H] or None, gates' constant pre-activation [G*H], b_hn [H])``."""
    gh = spec.num_gates * hid
    gbias = b_ih[:gh] if (b_ih is not None and spec.gates_have_bias) else None
    if b_hh is not None and spec.torch_hh_bias and reset_after:
        gbias = b_hh[:gh] if gbias is None else gbias + b_hh[:gh]
    nbias = b_ih[-hid:] if b_ih is not None else None
    if reset_after and spec.has_reset and b_hh is not None:
        bhn = b_hh[-hid:].contiguous()
    else:
        bhn = like.new_zeros(hid)
    if spec.gates_read_x:
        if gbias is None and nbias is None:
            pbias = None
        else:
            pbias = torch.cat(
                [
                    gbias if gbias is not None else like.new_zeros(gh),
                    nbias if nbias is not None else like.new_zeros(hid),
                ]
            )
        gb = like.new_zeros(gh)
    else:
        pbias = nbias
        gb = gbias.contiguous() if gbias is not None else like.new_zeros(gh)
    return pbias, gb, bhn


_POOL = threading.local()
_UNUSED: dict[tuple[torch.dtype, int], Tensor] = {}


def _unused(like: Tensor, ndim: int, dtype: torch.dtype | None = None) -> Tensor:
    """A shared ``[1, ..., 1]`` stand-in for a kernel argument its flags say it never touches."""
    key = (dtype or like.dtype, ndim)
    t = _UNUSED.get(key)
    if t is None:
        t = _UNUSED[key] = torch.zeros((1,) * ndim, dtype=key[0])
    return t


def _scratch(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A reused (per thread) buffer for temporaries that do not outlive one call: large fresh
    allocations page-fault on first touch, which costs as much as the loop itself."""
    pool = getattr(_POOL, "bufs", None)
    if pool is None:
        pool = _POOL.bufs = {}
    buf = pool.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_empty(shape)
        pool[name] = buf  # only the last shape per name is kept
    return buf


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


def _small(reset_after: bool, batch: int, hid: int, hhw: int) -> bool:
    """Whether the forward's per-step product runs as the kernel's own loop instead of BLAS: a few
    rows, and a product too small for multi-threaded BLAS (see ``_kernels.SMALL_MAX_BATCH``)."""
    from ._kernels import SMALL_MAX_BATCH

    return reset_after and batch <= SMALL_MAX_BATCH and 2 * batch * hid * hhw < PARALLEL_MIN_FLOPS


@contextmanager
def _blas_threads(step_flops: int) -> Iterator[None]:
    """Run the compiled loop's BLAS calls on one thread when the per-step products are small."""
    from ._kernels import mkl_local_threads

    setter = mkl_local_threads() if step_flops < PARALLEL_MIN_FLOPS and torch.get_num_threads() > 1 else None
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
    from ._kernels import mkl_local_threads

    k = min(torch.get_num_threads(), batch // max(SPLIT_MIN_ROWS, 1))
    if k <= 1 or small or loop_flops < SPLIT_MIN_FLOPS or mkl_local_threads() is None or openmp() is None:
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
    from ._kernels import mkl_local_threads

    omp = openmp()
    setter = mkl_local_threads()
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


class _Layer(torch.autograd.Function):
    """One layer, one direction, forward in time (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, reset_after, save):  # type: ignore[override]
        steps, batch, _ = x.shape
        hid = h0.shape[-1]
        ra = bool(reset_after and spec.has_reset)
        ng = spec.num_gates * hid
        hhw = spec.hh_blocks() * hid
        with torch.no_grad():
            x2 = x.detach().reshape(steps * batch, -1)
            pbias, gb, bhn = _biases(spec, ra, b_ih, b_hh, hid, x)
            xp = _scratch("xp", (steps * batch, w_ih.shape[0]), x)
            if pbias is None:
                torch.mm(x2, w_ih.detach().t(), out=xp)
            else:
                torch.addmm(pbias.detach(), x2, w_ih.detach().t(), out=xp)
            xp = xp.view(steps, batch, -1)
            whh = w_hh.detach().contiguous() if w_hh is not None else x.new_zeros(1, 1)
            lens = lengths if lengths is not None else torch.full((batch,), steps, dtype=torch.int64)
            # saved for the backward, or (inference) reused scratch
            if save:
                hs = x.new_empty(steps + 1, batch, hid)
                gs = x.new_empty(steps, batch, ng)
                ns = x.new_empty(steps, batch, hid)
                hn = x.new_empty(steps, batch, hid) if ra else x.new_zeros(1, batch, hid)
            else:
                hs = x.new_empty(steps + 1, batch, hid)
                gs = _scratch("gs", (steps, batch, ng), x)
                ns = _scratch("ns", (steps, batch, hid), x)
                hn = _scratch("hn", (steps if ra else 1, batch, hid), x)
            hs[0] = h0
            # The outputs are their own tensor (not a view of the saved states): like torch.nn.GRU's,
            # they may be modified in place (e.g. ReLU(inplace=True)) without touching the saves.
            copy_y = True
            y = x.new_empty(steps, batch, hid)
            work = x.new_zeros(batch, hhw)
            small = _small(ra, batch, hid, hhw)
            whh_t = whh.t().contiguous() if small else _unused(x, 2)
            fwd, _ = _kernel_for(spec, ra, x.dtype)
            args = (
                _gemm_address(x.dtype),
                _np(xp),
                _np(gb.detach()),
                _np(whh),
                _np(whh_t),
                _np(bhn.detach()),
                _np(lens),
                _np(hs),
                _np(y),
                _np(gs),
                _np(ns),
                _np(hn),
                _np(work),
                copy_y,
                small,
            )
            ranges = _row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
            _run_rows(lambda _, b0, b1: fwd(*args, b0, b1), ranges, 2 * batch * hid * hhw)
        ctx.spec, ctx.ra, ctx.has_bhh = spec, ra, b_hh is not None
        ctx.save_for_backward(x, w_ih, whh, lens, hs, gs, ns, hn)
        return y, hs[steps].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, ghn):  # type: ignore[override]
        x, w_ih, whh, lens, hs, gs, ns, hn = ctx.saved_tensors
        spec: Spec = ctx.spec
        ra: bool = ctx.ra
        steps, batch, inp = x.shape
        hid = hs.shape[-1]
        ng = spec.num_gates * hid
        ihw = spec.ih_blocks() * hid
        hhw = spec.hh_blocks() * hid
        gy = gy.contiguous() if gy is not None else x.new_zeros(steps, batch, hid)
        ghn = ghn.contiguous() if ghn is not None else x.new_zeros(batch, hid)
        need = ctx.needs_input_grad
        # A few input features: dx and dW_ih are folded into the loop, and dgx is one step's scratch.
        fold = inp <= FOLD_MAX_INPUT
        dgx = _scratch("dgx", (1 if fold else steps, batch, ihw), x)
        dgh = _scratch("dgh", (steps, batch, hhw), x)
        ranges = _row_ranges(batch, False, 2 * steps * batch * hid * max(hhw, hid))
        # accumulated per concurrent call (a row each), summed below
        dgbs = x.new_zeros(len(ranges), ng)
        fold_dx, fold_dw = bool(fold and need[0]), bool(fold and need[2])
        dxo = x.new_empty(steps, batch, inp) if fold_dx else _unused(x, 3)
        dwihs = x.new_zeros(len(ranges), inp, ihw, dtype=torch.float64) if fold_dw else _unused(x, 3, torch.float64)
        wih_t = w_ih.detach().t().contiguous() if fold_dx else _unused(x, 2)
        sums = bool(need[4] or need[5])
        dbxs = x.new_zeros(len(ranges), ihw, dtype=torch.float64)  # float64 sums: T*B terms
        dbhs = x.new_zeros(len(ranges), hhw, dtype=torch.float64)
        two_gemm = spec.candidate_reads_h and not ra
        qs = _scratch("qs", (steps, batch, hid), x) if two_gemm else _unused(x, 3)
        dh0 = x.new_empty(batch, hid)
        dh = x.new_empty(batch, hid)
        dhp = x.new_empty(batch, hid)
        dzs = x.new_empty(batch, hid)
        _, bwd = _kernel_for(spec, ra, x.dtype)
        args = (_gemm_address(x.dtype), _np(gy), _np(ghn), _np(whh), _np(lens), _np(hs), _np(gs), _np(ns), _np(hn))
        outs = (_np(dgx), _np(dgh))
        rest = (_np(qs), _np(dh0), _np(dh), _np(dhp), _np(dzs))
        dgbn, dbxn, dbhn, dwihn = _np(dgbs), _np(dbxs), _np(dbhs), _np(dwihs)
        folded = (_np(x), _np(wih_t), _np(dxo))

        def run(i: int, b0: int, b1: int) -> None:
            sums_i = (dbxn[i], dbhn[i], sums)
            bwd(*args, *outs, dgbn[i], *rest, *sums_i, *folded, dwihn[i if fold_dw else 0], fold_dx, fold_dw, b0, b1)

        _run_rows(run, ranges, 2 * batch * hid * hhw)
        dgb = dgbs.sum(0)
        dbx, dbh = dbxs.sum(0).to(x.dtype), dbhs.sum(0).to(x.dtype)
        if fold:
            dx = dxo if need[0] else None
            dw_ih = dwihs.sum(0).t().to(x.dtype) if need[2] else None
        else:
            dgx2 = dgx.view(steps * batch, ihw)
            dx = (dgx2 @ w_ih).view(steps, batch, inp) if need[0] else None
            dw_ih = dgx2.t() @ x.reshape(steps * batch, inp) if need[2] else None
        dh0 = dh0 if need[1] else None
        dw_hh = None
        if need[3]:
            dgh2 = dgh.view(steps * batch, hhw)
            hprev = hs[:-1].reshape(steps * batch, hid)
            if two_gemm:
                dw_hh = x.new_empty(hhw, hid)
                if spec.gates_read_h:
                    torch.mm(dgh2[:, :ng].t(), hprev, out=dw_hh[:ng])
                torch.mm(dgh2[:, hhw - hid :].t(), qs.view(steps * batch, hid), out=dw_hh[hhw - hid :])
            else:
                dw_hh = dgh2.t() @ hprev
        db_ih = db_hh = None
        if sums:
            if spec.gates_read_x:
                dgate = dbx[:ng]
            elif spec.gates_read_h:
                dgate = dbh[:ng]
            else:
                dgate = dgb
            if need[4]:
                dn = dbx[ihw - hid :]
                db_ih = torch.cat([dgate, dn]) if spec.gates_have_bias else dn
            if need[5]:
                if ra:
                    dbhn = dbh[hhw - hid :]
                    db_hh = torch.cat([dgate, dbhn]) if spec.torch_hh_bias else dbhn
                else:
                    db_hh = None
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None


class FusedEngine:
    """Compiled CPU loops (numba) with hand-written backpropagation through time."""

    name = "fused"

    def unavailable(self, spec: Spec, x: Tensor) -> str | None:
        if x.device.type != "cpu":
            return f"it runs on CPU tensors, got a tensor on {x.device}"
        if x.dtype not in (torch.float32, torch.float64):
            return f"it runs float32 and float64, got {x.dtype}"
        try:
            import numba  # noqa: F401
        except ImportError as e:  # pragma: no cover - numba is a dependency
            return f"numba cannot be imported ({e})"
        try:
            from ._kernels import blas

            blas()
        except RuntimeError as e:  # pragma: no cover - depends on the install
            return str(e)
        return None

    def details(self) -> dict[str, Any]:
        import numba

        from ._kernels import blas, mkl_local_threads

        omp = openmp()
        split = (
            f"batch rows split across torch's threads (>= {SPLIT_MIN_ROWS} rows each, loops of >= "
            f"{SPLIT_MIN_FLOPS / 1e6:g} MFLOP; OpenMP {omp[3]})"
            if omp is not None and mkl_local_threads() is not None
            else "off (needs torch's MKL and GNU OpenMP): the loop runs on one thread"
        )
        return {"blas": blas()[2], "numba": numba.__version__, "threads": split}

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
        return _Layer.apply(
            x.contiguous(),
            h0.contiguous(),
            w_ih.contiguous(),
            w_hh.contiguous() if w_hh is not None else None,
            b_ih,
            b_hh,
            lengths,
            spec,
            reset_after,
            save,
        )


ENGINE = FusedEngine()
