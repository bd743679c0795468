"""Triton kernels of the triton engine: one kernel family for every variant, wiring as ``tl.constexpr``.

Loaded only by :mod:`gatedrnn._engines._triton` (never at ``import gatedrnn``), and loaded once per
Triton mode: ``@triton.jit`` decides at decoration time whether it builds a compiled kernel or an
interpreted one (``TRITON_INTERPRET=1``), so the engine execs a fresh copy of this module for each
mode it meets (see ``_triton._kernels``).

Notation (shapes): ``T`` steps, ``B`` batch, ``H`` hidden, ``G`` gates (2: r, z; 1: MGU's f or
minGRU's z), ``NB = hh_blocks`` blocks of ``W_hh`` (``[NB*H, H]``, gate blocks then the
candidate block ``U_n``). ``ACC`` is the work dtype (float32, float64 for float64 inputs); the
state sequence and every buffer the backward reuses are kept in ``ACC``.

The maths (PyTorch's convention, see :mod:`gatedrnn._specs`)::

    g = σ(gx + U_g h)                      gates (U_g h only if GATES_READ_H)
    r, z = g_r, g_z | f, 1 - f (COUPLED) | -, g (minGRU)
    npre = nx + r ⊙ (U_n h + b_hn)         RESET_AFTER
    npre = nx + U_n (r ⊙ h)                reset before
    n = tanh(npre) (CAND_TANH) | npre;     h' = n + z ⊙ (h - n)
    steps t >= lengths[b] keep h and write no gradient (HAS_LEN).

Backward per step (``dh`` = carried gradient + ``dy[t]`` where alive)::

    dnpre = dh (1 - z) (1 - n²);   dz = dh (h - n);   dh_prev = dh z
    RESET_AFTER:  dhn = dnpre r;  dr = dnpre ⊙ hn;   dh_prev += dhn U_n
    reset before: drh = dnpre U_n;  dr = drh ⊙ h;    dh_prev += drh ⊙ r
    dpre_g = (dr, dz) ⊙ g (1 - g)  (MGU: (dr - dz) f (1 - f));   dh_prev += dpre_g U_g

The weight gradients, ``dx`` and the bias gradients are single matrix products / sums done by
the engine in torch from the ``dG``, ``dN``, ``dHN`` buffers the backward kernels write.

GPU constraints respected here: every block size is a power of two, every ``tl.dot`` operand
dimension is >= 16 (batch tiles are padded with masks), non-power-of-two ``H`` and ``B`` are
masked, time offsets advance 64-bit pointers (no int32 overflow of ``t * stride``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------
# element-wise helpers (device functions)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _sigmoid(x):
    """σ(x) written with tl.exp: Triton's own tl.sigmoid is a @triton.jit function whose mode
    (compiled / interpreted) is fixed when triton is first imported, which would tie this
    module's interpreter mode to import order."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _rz(g1, g2, GATES: tl.constexpr, COUPLED: tl.constexpr):
    """(r, z) from the gate activations ``g1`` (first block) and ``g2`` (second block, GATES == 2)."""
    if COUPLED:
        r = g1
        z = 1.0 - g1
    elif GATES == 2:
        r = g1
        z = g2
    else:
        r = g1  # unused (minGRU has no reset)
        z = g1
    return r, z


@triton.jit
def _cand(npre, z, h, CAND_TANH: tl.constexpr):
    """(n, h') from the candidate pre-activation, the update gate and h(t-1)."""
    if CAND_TANH:
        n = 2.0 * _sigmoid(2.0 * npre) - 1.0
    else:
        n = npre
    return n, n + z * (h - n)


@triton.jit
def _cell_bwd(dh, h, z, n, CAND_TANH: tl.constexpr):
    """(dnpre, dz, dh_prev's direct term) from dh(t), h(t-1), z and n."""
    dn = dh * (1.0 - z)
    if CAND_TANH:
        dnpre = dn * (1.0 - n * n)
    else:
        dnpre = dn
    return dnpre, dh * (h - n), dh * z


@triton.jit
def _gates_bwd(dr, dz, g1, g2, GATES: tl.constexpr, COUPLED: tl.constexpr):
    """Gradients of the gates' pre-activations (first block, second block)."""
    if COUPLED:
        d1 = (dr - dz) * g1 * (1.0 - g1)
        d2 = d1
    elif GATES == 2:
        d1 = dr * g1 * (1.0 - g1)
        d2 = dz * g2 * (1.0 - g2)
    else:
        d1 = dz * g1 * (1.0 - g1)
        d2 = d1
    return d1, d2


# ---------------------------------------------------------------------------------------------
# persistent kernels: the whole time loop in one launch, W_hh held in registers
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["s_gt", "s_gb", "s_nt", "s_nb", "T", "B", "H"])
def rnn_persistent_fwd(
    gx_ptr,
    s_gt,
    s_gb,
    nx_ptr,
    s_nt,
    s_nb,
    w_ptr,
    bhn_ptr,
    len_ptr,
    hs_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    T,
    B,
    H,
    GATES: tl.constexpr,
    COUPLED: tl.constexpr,
    GATES_READ_X: tl.constexpr,
    GATES_READ_H: tl.constexpr,
    CAND_READS_H: tl.constexpr,
    CAND_TANH: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    HAS_GX: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    """Forward of one layer-direction, all T steps in one launch (persistent).

    Grid ``(cdiv(B, BB), cdiv(H, BH))``; each program owns a batch tile of ``BB`` rows and loops
    over time with ``h`` and the recurrent weights in registers. With recurrent weights the
    hidden dimension must fit one tile (``BH >= H``, grid axis 1 of size 1); minGRU (no weights)
    also tiles ``H``.

    Args:
        gx_ptr: ``[T, B, G*H]`` gates' input side ``W_g x + b_g`` (time stride ``s_gt``, batch
            stride ``s_gb``, unit column stride); ``[G*H]`` with ``s_gt = s_gb = 0`` for gates fed
            by the bias only (gru1, gru3); unread when ``HAS_GX`` is False (gru2).
        nx_ptr: ``[T, B, H]`` candidate input side ``W_n x + b_n`` (strides ``s_nt``, ``s_nb``).
        w_ptr: ``[NB*H, H]`` W_hh (unread for minGRU).
        bhn_ptr: ``[H]`` b_hn (read if ``HAS_BHN``: reset-after with a bias).
        len_ptr: ``[B]`` int64 lengths (read if ``HAS_LEN``).
        hs_ptr: ``[T+1, B, H]`` ACC, contiguous: ``hs[0] = h0`` on entry; the kernel writes the
            states ``hs[1..T]`` (frozen past a sequence's length). Reused by the backward
            (``h(t-1) = hs[t]``) and by the weight gradients.
        g_ptr: ``[T, B, G*H]`` ACC out: gate activations σ(pre). Reused by the backward.
        n_ptr: ``[T, B, H]`` ACC out: candidate n. Reused by the backward.
        hn_ptr: ``[T, B, H]`` ACC out (RESET_AFTER with CAND_READS_H): ``U_n h + b_hn``.
            Reused by the backward (``dr = dnpre * hn``).
        T, B, H: sizes.
        GATES, COUPLED, GATES_READ_X, GATES_READ_H, CAND_READS_H, CAND_TANH, RESET_AFTER: the variant's
            wiring (:class:`gatedrnn._specs.Wiring`; GATES_READ_X is carried by ``HAS_GX`` here).
        HAS_GX, HAS_BHN, HAS_LEN: which optional inputs exist.
        ACC: work dtype (tl.float32 / tl.float64); PREC: tl.dot input precision; DOT: tl.dot
            operand dtype (the weights' dtype; float32 for bfloat16 under the interpreter,
            whose tl.dot mishandles bfloat16).
        BB: batch tile (power of two, >= 16 for tl.dot); BH: hidden tile (power of two, >= 16).
    """
    pid_b = tl.program_id(0)
    pid_j = tl.program_id(1)
    rb = pid_b * BB + tl.arange(0, BB)
    rj = pid_j * BH + tl.arange(0, BH)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    rb64 = rb.to(tl.int64)
    rk = tl.arange(0, BH)
    wm = (rk[:, None] < H) & mj[None, :]
    woff = rj[None, :] * H + rk[:, None]  # W[blk*H + j, k] laid out as [k, j] (W^T)
    if GATES_READ_H:
        w_r = tl.load(w_ptr + woff, mask=wm, other=0.0).to(DOT)
        if GATES == 2:
            w_z = tl.load(w_ptr + H * H + woff, mask=wm, other=0.0).to(DOT)
    if CAND_READS_H:
        if GATES_READ_H:
            w_n = tl.load(w_ptr + GATES * H * H + woff, mask=wm, other=0.0).to(DOT)
        else:
            w_n = tl.load(w_ptr + woff, mask=wm, other=0.0).to(DOT)
        if HAS_BHN:
            bhn = tl.load(bhn_ptr + rj, mask=mj, other=0.0).to(ACC)
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)

    off = rb64[:, None] * H + rj[None, :]
    hs_p = hs_ptr + off
    h = tl.load(hs_p, mask=m2, other=0.0).to(ACC)
    gx_p = gx_ptr + rb64[:, None] * s_gb + rj[None, :]
    nx_p = nx_ptr + rb64[:, None] * s_nb + rj[None, :]
    goff = rb64[:, None] * (GATES * H) + rj[None, :]
    g_p = g_ptr + goff
    n_p = n_ptr + off
    hn_p = hn_ptr + off
    BH_ = B * H
    for t in range(T):
        if HAS_GX:
            p1 = tl.load(gx_p, mask=m2, other=0.0).to(ACC)
            if GATES == 2:
                p2 = tl.load(gx_p + H, mask=m2, other=0.0).to(ACC)
            else:
                p2 = p1
        else:
            p1 = tl.full([BB, BH], 0.0, ACC)
            p2 = p1
        if GATES_READ_H:
            hd = h.to(DOT)
            p1 += tl.dot(hd, w_r, out_dtype=ACC, input_precision=PREC)
            if GATES == 2:
                p2 += tl.dot(hd, w_z, out_dtype=ACC, input_precision=PREC)
        g1 = _sigmoid(p1)
        if GATES == 2:
            g2 = _sigmoid(p2)
        else:
            g2 = g1
        r, z = _rz(g1, g2, GATES, COUPLED)
        npre = tl.load(nx_p, mask=m2, other=0.0).to(ACC)
        if CAND_READS_H:
            if RESET_AFTER:
                hn = tl.dot(h.to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
                if HAS_BHN:
                    hn += bhn[None, :]
                npre += r * hn
                tl.store(hn_p, hn, mask=m2)
            else:
                npre += tl.dot((r * h).to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
        n, hnew = _cand(npre, z, h, CAND_TANH)
        if HAS_LEN:
            hnew = tl.where((t < L)[:, None], hnew, h)
        tl.store(g_p, g1, mask=m2)
        if GATES == 2:
            tl.store(g_p + H, g2, mask=m2)
        tl.store(n_p, n, mask=m2)
        hs_p += BH_
        tl.store(hs_p, hnew, mask=m2)
        h = hnew
        gx_p += s_gt
        nx_p += s_nt
        g_p += BH_ * GATES
        n_p += BH_
        hn_p += BH_


@triton.jit(do_not_specialize=["T", "B", "H"])
def rnn_persistent_bwd(
    dy_ptr,
    dhT_ptr,
    hs_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    w_ptr,
    len_ptr,
    dg_ptr,
    dn_ptr,
    dhn_ptr,
    dh0_ptr,
    T,
    B,
    H,
    GATES: tl.constexpr,
    COUPLED: tl.constexpr,
    GATES_READ_X: tl.constexpr,
    GATES_READ_H: tl.constexpr,
    CAND_READS_H: tl.constexpr,
    CAND_TANH: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    """Backward of :func:`rnn_persistent_fwd`, all T steps (t = T-1 .. 0) in one launch.

    Grid and tiles as the forward; ``dh`` and W_hh (not transposed: ``dh_prev += dA @ W``)
    stay in registers.

    Args:
        dy_ptr: ``[T, B, H]`` contiguous, gradient of the output y (any float dtype; only steps
            ``t < lengths[b]`` are read: y is 0 past the length).
        dhT_ptr: ``[B, H]`` contiguous, gradient of h_n.
        hs_ptr: ``[T+1, B, H]`` ACC, the forward's states (reused: ``h(t-1) = hs[t]``).
        g_ptr: ``[T, B, G*H]`` ACC, the forward's gate activations (reused).
        n_ptr: ``[T, B, H]`` ACC, the forward's candidates (reused).
        hn_ptr: ``[T, B, H]`` ACC, the forward's ``U_n h + b_hn`` (reused; RESET_AFTER only).
        w_ptr: ``[NB*H, H]`` W_hh.
        len_ptr: ``[B]`` int64 lengths (HAS_LEN).
        dg_ptr: ``[T, B, G*H]`` ACC out: gradient of the gates' pre-activations (0 past a
            length). The engine turns it into dW_ih / dW_hh gate blocks, db and dx (GEMMs).
        dn_ptr: ``[T, B, H]`` ACC out: gradient of the candidate's pre-activation (= d nx).
        dhn_ptr: ``[T, B, H]`` ACC out (RESET_AFTER): gradient of ``U_n h + b_hn``.
        dh0_ptr: ``[B, H]`` ACC out: gradient of h0.
        T, B, H, constexprs: as :func:`rnn_persistent_fwd`.
    """
    pid_b = tl.program_id(0)
    pid_j = tl.program_id(1)
    rb = pid_b * BB + tl.arange(0, BB)
    rj = pid_j * BH + tl.arange(0, BH)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    rb64 = rb.to(tl.int64)
    rk = tl.arange(0, BH)
    wm = (rk[:, None] < H) & mj[None, :]
    woff = rk[:, None] * H + rj[None, :]  # W[blk*H + k, j] as [k, j]
    if GATES_READ_H:
        w_r = tl.load(w_ptr + woff, mask=wm, other=0.0).to(DOT)
        if GATES == 2:
            w_z = tl.load(w_ptr + H * H + woff, mask=wm, other=0.0).to(DOT)
    if CAND_READS_H:
        if GATES_READ_H:
            w_n = tl.load(w_ptr + GATES * H * H + woff, mask=wm, other=0.0).to(DOT)
        else:
            w_n = tl.load(w_ptr + woff, mask=wm, other=0.0).to(DOT)
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)

    off = rb64[:, None] * H + rj[None, :]
    goff = rb64[:, None] * (GATES * H) + rj[None, :]
    BH_ = B * H
    last = (T - 1).to(tl.int64)
    dh = tl.load(dhT_ptr + off, mask=m2, other=0.0).to(ACC)
    dy_p = dy_ptr + off + last * BH_
    hs_p = hs_ptr + off + last * BH_
    n_p = n_ptr + off + last * BH_
    hn_p = hn_ptr + off + last * BH_
    dn_p = dn_ptr + off + last * BH_
    dhn_p = dhn_ptr + off + last * BH_
    g_p = g_ptr + goff + last * (BH_ * GATES)
    dg_p = dg_ptr + goff + last * (BH_ * GATES)
    for i in range(T):
        t = T - 1 - i
        dyt = tl.load(dy_p, mask=m2, other=0.0).to(ACC)
        if HAS_LEN:
            alive = (t < L)[:, None]
            dh = tl.where(alive, dh + dyt, dh)
        else:
            dh = dh + dyt
        h = tl.load(hs_p, mask=m2, other=0.0)
        g1 = tl.load(g_p, mask=m2, other=0.0)
        if GATES == 2:
            g2 = tl.load(g_p + H, mask=m2, other=0.0)
        else:
            g2 = g1
        n = tl.load(n_p, mask=m2, other=0.0)
        r, z = _rz(g1, g2, GATES, COUPLED)
        dnpre, dz, dprev = _cell_bwd(dh, h, z, n, CAND_TANH)
        if HAS_LEN:
            dnpre = tl.where(alive, dnpre, 0.0)
            dz = tl.where(alive, dz, 0.0)
        dr = dz  # placeholder for minGRU (no reset gate)
        if CAND_READS_H:
            if RESET_AFTER:
                hn = tl.load(hn_p, mask=m2, other=0.0)
                dr = dnpre * hn
                dhn = dnpre * r
                tl.store(dhn_p, dhn, mask=m2)
                dprev += tl.dot(dhn.to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
            else:
                drh = tl.dot(dnpre.to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
                dr = drh * h
                dprev += drh * r
        d1, d2 = _gates_bwd(dr, dz, g1, g2, GATES, COUPLED)
        if GATES_READ_H:
            dprev += tl.dot(d1.to(DOT), w_r, out_dtype=ACC, input_precision=PREC)
            if GATES == 2:
                dprev += tl.dot(d2.to(DOT), w_z, out_dtype=ACC, input_precision=PREC)
        tl.store(dg_p, d1, mask=m2)
        if GATES == 2:
            tl.store(dg_p + H, d2, mask=m2)
        tl.store(dn_p, dnpre, mask=m2)
        if HAS_LEN:
            dh = tl.where(alive, dprev, dh)
        else:
            dh = dprev
        dy_p -= BH_
        hs_p -= BH_
        n_p -= BH_
        hn_p -= BH_
        dn_p -= BH_
        dhn_p -= BH_
        g_p -= BH_ * GATES
        dg_p -= BH_ * GATES
    tl.store(dh0_ptr + off, dh, mask=m2)


# ---------------------------------------------------------------------------------------------
# step kernels: one time step per launch (any H), the recurrent matmul fused with the epilogue
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["s_gb", "s_nb", "t", "B", "H"])
def rnn_step_fwd(
    gx_ptr,
    s_gb,
    nx_ptr,
    s_nb,
    w_ptr,
    bhn_ptr,
    len_ptr,
    h_ptr,
    out_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    rh_ptr,
    t,
    B,
    H,
    GATES: tl.constexpr,
    COUPLED: tl.constexpr,
    GATES_READ_X: tl.constexpr,
    GATES_READ_H: tl.constexpr,
    CAND_READS_H: tl.constexpr,
    CAND_TANH: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    HAS_GX: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    PHASE: tl.constexpr,
    BB: tl.constexpr,
    BJ: tl.constexpr,
    BK: tl.constexpr,
):
    """Forward of one time step ``t``: ``h(t)`` from ``h(t-1)``, the recurrent matmul fused with the gates.

    Grid ``(cdiv(B, BB), cdiv(H, BJ))``; each program computes a ``[BB, BJ]`` tile of the output,
    looping over the reduction dimension ``H`` in chunks of ``BK``.

    ``PHASE`` 0: the whole step in one launch (reset-after, or no recurrent candidate).
    Reset-before needs ``r ⊙ h`` over all of ``H`` before ``U_n (r ⊙ h)``, so it takes two
    launches: ``PHASE`` 1 (gates; writes ``g`` and ``rh``) then ``PHASE`` 2 (candidate, new state).

    Args:
        gx_ptr: ``[B, G*H]`` the gates' input side at step t (batch stride ``s_gb``, 0 for a
            ``[G*H]`` bias-only constant); unread if not ``HAS_GX``.
        nx_ptr: ``[B, H]`` the candidate's input side at step t (batch stride ``s_nb``).
        w_ptr: ``[NB*H, H]`` W_hh.
        bhn_ptr: ``[H]`` b_hn (HAS_BHN).
        len_ptr: ``[B]`` int64 lengths (HAS_LEN).
        h_ptr: ``[B, H]`` ACC, h(t-1) (= ``hs[t]``; reused by the backward).
        out_ptr: ``[B, H]`` ACC out, h(t) (= ``hs[t+1]``); frozen past a length.
        g_ptr: ``[B, G*H]`` ACC, gate activations at t: written by PHASE 0/1, read by PHASE 2;
            reused by the backward.
        n_ptr: ``[B, H]`` ACC out, candidate at t (PHASE 0/2); reused by the backward.
        hn_ptr: ``[B, H]`` ACC out, ``U_n h + b_hn`` at t (PHASE 0, RESET_AFTER); reused by the
            backward.
        rh_ptr: ``[B, H]`` ACC workspace, ``r ⊙ h(t-1)`` (PHASE 1 writes, PHASE 2 reads).
        t: the step (for the length mask). B, H: sizes.
        other constexprs: as :func:`rnn_persistent_fwd`; BB, BJ, BK: tiles (powers of two, >= 16).
    """
    pid_b = tl.program_id(0)
    pid_j = tl.program_id(1)
    rb = pid_b * BB + tl.arange(0, BB)
    rj = pid_j * BJ + tl.arange(0, BJ)
    rk0 = tl.arange(0, BK)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    rb64 = rb.to(tl.int64)
    off = rb64[:, None] * H + rj[None, :]
    goff = rb64[:, None] * (GATES * H) + rj[None, :]
    if GATES_READ_H:
        nrow = GATES * H
    else:
        nrow = 0
    h = tl.load(h_ptr + off, mask=m2, other=0.0)
    if PHASE == 2:
        acc_n = tl.full([BB, BJ], 0.0, ACC)
        for k0 in range(0, H, BK):
            rk = k0 + rk0
            mk = rk < H
            rhk = tl.load(rh_ptr + rb64[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
            wn = tl.load(w_ptr + (nrow + rj[None, :]) * H + rk[:, None], mask=mk[:, None] & mj[None, :], other=0.0).to(
                DOT
            )
            acc_n += tl.dot(rhk.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
        g1 = tl.load(g_ptr + goff, mask=m2, other=0.0)
        if GATES == 2:
            g2 = tl.load(g_ptr + goff + H, mask=m2, other=0.0)
        else:
            g2 = g1
        r, z = _rz(g1, g2, GATES, COUPLED)
        npre = tl.load(nx_ptr + rb64[:, None] * s_nb + rj[None, :], mask=m2, other=0.0).to(ACC) + acc_n
        n, hnew = _cand(npre, z, h, CAND_TANH)
        if HAS_LEN:
            L = tl.load(len_ptr + rb, mask=mb, other=0)
            hnew = tl.where((t < L)[:, None], hnew, h)
        tl.store(n_ptr + off, n, mask=m2)
        tl.store(out_ptr + off, hnew, mask=m2)
    else:
        if HAS_GX:
            gxo = gx_ptr + rb64[:, None] * s_gb + rj[None, :]
            p1 = tl.load(gxo, mask=m2, other=0.0).to(ACC)
            if GATES == 2:
                p2 = tl.load(gxo + H, mask=m2, other=0.0).to(ACC)
            else:
                p2 = p1
        else:
            p1 = tl.full([BB, BJ], 0.0, ACC)
            p2 = tl.full([BB, BJ], 0.0, ACC)
        acc_n = tl.full([BB, BJ], 0.0, ACC)
        for k0 in range(0, H, BK):
            rk = k0 + rk0
            mk = rk < H
            hk = tl.load(h_ptr + rb64[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
            wm = mk[:, None] & mj[None, :]
            wo = rj[None, :] * H + rk[:, None]
            if GATES_READ_H:
                wr = tl.load(w_ptr + wo, mask=wm, other=0.0).to(DOT)
                hd = hk.to(DOT)
                p1 += tl.dot(hd, wr, out_dtype=ACC, input_precision=PREC)
                if GATES == 2:
                    wz = tl.load(w_ptr + H * H + wo, mask=wm, other=0.0).to(DOT)
                    p2 += tl.dot(hd, wz, out_dtype=ACC, input_precision=PREC)
            if CAND_READS_H:
                if PHASE == 0:
                    wn = tl.load(w_ptr + nrow * H + wo, mask=wm, other=0.0).to(DOT)
                    acc_n += tl.dot(hk.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
        g1 = _sigmoid(p1)
        if GATES == 2:
            g2 = _sigmoid(p2)
        else:
            g2 = g1
        r, z = _rz(g1, g2, GATES, COUPLED)
        tl.store(g_ptr + goff, g1, mask=m2)
        if GATES == 2:
            tl.store(g_ptr + goff + H, g2, mask=m2)
        if PHASE == 1:
            tl.store(rh_ptr + off, r * h, mask=m2)
        else:
            npre = tl.load(nx_ptr + rb64[:, None] * s_nb + rj[None, :], mask=m2, other=0.0).to(ACC)
            if CAND_READS_H:
                hn = acc_n
                if HAS_BHN:
                    hn += tl.load(bhn_ptr + rj, mask=mj, other=0.0).to(ACC)[None, :]
                npre += r * hn
                tl.store(hn_ptr + off, hn, mask=m2)
            n, hnew = _cand(npre, z, h, CAND_TANH)
            if HAS_LEN:
                L = tl.load(len_ptr + rb, mask=mb, other=0)
                hnew = tl.where((t < L)[:, None], hnew, h)
            tl.store(n_ptr + off, n, mask=m2)
            tl.store(out_ptr + off, hnew, mask=m2)


@triton.jit(do_not_specialize=["t", "B", "H"])
def rnn_step_bwd(
    dy_ptr,
    h_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    w_ptr,
    len_ptr,
    dhin_ptr,
    dhout_ptr,
    dg_ptr,
    dn_ptr,
    dhn_ptr,
    t,
    B,
    H,
    GATES: tl.constexpr,
    COUPLED: tl.constexpr,
    GATES_READ_X: tl.constexpr,
    GATES_READ_H: tl.constexpr,
    CAND_READS_H: tl.constexpr,
    CAND_TANH: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    PHASE: tl.constexpr,
    BB: tl.constexpr,
    BJ: tl.constexpr,
    BK: tl.constexpr,
):
    """Backward of one time step ``t``: ``dh(t-1)`` and the step's pre-activation gradients.

    Grid ``(cdiv(B, BB), cdiv(H, BJ))``. ``PHASE`` 0 (reset-after or no recurrent candidate):
    one launch; each program recomputes the element-wise gradients over the reduction chunks
    it needs (cheap) and writes its own ``[BB, BJ]`` tile. Reset-before: ``PHASE`` 1 computes
    ``drh = dnpre U_n`` and the gate gradients, writes ``dG``, ``dN`` and the partial ``dh(t-1)``;
    ``PHASE`` 2 adds ``dG U_g`` to it (only when the gates read h).

    Args:
        dy_ptr: ``[B, H]`` gradient of y at t (read where ``t < lengths``).
        h_ptr: ``[B, H]`` ACC, h(t-1) from the forward (``hs[t]``).
        g_ptr: ``[B, G*H]`` ACC, the forward's gate activations at t.
        n_ptr: ``[B, H]`` ACC, the forward's candidate at t.
        hn_ptr: ``[B, H]`` ACC, the forward's ``U_n h + b_hn`` at t (RESET_AFTER).
        w_ptr: ``[NB*H, H]`` W_hh.
        len_ptr: ``[B]`` int64 lengths (HAS_LEN).
        dhin_ptr: ``[B, H]`` ACC, gradient carried into h(t) from step t+1 (from h_n at t = T-1).
        dhout_ptr: ``[B, H]`` ACC out, gradient of h(t-1) (a different buffer: ping-pong).
        dg_ptr: ``[B, G*H]`` ACC out: gradient of the gates' pre-activation (0 past a length).
        dn_ptr: ``[B, H]`` ACC out: gradient of the candidate's pre-activation.
        dhn_ptr: ``[B, H]`` ACC out: gradient of ``U_n h + b_hn`` (RESET_AFTER).
        t, B, H, constexprs: as :func:`rnn_step_fwd`.
    """
    pid_b = tl.program_id(0)
    pid_j = tl.program_id(1)
    rb = pid_b * BB + tl.arange(0, BB)
    rj = pid_j * BJ + tl.arange(0, BJ)
    rk0 = tl.arange(0, BK)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    rb64 = rb.to(tl.int64)
    off = rb64[:, None] * H + rj[None, :]
    goff = rb64[:, None] * (GATES * H) + rj[None, :]
    if GATES_READ_H:
        nrow = GATES * H
    else:
        nrow = 0
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)
        alive = (t < L)[:, None]
    if PHASE == 2:
        acc = tl.full([BB, BJ], 0.0, ACC)
        for k0 in range(0, H, BK):
            rk = k0 + rk0
            mk = rk < H
            mk2 = mb[:, None] & mk[None, :]
            kgo = rb64[:, None] * (GATES * H) + rk[None, :]
            wm = mk[:, None] & mj[None, :]
            wo = rk[:, None] * H + rj[None, :]
            d1 = tl.load(dg_ptr + kgo, mask=mk2, other=0.0)
            wr = tl.load(w_ptr + wo, mask=wm, other=0.0).to(DOT)
            acc += tl.dot(d1.to(DOT), wr, out_dtype=ACC, input_precision=PREC)
            if GATES == 2:
                d2 = tl.load(dg_ptr + kgo + H, mask=mk2, other=0.0)
                wz = tl.load(w_ptr + H * H + wo, mask=wm, other=0.0).to(DOT)
                acc += tl.dot(d2.to(DOT), wz, out_dtype=ACC, input_precision=PREC)
        dprev = tl.load(dhout_ptr + off, mask=m2, other=0.0)
        tl.store(dhout_ptr + off, dprev + acc, mask=m2)
    else:
        acc = tl.full([BB, BJ], 0.0, ACC)
        for k0 in range(0, H, BK):
            rk = k0 + rk0
            mk = rk < H
            mk2 = mb[:, None] & mk[None, :]
            ko = rb64[:, None] * H + rk[None, :]
            kgo = rb64[:, None] * (GATES * H) + rk[None, :]
            wm = mk[:, None] & mj[None, :]
            wo = rk[:, None] * H + rj[None, :]
            dhk = tl.load(dhin_ptr + ko, mask=mk2, other=0.0)
            dyk = tl.load(dy_ptr + ko, mask=mk2, other=0.0).to(ACC)
            if HAS_LEN:
                dhk = tl.where(alive, dhk + dyk, dhk)
            else:
                dhk = dhk + dyk
            hk = tl.load(h_ptr + ko, mask=mk2, other=0.0)
            g1k = tl.load(g_ptr + kgo, mask=mk2, other=0.0)
            if GATES == 2:
                g2k = tl.load(g_ptr + kgo + H, mask=mk2, other=0.0)
            else:
                g2k = g1k
            nk = tl.load(n_ptr + ko, mask=mk2, other=0.0)
            rk_, zk = _rz(g1k, g2k, GATES, COUPLED)
            dnk, dzk, _unused = _cell_bwd(dhk, hk, zk, nk, CAND_TANH)
            if HAS_LEN:
                dnk = tl.where(alive, dnk, 0.0)
                dzk = tl.where(alive, dzk, 0.0)
            if PHASE == 1:
                wn = tl.load(w_ptr + nrow * H + wo, mask=wm, other=0.0).to(DOT)
                acc += tl.dot(dnk.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
            else:
                drk = dzk
                if CAND_READS_H:
                    hnk = tl.load(hn_ptr + ko, mask=mk2, other=0.0)
                    drk = dnk * hnk
                    wn = tl.load(w_ptr + nrow * H + wo, mask=wm, other=0.0).to(DOT)
                    acc += tl.dot((dnk * rk_).to(DOT), wn, out_dtype=ACC, input_precision=PREC)
                if GATES_READ_H:
                    d1k, d2k = _gates_bwd(drk, dzk, g1k, g2k, GATES, COUPLED)
                    wr = tl.load(w_ptr + wo, mask=wm, other=0.0).to(DOT)
                    acc += tl.dot(d1k.to(DOT), wr, out_dtype=ACC, input_precision=PREC)
                    if GATES == 2:
                        wz = tl.load(w_ptr + H * H + wo, mask=wm, other=0.0).to(DOT)
                        acc += tl.dot(d2k.to(DOT), wz, out_dtype=ACC, input_precision=PREC)
        # this program's own tile
        dh = tl.load(dhin_ptr + off, mask=m2, other=0.0)
        dy = tl.load(dy_ptr + off, mask=m2, other=0.0).to(ACC)
        if HAS_LEN:
            dh = tl.where(alive, dh + dy, dh)
        else:
            dh = dh + dy
        h = tl.load(h_ptr + off, mask=m2, other=0.0)
        g1 = tl.load(g_ptr + goff, mask=m2, other=0.0)
        if GATES == 2:
            g2 = tl.load(g_ptr + goff + H, mask=m2, other=0.0)
        else:
            g2 = g1
        n = tl.load(n_ptr + off, mask=m2, other=0.0)
        r, z = _rz(g1, g2, GATES, COUPLED)
        dnpre, dz, dprev = _cell_bwd(dh, h, z, n, CAND_TANH)
        if HAS_LEN:
            dnpre = tl.where(alive, dnpre, 0.0)
            dz = tl.where(alive, dz, 0.0)
        dr = dz
        if CAND_READS_H:
            if PHASE == 1:
                dr = acc * h
                dprev += acc * r
            else:
                hn = tl.load(hn_ptr + off, mask=m2, other=0.0)
                dr = dnpre * hn
                tl.store(dhn_ptr + off, dnpre * r, mask=m2)
        d1, d2 = _gates_bwd(dr, dz, g1, g2, GATES, COUPLED)
        tl.store(dg_ptr + goff, d1, mask=m2)
        if GATES == 2:
            tl.store(dg_ptr + goff + H, d2, mask=m2)
        tl.store(dn_ptr + off, dnpre, mask=m2)
        if PHASE == 0:
            dprev += acc
        if HAS_LEN:
            dprev = tl.where(alive, dprev, dh)
        tl.store(dhout_ptr + off, dprev, mask=m2)
