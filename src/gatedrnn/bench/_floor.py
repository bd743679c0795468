"""The GEMM-only floor: a variant's matrix products timed alone, with the BLAS and the row loops
the fused engine calls (:mod:`gatedrnn._engines._kernels`), and the large product that gives the
host's rate. Imports numba: loaded when a benchmark runs, never by the library."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numba import njit

from .._engines._kernels import _JIT, _blas_scratch, _mm, _pack_a, _row_nn, _row_nt
from ._flops import SGEMM_SIDE

__all__ = ["floor_nn", "floor_nt", "gemm_floor", "onednn_gemm", "sgemm"]


@njit(**_JIT)
def floor_nt(fns, a, w, w_t, pa, c, steps, small):
    """``steps`` times ``c[B, N] = a[B, K] @ w[N, K]^T``: the forward's per-step products alone
    (``small``: as the kernels run them for a few rows, :func:`_row_nt` on ``w_t = w^T``; else
    on ``w`` packed into ``pa`` once where ``fns`` packs, as the kernels do)."""
    batch, k = a.shape
    n = w.shape[0]
    iw, sw, cw = _blas_scratch(c.dtype)
    a3 = a.reshape((1, batch, k))
    if not small:
        _pack_a(fns, pa, 1, n, batch, k, w, k, iw, sw, cw)
    for _ in range(steps):
        if small:
            for b in range(batch):
                _row_nt(a3, 0, b, w_t, 0, n, c, b, 0)
        else:
            _mm(fns, pa, 1, n, batch, k, w, k, a, k, 0.0, c, n, iw, sw, cw)


@njit(**_JIT)
def floor_nn(fns, d, w, pa, c, steps, small):
    """``steps`` times ``c[B, H] += d[B, N] @ w[N, H]``: the backward's per-step products alone
    (``small``: as :func:`_row_nn`; else packed as in :func:`floor_nt`)."""
    batch, n = d.shape
    hid = w.shape[1]
    iw, sw, cw = _blas_scratch(c.dtype)
    one = c.dtype.type(1.0)
    d3 = d.reshape((1, batch, n))
    if not small:
        _pack_a(fns, pa, 0, hid, batch, n, w, hid, iw, sw, cw)
    for _ in range(steps):
        if small:
            for b in range(batch):
                _row_nn(d3, 0, b, 0, n, w, c, b, True)
        else:
            _mm(fns, pa, 0, hid, batch, n, w, hid, d, n, one, c, hid, iw, sw, cw)


def sgemm(side: int = SGEMM_SIDE) -> Callable[[], None]:
    """A callable doing one ``side``-cubed float32 product (output preallocated), torch's BLAS and threads."""
    a, b, out = torch.randn(side, side), torch.randn(side, side), torch.empty(side, side)

    def run() -> None:
        torch.mm(a, b, out=out)

    return run


def onednn_gemm(side: int = SGEMM_SIDE, dtype: torch.dtype | None = None) -> Callable[[], None] | None:
    """A callable doing one ``side``-cubed product through oneDNN (the library behind
    ``torch.nn.LSTM``; torch's float32 ``mm`` calls MKL instead), or None where torch has no oneDNN.
    oneDNN picks its kernels by the instruction sets alone, where MKL may run a narrower code path
    on some CPUs: the two rates side by side say whether a faster product exists on the host.
    ``dtype`` bfloat16: torch's bfloat16 ``mm`` (oneDNN, float32 accumulation), the product the
    fused engine runs for its input projection and weight gradients in bfloat16."""
    if not torch.backends.mkldnn.is_available():
        return None
    if dtype == torch.bfloat16:
        p, q = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)

        def run_bf16() -> None:
            torch.mm(p, q)

        return run_bf16
    a = torch.randn(side, side).to_mkldnn()
    w = torch.randn(side, side).to_mkldnn()

    def run() -> None:
        torch._C._nn.mkldnn_linear(a, w)

    return run


def gemm_floor(variant: str, reset_after: bool, size: tuple[int, int, int, int], backward: bool) -> Callable[[], None]:
    """A callable doing the variant's matrix products alone (float32, same BLAS as the engine).

    The per-step products run the way the engine runs them: with several torch threads, on the
    same batch row ranges at once (one-thread BLAS each, in torch's OpenMP team).
    """
    from .._engines._fused import SMALL_MIN_STEPS, _backward_products, _forward_products, _mm_nt, _packing, _small
    from .._engines._threads import row_ranges, run_rows
    from .._specs import get_spec

    spec = get_spec(variant)
    batch, steps, inp, hid = size
    ihw, hhw, ng = spec.ih_blocks() * hid, spec.hh_blocks() * hid, spec.num_gates * hid
    ra = reset_after and spec.has_reset
    x2 = torch.randn(steps * batch, inp)
    w_ih = torch.randn(ihw, inp)
    h = np.random.randn(batch, hid).astype(np.float32)
    whh = (np.random.randn(max(hhw, 1), hid) * 0.1).astype(np.float32)
    wg, wn = whh[: max(ng, 1)], whh[hhw - hid :] if hhw else whh
    out_f = np.zeros((batch, max(hhw, 1)), np.float32)
    d = np.random.randn(batch, max(hhw, 1)).astype(np.float32)
    dn, dg = np.ascontiguousarray(d[:, :hid]), np.ascontiguousarray(d[:, : max(ng, 1)])
    out_b = np.zeros((batch, hid), np.float32)
    dgx = torch.randn(steps * batch, ihw)
    dgh = torch.randn(steps * batch, max(hhw, 1))
    hs = torch.randn(steps * batch, hid)
    small = _small(spec.candidate_reads_h, batch, hid, hhw)
    small_f = small and steps >= SMALL_MIN_STEPS
    whh_t, wg_t, wn_t = (np.ascontiguousarray(m.T) for m in (whh, wg, wn))
    ranges = row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    step_flops = 2 * batch * hid * hhw
    # the engine's choice of packed or plain products, and packing scratch of the shape it uses
    # (buffers of its own: the engine's are reused by the candidates timed in the same rounds;
    # torch's allocator aligns them to 64 bytes, as MKL's packed format wants)
    fns_f, pk_f = _packing(torch.float32, _forward_products(spec, ra, hid) if not small_f else [], ranges)
    fns_b, pk_b = _packing(torch.float32, _backward_products(spec, ra, hid) if not small else [], ranges)
    pk_f, pk_b = (torch.empty(p.shape).numpy() for p in (pk_f, pk_b))

    def forward_rows(i: int, b0: int, b1: int) -> None:
        pk = pk_f[i % len(pk_f)]
        if ra:
            floor_nt(fns_f, h[b0:b1], whh, whh_t, pk[0], out_f[b0:b1], steps, small_f)
        else:
            if spec.gates_read_h:
                floor_nt(fns_f, h[b0:b1], wg, wg_t, pk[0], out_f[b0:b1, :ng], steps, small_f)
            floor_nt(fns_f, h[b0:b1], wn, wn_t, pk[-1], out_f[b0:b1, :hid], steps, small_f)

    def backward_rows(i: int, b0: int, b1: int) -> None:
        pk = pk_b[i % len(pk_b)]
        if ra:
            floor_nn(fns_b, d[b0:b1], whh, pk[0], out_b[b0:b1], steps, small)
        else:
            floor_nn(fns_b, dn[b0:b1], wn, pk[-1], out_b[b0:b1], steps, small)
            if spec.gates_read_h:
                floor_nn(fns_b, dg[b0:b1], wg, pk[0], out_b[b0:b1], steps, small)

    # the products over all steps as the engine runs them (oneDNN or MKL: _fused._mm_nt)
    def run() -> None:
        _mm_nt(x2, w_ih)
        if spec.candidate_reads_h:
            run_rows(forward_rows, ranges, step_flops)
        if not backward:
            return
        if spec.candidate_reads_h:
            run_rows(backward_rows, ranges, step_flops)
            _mm_nt(dgh.t(), hs.t())
        _mm_nt(dgx, w_ih.t())
        _mm_nt(dgx.t(), x2.t())

    return run
