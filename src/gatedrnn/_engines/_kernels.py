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
so the compiled code holds no process-specific address and can be cached. Optionally the
recurrent weights are packed once per call into MKL's internal format (``?gemm_pack``) and each
step calls ``?gemm_compute`` on them (:func:`_mm`; the caller decides, see ``_fused.PACK``).

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

from .._options import LN_EPS
from .._specs import Wiring

__all__ = [
    "SMALL_MAX_BATCH",
    "blas",
    "kernels",
    "mkl_local_threads",
    "pack_size",
    "packed_blas",
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


def _libtorch() -> ctypes.CDLL:
    import torch

    return ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))


@functools.lru_cache(maxsize=1)
def packed_blas() -> dict[str, tuple[int, int, Callable[..., int]]]:
    """MKL's packed products where the kernels call torch's MKL and libtorch exports them:
    ``{"s" or "d": (?gemm_pack_ address, ?gemm_compute_ address, cblas_?gemm_pack_get_size)}``
    (torch's MKL exports the float32 routines only; empty elsewhere)."""
    if not blas()[2].startswith("torch MKL"):
        return {}
    out: dict[str, tuple[int, int, Callable[..., int]]] = {}
    try:
        lib = _libtorch()
    except OSError:  # pragma: no cover - blas() found it
        return out
    for p in ("s", "d"):
        try:
            pack = ctypes.cast(getattr(lib, f"{p}gemm_pack_"), ctypes.c_void_p).value
            compute = ctypes.cast(getattr(lib, f"{p}gemm_compute_"), ctypes.c_void_p).value
            size = getattr(lib, f"cblas_{p}gemm_pack_get_size")
        except AttributeError:
            continue
        size.argtypes = [ctypes.c_int] * 4
        size.restype = ctypes.c_size_t
        if pack and compute:
            out[p] = (int(pack), int(compute), size)
    return out


_CBLAS_A_MATRIX = 161  # CBLAS_IDENTIFIER CblasAMatrix


@functools.cache
def pack_size(prefix: str, m: int, n: int, k: int) -> int:
    """Bytes MKL's packed ``m x k`` A matrix takes for products with ``n`` columns (``prefix`` "s"
    or "d", a key of :func:`packed_blas`)."""
    return int(packed_blas()[prefix][2](_CBLAS_A_MATRIX, m, n, k))


@functools.lru_cache(maxsize=1)
def mkl_local_threads() -> Callable[[int], int] | None:
    """MKL's ``MKL_Set_Num_Threads_Local`` (thread-local, returns the previous value; 0 = global)
    when the kernels call torch's MKL and libtorch exports it, else None."""
    if not blas()[2].startswith("torch MKL"):
        return None
    try:
        fn = _libtorch().MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@intrinsic
def _fcall(typingctx, fptr, arrays):
    """Call the Fortran routine at address ``fptr`` with the data pointers of a tuple of arrays
    (every argument of a Fortran BLAS routine is passed by reference)."""
    if not isinstance(fptr, types.Integer) or not isinstance(arrays, types.BaseTuple):
        return None
    if not all(isinstance(a, types.Array) for a in arrays):
        return None
    sig = types.void(fptr, arrays)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        ptrs = []
        for i, ty in enumerate(signature.args[1]):
            ary = context.make_array(ty)(context, builder, builder.extract_value(args[1], i))
            ptrs.append(builder.bitcast(ary.data, i8p))
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * len(ptrs))
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, ptrs)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", **_JIT)
def _blas_scratch(dt):
    """The by-reference scalars of the BLAS calls: ``iw`` int32[6], ``sw`` [2] of the data type
    ``dt``, ``cw`` uint8[4] = b"NTPA" (transpose flags, packed, the packed matrix's name)."""
    iw = np.empty(6, np.int32)
    sw = np.empty(2, dt)
    cw = np.empty(4, np.uint8)
    cw[0] = 78  # N
    cw[1] = 84  # T
    cw[2] = 80  # P
    cw[3] = 65  # A
    return iw, sw, cw


@njit(inline="always", **_JIT)
def _scalars(iw, sw, m, n, k, lda, ldb, ldc, alpha, beta):
    """Fill the by-reference scalars of a product (:func:`_blas_scratch`)."""
    iw[0] = m
    iw[1] = n
    iw[2] = k
    iw[3] = lda
    iw[4] = ldb
    iw[5] = ldc
    sw[0] = alpha
    sw[1] = beta


@njit(inline="always", **_JIT)
def _gemm(fptr, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, iw, sw, cw):
    """Column-major ``C = alpha * op(A) @ op(B) + beta * C`` (Fortran ``?gemm``).

    ``ta``/``tb``: 0 for 'N', 1 for 'T'. ``a``, ``b``, ``c``: arrays whose first element is the
    matrix's first element. ``iw``, ``sw``, ``cw``: scratch for the by-reference scalars
    (:func:`_blas_scratch`).
    """
    _scalars(iw, sw, m, n, k, lda, ldb, ldc, alpha, beta)
    _fcall(
        fptr,
        (
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
        ),
    )


# The per-step products on packed recurrent weights (MKL's ?gemm_pack / ?gemm_compute): ``fns`` is
# int64[3] = (``?gemm``, ``?gemm_pack``, ``?gemm_compute``) with the last two 0 where the weights
# are not packed; ``pa`` is the packed buffer of one matrix (``pack_size`` bytes, 64-byte aligned,
# never moved after packing: MKL's packed format depends on its address).
@njit(inline="always", **_JIT)
def _pack_a(fns, pa, ta, m, n, k, a, lda, iw, sw, cw):
    """Pack ``op(A)`` (``m x k``, column-major, ``ta``: 0 'N', 1 'T') into ``pa`` for products with
    ``n`` columns (:func:`_mm`). Nothing where ``fns`` holds no packing routine."""
    if fns[1] == 0:
        return
    iw[0] = m
    iw[1] = n
    iw[2] = k
    iw[3] = lda
    sw[0] = 1.0
    _fcall(fns[1], (cw[3:4], cw[ta : ta + 1], iw[0:1], iw[1:2], iw[2:3], sw[0:1], a, iw[3:4], pa))


@njit(inline="always", **_JIT)
def _mm(fns, pa, ta, m, n, k, a, lda, b, ldb, beta, c, ldc, iw, sw, cw):
    """Column-major ``C = op(A) @ B + beta * C``: on ``pa`` (``op(A)`` packed by :func:`_pack_a`)
    where ``fns`` holds the packed routines, else :func:`_gemm` on ``a``."""
    if fns[2] == 0:
        _gemm(fns[0], ta, 0, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc, iw, sw, cw)
        return
    _scalars(iw, sw, m, n, k, lda, ldb, ldc, 1.0, beta)
    _fcall(
        fns[2],
        (cw[2:3], cw[0:1], iw[0:1], iw[1:2], iw[2:3], pa, iw[3:4], b, iw[4:5], sw[1:2], c, iw[5:6]),
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


# ------------------------------------------------------------------------------------- options
# The options' row passes (equations in gatedrnn._options). Each runs once per row and step, outside
# the inner loops, and only when its option is on: the plain path's loops are the same code.
# The layer norm's row passes are functions of their own, called once per row and group: their
# sums may be reordered (fastmath "reassoc"), so they vectorise, which the kernels' own strict
# order of operations forbids (inlined, the same passes took 2.2-2.4x the time).
_LN_JIT = {**_JIT, "fastmath": {"contract", "reassoc"}}


@njit(**_LN_JIT)
def _ln_forward(a, ta, b, c0, n, gain, shift, ahat, th, rstd, gi):
    """Layer norm of ``a[ta, b, c0:c0+n]`` in place: ``γ ⊙ (a - mean) / sqrt(var + ε) + β`` with
    ``γ, β = gain[c0:c0+n], shift[c0:c0+n]`` (``var`` biased, two passes, sums in float64). The
    normalised values ``â`` go to ``ahat[th, b, c0:c0+n]`` and ``1 / sqrt(var + ε)`` to
    ``rstd[th, b, gi]`` (what the backward reads)."""
    u0, un = np.uint64(c0), np.uint64(n)
    s = 0.0
    for i in range(un):
        s += a[ta, b, u0 + i]
    mean = s / n
    v = 0.0
    for i in range(un):
        d = a[ta, b, u0 + i] - mean
        v += d * d
    r = 1.0 / np.sqrt(v / n + LN_EPS)
    rstd[th, b, gi] = r
    mean_t, r_t = a.dtype.type(mean), a.dtype.type(r)
    for i in range(un):
        k = u0 + i
        x = (a[ta, b, k] - mean_t) * r_t
        ahat[th, b, k] = x
        a[ta, b, k] = gain[k] * x + shift[k]


@njit(**_LN_JIT)
def _ln_backward(dg, td, b, c0, n, gain, ahat, th, rstd, gi, dgam, dbet):
    """The layer norm's backward for one row and group: ``dg[td, b, c0:c0+n]`` holds the gradient
    ``dy`` of its outputs. Adds ``dy`` to the shift's gradient ``dbet`` and ``dy ⊙ â`` to the gain's
    ``dgam`` (float64), then replaces ``dy`` by the gradient of the layer norm's input,
    ``rstd (g - mean(g) - â mean(g ⊙ â))`` with ``g = γ ⊙ dy`` (``â``, ``rstd`` at ``[th, b]``)."""
    u0, un = np.uint64(c0), np.uint64(n)
    s = 0.0
    q = 0.0
    for i in range(un):
        k = u0 + i
        dy = dg[td, b, k]
        x = ahat[th, b, k]
        dbet[k] += dy
        dgam[k] += dy * x
        g = dy * gain[k]
        s += g
        q += g * x
    dt = dg.dtype.type
    m1, m2, r = dt(s / n), dt(q / n), dt(rstd[th, b, gi])
    for i in range(un):
        k = u0 + i
        dg[td, b, k] = r * (dg[td, b, k] * gain[k] - m1 - ahat[th, b, k] * m2)


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
@njit(inline="always", **_JIT)
def _switches(options, masked, zo, reset, ln_x, ln_h):
    """The options' runtime switches as a kernel sees them: the constant False where ``options``
    (a compile-time constant) is off, so that every branch on them folds away."""
    return options and masked, options and zo, options and reset, options and ln_x, options and ln_h


@functools.cache
def _loops(wiring: Wiring, fast: bool, options: bool) -> tuple[Callable[..., None], Callable[..., None]]:
    """The forward and backward loops of one wiring, as Python functions whose closure holds its
    switches; numba compiles them (through :func:`_forward_loop` and :func:`_backward_loop`) into
    the kernels of :func:`kernels` and :func:`step_kernels`. Their first argument is the code of
    the switches (:func:`_code`), unused here; the others are those of :func:`kernels`' functions.

    ``options``: compile in the options (:mod:`gatedrnn._options`: layer norms, recurrent dropout,
    zoneout, resets). Each is then a runtime switch of its own, checked once per row or step
    outside the inner loops, with its work in passes of its own (the layer norms' are calls).
    Without ``options`` every switch is the constant False and the loops are the plain ones: the
    calls and branches, even never taken, cost a plain layer up to 10-20% at batch 1
    (docs/fused.md, "Options").
    """
    # Only plain constants in the closure: numba prunes the branches they decide before typing.
    gx, gh, two, coupled = bool(wiring.gates_read_x), bool(wiring.gates_read_h), wiring.gates == 2, bool(wiring.coupled)
    cand_h, tanh, reset_after = bool(wiring.cand_reads_h), bool(wiring.cand_tanh), bool(wiring.reset_after)
    fast, options = bool(fast), bool(options)
    use_gemm = cand_h  # every variant whose gates read h also has a candidate that reads h
    two_gemm = cand_h and not reset_after
    # gates from their bias alone (GRU3): the same activations at every step and row, computed
    # once per call and saved once (``gs`` is ``[1, 1, G*H]``)
    gconst = not (gx or gh)

    def forward(
        code,
        fns,
        xp,
        gb,
        whh,
        whh_t,
        pk,
        bhn,
        lengths,
        hs,
        y,
        gs,
        ns,
        hn,
        work,
        copy_y,
        small,
        masked,
        hmask,
        hm,
        zo,
        zeta,
        reset,
        resets,
        ln_x,
        ln_xg,
        ln_xs,
        ahat_x,
        rstd_x,
        ln_h,
        ln_hg,
        ln_hs,
        ahat_h,
        rstd_h,
        b0,
        b1,
    ):
        """Forward in time over ``T`` steps.

        Args:
            fns: int64[3], addresses of this data type's BLAS ``?gemm``, ``?gemm_pack`` and
                ``?gemm_compute`` (the last two 0: the weights are not packed; see :func:`_mm`).
            xp: ``[T, B, ihb*H]`` input projection with folded biases: ``[gate blocks (if gx) | n]``.
            gb: ``[G*H]`` the gates' constant pre-activation when they do not read x (bias or 0).
            whh: ``[hhb*H, H]`` recurrent weights ``[U_gates (if gh) ; U_n]`` (``[1, 1]`` if none).
            whh_t: ``[H, hhb*H]`` ``whh`` transposed (contiguous) when ``small``, else ``[1, 1]`` unused.
            pk: ``[2, P]`` scratch for ``whh`` packed (row 0: the first per-step product's weights,
                row 1: reset-before's ``U_n``; each row 64-byte aligned) where ``fns`` packs, else
                ``[1, 1]`` unused. Packed at the start of the call, for this row range's products.
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
            masked: recurrent dropout: the products read ``h̃ = h(t-1) ⊙ hmask`` (the update reads
                ``h(t-1)``).
            hmask: ``[B, H]`` the recurrent-dropout mask (scaled) when ``masked``.
            hm: ``[1, B, H]`` scratch for ``h̃`` of the current step when ``masked``.
            zo: zoneout: ``hs[t+1] = ζ h(t-1) + (1-ζ) h'`` with ``ζ = zeta[t, b]``.
            zeta: ``[T, B, H]`` zoneout's ζ (0 or 1, training), or ``[1, 1, H]`` filled with its
                probability (eval): a dimension of 1 is read at index 0.
            reset: ``resets`` is read: where ``resets[t, b]`` (and ``t < lengths[b]``) the state
                ``hs[t, b]`` is zeroed before step ``t`` (then the saved states hold the effective
                ``h(t-1)``). Needs ``copy_y`` (the outputs keep the state before the reset).
            resets: ``[T, B]`` bool.
            ln_x: layer norm of ``W x``: each row of ``xp`` (then without biases) is normalised in
                place at its step, one group over every block, before the elementwise pass.
            ln_xg, ln_xs: ``[ihb*H]`` its gain, and its shift with the projection's biases added
                (``LN(W x) + b = γ â + (β + b)``).
            ahat_x: ``[T, B, ihb*H]`` (out, with ``ln_x``) the normalised ``â`` for the backward;
                ``[1, B, ihb*H]`` scratch without gradients. ``rstd_x``: ``[T, B, 1]`` (out)
                ``1 / sqrt(var + ε)`` (``[1, B, 1]`` likewise).
            ln_h: layer norm of the recurrent products, in ``work`` after each product: reset-after
                one group over every block, reset-before the gates' group after the first product
                and the candidate's after the second (``U_n (r ⊙ h)``).
            ln_hg, ln_hs: ``[hhb*H]`` its gain and shift.
            ahat_h, rstd_h: as ``ahat_x``, ``rstd_x`` for ``work`` (``[T, B, hhb*H]``,
                ``[T, B, groups]``).
            b0, b1: the batch rows ``[b0, b1)`` this call runs (the rows are independent: calls on
                disjoint row ranges may run at once on different threads; they share no writes).
        """
        masked, zo, reset, ln_x, ln_h = _switches(options, masked, zo, reset, ln_x, ln_h)
        steps, hid = xp.shape[0], hs.shape[2]
        batch = b1 - b0
        ng = gs.shape[2]  # G*H
        hhw = work.shape[1]
        xn = xp.shape[2] - hid  # column of the candidate in xp
        wn = hhw - hid  # column of U_n h in work
        dt = hs.dtype
        one = dt.type(1.0)
        iw, sw, cw = _blas_scratch(dt)
        cols = hhw if reset_after else ng  # the columns of the first per-step product
        # the recurrent weights packed once for all steps (where fns holds the packed routines)
        wnn = whh[hhw - hid :]  # U_n
        pa0, pa1 = pk[0], pk[pk.shape[0] - 1]
        if use_gemm and not small:
            if reset_after or gh:
                _pack_a(fns, pa0, 1, cols, batch, hid, whh, hid, iw, sw, cw)
            if two_gemm:
                _pack_a(fns, pa1, 1, hid, batch, hid, wnn, hid, iw, sw, cw)
        gc = np.empty(ng, dt)  # the constant gates (gconst)
        if gconst:
            for j in range(ng):
                gc[j] = _sigmoid(fast, gb[j])
            if b0 == 0:
                g0 = gs[0, 0]
                for j in range(ng):
                    g0[j] = gc[j]
        uh, uxn, uwn = np.uint64(hid), np.uint64(xn), np.uint64(wn)
        # what the recurrent products read: h(t-1), or h̃ = h(t-1) ⊙ m (recurrent dropout) in hm[0]
        ha = hm if masked else hs
        work3 = work.reshape((1, work.shape[0], hhw))  # (the layer norm's passes index [t, b, j])
        ihw = xp.shape[2]
        for t in range(steps):
            # [T, B, X] buffers (saved) are read and written at step t; [1, B, X] ones (inference:
            # nothing saved) are one step's scratch, reused at every step
            tg = t if gs.shape[0] > 1 else 0
            tn = t if ns.shape[0] > 1 else 0
            th = t if hn.shape[0] > 1 else 0
            tlx = t if ahat_x.shape[0] > 1 else 0
            tlh = t if ahat_h.shape[0] > 1 else 0
            ta = 0 if masked else t
            if reset:
                for b in range(b0, b1):
                    if t < lengths[b] and resets[t, b]:
                        for j in range(uh):
                            hs[t, b, j] = 0.0
            if masked:
                for b in range(b0, b1):
                    for j in range(uh):
                        hm[0, b, j] = hs[t, b, j] * hmask[b, j]
            if use_gemm:
                # reset-after: work[B, hhb*H] = h(t-1) @ whh^T; reset-before: work[:, :G*H] = h(t-1) @ U_gates^T
                if reset_after or gh:
                    if small:
                        for b in range(b0, b1):
                            _row_nt(ha, ta, b, whh_t, 0, cols, work, b, 0)
                    else:
                        _mm(fns, pa0, 1, cols, batch, hid, whh, hid, ha[ta, b0:], hid, 0.0, work[b0:], hhw, iw, sw, cw)
            for b in range(b0, b1):
                if t >= lengths[b]:
                    for j in range(uh):
                        hs[t + 1, b, j] = hs[t, b, j]
                    if copy_y:
                        for j in range(uh):
                            y[t, b, j] = 0.0
                    continue
                if ln_x:
                    _ln_forward(xp, t, b, 0, ihw, ln_xg, ln_xs, ahat_x, tlx, rstd_x, 0)
                if two_gemm:
                    # reset-before, first pass: gates and q = r*h(t-1) (in hn[0])
                    if gconst:
                        for j in range(uh):
                            hn[0, b, j] = gc[j] * ha[ta, b, j]
                        continue
                    if ln_h and gh:
                        _ln_forward(work3, 0, b, 0, ng, ln_hg, ln_hs, ahat_h, tlh, rstd_h, 0)
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
                        hn[0, b, j] = g1 * ha[ta, b, j]
                    continue
                if ln_h:
                    _ln_forward(work3, 0, b, 0, hhw, ln_hg, ln_hs, ahat_h, tlh, rstd_h, 0)
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
                if zo:  # hs[t+1] = ζ h(t-1) + (1 - ζ) h'
                    tz, bz = t if zeta.shape[0] > 1 else 0, b if zeta.shape[1] > 1 else 0
                    for j in range(uh):
                        zv = zeta[tz, bz, j]
                        hs[t + 1, b, j] = zv * hs[t, b, j] + (one - zv) * hs[t + 1, b, j]
                if copy_y:
                    for j in range(uh):
                        y[t, b, j] = hs[t + 1, b, j]
            if two_gemm:
                # work[:, G*H:] = (r*h(t-1)) @ U_n^T, then the candidate and the update
                if small:
                    for b in range(b0, b1):
                        _row_nt(hn, 0, b, whh_t, wn, hid, work, b, wn)
                else:
                    _mm(fns, pa1, 1, hid, batch, hid, wnn, hid, hn[0, b0:], hid, 0.0, work[b0, wn:], hhw, iw, sw, cw)
                for b in range(b0, b1):
                    if t >= lengths[b]:
                        continue
                    if ln_h:
                        _ln_forward(work3, 0, b, wn, hid, ln_hg, ln_hs, ahat_h, tlh, rstd_h, 1 if gh else 0)
                    for j in range(uh):
                        if two:
                            z = gc[uh + j] if gconst else gs[tg, b, uh + j]
                        else:
                            z = one - (gc[j] if gconst else gs[tg, b, j])
                        n = _tanh(fast, xp[t, b, uxn + j] + work[b, uwn + j])
                        ns[tn, b, j] = n
                        hs[t + 1, b, j] = (one - z) * n + z * hs[t, b, j]
                    if zo:
                        tz, bz = t if zeta.shape[0] > 1 else 0, b if zeta.shape[1] > 1 else 0
                        for j in range(uh):
                            zv = zeta[tz, bz, j]
                            hs[t + 1, b, j] = zv * hs[t, b, j] + (one - zv) * hs[t + 1, b, j]
                    if copy_y:
                        for j in range(uh):
                            y[t, b, j] = hs[t + 1, b, j]

    def backward(
        code,
        fns,
        gy,
        ghn,
        whh,
        pk,
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
        masked,
        hmask,
        hm,
        dhm,
        zo,
        zeta,
        gzero,
        zd,
        reset,
        resets,
        ln_x,
        ln_xg,
        ahat_x,
        rstd_x,
        ln_h,
        ln_hg,
        ahat_h,
        rstd_h,
        dgam_x,
        dgam_h,
        b0,
        b1,
    ):
        """Backward through time over ``T`` steps (reverse loop).

        Args:
            fns: the BLAS routines, as in the forward.
            gy: ``[T, B, H]`` upstream gradient of ``y``.
            ghn: ``[B, H]`` upstream gradient of ``h_n``.
            whh: ``[hhb*H, H]`` recurrent weights, as in the forward.
            pk: ``[2, P]`` scratch for ``whh`` packed (row 0: the ``dh(t-1)`` product's weights, row
                1: reset-before's ``U_n``), as in the forward (``[1, 1]`` unused without packing).
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
            masked, hmask: recurrent dropout, as in the forward: ``dh(t-1)`` gets
                ``hmask ⊙ dL/dh̃``; reset-before: ``dr`` and ``q`` (``qs``) read ``h̃``.
            hm: ``[1, B, H]`` scratch for ``h̃`` (reset-before, ``masked``).
            dhm: ``[B, H]`` scratch for ``dL/dh̃`` (``masked``).
            zo, zeta: zoneout, as in the forward: with ``d`` the gradient of ``h_t``, the
                step's loop reads ``(1-ζ) d`` and ``dh(t-1)`` gets ``ζ d`` besides.
            gzero: ``[1, B, H]`` zeros, what the step's loop reads instead of ``gy`` with zoneout
                (``gy`` is then in ``dh`` already).
            zd: ``[B, H]`` scratch for ``ζ d`` (zoneout).
            reset, resets: as in the forward: no gradient crosses a reset (``dh(t-1)`` of a reset
                row is zeroed after step ``t``).
            ln_x, ln_xg, ahat_x, rstd_x: layer norm of ``W x``, as in the forward (its saved ``â``
                and ``1 / sqrt(var + ε)``). Once a row is done ``dgx`` holds the gradient of the
                projection before the layer norm.
            ln_h, ln_hg, ahat_h, rstd_h: the same for the recurrent products (``dgh``).
            dgam_x, dgam_h: ``[ihb*H]``, ``[hhb*H]`` float64 (out, accumulated, with ``ln_x``,
                ``ln_h``) the gains' gradients; ``dbx``, ``dbh`` are then also the shifts', and
                are always accumulated.
            b0, b1: the batch rows ``[b0, b1)`` this call runs (as in the forward; ``dgb`` is the
                only output shared between rows: give each concurrent call its own).
        """
        masked, zo, reset, ln_x, ln_h = _switches(options, masked, zo, reset, ln_x, ln_h)
        steps, _, hid = gy.shape
        batch = b1 - b0
        ng = gs.shape[2]
        hhw = dgh.shape[2]
        xn = dgx.shape[2] - hid
        wn = hhw - hid
        dt = gy.dtype
        one = dt.type(1.0)
        iw, sw, cw = _blas_scratch(dt)
        uh, uxn, uwn = np.uint64(hid), np.uint64(xn), np.uint64(wn)
        ux, uhw = np.uint64(dgx.shape[2]), np.uint64(hhw)
        n8 = dgx.shape[2] - dgx.shape[2] % 8
        # the columns of dgh[t] that feed dh(t-1) through the per-step product on W_hh
        # (reset-before: the gates'; c's went through U_n into dq first)
        back = (ng if gh else 0) if two_gemm else (hhw if use_gemm else 0)
        # the recurrent weights packed once for all steps (where fns holds the packed routines)
        wnn = whh[hhw - hid :]  # U_n
        pa0, pa1 = pk[0], pk[pk.shape[0] - 1]
        if not small:
            if back:
                _pack_a(fns, pa0, 0, hid, batch, back, whh, hid, iw, sw, cw)
            if two_gemm:
                _pack_a(fns, pa1, 0, hid, batch, hid, wnn, hid, iw, sw, cw)
        # zoneout: the step's loops read their whole gradient from dh (see below)
        gya = gzero if zo else gy
        # recurrent dropout: the reset-before products read h̃ (in hm[0]), and dL/dh̃ collects in dhm
        ha = hm if masked else hs
        # the product into dL/dh̃ starts it (reset-after) or adds to r ⊙ dq (reset-before)
        beta = one if two_gemm else dt.type(0.0)
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
            ty = 0 if zo else t
            ta = 0 if masked else t
            if zo:
                # zoneout splits d = dh + gy[t]: ζ d goes straight to h(t-1) (zd, added below), and
                # (1 - ζ) d through the new state (into dh, which the step's loops then read whole)
                for b in range(b0, b1):
                    if t < lengths[b]:
                        tz, bz = t if zeta.shape[0] > 1 else 0, b if zeta.shape[1] > 1 else 0
                        for j in range(uh):
                            d = dh[b, j] + gy[t, b, j]
                            zv = zeta[tz, bz, j]
                            zd[b, j] = zv * d
                            dh[b, j] = (one - zv) * d
            if two_gemm:
                # reset-before, first pass: dz, the update's share of dh(t-1), and c = dL/d(U_n q)
                for b in range(b0, b1):
                    if t >= lengths[b]:
                        _dead_row(dh, dhp, dgx, dgh, qs, dxo, t, tx, b, fold_dx, two_gemm)
                        continue
                    bg = 0 if gconst else b
                    for j in range(uh):
                        d = dh[b, j] + gya[ty, b, j]
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
                    if masked:
                        for j in range(uh):
                            hm[0, b, j] = hs[t, b, j] * hmask[b, j]
                            dhm[b, j] = 0.0
                    if ln_h:
                        _ln_backward(dgh, t, b, wn, hid, ln_hg, ahat_h, t, rstd_h, 1 if gh else 0, dgam_h, dbh)
                    if small:
                        # dq = c @ U_n, into dh[b] (consumed)
                        _row_nn(dgh, t, b, wn, hid, whh, dh, b, False)
                if not small:
                    # dq[B, H] = c[B, H] @ U_n  (into dh: it is consumed)
                    _mm(fns, pa1, 0, hid, batch, hid, wnn, hid, dgh[t, b0, wn:], hhw, 0.0, dh[b0:], hid, iw, sw, cw)
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
                        dr = dh[b, j] * ha[ta, b, j]
                        if masked:  # dL/dh̃ collects in dhm
                            dhm[b, j] += dh[b, j] * g1
                        else:
                            dhp[b, j] += dh[b, j] * g1
                        qs[t, b, j] = g1 * ha[ta, b, j]
                        if two:
                            z = gs[tg, bg, uh + j]
                            a1 = dr * g1 * (one - g1)
                            a2 = dzs[b, j] * z * (one - z)
                        else:
                            a1 = (dr - dzs[b, j]) * g1 * (one - g1)
                            a2 = a1
                    else:
                        d = dh[b, j] + gya[ty, b, j]
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
                # (with a layer norm its backward sums them, before dgx or dgh become the gradients
                # of what it normalised)
                if sums and not ln_x:
                    for j in range(ux):
                        dbx[j] += dgx[tx, b, j]
                if sums and not ln_h:
                    for j in range(uhw):
                        dbh[j] += dgh[t, b, j]
                if ln_x:
                    _ln_backward(dgx, tx, b, 0, dgx.shape[2], ln_xg, ahat_x, t, rstd_x, 0, dgam_x, dbx)
                if ln_h:
                    if not two_gemm:
                        _ln_backward(dgh, t, b, 0, hhw, ln_hg, ahat_h, t, rstd_h, 0, dgam_h, dbh)
                    elif gh:
                        _ln_backward(dgh, t, b, 0, ng, ln_hg, ahat_h, t, rstd_h, 0, dgam_h, dbh)
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
                    # dh(t-1) += dgh[t, b, :back] @ whh[:back]  (recurrent dropout: into dL/dh̃, which it
                    # starts in the reset-after form and adds to in the reset-before form)
                    if masked:
                        _row_nn(dgh, t, b, 0, back, whh, dhm, b, two_gemm)
                    else:
                        _row_nn(dgh, t, b, 0, back, whh, dhp, b, True)
            if back and not small:
                # dh(t-1) += dgh[t][B, :back] @ whh[:back]  (recurrent dropout: as above)
                if masked:
                    _mm(fns, pa0, 0, hid, batch, back, whh, hid, dgh[t, b0:], hhw, beta, dhm[b0:], hid, iw, sw, cw)
                else:
                    _mm(fns, pa0, 0, hid, batch, back, whh, hid, dgh[t, b0:], hhw, one, dhp[b0:], hid, iw, sw, cw)
            if masked or zo:
                for b in range(b0, b1):
                    if t < lengths[b]:
                        if masked:
                            for j in range(uh):
                                dhp[b, j] += hmask[b, j] * dhm[b, j]
                        if zo:
                            for j in range(uh):
                                dhp[b, j] += zd[b, j]
            if reset:
                for b in range(b0, b1):
                    if t < lengths[b] and resets[t, b]:
                        for j in range(uh):
                            dhp[b, j] = 0.0
            dh, dhp = dhp, dh
        for b in range(b0, b1):
            for j in range(uh):
                dh0[b, j] = dh[b, j]

    return forward, backward


def _code(wiring: Wiring, fast: bool, options: bool) -> int:
    """The switches of one wiring, data type and options flag as one integer: a compile-time
    constant of the kernels, which pass it to the loops (:func:`_decode` reads it back)."""
    on = (wiring.gates == 2, *wiring[1:], fast, options)
    return sum(1 << i for i, bit in enumerate(on) if bit)


def _decode(code: Any) -> tuple[Wiring, bool, bool] | None:
    """``(wiring, fast, options)`` of a literal ``code`` (numba's type of it), or None while numba
    types it as a plain integer (it then types the call again with the literal value)."""
    if not isinstance(code, types.IntegerLiteral):
        return None
    bits = [bool(code.literal_value >> i & 1) for i in range(len(Wiring._fields) + 2)]
    return Wiring(2 if bits[0] else 1, *bits[1:-2]), bits[-2], bits[-1]


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
    switches = _decode(code)
    return None if switches is None else _loops(*switches)[0]


@overload(_backward_loop, strict=False, jit_options=_LOOP_JIT)
def _ol_backward_loop(code, *args):  # type: ignore[no-untyped-def]
    switches = _decode(code)
    return None if switches is None else _loops(*switches)[1]


@functools.cache
def kernels(wiring: Wiring, fast: bool, options: bool = False) -> tuple[Callable[..., None], Callable[..., None]]:
    """``(forward, backward)`` compiled loops for one wiring (see the module docstring); ``fast``:
    float32 (rational activations); ``options``: the options compiled in (see :func:`_loops`).
    Their arguments: those of :func:`_loops`' functions after ``code``, documented there.

    Compiles lazily on first call (numba dispatchers), cached on disk next to this module.
    """
    code = _code(wiring, bool(fast), bool(options))

    @njit(**_JIT)
    def forward(
        fns,
        xp,
        gb,
        whh,
        whh_t,
        pk,
        bhn,
        lengths,
        hs,
        y,
        gs,
        ns,
        hn,
        work,
        copy_y,
        small,
        masked,
        hmask,
        hm,
        zo,
        zeta,
        reset,
        resets,
        ln_x,
        ln_xg,
        ln_xs,
        ahat_x,
        rstd_x,
        ln_h,
        ln_hg,
        ln_hs,
        ahat_h,
        rstd_h,
        b0,
        b1,
    ):
        _forward_loop(
            code,
            fns,
            xp,
            gb,
            whh,
            whh_t,
            pk,
            bhn,
            lengths,
            hs,
            y,
            gs,
            ns,
            hn,
            work,
            copy_y,
            small,
            masked,
            hmask,
            hm,
            zo,
            zeta,
            reset,
            resets,
            ln_x,
            ln_xg,
            ln_xs,
            ahat_x,
            rstd_x,
            ln_h,
            ln_hg,
            ln_hs,
            ahat_h,
            rstd_h,
            b0,
            b1,
        )

    @njit(**_JIT)
    def backward(
        fns,
        gy,
        ghn,
        whh,
        pk,
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
        masked,
        hmask,
        hm,
        dhm,
        zo,
        zeta,
        gzero,
        zd,
        reset,
        resets,
        ln_x,
        ln_xg,
        ahat_x,
        rstd_x,
        ln_h,
        ln_hg,
        ahat_h,
        rstd_h,
        dgam_x,
        dgam_h,
        b0,
        b1,
    ):
        _backward_loop(
            code,
            fns,
            gy,
            ghn,
            whh,
            pk,
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
            masked,
            hmask,
            hm,
            dhm,
            zo,
            zeta,
            gzero,
            zd,
            reset,
            resets,
            ln_x,
            ln_xg,
            ahat_x,
            rstd_x,
            ln_h,
            ln_hg,
            ahat_h,
            rstd_h,
            dgam_x,
            dgam_h,
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
    code = _code(wiring, bool(fast), False)
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
        u1 = np.empty(1, dt)
        u2 = np.empty((1, 1), dt)
        u3 = np.empty((1, 1, 1), dt)
        no_resets = np.zeros((1, 1), np.bool_)
        fns = np.zeros(3, np.int64)
        fns[0] = fptr
        _forward_loop(
            code,
            fns,
            xp,
            gb,
            whh,
            u2,
            u2,
            bhn,
            lens,
            hs,
            y,
            gs,
            ns,
            hn,
            work,
            copy_y,
            False,
            # the options, off: recurrent dropout, zoneout, resets, the two layer norms
            False,
            u2,
            u3,
            False,
            u3,
            False,
            no_resets,
            False,
            u1,
            u1,
            u3,
            u3,
            False,
            u1,
            u1,
            u3,
            u3,
            b0,
            batch,
        )
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
        u1 = np.empty(1, dt)
        u2 = np.empty((1, 1), dt)
        u3 = np.empty((1, 1, 1), dt)
        no_resets = np.zeros((1, 1), np.bool_)
        no_dgam = np.empty(1)
        fns = np.zeros(3, np.int64)
        fns[0] = fptr
        _backward_loop(
            code,
            fns,
            gy,
            ghn,
            whh,
            u2,
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
            # the options, off: recurrent dropout, zoneout, resets, the two layer norms
            False,
            u2,
            u3,
            u2,
            False,
            u3,
            u3,
            u2,
            False,
            no_resets,
            False,
            u1,
            u3,
            u3,
            False,
            u1,
            u3,
            u3,
            no_dgam,
            no_dgam,
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
