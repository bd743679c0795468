"""The fused engine's buffers: per-thread scratch for one call's temporaries, and a pool for what
a forward saves for its backward.

Large fresh allocations page-fault on first touch (glibc serves those above 32 MiB with a new
mmap), which can cost as much as the compiled loop itself; both kinds of buffer are therefore kept
and reused (figures in docs/fused.md, "Tuning constants"). :func:`empty_cache` hands them back.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NP_DTYPE",
    "cached_bytes",
    "carve",
    "carved_size",
    "clear_saved_pool",
    "empty_cache",
    "saved_buffer",
    "saved_pool_bytes",
    "scratch",
    "unused",
    "zeros",
]

NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}

_ZEROS: dict[tuple[type, int], np.ndarray] = {}


def zeros(dt: type, n: int) -> np.ndarray:
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


def unused(dt: type, ndim: int) -> np.ndarray:
    """A shared ``[1, ..., 1]`` stand-in for a kernel argument its flags say it never touches."""
    a = _UNUSED.get((dt, ndim))
    if a is None:
        a = _UNUSED[(dt, ndim)] = np.zeros((1,) * ndim, dt)
    return a


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, np.ndarray]:
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


def carve(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Consecutive C-contiguous views of ``flat`` with these shapes (``flat`` holds
    ``carved_size(shapes)`` elements)."""
    out, at = [], 0
    for shape in shapes:
        out.append(flat[at : at + math.prod(shape)].reshape(shape))
        at += _padded(shape)
    return out


def carved_size(shapes: list[tuple[int, ...]]) -> int:
    return sum(_padded(s) for s in shapes)


# What a forward saves for its backward (states, gates, candidates: [T, B, ~6H]) outlives the call,
# so it cannot be per-thread scratch. Buffers from SAVED_POOL_MIN_BYTES up come from a pool of NumPy
# arrays, wrapped for each call by torch.from_numpy: the tensor's storage holds a reference to its
# array, so an array that only the pool refers to is free (autograd has released what it saved).
# A call takes the smallest free array that fits, up to twice its size (packed batches change
# their longest sequence); at most SAVED_POOL_MAX_BYTES of free arrays are kept, oldest dropped
# first. Why: a fresh large buffer page-faults on first touch (docs/fused.md, "Tuning constants").
SAVED_POOL_MIN_BYTES = int(os.environ.get("GATEDRNN_SAVED_POOL_MIN_BYTES", 8 << 20))
SAVED_POOL_MAX_BYTES = int(os.environ.get("GATEDRNN_SAVED_POOL_MAX_BYTES", 512 << 20))

_SAVED: list[np.ndarray] = []  # lent and free arrays, oldest first
_SAVED_LOCK = threading.Lock()


def _is_free(i: int) -> bool:
    # two references: the pool's and getrefcount's argument (a lent array also has its tensor's
    # storage, or views carved from it, referring to it)
    return sys.getrefcount(_SAVED[i]) == 2


def saved_buffer(numel: int, dtype: torch.dtype) -> tuple[np.ndarray, Tensor]:
    """A flat buffer of ``numel`` elements for what a forward saves, as ``(array, tensor)`` over
    the same memory (save the tensor). Pooled from ``SAVED_POOL_MIN_BYTES`` up; below, fresh
    (small ones come from malloc's heap, which does not page-fault)."""
    if numel * dtype.itemsize < SAVED_POOL_MIN_BYTES:
        t = torch.empty(numel, dtype=dtype)
        return t.numpy(), t
    dt = NP_DTYPE[dtype]
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
