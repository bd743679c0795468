"""The fused engine's compiled loops (numba, nopython, ``cache=True``): one kernel for the family.

A variant's wiring (:class:`gatedrnn._specs.Wiring`, the switches the Triton kernels take too)
enters as compile-time switches (closure constants of :func:`kernels`), never as branches in the
inner loop; inside the loops they have short names:

* ``gx`` (``gates_read_x``): the gates read ``x`` (their input-side pre-activation comes from the
  projection ``xp``); otherwise they read a constant vector ``gb`` (their bias, or zeros).
* ``gh`` (``gates_read_h``): the gates read ``h(t-1)`` (a block of the recurrent matrix product).
* ``two`` (``gates == 2``): two gates ``r, z`` (else one gate: MGU's ``f`` if ``coupled``, minGRU's ``z``).
* ``cand_h`` (``cand_reads_h``): the candidate reads ``h(t-1)`` (False for minGRU: no matrix product).
* ``tanh`` (``cand_tanh``): the candidate goes through ``tanh``.
* ``reset_after``: ``n = tanh(W_n x + b_in + r*(U_n h + b_hn))``; else ``tanh(W_n x + U_n (r*h) + b_n)``.
* ``fast`` (the data type, not the wiring): float32 activations as a rational ``tanh`` that vectorises (numba's ``np.tanh`` and
  ``np.exp`` are scalar library calls without SVML); float64 uses ``np.tanh``/``np.exp``.

Per time step the forward does one BLAS ``gemm`` on the recurrent weights (two dependent ones
for the reset-before form) and one fused elementwise pass; the backward the same in reverse.
BLAS is called from inside the compiled loop through a function address passed as an argument
(torch's own MKL ``sgemm_``/``dgemm_`` when libtorch exports them, else SciPy's ``cython_blas``),
so the compiled code holds no process-specific address and can be cached.

Row-major arrays are handed to column-major BLAS as their transposes: ``C[B, N] = A[B, K] @ W[N, K]^T``
is ``gemm('T', 'N', N, B, K, W, K, A, lda_A, C, ldc)`` and ``C[B, H] += D[B, N] @ W[N, H]`` is
``gemm('N', 'N', H, B, N, W, H, D, ldd, C, H)``.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic, overload

from .._specs import Wiring

__all__ = [
    "SMALL_MAX_BATCH",
    "blas",
    "floor_nn",
    "floor_nt",
    "kernels",
    "mkl_local_threads",
    "saved_size",
    "step_kernels",
]

_JIT = {"cache": True, "error_model": "numpy", "nogil": True, "fastmath": {"contract"}}
_LOOP_JIT = {k: v for k, v in _JIT.items() if k != "cache"}  # compiled into the kernels that call them


# --------------------------------------------------------------------------------------------- BLAS
@functools.lru_cache(maxsize=1)
def blas() -> tuple[int, int, str]:
    """``(sgemm address, dgemm address, description)`` of the Fortran BLAS the kernels call.

    torch's own MKL when ``libtorch_cpu`` exports ``sgemm_``/``dgemm_`` (its threads follow
    ``torch.set_num_threads``), else SciPy's ``scipy.linalg.cython_blas``. Raises if neither.
    """
    import torch

    lib_path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(lib_path)
        s = ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
        d = ctypes.cast(lib.dgemm_, ctypes.c_void_p).value
        if s and d:
            return int(s), int(d), "torch MKL (sgemm_/dgemm_ exported by libtorch_cpu)"
    except (OSError, AttributeError):
        pass
    try:
        from numba.extending import get_cython_function_address

        s = get_cython_function_address("scipy.linalg.cython_blas", "sgemm")
        d = get_cython_function_address("scipy.linalg.cython_blas", "dgemm")
        return int(s), int(d), "scipy.linalg.cython_blas"
    except Exception as e:  # pragma: no cover - depends on the install
        raise RuntimeError(f"no BLAS found: libtorch_cpu exports no sgemm_ and scipy's cython_blas failed ({e})") from e


@functools.lru_cache(maxsize=1)
def mkl_local_threads() -> Callable[[int], int] | None:
    """MKL's ``MKL_Set_Num_Threads_Local`` (thread-local, returns the previous value; 0 = global)
    when the kernels call torch's MKL and libtorch exports it, else None."""
    if not blas()[2].startswith("torch MKL"):
        return None
    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        fn = lib.MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@intrinsic
def _fcall13(typingctx, fptr, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12):
    """Call the Fortran routine at address ``fptr`` with the data pointers of 13 arrays."""
    arrays = (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12)
    if not isinstance(fptr, types.Integer) or not all(isinstance(a, types.Array) for a in arrays):
        return None
    sig = types.void(fptr, *arrays)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        ptrs = []
        for ty, val in zip(signature.args[1:], args[1:], strict=True):
            ary = context.make_array(ty)(context, builder, val)
            ptrs.append(builder.bitcast(ary.data, i8p))
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, ptrs)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", **_JIT)
def _gemm(fptr, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, iw, sw, cw):
    """Column-major ``C = alpha * op(A) @ op(B) + beta * C`` (Fortran ``?gemm``).

    ``ta``/``tb``: 0 for 'N', 1 for 'T'. ``a``, ``b``, ``c``: arrays whose first element is the
    matrix's first element. ``iw`` int32[6], ``sw`` [2] of the data type, ``cw`` uint8[2] = b"NT":
    scratch for the by-reference scalars.
    """
    iw[0] = m
    iw[1] = n
    iw[2] = k
    iw[3] = lda
    iw[4] = ldb
    iw[5] = ldc
    sw[0] = alpha
    sw[1] = beta
    _fcall13(
        fptr,
        cw[ta : ta + 1],
        cw[tb : tb + 1],
        iw[0:1],
        iw[1:2],
        iw[2:3],
        sw[0:1],
        a,
        iw[3:4],
        b,
        iw[4:5],
        sw[1:2],
        c,
        iw[5:6],
    )


# Up to this batch size the per-step products run as the compiled loops below, not MKL: with 1-3
# rows MKL's sgemm is a poor matrix-vector product with a few hundred ns of dispatch a call
# (docs/fused.md, "Tuning constants").
SMALL_MAX_BATCH = 3


# Inside the loops, arrays are indexed element by element (``a[t, b, j]``), never through per-row
# views (``r = a[t, b]; r[j]``): a view is a new array struct with a reference count, and numba's
# atomic increments and decrements of it are not pruned across the loops' branches (numba issue
# 2350). The same holds for the arrays an inlined helper binds: the small helpers below, with
# three arrays and no branches around them, measured no slower than written out, but the
# backward's row-finishing work (bias sums, folded dW_ih and dx: eight arrays behind runtime flags)
# is written out in the loop instead (a helper cost measurably per row). Offsets into a row
# (``a[t, b, off + j]``) are unsigned: numba wraps a negative signed index around with a select
# in every access, which keeps LLVM from vectorising the loop. (Unsigned and signed integers must
# not meet in one expression: numba makes their sum a float.)
@njit(inline="always", **_JIT)
def _row_nt(a, ta, ba, w_t, c0, n, c, bc, co):
    """``c[bc, co:co+n] = a[ta, ba, :] @ w_t[:, c0:c0+n]``: one row of a forward product, as axpys
    over rows of the transposed weights, four at a time (vectorises without reassociation; a quarter
    of the load/store traffic on ``c``).

    ``a`` ``[T, B, K]``; ``w_t`` ``[K, N_all]`` C-contiguous; ``c`` ``[B, >= co+n]``.
    """
    k = a.shape[2]
    k4 = k - k % 4
    un, uc0, uco = np.uint64(n), np.uint64(c0), np.uint64(co)
    for i in range(un):
        c[bc, uco + i] = 0.0
    for j in range(0, k4, 4):
        a0, a1, a2, a3 = a[ta, ba, j], a[ta, ba, j + 1], a[ta, ba, j + 2], a[ta, ba, j + 3]
        for i in range(un):
            ci = uc0 + i
            c[bc, uco + i] += (a0 * w_t[j, ci] + a1 * w_t[j + 1, ci]) + (a2 * w_t[j + 2, ci] + a3 * w_t[j + 3, ci])
    for j in range(k4, k):
        aj = a[ta, ba, j]
        for i in range(un):
            c[bc, uco + i] += aj * w_t[j, uc0 + i]


@njit(inline="always", **_JIT)
def _row_nn(d, td, bd, d0, n, w, c, bc, accumulate):
    """``c[bc] (+)= d[td, bd, d0:d0+n] @ w[d0:d0+n]``: one row of a backward product, as axpys over
    rows of the weights, four at a time. ``d`` ``[T, B, >= d0+n]``; ``w`` ``[>= d0+n, H]``
    C-contiguous; ``c`` ``[B, H]``; ``accumulate``: add to ``c[bc]`` (else overwrite it)."""
    uh = np.uint64(c.shape[1])
    n4 = n - n % 4
    if not accumulate:
        for i in range(uh):
            c[bc, i] = 0.0
    for j in range(d0, d0 + n4, 4):
        a0, a1, a2, a3 = d[td, bd, j], d[td, bd, j + 1], d[td, bd, j + 2], d[td, bd, j + 3]
        for i in range(uh):
            c[bc, i] += (a0 * w[j, i] + a1 * w[j + 1, i]) + (a2 * w[j + 2, i] + a3 * w[j + 3, i])
    for j in range(d0 + n4, d0 + n):
        aj = d[td, bd, j]
        for i in range(uh):
            c[bc, i] += aj * w[j, i]


@njit(inline="always", **_JIT)
def _dead_row(dh, dhp, dgx, dgh, qs, dxo, t, tx, b, fold_dx, zero_q):
    """The backward at a step past row ``b``'s sequence end: ``dh`` passes through unchanged, and
    the row's gradients are 0 (they feed the weight and bias gradients)."""
    for j in range(np.uint64(dh.shape[1])):
        dhp[b, j] = dh[b, j]
    for j in range(np.uint64(dgx.shape[2])):
        dgx[tx, b, j] = 0.0
    if fold_dx:
        for k in range(dxo.shape[2]):
            dxo[t, b, k] = 0.0
    for j in range(np.uint64(dgh.shape[2])):
        dgh[t, b, j] = 0.0
    if zero_q:
        for j in range(np.uint64(qs.shape[2])):
            qs[t, b, j] = 0.0


# ---------------------------------------------------------------------------------- activations
_F = np.float32
_C = _F(7.90531110763549805)
_A1, _A3, _A5, _A7 = (
    _F(4.89352455891786e-03),
    _F(6.37261928875436e-04),
    _F(1.48572235717979e-05),
    _F(5.12229709037114e-08),
)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = (
    _F(4.89352518554385e-03),
    _F(2.26843463243900e-03),
    _F(1.18534705686654e-04),
    _F(1.19825839466702e-06),
)
_HALF32, _ONE32 = _F(0.5), _F(1.0)


@njit(inline="always", **_JIT)
def _tanh32(x):
    """float32 tanh as a [13/6] rational (Eigen's ``generic_fast_tanh_float``): vectorises.

    The clamp keeps NaN (a comparison with NaN is false, so NaN passes through both selects and
    the rational gives NaN, as ``torch.tanh`` does).
    """
    x = _C if x > _C else x
    x = -_C if x < -_C else x
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return p / q


@njit(inline="always", **_JIT)
def _sigmoid32(x):
    return _HALF32 * _tanh32(_HALF32 * x) + _HALF32


@njit(inline="always", **_JIT)
def _tanh64(x):
    return np.tanh(x)


@njit(inline="always", **_JIT)
def _sigmoid64(x):
    return 1.0 / (1.0 + np.exp(-x))


@njit(inline="always", **_JIT)
def _sigmoid(fast, x):
    return _sigmoid32(x) if fast else _sigmoid64(x)


@njit(inline="always", **_JIT)
def _tanh(fast, x):
    return _tanh32(x) if fast else _tanh64(x)


# -------------------------------------------------------------------------------------- kernels
@functools.cache
def _loops(wiring: Wiring, fast: bool) -> tuple[Callable[..., None], Callable[..., None]]:
    """The forward and backward loops of one wiring, as Python functions whose closure holds its
    switches; numba compiles them (through :func:`_forward_loop` and :func:`_backward_loop`) into
    the kernels of :func:`kernels` and :func:`step_kernels`. Their first argument is the code of
    the switches (:func:`_code`), unused here.
    """
    # Only plain constants in the closure: numba prunes the branches they decide before typing.
    gx, gh, two, coupled = bool(wiring.gates_read_x), bool(wiring.gates_read_h), wiring.gates == 2, bool(wiring.coupled)
    cand_h, tanh, reset_after = bool(wiring.cand_reads_h), bool(wiring.cand_tanh), bool(wiring.reset_after)
    fast = bool(fast)
    use_gemm = cand_h  # every variant whose gates read h also has a candidate that reads h
    two_gemm = cand_h and not reset_after
    # gates from their bias alone (GRU3): the same activations at every step and row, computed
    # once per call and saved once (``gs`` is ``[1, 1, G*H]``)
    gconst = not (gx or gh)

    def forward(code, fptr, xp, gb, whh, whh_t, bhn, lengths, hs, y, gs, ns, hn, work, copy_y, small, b0, b1):
        """Forward in time over ``T`` steps.

        Args:
            fptr: address of the BLAS ``?gemm`` of this data type.
            xp: ``[T, B, ihb*H]`` input projection with folded biases: ``[gate blocks (if gx) | n]``.
            gb: ``[G*H]`` the gates' constant pre-activation when they do not read x (bias or 0).
            whh: ``[hhb*H, H]`` recurrent weights ``[U_gates (if gh) ; U_n]`` (``[1, 1]`` if none).
            whh_t: ``[H, hhb*H]`` ``whh`` transposed (contiguous) when ``small``, else ``[1, 1]`` unused.
            bhn: ``[H]`` ``b_hn`` (reset-after; zeros without bias).
            lengths: ``[B]`` int64; steps ``t >= lengths[b]`` keep the state and output 0.
            hs: ``[T+1, B, H]`` states; ``hs[0]`` = h0 on entry. Saved for the backward.
            y: ``[T, B, H]`` outputs (out) when ``copy_y``; else unused (the caller returns
                ``hs[1:]`` as the outputs: without lengths they are the states).
            gs: ``[T, B, G*H]`` gate activations (out). Saved for the backward. ``[1, 1, G*H]``
                when the gates read neither x nor h (constant; written by the call with ``b0 == 0``).
            ns: ``[T, B, H]`` candidates ``n`` (out). Saved for the backward.
            hn: ``[T, B, H]`` reset-after: ``U_n h(t-1) + b_hn`` before the reset (out, saved);
                reset-before: scratch, ``hn[0]`` holds ``r * h(t-1)`` of the current step.
                ``gs``, ``ns``, ``hn`` may each be ``[1, B, X]`` instead of ``[T, B, X]``: one
                step's scratch, overwritten at every step (inference: nothing is saved).
            work: ``[B, hhb*H]`` scratch for the recurrent matrix product of one step.
            copy_y: write ``y`` (needed with lengths: outputs past a sequence's end are 0).
            small: the per-step products run as :func:`_row_nt` (compiled loops) instead of BLAS.
            b0, b1: the batch rows ``[b0, b1)`` this call runs (the rows are independent: calls on
                disjoint row ranges may run at once on different threads; they share no writes).
        """
        steps, hid = xp.shape[0], hs.shape[2]
        batch = b1 - b0
        ng = gs.shape[2]  # G*H
        hhw = work.shape[1]
        xn = xp.shape[2] - hid  # column of the candidate in xp
        wn = hhw - hid  # column of U_n h in work
        dt = hs.dtype
        one = dt.type(1.0)
        iw = np.empty(6, np.int32)
        sw = np.empty(2, dt)
        cw = np.empty(2, np.uint8)
        cw[0] = 78
        cw[1] = 84
        gc = np.empty(ng, dt)  # the constant gates (gconst)
        if gconst:
            for j in range(ng):
                gc[j] = _sigmoid(fast, gb[j])
            if b0 == 0:
                g0 = gs[0, 0]
                for j in range(ng):
                    g0[j] = gc[j]
        uh, uxn, uwn = np.uint64(hid), np.uint64(xn), np.uint64(wn)
        for t in range(steps):
            # [T, B, X] buffers (saved) are read and written at step t; [1, B, X] ones (inference:
            # nothing saved) are one step's scratch, reused at every step
            tg = t if gs.shape[0] > 1 else 0
            tn = t if ns.shape[0] > 1 else 0
            th = t if hn.shape[0] > 1 else 0
            if use_gemm:
                # reset-after: work[B, hhb*H] = h(t-1) @ whh^T; reset-before: work[:, :G*H] = h(t-1) @ U_gates^T
                cols = hhw if reset_after else ng
                if reset_after or gh:
                    if small:
                        for b in range(b0, b1):
                            _row_nt(hs, t, b, whh_t, 0, cols, work, b, 0)
                    else:
                        _gemm(
                            fptr,
                            1,
                            0,
                            cols,
                            batch,
                            hid,
                            one,
                            whh,
                            hid,
                            hs[t, b0:],
                            hid,
                            0.0,
                            work[b0:],
                            hhw,
                            iw,
                            sw,
                            cw,
                        )
            for b in range(b0, b1):
                if t >= lengths[b]:
                    for j in range(uh):
                        hs[t + 1, b, j] = hs[t, b, j]
                    if copy_y:
                        for j in range(uh):
                            y[t, b, j] = 0.0
                    continue
                if two_gemm:
                    # reset-before, first pass: gates and q = r*h(t-1) (in hn[0])
                    if gconst:
                        for j in range(uh):
                            hn[0, b, j] = gc[j] * hs[t, b, j]
                        continue
                    for j in range(uh):
                        a = xp[t, b, j] if gx else gb[j]
                        if gh:
                            a += work[b, j]
                        g1 = _sigmoid(fast, a)
                        gs[tg, b, j] = g1
                        if two:
                            a2 = xp[t, b, uh + j] if gx else gb[uh + j]
                            if gh:
                                a2 += work[b, uh + j]
                            gs[tg, b, uh + j] = _sigmoid(fast, a2)
                        hn[0, b, j] = g1 * hs[t, b, j]
                    continue
                for j in range(uh):
                    if gconst:
                        g1 = gc[j]
                    else:
                        a = xp[t, b, j] if gx else gb[j]
                        if gh:
                            a += work[b, j]
                        g1 = _sigmoid(fast, a)
                        gs[tg, b, j] = g1
                    if two:
                        if gconst:
                            z = gc[uh + j]
                        else:
                            a2 = xp[t, b, uh + j] if gx else gb[uh + j]
                            if gh:
                                a2 += work[b, uh + j]
                            z = _sigmoid(fast, a2)
                            gs[tg, b, uh + j] = z
                    elif coupled:
                        z = one - g1
                    else:
                        z = g1
                    npre = xp[t, b, uxn + j]
                    if cand_h:
                        u = work[b, uwn + j] + bhn[j]
                        hn[th, b, j] = u
                        npre += g1 * u
                    n = _tanh(fast, npre) if tanh else npre
                    ns[tn, b, j] = n
                    hs[t + 1, b, j] = (one - z) * n + z * hs[t, b, j]
                if copy_y:
                    for j in range(uh):
                        y[t, b, j] = hs[t + 1, b, j]
            if two_gemm:
                # work[:, G*H:] = (r*h(t-1)) @ U_n^T, then the candidate and the update
                if small:
                    for b in range(b0, b1):
                        _row_nt(hn, 0, b, whh_t, wn, hid, work, b, wn)
                else:
                    _gemm(
                        fptr,
                        1,
                        0,
                        hid,
                        batch,
                        hid,
                        one,
                        whh[hhw - hid :],
                        hid,
                        hn[0, b0:],
                        hid,
                        0.0,
                        work[b0, wn:],
                        hhw,
                        iw,
                        sw,
                        cw,
                    )
                for b in range(b0, b1):
                    if t >= lengths[b]:
                        continue
                    for j in range(uh):
                        if two:
                            z = gc[uh + j] if gconst else gs[tg, b, uh + j]
                        else:
                            z = one - (gc[j] if gconst else gs[tg, b, j])
                        n = _tanh(fast, xp[t, b, uxn + j] + work[b, uwn + j])
                        ns[tn, b, j] = n
                        hs[t + 1, b, j] = (one - z) * n + z * hs[t, b, j]
                    if copy_y:
                        for j in range(uh):
                            y[t, b, j] = hs[t + 1, b, j]

    def backward(
        code,
        fptr,
        gy,
        ghn,
        whh,
        lengths,
        hs,
        gs,
        ns,
        hn,
        dgx,
        dgh,
        dgb,
        qs,
        dh0,
        dh,
        dhp,
        dzs,
        dbx,
        dbh,
        sums,
        xin,
        wih_t,
        dxo,
        dwih,
        fold_dx,
        fold_dw,
        small,
        b0,
        b1,
    ):
        """Backward through time over ``T`` steps (reverse loop).

        Args:
            fptr: address of the BLAS ``?gemm`` of this data type.
            gy: ``[T, B, H]`` upstream gradient of ``y``.
            ghn: ``[B, H]`` upstream gradient of ``h_n``.
            whh: ``[hhb*H, H]`` recurrent weights, as in the forward.
            lengths: ``[B]`` int64.
            hs, gs, ns, hn: the forward's saved buffers (``hn`` only read for reset-after; ``gs``
                ``[1, 1, G*H]`` for constant gates).
            dgx: ``[T, B, ihb*H]`` (out) gradient of the projection ``xp``: ``[gates (if gx) | n]``.
                Zero at padded steps. Feeds ``dx``, ``dW_ih`` and ``db_ih`` (matrix products in torch).
                ``[1, B, ihb*H]``: scratch for one step's rows only (``dx`` and ``dW_ih`` folded).
            dgh: ``[T, B, hhb*H]`` (out) gradient of the recurrent products: ``[gates (if gh) | c]``
                with ``c = dL/d(U_n h + b_hn)`` (reset-after) or ``dL/d(U_n q)`` (reset-before).
                Feeds ``dW_hh`` and ``db_hh``; also the right-hand side of the per-step gemm.
            dgb: ``[G*H]`` (out, accumulated) gradient of ``gb`` when the gates read neither x nor h.
            qs: ``[T, B, H]`` (out) reset-before: ``r * h(t-1)`` for ``dW_n = c^T q`` (else unused).
            dh0: ``[B, H]`` (out) the gradient of ``h0``.
            dh, dhp, dzs: ``[B, H]`` scratch.
            dbx, dbh: ``[ihb*H]``, ``[hhb*H]`` float64 (out, accumulated when ``sums``): ``dgx`` and
                ``dgh`` summed over steps and rows (the bias gradients), while the rows are in cache.
            sums: accumulate ``dbx`` and ``dbh``.
            xin: ``[T, B, m]`` the layer's input, read when ``fold_dw`` (else ``[1, 1, 1]``).
            wih_t: ``[m, ihb*H]`` ``W_ih`` transposed, read when ``fold_dx``.
            dxo: ``[T, B, m]`` (out when ``fold_dx``) ``dx``: each row of ``dgx`` times ``W_ih``.
            dwih: ``[m, ihb*H]`` float64 (out, accumulated when ``fold_dw``) ``dW_ih`` transposed:
                each row of ``dgx`` times the input row, summed. For a few input features these
                are a few dot products and scaled adds per row, done while the row is in cache
                instead of two more passes over ``dgx``.
            small: the per-step products run as :func:`_row_nn` (compiled loops, row by row as
                each row's gradients are done) instead of BLAS.
            b0, b1: the batch rows ``[b0, b1)`` this call runs (as in the forward; ``dgb`` is the
                only output shared between rows: give each concurrent call its own).
        """
        steps, _, hid = gy.shape
        batch = b1 - b0
        ng = gs.shape[2]
        hhw = dgh.shape[2]
        xn = dgx.shape[2] - hid
        wn = hhw - hid
        dt = gy.dtype
        one = dt.type(1.0)
        iw = np.empty(6, np.int32)
        sw = np.empty(2, dt)
        cw = np.empty(2, np.uint8)
        cw[0] = 78
        cw[1] = 84
        uh, uxn, uwn = np.uint64(hid), np.uint64(xn), np.uint64(wn)
        ux, uhw = np.uint64(dgx.shape[2]), np.uint64(hhw)
        n8 = dgx.shape[2] - dgx.shape[2] % 8
        # the columns of dgh[t] that feed dh(t-1) through the per-step product on W_hh
        # (reset-before: the gates'; c's went through U_n into dq first)
        back = (ng if gh else 0) if two_gemm else (hhw if use_gemm else 0)
        for b in range(b0, b1):
            for j in range(uh):
                dh[b, j] = ghn[b, j]
        # The row-finishing work (bias sums, folded dW_ih and dx) is written out in the loop, not in
        # a helper: an inlined helper binds its array arguments to new variables, and numba's
        # reference counting of eight of them behind runtime flags (atomic, and not pruned across
        # the loops' branches) costs per row.
        for t in range(steps - 1, -1, -1):
            tx = t if dgx.shape[0] == steps else 0
            tg = 0 if gconst else t  # the gates' row: one constant row for GRU3
            th = t if cand_h else 0
            if two_gemm:
                # reset-before, first pass: dz, the update's share of dh(t-1), and c = dL/d(U_n q)
                for b in range(b0, b1):
                    if t >= lengths[b]:
                        _dead_row(dh, dhp, dgx, dgh, qs, dxo, t, tx, b, fold_dx, two_gemm)
                        continue
                    bg = 0 if gconst else b
                    for j in range(uh):
                        d = dh[b, j] + gy[t, b, j]
                        if two:
                            z = gs[tg, bg, uh + j]
                        else:
                            z = one - gs[tg, bg, j]
                        n = ns[t, b, j]
                        dzs[b, j] = d * (hs[t, b, j] - n)
                        dhp[b, j] = d * z
                        c = d * (one - z) * (one - n * n)
                        dgx[tx, b, uxn + j] = c
                        dgh[t, b, uwn + j] = c
                    if small:
                        # dq = c @ U_n, into dh[b] (consumed)
                        _row_nn(dgh, t, b, wn, hid, whh, dh, b, False)
                if not small:
                    # dq[B, H] = c[B, H] @ U_n  (into dh: it is consumed)
                    _gemm(
                        fptr,
                        0,
                        0,
                        hid,
                        batch,
                        hid,
                        one,
                        whh[hhw - hid :],
                        hid,
                        dgh[t, b0, wn:],
                        hhw,
                        0.0,
                        dh[b0:],
                        hid,
                        iw,
                        sw,
                        cw,
                    )
            for b in range(b0, b1):
                if t >= lengths[b]:
                    if not two_gemm:  # (reset-before: done in the first pass)
                        _dead_row(dh, dhp, dgx, dgh, qs, dxo, t, tx, b, fold_dx, two_gemm)
                    continue
                bg = 0 if gconst else b
                for j in range(uh):
                    g1 = gs[tg, bg, j]
                    if two_gemm:
                        # second pass: dh[b] holds dq = dL/d(r*h(t-1))
                        dr = dh[b, j] * hs[t, b, j]
                        dhp[b, j] += dh[b, j] * g1
                        qs[t, b, j] = g1 * hs[t, b, j]
                        if two:
                            z = gs[tg, bg, uh + j]
                            a1 = dr * g1 * (one - g1)
                            a2 = dzs[b, j] * z * (one - z)
                        else:
                            a1 = (dr - dzs[b, j]) * g1 * (one - g1)
                            a2 = a1
                    else:
                        d = dh[b, j] + gy[t, b, j]
                        if two:
                            z = gs[tg, bg, uh + j]
                        elif coupled:
                            z = one - g1
                        else:
                            z = g1
                        n = ns[t, b, j]
                        dz = d * (hs[t, b, j] - n)
                        dhp[b, j] = d * z
                        c = d * (one - z)
                        if tanh:
                            c = c * (one - n * n)
                        dgx[tx, b, uxn + j] = c
                        if cand_h:
                            dgh[t, b, uwn + j] = c * g1
                            dr = c * hn[th, b, j]
                            if two:
                                a1 = dr * g1 * (one - g1)
                                a2 = dz * z * (one - z)
                            else:
                                a1 = (dr - dz) * g1 * (one - g1)
                                a2 = a1
                        else:
                            a1 = dz * g1 * (one - g1)
                            a2 = a1
                    if gx:
                        dgx[tx, b, j] = a1
                        if two:
                            dgx[tx, b, uh + j] = a2
                    if gh:
                        dgh[t, b, j] = a1
                        if two:
                            dgh[t, b, uh + j] = a2
                    if not (gx or gh):
                        dgb[j] += a1
                        if two:
                            dgb[uh + j] += a2
                # the finished row, while it is in cache: bias sums, and (a few input features)
                # dW_ih and dx
                if sums:
                    for j in range(ux):
                        dbx[j] += dgx[tx, b, j]
                    for j in range(uhw):
                        dbh[j] += dgh[t, b, j]
                if fold_dw:
                    for k in range(xin.shape[2]):
                        xk = xin[t, b, k]
                        for j in range(ux):
                            dwih[k, j] += xk * dgx[tx, b, j]
                if fold_dx:
                    for k in range(dxo.shape[2]):
                        # a dot product in float64 with 8 running sums (they vectorise; one would not)
                        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
                        for i in range(0, n8, 8):
                            s0 += dgx[tx, b, i] * wih_t[k, i]
                            s1 += dgx[tx, b, i + 1] * wih_t[k, i + 1]
                            s2 += dgx[tx, b, i + 2] * wih_t[k, i + 2]
                            s3 += dgx[tx, b, i + 3] * wih_t[k, i + 3]
                            s4 += dgx[tx, b, i + 4] * wih_t[k, i + 4]
                            s5 += dgx[tx, b, i + 5] * wih_t[k, i + 5]
                            s6 += dgx[tx, b, i + 6] * wih_t[k, i + 6]
                            s7 += dgx[tx, b, i + 7] * wih_t[k, i + 7]
                        s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
                        for i in range(n8, dgx.shape[2]):
                            s += dgx[tx, b, i] * wih_t[k, i]
                        dxo[t, b, k] = s
                if small and back:
                    # dh(t-1) += dgh[t, b, :back] @ whh[:back]
                    _row_nn(dgh, t, b, 0, back, whh, dhp, b, True)
            if back and not small:
                # dh(t-1) += dgh[t][B, :back] @ whh[:back]
                _gemm(fptr, 0, 0, hid, batch, back, one, whh, hid, dgh[t, b0:], hhw, one, dhp[b0:], hid, iw, sw, cw)
            dh, dhp = dhp, dh
        for b in range(b0, b1):
            for j in range(uh):
                dh0[b, j] = dh[b, j]

    return forward, backward


def _code(wiring: Wiring, fast: bool) -> int:
    """The switches of one wiring and data type as one integer: a compile-time constant of the
    kernels, which pass it to the loops (:func:`_switches` reads it back)."""
    on = (wiring.gates == 2, *wiring[1:], fast)
    return sum(1 << i for i, bit in enumerate(on) if bit)


def _switches(code: Any) -> tuple[Wiring, bool] | None:
    """``(wiring, fast)`` of a literal ``code`` (numba's type of it), or None while numba types it
    as a plain integer (it then types the call again with the literal value)."""
    if not isinstance(code, types.IntegerLiteral):
        return None
    bits = [bool(code.literal_value >> i & 1) for i in range(len(Wiring._fields) + 1)]
    return Wiring(2 if bits[0] else 1, *bits[1:-1]), bits[-1]


def _forward_loop(code, *args):  # type: ignore[no-untyped-def]
    """:func:`_loops`' forward loop of the wiring ``code`` names (a constant), for compiled code."""
    raise NotImplementedError("_forward_loop runs in compiled code only")


def _backward_loop(code, *args):  # type: ignore[no-untyped-def]
    """:func:`_loops`' backward loop of the wiring ``code`` names (a constant), for compiled code."""
    raise NotImplementedError("_backward_loop runs in compiled code only")


# The loops are compiled as overloads: what numba compiles for a call is the loop of the wiring the
# call's constant names, a closure over its switches (so numba prunes the branches they decide, as
# in a kernel written for that wiring alone), and kernels anywhere in this module can call them.
# The kernels' own closures hold only that integer: numba keys its on-disk cache by the pickled
# closure, and a compiled function pickles differently in every process. (An inline function taking
# the switches as arguments measured 8-15% slower forward: its branches were folded only by LLVM.)
@overload(_forward_loop, strict=False, jit_options=_LOOP_JIT)
def _ol_forward_loop(code, *args):  # type: ignore[no-untyped-def]
    switches = _switches(code)
    return None if switches is None else _loops(*switches)[0]


@overload(_backward_loop, strict=False, jit_options=_LOOP_JIT)
def _ol_backward_loop(code, *args):  # type: ignore[no-untyped-def]
    switches = _switches(code)
    return None if switches is None else _loops(*switches)[1]


@functools.cache
def kernels(wiring: Wiring, fast: bool) -> tuple[Callable[..., None], Callable[..., None]]:
    """``(forward, backward)`` compiled loops for one wiring (see the module docstring); ``fast``:
    float32 (rational activations). Their arguments: those of :func:`_loops`' functions after
    ``code``.

    Compiles lazily on first call (numba dispatchers), cached on disk next to this module.
    """
    code = _code(wiring, bool(fast))

    @njit(**_JIT)
    def forward(fptr, xp, gb, whh, whh_t, bhn, lengths, hs, y, gs, ns, hn, work, copy_y, small, b0, b1):
        _forward_loop(code, fptr, xp, gb, whh, whh_t, bhn, lengths, hs, y, gs, ns, hn, work, copy_y, small, b0, b1)

    @njit(**_JIT)
    def backward(
        fptr,
        gy,
        ghn,
        whh,
        lengths,
        hs,
        gs,
        ns,
        hn,
        dgx,
        dgh,
        dgb,
        qs,
        dh0,
        dh,
        dhp,
        dzs,
        dbx,
        dbh,
        sums,
        xin,
        wih_t,
        dxo,
        dwih,
        fold_dx,
        fold_dw,
        small,
        b0,
        b1,
    ):
        # (30 arguments at most: CPython passes a longer call as *args, which numba cannot compile)
        _backward_loop(
            code,
            fptr,
            gy,
            ghn,
            whh,
            lengths,
            hs,
            gs,
            ns,
            hn,
            dgx,
            dgh,
            dgb,
            qs,
            dh0,
            dh,
            dhp,
            dzs,
            dbx,
            dbh,
            sums,
            xin,
            wih_t,
            dxo,
            dwih,
            fold_dx,
            fold_dw,
            small,
            b0,
            b1,
        )

    return forward, backward


# --------------------------------------------------------------------------- one-call step kernels
@intrinsic
def _address(typingctx, at, dtype):
    """The integer address ``at`` as a pointer to ``dtype`` (a NumPy scalar class), for ``carray``."""
    if not isinstance(at, types.Integer) or not isinstance(dtype, types.NumberClass):
        return None
    ptr = types.CPointer(dtype.instance_type)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return ptr(at, dtype), codegen


@njit(inline="always", **_JIT)
def _at(at, shape, dtype):
    """The C-contiguous array of ``shape`` and ``dtype`` at the address ``at``: memory the caller
    keeps alive (a tensor's ``data_ptr()``). No reference count: it is a view of nothing numba owns."""
    return carray(_address(at, dtype), shape)


# Each saved buffer starts on a 64-byte boundary (float32), as those the pool carves.
_ALIGN = 16


@njit(inline="always", **_JIT)
def _padded(n):
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@njit(**_JIT)
def saved_size(steps, batch, hid, ng, gconst, reset_after):
    """Elements of what a step kernel's forward saves for its backward, one flat buffer: the states
    ``[T+1, B, H]``, the gates ``[T, B, ng]`` (``[1, 1, ng]`` when constant), the candidates
    ``[T, B, H]`` and the pre-reset terms ``[T, B, H]`` (``[1, B, H]`` of scratch reset-before), as
    the loops of :func:`_loops` read them."""
    gsize = ng if gconst else steps * batch * ng
    return (
        _padded((steps + 1) * batch * hid)
        + _padded(gsize)
        + _padded(steps * batch * hid)
        + _padded((steps if reset_after else 1) * batch * hid)
    )


@njit(inline="always", **_JIT)
def _saved(at, steps, batch, hid, ng, gconst, reset_after, dtype, item):
    """``(hs, gs, ns, hn)``: the buffers of :func:`saved_size` in the flat buffer at ``at``
    (``item``: the bytes of one element)."""
    hs = _at(at, (steps + 1, batch, hid), dtype)
    at += _padded((steps + 1) * batch * hid) * item
    gs = _at(at, (1, 1, ng) if gconst else (steps, batch, ng), dtype)
    at += _padded(ng if gconst else steps * batch * ng) * item
    ns = _at(at, (steps, batch, hid), dtype)
    at += _padded(steps * batch * hid) * item
    hn = _at(at, (steps if reset_after else 1, batch, hid), dtype)
    return hs, gs, ns, hn


@functools.cache
def step_kernels(
    wiring: Wiring, fast: bool, gbias: bool, hh_gates: bool
) -> tuple[Callable[..., None], Callable[..., None]]:
    """``(forward, backward)``: a layer's whole call, one direction, each one compiled function.

    The loops are :func:`_loops`' (``wiring`` and ``fast`` as in :func:`kernels`). Around them,
    what a layer call otherwise does in Python and torch: the forward projects the input (one BLAS
    product, the biases folded in) and copies the states in and out; the backward ends with the
    weight gradients (BLAS products) and the bias gradients. Short calls (a step, a few steps) are
    then one compiled call each way, with no per-call glue beyond the tensors' addresses. Two
    switches say how the biases are laid out (:mod:`gatedrnn._specs`): ``gbias``, the gates have a
    bias; ``hh_gates``, ``bias_hh`` holds the gates' recurrent biases before ``b_hn`` (gru0,
    reset-after).

    Every tensor argument is an address (``data_ptr()``, 0 for none) of a C-contiguous tensor of the
    data type (float32 when ``fast``, else float64) and the shape given below.
    """
    # Only plain constants in the closure (numba keys its on-disk cache by their pickled bytes).
    code = _code(wiring, bool(fast))
    gx, gh, two = bool(wiring.gates_read_x), bool(wiring.gates_read_h), wiring.gates == 2
    cand_h, reset_after, fast = bool(wiring.cand_reads_h), bool(wiring.reset_after), bool(fast)
    gbias, hh_gates = bool(gbias), bool(hh_gates)
    two_gemm = cand_h and not reset_after
    gconst = not (gx or gh)
    nb = 2 if two else 1  # gate blocks
    ihb = (nb if gx else 0) + 1  # blocks of W_ih (and of the projection)
    hhb = (nb if gh else 0) + (1 if cand_h else 0)  # blocks of W_hh
    bib = (nb if gbias else 0) + 1  # blocks of bias_ih
    bhb = ((nb if hh_gates else 0) + 1) if (reset_after and cand_h) else 0  # blocks of bias_hh
    item = 4 if fast else 8  # bytes of an element

    @njit(**_JIT)
    def forward(
        fptr, steps, batch, inp, hid, x_at, h0_at, wih_at, whh_at, bih_at, bhh_at, lens_at, y_at, hn_at, saved_at, b0
    ):
        """Forward in time over ``T`` steps.

        Args:
            fptr: address of the BLAS ``?gemm`` of this data type.
            steps, batch, inp, hid: ``T``, ``B``, the input size ``m`` and ``H``.
            x_at: ``[T, B, m]`` the input.
            h0_at: ``[B, H]`` the initial state (0: zeros).
            wih_at, whh_at: ``[ihb*H, m]``, ``[hhb*H, H]`` the weights (``whh_at`` unread without
                recurrent weights).
            bih_at, bhh_at: ``bias_ih``, ``bias_hh`` (0: no bias; ``bhh_at`` read only where
                ``bias_hh`` exists).
            lens_at: ``[B]`` int64 lengths (0: every sequence has ``T`` steps).
            y_at: ``[T, B, H]`` (out) the outputs (0: not written).
            hn_at: ``[B, H]`` (out) the last state (0: not written).
            saved_at: the flat buffer of :func:`saved_size` elements (out) the backward reads
                (0: nothing saved; the loop then runs on one step's scratch rows).
            b0: 0, the loops' first row. An argument, not a constant: compiled for a known first
                row the loops' elementwise pass stayed scalar (LLVM's runtime overlap checks,
                hoisted out of the row loop, failed): 1.5-1.7x the time of the whole step at
                B=16, H=128.
        """
        dt = np.float32 if fast else np.float64
        one = dt(1.0)
        ng, ihw, hhw, rows = nb * hid, ihb * hid, hhb * hid, steps * batch
        iw = np.empty(6, np.int32)
        sw = np.empty(2, dt)
        cw = np.empty(2, np.uint8)
        cw[0] = 78
        cw[1] = 84
        # the projection of every step, [gates (if gx) | n], with the biases it can hold folded in
        xp = np.empty((steps, batch, ihw), dt)
        xp2 = xp.reshape((rows, ihw))
        gb = np.zeros(ng, dt)  # the gates' constant pre-activation (gates that do not read x)
        bhn = np.zeros(hid, dt)
        beta = 0.0
        if bih_at != 0:
            pb = np.zeros(ihw, dt)
            bih = _at(bih_at, (bib * hid,), dt)
            for j in range(hid):
                pb[ihw - hid + j] = bih[bib * hid - hid + j]
            if gbias:
                for j in range(ng):
                    if gx:
                        pb[j] = bih[j]
                    else:
                        gb[j] = bih[j]
            if bhb:
                bhh = _at(bhh_at, (bhb * hid,), dt)
                for j in range(hid):
                    bhn[j] = bhh[bhb * hid - hid + j]
                if hh_gates:
                    for j in range(ng):
                        if gx:
                            pb[j] += bhh[j]
                        else:
                            gb[j] += bhh[j]
            for r in range(rows):
                for j in range(ihw):
                    xp2[r, j] = pb[j]
            beta = 1.0
        wih = _at(wih_at, (ihw, inp), dt)
        _gemm(fptr, 1, 0, ihw, rows, inp, one, wih, inp, _at(x_at, (rows, inp), dt), inp, beta, xp2, ihw, iw, sw, cw)
        if saved_at != 0:
            hs, gs, ns, hn = _saved(saved_at, steps, batch, hid, ng, gconst, reset_after, dt, item)
        else:
            hs = np.empty((steps + 1, batch, hid), dt)
            gs = np.empty((1, 1 if gconst else batch, ng), dt)
            ns = np.empty((1, batch, hid), dt)
            hn = np.empty((1, batch, hid), dt)
        if h0_at != 0:
            h0 = _at(h0_at, (batch, hid), dt)
            for b in range(batch):
                for j in range(hid):
                    hs[0, b, j] = h0[b, j]
        else:
            for b in range(batch):
                for j in range(hid):
                    hs[0, b, j] = 0.0
        if cand_h:
            whh = _at(whh_at, (hhw, hid), dt)
        else:
            whh = np.empty((1, 1), dt)
        lens = _at(lens_at, (batch,), np.int64) if lens_at != 0 else np.full(batch, steps, np.int64)
        copy_y = y_at != 0
        y = _at(y_at, (steps, batch, hid), dt) if copy_y else np.empty((1, 1, 1), dt)
        work = np.empty((batch, hhw), dt)
        unused = np.empty((1, 1), dt)
        _forward_loop(code, fptr, xp, gb, whh, unused, bhn, lens, hs, y, gs, ns, hn, work, copy_y, False, b0, batch)
        if hn_at != 0:
            out = _at(hn_at, (batch, hid), dt)
            for b in range(batch):
                for j in range(hid):
                    out[b, j] = hs[steps, b, j]

    @njit(**_JIT)
    def backward(
        fptr,
        steps,
        batch,
        inp,
        hid,
        x_at,
        wih_at,
        whh_at,
        lens_at,
        saved_at,
        gy_at,
        ghn_at,
        dx_at,
        dh0_at,
        dwih_at,
        dwhh_at,
        dbih_at,
        dbhh_at,
        small,
        b0,
    ):
        """Backward through time over ``T`` steps.

        Args:
            fptr, steps, batch, inp, hid, x_at, wih_at, whh_at, lens_at: as in the forward.
            saved_at: what the forward saved.
            gy_at: ``[T, B, H]`` the upstream gradient of the outputs (0: zeros).
            ghn_at: ``[B, H]`` the upstream gradient of the last state (0: zeros).
            dx_at, dh0_at, dwih_at, dwhh_at, dbih_at, dbhh_at: (out) the gradients of the input,
                the initial state, the weights and the biases, shaped as they are (0: not needed).
            small: the per-step products run as :func:`_row_nn` instead of BLAS (a few rows).
            b0: 0, as in the forward.
        """
        dt = np.float32 if fast else np.float64
        one = dt(1.0)
        ng, ihw, hhw, rows = nb * hid, ihb * hid, hhb * hid, steps * batch
        iw = np.empty(6, np.int32)
        sw = np.empty(2, dt)
        cw = np.empty(2, np.uint8)
        cw[0] = 78
        cw[1] = 84
        hs, gs, ns, hn = _saved(saved_at, steps, batch, hid, ng, gconst, reset_after, dt, item)
        if cand_h:
            whh = _at(whh_at, (hhw, hid), dt)
        else:
            whh = np.empty((1, 1), dt)
        lens = _at(lens_at, (batch,), np.int64) if lens_at != 0 else np.full(batch, steps, np.int64)
        gy = _at(gy_at, (steps, batch, hid), dt) if gy_at != 0 else np.zeros((steps, batch, hid), dt)
        ghn = _at(ghn_at, (batch, hid), dt) if ghn_at != 0 else np.zeros((batch, hid), dt)
        dgx = np.empty((steps, batch, ihw), dt)
        dgh = np.empty((steps, batch, hhw), dt)
        dgb = np.zeros(ng, dt)
        qs = np.empty((steps, batch, hid) if two_gemm else (1, 1, 1), dt)
        dh0 = _at(dh0_at, (batch, hid), dt) if dh0_at != 0 else np.empty((batch, hid), dt)
        dh = np.empty((batch, hid), dt)
        dhp = np.empty((batch, hid), dt)
        dzs = np.empty((batch, hid), dt)
        dbx = np.zeros(ihw)  # float64 sums of T*B terms
        dbh = np.zeros(hhw)
        sums = dbih_at != 0 or dbhh_at != 0
        u3 = np.empty((1, 1, 1), dt)
        u2 = np.empty((1, 1), dt)
        _backward_loop(
            code,
            fptr,
            gy,
            ghn,
            whh,
            lens,
            hs,
            gs,
            ns,
            hn,
            dgx,
            dgh,
            dgb,
            qs,
            dh0,
            dh,
            dhp,
            dzs,
            dbx,
            dbh,
            sums,
            u3,
            u2,
            u3,
            np.empty((1, 1)),
            False,
            False,
            small,
            b0,
            batch,
        )
        # the weight gradients, single products over every step and row
        dgx2 = dgx.reshape((rows, ihw))
        if dx_at != 0:
            wih = _at(wih_at, (ihw, inp), dt)
            _gemm(
                fptr, 0, 0, inp, rows, ihw, one, wih, inp, dgx2, ihw, 0.0, _at(dx_at, (rows, inp), dt), inp, iw, sw, cw
            )
        if dwih_at != 0:
            x = _at(x_at, (rows, inp), dt)
            if lens_at != 0 and batch > 0 and lens.min() < steps:
                # the product multiplies the padding by its zero gradient, and 0 * NaN is NaN: the
                # input's rows past each length enter as zeros (the loops never read them)
                x = x.copy()
                for t in range(steps):
                    for b in range(batch):
                        if t >= lens[b]:
                            for k in range(inp):
                                x[t * batch + b, k] = 0.0
            _gemm(
                fptr, 0, 1, inp, ihw, rows, one, x, inp, dgx2, ihw, 0.0, _at(dwih_at, (ihw, inp), dt), inp, iw, sw, cw
            )
        if cand_h and dwhh_at != 0:
            dgh2 = dgh.reshape((rows, hhw))
            dwhh = _at(dwhh_at, (hhw, hid), dt)
            if two_gemm:
                # reset-before: the gates' rows against h(t-1), U_n's against q = r*h(t-1)
                if gh:
                    _gemm(fptr, 0, 1, hid, ng, rows, one, hs, hid, dgh2, hhw, 0.0, dwhh, hid, iw, sw, cw)
                wn = hhw - hid
                _gemm(fptr, 0, 1, hid, hid, rows, one, qs, hid, dgh2[0, wn:], hhw, 0.0, dwhh[wn:], hid, iw, sw, cw)
            else:
                _gemm(fptr, 0, 1, hid, hhw, rows, one, hs, hid, dgh2, hhw, 0.0, dwhh, hid, iw, sw, cw)
        if sums:
            # the gates' bias gradient is the sum of their pre-activation gradients, wherever those went
            dgate = np.empty(ng)
            for j in range(ng):
                if gx:
                    dgate[j] = dbx[j]
                elif gh:
                    dgate[j] = dbh[j]
                else:
                    dgate[j] = dgb[j]
            if dbih_at != 0:
                dbih = _at(dbih_at, (bib * hid,), dt)
                if gbias:
                    for j in range(ng):
                        dbih[j] = dgate[j]
                for j in range(hid):
                    dbih[bib * hid - hid + j] = dbx[ihw - hid + j]
            if bhb and dbhh_at != 0:
                dbhh = _at(dbhh_at, (bhb * hid,), dt)
                if hh_gates:
                    for j in range(ng):
                        dbhh[j] = dgate[j]
                for j in range(hid):
                    dbhh[bhb * hid - hid + j] = dbh[hhw - hid + j]

    return forward, backward


# ------------------------------------------------------------------------- GEMM-only floor (bench)
@njit(**_JIT)
def floor_nt(fptr, a, w, w_t, c, steps, small):
    """``steps`` times ``c[B, N] = a[B, K] @ w[N, K]^T``: the forward's per-step products alone
    (``small``: as the kernels run them for a few rows, :func:`_row_nt` on ``w_t = w^T``)."""
    batch, k = a.shape
    n = w.shape[0]
    iw = np.empty(6, np.int32)
    sw = np.empty(2, c.dtype)
    cw = np.empty(2, np.uint8)
    cw[0] = 78
    cw[1] = 84
    one = c.dtype.type(1.0)
    a3 = a.reshape((1, batch, k))
    for _ in range(steps):
        if small:
            for b in range(batch):
                _row_nt(a3, 0, b, w_t, 0, n, c, b, 0)
        else:
            _gemm(fptr, 1, 0, n, batch, k, one, w, k, a, k, 0.0, c, n, iw, sw, cw)


@njit(**_JIT)
def floor_nn(fptr, d, w, c, steps, small):
    """``steps`` times ``c[B, H] += d[B, N] @ w[N, H]``: the backward's per-step products alone
    (``small``: as :func:`_row_nn`)."""
    batch, n = d.shape
    hid = w.shape[1]
    iw = np.empty(6, np.int32)
    sw = np.empty(2, c.dtype)
    cw = np.empty(2, np.uint8)
    cw[0] = 78
    cw[1] = 84
    one = c.dtype.type(1.0)
    d3 = d.reshape((1, batch, n))
    for _ in range(steps):
        if small:
            for b in range(batch):
                _row_nn(d3, 0, b, 0, n, w, c, b, True)
        else:
            _gemm(fptr, 0, 0, hid, batch, n, one, w, hid, d, n, one, c, hid, iw, sw, cw)
