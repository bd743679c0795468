"""How the fused engine's compiled loops use the cores: BLAS threads per call, and the batch rows
split between torch's own OpenMP threads.

With several torch threads the batch rows are split between them: each thread runs the compiled
loop on its own rows (rows are independent through time) with one-thread BLAS, so the elementwise
passes run in parallel too and each small per-step product stays on one core. The threads are
torch's own OpenMP team (a ``GOMP_parallel`` region entered through ctypes): a second pool would
fight torch's OpenMP workers, which spin for milliseconds after each parallel op. Without torch's
GNU OpenMP (or MKL's thread-local setter) the loop runs whole. The thresholds below were tuned on
the benchmark's sizes: docs/fused.md, "Tuning constants".
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "PARALLEL_MIN_FLOPS",
    "SPLIT_MIN_FLOPS",
    "SPLIT_MIN_ROWS",
    "blas_threads",
    "openmp",
    "row_ranges",
    "run_rows",
]


def _mkl_local_threads() -> Callable[[int], int] | None:
    from ._kernels import mkl_local_threads  # imports numba: on first use only

    return mkl_local_threads()


# Per-step products smaller than this (flops) run BLAS on one thread: waking a second OpenMP
# thread for a tiny gemm costs more than it saves.
PARALLEL_MIN_FLOPS = int(os.environ.get("GATEDRNN_PARALLEL_MIN_FLOPS", 16_000_000))


@contextmanager
def blas_threads(step_flops: int) -> Iterator[None]:
    """Run the compiled loop's BLAS calls on one thread when the per-step products are small."""
    setter = _mkl_local_threads() if step_flops < PARALLEL_MIN_FLOPS and torch.get_num_threads() > 1 else None
    prev = setter(1) if setter is not None else None
    try:
        yield
    finally:
        if setter is not None and prev is not None:
            setter(prev)


# At least SPLIT_MIN_ROWS rows per thread, and a loop of at least SPLIT_MIN_FLOPS (recurrent
# product flops, 2*T*B*H*width): entering an OpenMP region costs tens of microseconds a call.
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


def row_ranges(batch: int, small: bool, loop_flops: int) -> list[tuple[int, int]]:
    """The batch row ranges ``[(b0, b1), ...]`` the compiled loop runs on, one per thread."""
    k = min(torch.get_num_threads(), batch // max(SPLIT_MIN_ROWS, 1))
    if k <= 1 or small or loop_flops < SPLIT_MIN_FLOPS or _mkl_local_threads() is None or openmp() is None:
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


def run_rows(run: Callable[[int, int, int], None], ranges: list[tuple[int, int]], step_flops: int) -> None:
    """``run(i, b0, b1)`` for every row range ``i``: one range in this thread (BLAS threads by the
    per-step product's size); several at once in an OpenMP region, one-thread BLAS each."""
    if len(ranges) == 1:
        with blas_threads(step_flops):
            run(0, *ranges[0])
        return
    omp = openmp()
    setter = _mkl_local_threads()
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
