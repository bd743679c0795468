"""Triton kernels of the triton engine: one kernel family for every variant, wiring as ``tl.constexpr``.

Loaded only by :mod:`gatedrnn._engines._triton` (never at ``import gatedrnn``), and loaded once per
Triton mode: ``@triton.jit`` decides at decoration time whether it builds a compiled kernel or an
interpreted one (``TRITON_INTERPRET=1``), so the engine execs a fresh copy of this module for each
mode it meets (see ``_triton._kernels``).

Notation (shapes): ``T`` steps, ``B`` batch, ``H`` hidden, ``G`` gates (2: r, z; 1: MGU's f or
minGRU's z), ``NB = hh_blocks`` blocks of ``W_hh`` (``[NB*H, H]``, gate blocks then the
candidate block ``U_n``). ``ACC`` is the work dtype (float32, float64 for float64 inputs); the
state sequence and every buffer the backward reuses are kept in ``ACC``.

The maths (PyTorch's convention, see :mod:`gatedrnn._specs`; the options' equations are in
:mod:`gatedrnn._options`)::

    h̄ = 0 where resets[t] (HAS_RESETS), else h(t-1);   h̃ = h̄ ⊙ m (HAS_HMASK), else h̄
    a = U h̃                                the recurrent products (raw)
    g = σ(gx + â_g)                         gates (â_g only if GATES_READ_H)
    r, z = g_r, g_z | f, 1 - f (COUPLED) | -, g (minGRU)
    npre = nx + r ⊙ (â_n + b_hn)            RESET_AFTER
    npre = nx + â_n,  a_n = U_n (r ⊙ h̃)     reset before
    n = tanh(npre) (CAND_TANH) | npre;      h' = n + z ⊙ (h̄ - n)
    h(t) = ζ ⊙ h̄ + (1 - ζ) ⊙ h'              ZONEOUT (1: a 0/1 mask per step, 2: the constant p)
    steps t >= lengths[b] keep h(t-1) and write no gradient (HAS_LEN).

with ``â = a`` or, with ``LN_HH``, ``â = LN(a; γ, β) = γ ⊙ (a - mean) rstd + β``,
``rstd = 1/sqrt(var + eps)``, over one group of columns: every block of ``a`` (RESET_AFTER), or the
gates' blocks and then, separately, the candidate's (reset before).

Backward per step (``dh`` = carried gradient + ``dy[t]`` where alive; ``dh' = (1 - ζ) dh``)::

    dnpre = dh' (1 - z) (1 - n²);   dz = dh' (h̄ - n);   dh̄ = dh' z + ζ dh
    RESET_AFTER:  dâ_n = dnpre r;  dr = dnpre ⊙ hn
    reset before: dâ_n = dnpre;  drh = da_n U_n;  dr = drh ⊙ h̃;  dh̃ = drh ⊙ r
    dpre_g = dâ_g = (dr, dz) ⊙ g (1 - g)  (MGU: (dr - dz) f (1 - f))
    dh̃ += da U  over the rest of the blocks;   dh(t-1) = dh̄ + m ⊙ dh̃, or 0 where resets[t]

with ``da = dâ`` or, with ``LN_HH``, layer norm's backward over the group:
``da = rstd (γ dâ - mean(γ dâ) - x̂ mean(γ dâ x̂))``, ``x̂ = (a - mean) rstd``, from the raw
products and their statistics that the forward saves.

The weight gradients, ``dx``, the bias gradients and the layer norm's gain and shift gradients are
matrix products / sums done by the engine in torch from the ``dG``, ``dN``, ``dHN`` buffers the
backward kernels write (and, with ``LN_HH``, the saved raw products).

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
def _add(a, b):
    return a + b


# The combiner of the row sums. tl.sum, like tl.sigmoid, is a @triton.jit function of Triton's own
# whose mode is fixed at import, so compiled kernels reduce with ours. The interpreter sums with
# NumPy only when the combiner is Triton's own (it checks which by identity, and never calls it);
# with any other it loops in Python, about a hundred times slower: there, Triton's.
_SUM = _add if isinstance(_add, triton.runtime.JITFunction) else getattr(tl.standard, "_sum_combine", _add)


@triton.jit
def _rowsum(x):
    """Sum over axis 1."""
    return tl.reduce(x, 1, _SUM)


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


@triton.jit
def _gates(p1, p2, q1, q2, GATES_READ_H: tl.constexpr, GATES: tl.constexpr, COUPLED: tl.constexpr):
    """``(g1, g2, r, z)`` from the gates' input side ``p1, p2`` and, if GATES_READ_H, their
    (normalised) recurrent products ``q1, q2``."""
    if GATES_READ_H:
        p1 += q1
        if GATES == 2:
            p2 += q2
    g1 = _sigmoid(p1)
    if GATES == 2:
        g2 = _sigmoid(p2)
    else:
        g2 = g1
    r, z = _rz(g1, g2, GATES, COUPLED)
    return g1, g2, r, z


@triton.jit
def _carry(hp, hnew, zeta, ZONEOUT: tl.constexpr):
    """The state after a step: zoneout's ``ζ h̄ + (1 - ζ) h'`` (ZONEOUT != 0), else ``h'``."""
    if ZONEOUT != 0:
        hnew = zeta * hp + (1.0 - zeta) * hnew
    return hnew


@triton.jit
def _cell_grads(
    dh,
    h,
    g1,
    g2,
    n,
    zeta,
    alive,
    rst,
    GATES: tl.constexpr,
    COUPLED: tl.constexpr,
    CAND_TANH: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    """One step's element-wise backward, before the recurrent products.

    ``dh``: gradient of h(t) (``dy[t]`` included); ``h``: h(t-1) as saved; ``g1, g2, n``: the
    forward's activations; ``zeta``: ζ (ZONEOUT); ``alive``, ``rst``: ``[BB, 1]`` masks (HAS_LEN,
    HAS_RESETS). Returns ``h̄`` (0 where reset), ``r``, ``dnpre``, ``dz`` (0 past a length) and the
    direct gradient of ``h̄`` (through the update and zoneout; the products' part comes on top).
    """
    if HAS_RESETS:
        hp = tl.where(rst, 0.0, h)
    else:
        hp = h
    if ZONEOUT != 0:
        dhc = dh * (1.0 - zeta)
    else:
        dhc = dh
    r, z = _rz(g1, g2, GATES, COUPLED)
    dnpre, dz, ddir = _cell_bwd(dhc, hp, z, n, CAND_TANH)
    if ZONEOUT != 0:
        ddir += zeta * dh
    if HAS_LEN:
        dnpre = tl.where(alive, dnpre, 0.0)
        dz = tl.where(alive, dz, 0.0)
    return hp, r, dnpre, dz, ddir


@triton.jit
def _after_grads(dnpre, dz, r, g1, g2, hn, GATES: tl.constexpr, COUPLED: tl.constexpr, CAND_READS_H: tl.constexpr):
    """Reset-after: the gradients of the normalised products' blocks (``dâ_r, dâ_z`` = the gates'
    pre-activation gradients, ``dâ_n = dnpre r``) from ``dnpre``, ``dz`` and ``hn = â_n + b_hn``."""
    dr = dz
    if CAND_READS_H:
        dr = dnpre * hn
    d1, d2 = _gates_bwd(dr, dz, g1, g2, GATES, COUPLED)
    return d1, d2, dnpre * r


# ---------------------------------------------------------------------------------------------
# layer norm of the recurrent products (LN_HH): statistics, normalisation, backward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _centred(a, mean, mj):
    """``a - mean`` on the valid columns ``mj``, 0 elsewhere."""
    return tl.where(mj[None, :], a - mean[:, None], 0.0)


@triton.jit
def _tile_stats(q1, q2, qn, USE_G: tl.constexpr, GATES: tl.constexpr, USE_N: tl.constexpr, mj, width, eps):
    """Mean and ``rstd = 1/sqrt(var + eps)`` per row (``[BB]``) of a group of blocks held in
    registers (persistent kernels): the gate blocks ``q1`` (``q2`` if GATES == 2) if USE_G, the
    candidate block ``qn`` if USE_N; ``width`` columns in all. Two passes (centred variance)."""
    if USE_G:
        s = _rowsum(q1)
        if GATES == 2:
            s += _rowsum(q2)
        if USE_N:
            s += _rowsum(qn)
    else:
        s = _rowsum(qn)
    mean = s / width
    if USE_G:
        c = _centred(q1, mean, mj)
        v = _rowsum(c * c)
        if GATES == 2:
            c = _centred(q2, mean, mj)
            v += _rowsum(c * c)
        if USE_N:
            c = _centred(qn, mean, mj)
            v += _rowsum(c * c)
    else:
        c = _centred(qn, mean, mj)
        v = _rowsum(c * c)
    return mean, 1.0 / tl.sqrt(v / width + eps)


@triton.jit
def _row_stats(a_ptr, rb64, mb, stride, width, eps, BB: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr):
    """Mean and ``rstd`` per row (``[BB]``) of ``a[b, :width]`` in memory (row stride ``stride``),
    read in chunks of ``BK`` columns, two passes (step kernels: the whole row, whatever the tile)."""
    rk0 = tl.arange(0, BK)
    s = tl.full([BB], 0.0, ACC)
    for k0 in range(0, width, BK):
        rk = k0 + rk0
        a = tl.load(a_ptr + rb64[:, None] * stride + rk[None, :], mask=mb[:, None] & (rk < width)[None, :], other=0.0)
        s += _rowsum(a)
    mean = s / width
    v = tl.full([BB], 0.0, ACC)
    for k0 in range(0, width, BK):
        rk = k0 + rk0
        mk = rk < width
        a = tl.load(a_ptr + rb64[:, None] * stride + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        c = _centred(a, mean, mk)
        v += _rowsum(c * c)
    return mean, 1.0 / tl.sqrt(v / width + eps)


@triton.jit
def _ln_apply(a, mean, rstd, gain, shift):
    """``γ (a - mean) rstd + β`` (``gain``, ``shift``: ``[BH]`` slices of γ, β for this block)."""
    return (a - mean[:, None]) * rstd[:, None] * gain[None, :] + shift[None, :]


@triton.jit
def _ln_sums(d, gain, a, mean, rstd):
    """Row sums of ``γ dâ`` and ``γ dâ x̂`` over one block (``x̂ = (a - mean) rstd``); columns
    outside the block contribute 0 (their gain is loaded as 0)."""
    e = d * gain[None, :]
    return _rowsum(e), _rowsum(e * (a - mean[:, None]) * rstd[:, None])


@triton.jit
def _ln_grad(d, gain, a, mean, rstd, c1, c2):
    """Layer norm's backward for one block: ``rstd (γ dâ - c1 - x̂ c2)``, with ``c1, c2`` the
    group's means of ``γ dâ`` and ``γ dâ x̂``."""
    xh = (a - mean[:, None]) * rstd[:, None]
    return rstd[:, None] * (d * gain[None, :] - c1[:, None] - xh * c2[:, None])


@triton.jit
def _store_stats(st_ptr, rb64, mask, mean, rstd, GROUP: tl.constexpr):
    """Store a group's mean and rstd at ``st[b, 2*GROUP]``, ``st[b, 2*GROUP + 1]`` (``st [B, 4]``)."""
    tl.store(st_ptr + rb64 * 4 + 2 * GROUP, mean, mask=mask)
    tl.store(st_ptr + rb64 * 4 + 2 * GROUP + 1, rstd, mask=mask)


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
    lnw_ptr,
    lnb_ptr,
    hm_ptr,
    zo_ptr,
    rs_ptr,
    sc_ptr,
    hs_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    ahr_ptr,
    st_ptr,
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
    LN_HH: tl.constexpr,
    HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
):
    """Forward of one layer-direction, all T steps in one launch (persistent).

    Grid ``(cdiv(B, BB), cdiv(H, BH))``; each program owns a batch tile of ``BB`` rows and loops
    over time with ``h`` and the recurrent weights in registers. With recurrent weights the
    hidden dimension must fit one tile (``BH >= H``, grid axis 1 of size 1: the layer norm's
    statistics are row reductions within the program); minGRU (no weights) also tiles ``H``.

    Args:
        gx_ptr: ``[T, B, G*H]`` gates' input side ``W_g x + b_g`` (time stride ``s_gt``, batch
            stride ``s_gb``, unit column stride); ``[G*H]`` with ``s_gt = s_gb = 0`` for gates fed
            by the bias only (gru1, gru3); unread when ``HAS_GX`` is False (gru2).
        nx_ptr: ``[T, B, H]`` candidate input side ``W_n x + b_n`` (strides ``s_nt``, ``s_nb``).
        w_ptr: ``[NB*H, H]`` W_hh (unread for minGRU).
        bhn_ptr: ``[H]`` b_hn (read if ``HAS_BHN``: reset-after with a bias).
        len_ptr: ``[B]`` int64 lengths (read if ``HAS_LEN``).
        lnw_ptr, lnb_ptr: ``[NB*H]`` the layer norm's gain γ and shift β of the recurrent
            products (LN_HH).
        hm_ptr: ``[B, H]`` contiguous, the recurrent-dropout mask m (HAS_HMASK).
        zo_ptr: ``[T, B, H]`` contiguous, zoneout's ζ (ZONEOUT == 1).
        rs_ptr: ``[T, B]`` uint8 contiguous, resets (HAS_RESETS).
        sc_ptr: ``[2]`` ACC: the layer norm's eps (LN_HH) and zoneout's p (ZONEOUT == 2).
        hs_ptr: ``[T+1, B, H]`` ACC, contiguous: ``hs[0] = h0`` on entry; the kernel writes the
            states ``hs[1..T]`` (frozen past a sequence's length; before any reset). Reused by the
            backward (``h(t-1) = hs[t]``) and by the weight gradients.
        g_ptr: ``[T, B, G*H]`` ACC out: gate activations σ(pre). Reused by the backward.
        n_ptr: ``[T, B, H]`` ACC out: candidate n. Reused by the backward.
        hn_ptr: ``[T, B, H]`` ACC out (RESET_AFTER with CAND_READS_H): ``â_n + b_hn``.
            Reused by the backward (``dr = dnpre * hn``).
        ahr_ptr: ``[T, B, NB*H]`` ACC out (LN_HH): the raw recurrent products ``a`` (before the
            layer norm). Reused by the backward (``x̂``) and by the engine (γ, β, W_hh gradients).
        st_ptr: ``[T, B, 4]`` ACC out (LN_HH): mean and rstd of the first group (every block
            reset-after, the gates' reset-before) and of the candidate's group (reset-before).
            Reused by the backward.
        T, B, H: sizes.
        GATES, COUPLED, GATES_READ_X, GATES_READ_H, CAND_READS_H, CAND_TANH, RESET_AFTER: the variant's
            wiring (:class:`gatedrnn._specs.Wiring`; GATES_READ_X is carried by ``HAS_GX`` here).
        HAS_GX, HAS_BHN, HAS_LEN: which optional inputs exist.
        LN_HH, HAS_HMASK, ZONEOUT (0 off, 1 mask, 2 constant), HAS_RESETS: the options in use.
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
        nrow = GATES * H
    else:
        nrow = 0
    if GATES_READ_H:
        w_r = tl.load(w_ptr + woff, mask=wm, other=0.0).to(DOT)
        if GATES == 2:
            w_z = tl.load(w_ptr + H * H + woff, mask=wm, other=0.0).to(DOT)
    if CAND_READS_H:
        w_n = tl.load(w_ptr + nrow * H + woff, mask=wm, other=0.0).to(DOT)
        if HAS_BHN:
            bhn = tl.load(bhn_ptr + rj, mask=mj, other=0.0).to(ACC)
    if LN_HH:
        eps = tl.load(sc_ptr)
        if GATES_READ_H:
            lw_r = tl.load(lnw_ptr + rj, mask=mj, other=0.0).to(ACC)
            lb_r = tl.load(lnb_ptr + rj, mask=mj, other=0.0).to(ACC)
            if GATES == 2:
                lw_z = tl.load(lnw_ptr + H + rj, mask=mj, other=0.0).to(ACC)
                lb_z = tl.load(lnb_ptr + H + rj, mask=mj, other=0.0).to(ACC)
        lw_n = tl.load(lnw_ptr + nrow + rj, mask=mj, other=0.0).to(ACC)
        lb_n = tl.load(lnb_ptr + nrow + rj, mask=mj, other=0.0).to(ACC)
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)
    if ZONEOUT == 2:
        zeta = tl.load(sc_ptr + 1)

    off = rb64[:, None] * H + rj[None, :]
    if HAS_HMASK:
        hmask = tl.load(hm_ptr + off, mask=m2, other=0.0).to(ACC)
    hs_p = hs_ptr + off
    h = tl.load(hs_p, mask=m2, other=0.0).to(ACC)
    gx_p = gx_ptr + rb64[:, None] * s_gb + rj[None, :]
    nx_p = nx_ptr + rb64[:, None] * s_nb + rj[None, :]
    goff = rb64[:, None] * (GATES * H) + rj[None, :]
    g_p = g_ptr + goff
    n_p = n_ptr + off
    hn_p = hn_ptr + off
    zo_p = zo_ptr + off
    rs_p = rs_ptr + rb64
    NBH = nrow + H  # columns of the raw products (LN_HH)
    ahr_p = ahr_ptr + rb64[:, None] * NBH + rj[None, :]
    st_p = st_ptr
    BH_ = B * H
    for t in range(T):
        hp = h
        if HAS_RESETS:
            hp = tl.where((tl.load(rs_p, mask=mb, other=0) != 0)[:, None], 0.0, h)
        hd = hp
        if HAS_HMASK:
            hd = hp * hmask
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
            q1 = tl.dot(hd.to(DOT), w_r, out_dtype=ACC, input_precision=PREC)
            q2 = q1
            if GATES == 2:
                q2 = tl.dot(hd.to(DOT), w_z, out_dtype=ACC, input_precision=PREC)
        if CAND_READS_H:
            if RESET_AFTER:
                qn = tl.dot(hd.to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
        if LN_HH:
            if RESET_AFTER or GATES_READ_H:  # the first group: every block, or the gates'
                if not GATES_READ_H:  # stand-ins for the blocks _tile_stats does not read
                    q1 = qn
                    q2 = qn
                if not RESET_AFTER:
                    qn = q1
                mean, rstd = _tile_stats(
                    q1, q2, qn, GATES_READ_H, GATES, RESET_AFTER, mj, NBH if RESET_AFTER else nrow, eps
                )
                _store_stats(st_p, rb64, mb, mean, rstd, 0)
                if GATES_READ_H:
                    tl.store(ahr_p, q1, mask=m2)
                    q1 = _ln_apply(q1, mean, rstd, lw_r, lb_r)
                    if GATES == 2:
                        tl.store(ahr_p + H, q2, mask=m2)
                        q2 = _ln_apply(q2, mean, rstd, lw_z, lb_z)
                if RESET_AFTER:
                    tl.store(ahr_p + nrow, qn, mask=m2)
                    qn = _ln_apply(qn, mean, rstd, lw_n, lb_n)
        g1, g2, r, z = _gates(
            p1, p2, q1 if GATES_READ_H else p1, q2 if GATES_READ_H else p2, GATES_READ_H, GATES, COUPLED
        )
        npre = tl.load(nx_p, mask=m2, other=0.0).to(ACC)
        if CAND_READS_H:
            if RESET_AFTER:
                hn = qn
                if HAS_BHN:
                    hn += bhn[None, :]
                npre += r * hn
                tl.store(hn_p, hn, mask=m2)
            else:
                qc = tl.dot((r * hd).to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
                if LN_HH:
                    tl.store(ahr_p + nrow, qc, mask=m2)
                    mean_n, rstd_n = _tile_stats(qc, qc, qc, False, GATES, True, mj, H, eps)
                    _store_stats(st_p, rb64, mb, mean_n, rstd_n, 1)
                    qc = _ln_apply(qc, mean_n, rstd_n, lw_n, lb_n)
                npre += qc
        n, hnew = _cand(npre, z, hp, CAND_TANH)
        if ZONEOUT == 1:
            zeta = tl.load(zo_p, mask=m2, other=0.0).to(ACC)
        hnew = _carry(hp, hnew, zeta if ZONEOUT != 0 else 0.0, ZONEOUT)
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
        zo_p += BH_
        rs_p += B
        ahr_p += B * NBH
        st_p += B * 4


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
    lnw_ptr,
    hm_ptr,
    zo_ptr,
    rs_ptr,
    sc_ptr,
    ahr_ptr,
    st_ptr,
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
    LN_HH: tl.constexpr,
    HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
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
        hn_ptr: ``[T, B, H]`` ACC, the forward's ``â_n + b_hn`` (reused; RESET_AFTER only).
        w_ptr: ``[NB*H, H]`` W_hh.
        len_ptr: ``[B]`` int64 lengths (HAS_LEN).
        lnw_ptr: ``[NB*H]`` the layer norm's gain γ (LN_HH).
        hm_ptr, zo_ptr, rs_ptr, sc_ptr: the forward's mask, ζ, resets and constants (reused).
        ahr_ptr: ``[T, B, NB*H]`` ACC, the forward's raw recurrent products (reused; LN_HH).
        st_ptr: ``[T, B, 4]`` ACC, the forward's layer-norm statistics (reused; LN_HH).
        dg_ptr: ``[T, B, G*H]`` ACC out: gradient of the gates' pre-activations (0 past a
            length). The engine turns it into dW_ih / dW_hh gate blocks, db and dx (GEMMs).
        dn_ptr: ``[T, B, H]`` ACC out: gradient of the candidate's pre-activation (= d nx).
        dhn_ptr: ``[T, B, H]`` ACC out (RESET_AFTER): gradient of ``â_n + b_hn``.
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
        nrow = GATES * H
    else:
        nrow = 0
    if GATES_READ_H:
        w_r = tl.load(w_ptr + woff, mask=wm, other=0.0).to(DOT)
        if GATES == 2:
            w_z = tl.load(w_ptr + H * H + woff, mask=wm, other=0.0).to(DOT)
    if CAND_READS_H:
        w_n = tl.load(w_ptr + nrow * H + woff, mask=wm, other=0.0).to(DOT)
    if LN_HH:
        if GATES_READ_H:
            lw_r = tl.load(lnw_ptr + rj, mask=mj, other=0.0).to(ACC)
            if GATES == 2:
                lw_z = tl.load(lnw_ptr + H + rj, mask=mj, other=0.0).to(ACC)
        lw_n = tl.load(lnw_ptr + nrow + rj, mask=mj, other=0.0).to(ACC)
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)
    if ZONEOUT == 2:
        zeta = tl.load(sc_ptr + 1)

    off = rb64[:, None] * H + rj[None, :]
    if HAS_HMASK:
        hmask = tl.load(hm_ptr + off, mask=m2, other=0.0).to(ACC)
    goff = rb64[:, None] * (GATES * H) + rj[None, :]
    BH_ = B * H
    NBH = nrow + H
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
    zo_p = zo_ptr + off + last * BH_
    rs_p = rs_ptr + rb64 + last * B
    ahr_p = ahr_ptr + rb64[:, None] * NBH + rj[None, :] + last * (B * NBH)
    st_p = st_ptr + rb64 * 4 + last * (B * 4)
    for i in range(T):
        t = T - 1 - i
        dyt = tl.load(dy_p, mask=m2, other=0.0).to(ACC)
        if HAS_LEN:
            alive = (t < L)[:, None]
            dh = tl.where(alive, dh + dyt, dh)
        else:
            alive = m2
            dh = dh + dyt
        if HAS_RESETS:
            rst = (tl.load(rs_p, mask=mb, other=0) != 0)[:, None]
        else:
            rst = m2
        if ZONEOUT == 1:
            zeta = tl.load(zo_p, mask=m2, other=0.0).to(ACC)
        h = tl.load(hs_p, mask=m2, other=0.0)
        g1 = tl.load(g_p, mask=m2, other=0.0)
        if GATES == 2:
            g2 = tl.load(g_p + H, mask=m2, other=0.0)
        else:
            g2 = g1
        n = tl.load(n_p, mask=m2, other=0.0)
        hp, r, dnpre, dz, dprev = _cell_grads(
            dh, h, g1, g2, n, zeta if ZONEOUT != 0 else 0.0, alive, rst,
            GATES, COUPLED, CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS,
        )  # fmt: skip
        hd = hp
        if HAS_HMASK:
            hd = hp * hmask
        dr = dz  # placeholder for minGRU (no reset gate)
        if CAND_READS_H:  # the recurrent products (none for minGRU)
            dprod = tl.full([BB, BH], 0.0, ACC)  # gradient of h̃ through them
            dan = dnpre
            if RESET_AFTER:
                hn = tl.load(hn_p, mask=m2, other=0.0)
                dr = dnpre * hn
                dan = dnpre * r
                tl.store(dhn_p, dan, mask=m2)
            else:
                if LN_HH:  # the candidate's group
                    an = tl.load(ahr_p + nrow, mask=m2, other=0.0)
                    mean_n = tl.load(st_p + 2, mask=mb, other=0.0)
                    rstd_n = tl.load(st_p + 3, mask=mb, other=0.0)
                    c1, c2 = _ln_sums(dnpre, lw_n, an, mean_n, rstd_n)
                    dan = _ln_grad(dnpre, lw_n, an, mean_n, rstd_n, c1 / H, c2 / H)
                drh = tl.dot(dan.to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
                dr = drh * hd
                dprod += drh * r
        d1, d2 = _gates_bwd(dr, dz, g1, g2, GATES, COUPLED)
        e1 = d1
        e2 = d2
        if LN_HH:
            if RESET_AFTER or GATES_READ_H:  # the first group
                mean = tl.load(st_p, mask=mb, other=0.0)
                rstd = tl.load(st_p + 1, mask=mb, other=0.0)
                c1 = tl.full([BB], 0.0, ACC)
                c2 = tl.full([BB], 0.0, ACC)
                if GATES_READ_H:
                    a1 = tl.load(ahr_p, mask=m2, other=0.0)
                    s1, s2 = _ln_sums(d1, lw_r, a1, mean, rstd)
                    c1 += s1
                    c2 += s2
                    if GATES == 2:
                        a2 = tl.load(ahr_p + H, mask=m2, other=0.0)
                        s1, s2 = _ln_sums(d2, lw_z, a2, mean, rstd)
                        c1 += s1
                        c2 += s2
                if RESET_AFTER:
                    an = tl.load(ahr_p + nrow, mask=m2, other=0.0)
                    s1, s2 = _ln_sums(dan, lw_n, an, mean, rstd)
                    c1 += s1
                    c2 += s2
                width = NBH if RESET_AFTER else nrow
                c1 = c1 / width
                c2 = c2 / width
                if GATES_READ_H:
                    e1 = _ln_grad(d1, lw_r, a1, mean, rstd, c1, c2)
                    if GATES == 2:
                        e2 = _ln_grad(d2, lw_z, a2, mean, rstd, c1, c2)
                if RESET_AFTER:
                    dan = _ln_grad(dan, lw_n, an, mean, rstd, c1, c2)
        if CAND_READS_H:
            if RESET_AFTER:
                dprod += tl.dot(dan.to(DOT), w_n, out_dtype=ACC, input_precision=PREC)
            if GATES_READ_H:
                dprod += tl.dot(e1.to(DOT), w_r, out_dtype=ACC, input_precision=PREC)
                if GATES == 2:
                    dprod += tl.dot(e2.to(DOT), w_z, out_dtype=ACC, input_precision=PREC)
            if HAS_HMASK:
                dprod = dprod * hmask
            dprev += dprod
        if HAS_RESETS:
            dprev = tl.where(rst, 0.0, dprev)  # no gradient crosses a reset
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
        zo_p -= BH_
        rs_p -= B
        ahr_p -= B * NBH
        st_p -= B * 4
    tl.store(dh0_ptr + off, dh, mask=m2)


# ---------------------------------------------------------------------------------------------
# step kernels: one time step per launch (any H), the recurrent matmul fused with the epilogue
# ---------------------------------------------------------------------------------------------


@triton.jit
def _step_out(
    npre,
    z,
    h_ptr,
    zo_ptr,
    sc_ptr,
    len_ptr,
    n_ptr,
    out_ptr,
    off,
    rb,
    mb,
    m2,
    rst,
    t,
    CAND_TANH: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    ACC: tl.constexpr,
):
    """The end of a forward step on a step kernel's tile ``off``: ``n`` and ``h'`` from ``npre``
    and ``z``, zoneout, the length mask; stores ``n`` and ``h(t)``. ``h(t-1)`` and ζ are read
    here, not before the products' loops (shorter live ranges: fewer registers)."""
    h = tl.load(h_ptr + off, mask=m2, other=0.0)
    hp = h
    if HAS_RESETS:
        hp = tl.where(rst, 0.0, h)
    n, hnew = _cand(npre, z, hp, CAND_TANH)
    if ZONEOUT == 1:
        hnew = _carry(hp, hnew, tl.load(zo_ptr + off, mask=m2, other=0.0).to(ACC), ZONEOUT)
    elif ZONEOUT == 2:
        hnew = _carry(hp, hnew, tl.load(sc_ptr + 1), ZONEOUT)
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)
        hnew = tl.where((t < L)[:, None], hnew, h)
    tl.store(n_ptr + off, n, mask=m2)
    tl.store(out_ptr + off, hnew, mask=m2)


@triton.jit(do_not_specialize=["s_gb", "s_nb", "t", "B", "H"])
def rnn_step_fwd(
    gx_ptr,
    s_gb,
    nx_ptr,
    s_nb,
    w_ptr,
    bhn_ptr,
    len_ptr,
    lnw_ptr,
    lnb_ptr,
    hm_ptr,
    zo_ptr,
    rs_ptr,
    sc_ptr,
    h_ptr,
    out_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    rh_ptr,
    ahr_ptr,
    st_ptr,
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
    HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    PHASE: tl.constexpr,
    STAGE: tl.constexpr,
    BB: tl.constexpr,
    BJ: tl.constexpr,
    BK: tl.constexpr,
):
    """Forward of one time step ``t``: ``h(t)`` from ``h(t-1)``, the recurrent matmul fused with the gates.

    Grid ``(cdiv(B, BB), cdiv(H, BJ))``; each program computes a ``[BB, BJ]`` tile of the output,
    looping over the reduction dimension ``H`` in chunks of ``BK``.

    ``PHASE`` 0: the whole step (reset-after, or no recurrent candidate). Reset-before needs
    ``r ⊙ h̃`` over all of ``H`` before ``U_n (r ⊙ h̃)``, so it takes two: ``PHASE`` 1 (gates;
    writes ``g`` and ``rh``) then ``PHASE`` 2 (candidate, new state).

    ``STAGE`` 0: the phase in one launch (no layer norm, or no recurrent product in it). With the
    layer norm of the recurrent products, whose statistics need whole rows while a program holds
    a tile, a phase takes two launches: ``STAGE`` 1 writes this tile of the raw products to
    ``ahr``; ``STAGE`` 2 reads back the rows of its group (every block for PHASE 0, the gates'
    for PHASE 1, the candidate's for PHASE 2), writes their statistics to ``st`` and runs the
    phase's epilogue on the normalised products of its tile.

    Args:
        gx_ptr: ``[B, G*H]`` the gates' input side at step t (batch stride ``s_gb``, 0 for a
            ``[G*H]`` bias-only constant); unread if not ``HAS_GX``.
        nx_ptr: ``[B, H]`` the candidate's input side at step t (batch stride ``s_nb``).
        w_ptr: ``[NB*H, H]`` W_hh.
        bhn_ptr: ``[H]`` b_hn (HAS_BHN).
        len_ptr: ``[B]`` int64 lengths (HAS_LEN).
        lnw_ptr, lnb_ptr: ``[NB*H]`` the layer norm's gain and shift (STAGE 2).
        hm_ptr: ``[B, H]`` recurrent-dropout mask (HAS_HMASK).
        zo_ptr: ``[B, H]`` zoneout's ζ at step t (ZONEOUT == 1).
        rs_ptr: ``[B]`` uint8, resets at step t (HAS_RESETS).
        sc_ptr: ``[2]`` ACC: eps (STAGE 2) and zoneout's p (ZONEOUT == 2).
        h_ptr: ``[B, H]`` ACC, h(t-1) (= ``hs[t]``, before any reset; reused by the backward).
        out_ptr: ``[B, H]`` ACC out, h(t) (= ``hs[t+1]``); frozen past a length.
        g_ptr: ``[B, G*H]`` ACC, gate activations at t: written by PHASE 0/1, read by PHASE 2;
            reused by the backward.
        n_ptr: ``[B, H]`` ACC out, candidate at t (PHASE 0/2); reused by the backward.
        hn_ptr: ``[B, H]`` ACC out, ``â_n + b_hn`` at t (PHASE 0, RESET_AFTER); reused by the
            backward.
        rh_ptr: ``[B, H]`` ACC workspace, ``r ⊙ h̃`` (PHASE 1 writes, PHASE 2 reads).
        ahr_ptr: ``[B, NB*H]`` ACC, the raw recurrent products at t (STAGE 1 writes, STAGE 2
            reads); reused by the backward.
        st_ptr: ``[B, 4]`` ACC out (STAGE 2): the groups' mean and rstd at t; reused by the
            backward.
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
    NBH = nrow + H
    aoff = rb64[:, None] * NBH + rj[None, :]  # this tile's columns in a row of the raw products
    if HAS_RESETS:
        rst = (tl.load(rs_ptr + rb, mask=mb, other=0) != 0)[:, None]
    else:
        rst = mb[:, None]  # unread
    if STAGE == 2:
        eps = tl.load(sc_ptr)
        first = mb & (tl.full([BB], 0, tl.int32) == pid_j)  # one program per row stores the statistics
    if PHASE == 2:
        if STAGE != 2:
            acc_n = tl.full([BB, BJ], 0.0, ACC)
            for k0 in range(0, H, BK):
                rk = k0 + rk0
                mk = rk < H
                rhk = tl.load(rh_ptr + rb64[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
                wn = tl.load(
                    w_ptr + (nrow + rj[None, :]) * H + rk[:, None], mask=mk[:, None] & mj[None, :], other=0.0
                ).to(DOT)
                acc_n += tl.dot(rhk.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
        if STAGE == 1:
            tl.store(ahr_ptr + aoff + nrow, acc_n, mask=m2)
        else:
            if STAGE == 2:
                mean, rstd = _row_stats(ahr_ptr + nrow, rb64, mb, NBH, H, eps, BB, BK, ACC)
                _store_stats(st_ptr, rb64, first, mean, rstd, 1)
                acc_n = _ln_apply(
                    tl.load(ahr_ptr + aoff + nrow, mask=m2, other=0.0),
                    mean,
                    rstd,
                    tl.load(lnw_ptr + nrow + rj, mask=mj, other=0.0).to(ACC),
                    tl.load(lnb_ptr + nrow + rj, mask=mj, other=0.0).to(ACC),
                )
            g1 = tl.load(g_ptr + goff, mask=m2, other=0.0)
            if GATES == 2:
                g2 = tl.load(g_ptr + goff + H, mask=m2, other=0.0)
            else:
                g2 = g1
            r, z = _rz(g1, g2, GATES, COUPLED)
            npre = tl.load(nx_ptr + rb64[:, None] * s_nb + rj[None, :], mask=m2, other=0.0).to(ACC) + acc_n
            _step_out(
                npre, z, h_ptr, zo_ptr, sc_ptr, len_ptr, n_ptr, out_ptr, off, rb, mb, m2, rst, t,
                CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS, ACC,
            )  # fmt: skip
    else:
        if STAGE != 2:
            q1 = tl.full([BB, BJ], 0.0, ACC)
            q2 = tl.full([BB, BJ], 0.0, ACC)
            qn = tl.full([BB, BJ], 0.0, ACC)
            for k0 in range(0, H, BK):
                rk = k0 + rk0
                mk = rk < H
                mk2 = mb[:, None] & mk[None, :]
                hk = tl.load(h_ptr + rb64[:, None] * H + rk[None, :], mask=mk2, other=0.0)
                if HAS_RESETS:
                    hk = tl.where(rst, 0.0, hk)
                if HAS_HMASK:
                    hk = hk * tl.load(hm_ptr + rb64[:, None] * H + rk[None, :], mask=mk2, other=0.0).to(ACC)
                wm = mk[:, None] & mj[None, :]
                wo = rj[None, :] * H + rk[:, None]
                if GATES_READ_H:
                    wr = tl.load(w_ptr + wo, mask=wm, other=0.0).to(DOT)
                    hd = hk.to(DOT)
                    q1 += tl.dot(hd, wr, out_dtype=ACC, input_precision=PREC)
                    if GATES == 2:
                        wz = tl.load(w_ptr + H * H + wo, mask=wm, other=0.0).to(DOT)
                        q2 += tl.dot(hd, wz, out_dtype=ACC, input_precision=PREC)
                if CAND_READS_H:
                    if PHASE == 0:
                        wn = tl.load(w_ptr + nrow * H + wo, mask=wm, other=0.0).to(DOT)
                        qn += tl.dot(hk.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
        if STAGE == 1:
            if GATES_READ_H:
                tl.store(ahr_ptr + aoff, q1, mask=m2)
                if GATES == 2:
                    tl.store(ahr_ptr + aoff + H, q2, mask=m2)
            if CAND_READS_H:
                if PHASE == 0:
                    tl.store(ahr_ptr + aoff + nrow, qn, mask=m2)
        else:
            if STAGE == 2:
                mean, rstd = _row_stats(ahr_ptr, rb64, mb, NBH, NBH if PHASE == 0 else nrow, eps, BB, BK, ACC)
                _store_stats(st_ptr, rb64, first, mean, rstd, 0)
                if GATES_READ_H:
                    q1 = _ln_apply(
                        tl.load(ahr_ptr + aoff, mask=m2, other=0.0),
                        mean,
                        rstd,
                        tl.load(lnw_ptr + rj, mask=mj, other=0.0).to(ACC),
                        tl.load(lnb_ptr + rj, mask=mj, other=0.0).to(ACC),
                    )
                    q2 = q1
                    if GATES == 2:
                        q2 = _ln_apply(
                            tl.load(ahr_ptr + aoff + H, mask=m2, other=0.0),
                            mean,
                            rstd,
                            tl.load(lnw_ptr + H + rj, mask=mj, other=0.0).to(ACC),
                            tl.load(lnb_ptr + H + rj, mask=mj, other=0.0).to(ACC),
                        )
                if CAND_READS_H:
                    if PHASE == 0:
                        qn = _ln_apply(
                            tl.load(ahr_ptr + aoff + nrow, mask=m2, other=0.0),
                            mean,
                            rstd,
                            tl.load(lnw_ptr + nrow + rj, mask=mj, other=0.0).to(ACC),
                            tl.load(lnb_ptr + nrow + rj, mask=mj, other=0.0).to(ACC),
                        )
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
            g1, g2, r, z = _gates(
                p1, p2, q1 if GATES_READ_H else p1, q2 if GATES_READ_H else p2, GATES_READ_H, GATES, COUPLED
            )
            tl.store(g_ptr + goff, g1, mask=m2)
            if GATES == 2:
                tl.store(g_ptr + goff + H, g2, mask=m2)
            if PHASE == 1:
                hd = tl.load(h_ptr + off, mask=m2, other=0.0)
                if HAS_RESETS:
                    hd = tl.where(rst, 0.0, hd)
                if HAS_HMASK:
                    hd = hd * tl.load(hm_ptr + off, mask=m2, other=0.0).to(ACC)
                tl.store(rh_ptr + off, r * hd, mask=m2)
            else:
                npre = tl.load(nx_ptr + rb64[:, None] * s_nb + rj[None, :], mask=m2, other=0.0).to(ACC)
                if CAND_READS_H:
                    hn = qn
                    if HAS_BHN:
                        hn += tl.load(bhn_ptr + rj, mask=mj, other=0.0).to(ACC)[None, :]
                    npre += r * hn
                    tl.store(hn_ptr + off, hn, mask=m2)
                _step_out(
                    npre, z, h_ptr, zo_ptr, sc_ptr, len_ptr, n_ptr, out_ptr, off, rb, mb, m2, rst, t,
                    CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS, ACC,
                )  # fmt: skip


@triton.jit
def _chunk_grads(
    dhin_ptr,
    dy_ptr,
    h_ptr,
    g_ptr,
    n_ptr,
    zo_ptr,
    ko,
    kgo,
    mk2,
    H,
    zeta,
    alive,
    rst,
    GATES: tl.constexpr,
    COUPLED: tl.constexpr,
    CAND_TANH: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    ACC: tl.constexpr,
):
    """:func:`_cell_grads` on the columns ``ko`` (offsets into ``[B, H]``; ``kgo`` into
    ``[B, G*H]``) of a step kernel's buffers: ``(dh, h̄, r, dnpre, dz, direct dh̄, g1, g2)``."""
    dh = tl.load(dhin_ptr + ko, mask=mk2, other=0.0)
    dy = tl.load(dy_ptr + ko, mask=mk2, other=0.0).to(ACC)
    if HAS_LEN:
        dh = tl.where(alive, dh + dy, dh)
    else:
        dh = dh + dy
    if ZONEOUT == 1:
        zeta = tl.load(zo_ptr + ko, mask=mk2, other=0.0).to(ACC)
    h = tl.load(h_ptr + ko, mask=mk2, other=0.0)
    g1 = tl.load(g_ptr + kgo, mask=mk2, other=0.0)
    if GATES == 2:
        g2 = tl.load(g_ptr + kgo + H, mask=mk2, other=0.0)
    else:
        g2 = g1
    n = tl.load(n_ptr + ko, mask=mk2, other=0.0)
    hp, r, dnpre, dz, ddir = _cell_grads(
        dh, h, g1, g2, n, zeta, alive, rst, GATES, COUPLED, CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS
    )
    return dh, hp, r, dnpre, dz, ddir, g1, g2


@triton.jit(do_not_specialize=["t", "B", "H"])
def rnn_step_bwd(
    dy_ptr,
    h_ptr,
    g_ptr,
    n_ptr,
    hn_ptr,
    w_ptr,
    len_ptr,
    lnw_ptr,
    hm_ptr,
    zo_ptr,
    rs_ptr,
    sc_ptr,
    ahr_ptr,
    st_ptr,
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
    LN_HH: tl.constexpr,
    HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
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
    ``drh = da_n U_n`` and the gate gradients, writes ``dG``, ``dN`` and the partial ``dh(t-1)``;
    ``PHASE`` 2 adds ``m ⊙ (da_g U_g)`` to it (only when the gates read h).

    With ``LN_HH`` the layer norm's backward needs two means over its group's whole row, so
    each program first runs over the row's chunks once more to sum them (PHASE 0: the element-wise
    gradients recomputed; PHASE 1: ``dnpre``; PHASE 2: the ``dG`` that PHASE 1 wrote).

    Args:
        dy_ptr: ``[B, H]`` gradient of y at t (read where ``t < lengths``).
        h_ptr: ``[B, H]`` ACC, h(t-1) from the forward (``hs[t]``, before any reset).
        g_ptr: ``[B, G*H]`` ACC, the forward's gate activations at t.
        n_ptr: ``[B, H]`` ACC, the forward's candidate at t.
        hn_ptr: ``[B, H]`` ACC, the forward's ``â_n + b_hn`` at t (RESET_AFTER).
        w_ptr: ``[NB*H, H]`` W_hh.
        len_ptr: ``[B]`` int64 lengths (HAS_LEN).
        lnw_ptr: ``[NB*H]`` the layer norm's gain (LN_HH).
        hm_ptr, zo_ptr, rs_ptr, sc_ptr: the forward's mask, ζ at t, resets at t and constants.
        ahr_ptr: ``[B, NB*H]`` ACC, the forward's raw recurrent products at t (LN_HH).
        st_ptr: ``[B, 4]`` ACC, the forward's layer-norm statistics at t (LN_HH).
        dhin_ptr: ``[B, H]`` ACC, gradient carried into h(t) from step t+1 (from h_n at t = T-1).
        dhout_ptr: ``[B, H]`` ACC out, gradient of h(t-1) (a different buffer: ping-pong).
        dg_ptr: ``[B, G*H]`` ACC out: gradient of the gates' pre-activation (0 past a length).
        dn_ptr: ``[B, H]`` ACC out: gradient of the candidate's pre-activation.
        dhn_ptr: ``[B, H]`` ACC out: gradient of ``â_n + b_hn`` (RESET_AFTER).
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
    NBH = nrow + H
    if HAS_LEN:
        L = tl.load(len_ptr + rb, mask=mb, other=0)
        alive = (t < L)[:, None]
    else:
        alive = m2
    if HAS_RESETS:
        rst = (tl.load(rs_ptr + rb, mask=mb, other=0) != 0)[:, None]
    else:
        rst = m2
    if ZONEOUT == 2:
        zeta = tl.load(sc_ptr + 1)
    else:
        zeta = 0.0
    if LN_HH:
        # the statistics of this phase's group: the first (PHASE 0, 2) or the candidate's (PHASE 1)
        mean = tl.load(st_ptr + rb64 * 4 + (2 if PHASE == 1 else 0), mask=mb, other=0.0)
        rstd = tl.load(st_ptr + rb64 * 4 + (3 if PHASE == 1 else 1), mask=mb, other=0.0)
        c1 = tl.full([BB], 0.0, ACC)
        c2 = tl.full([BB], 0.0, ACC)
    if PHASE == 2:
        if LN_HH:
            for k0 in range(0, H, BK):
                rk = k0 + rk0
                mk = rk < H
                mk2 = mb[:, None] & mk[None, :]
                kgo = rb64[:, None] * (GATES * H) + rk[None, :]
                ka = rb64[:, None] * NBH + rk[None, :]
                s1, s2 = _ln_sums(
                    tl.load(dg_ptr + kgo, mask=mk2, other=0.0),
                    tl.load(lnw_ptr + rk, mask=mk, other=0.0).to(ACC),
                    tl.load(ahr_ptr + ka, mask=mk2, other=0.0),
                    mean,
                    rstd,
                )
                c1 += s1
                c2 += s2
                if GATES == 2:
                    s1, s2 = _ln_sums(
                        tl.load(dg_ptr + kgo + H, mask=mk2, other=0.0),
                        tl.load(lnw_ptr + H + rk, mask=mk, other=0.0).to(ACC),
                        tl.load(ahr_ptr + ka + H, mask=mk2, other=0.0),
                        mean,
                        rstd,
                    )
                    c1 += s1
                    c2 += s2
            c1 = c1 / nrow
            c2 = c2 / nrow
        acc = tl.full([BB, BJ], 0.0, ACC)
        for k0 in range(0, H, BK):
            rk = k0 + rk0
            mk = rk < H
            mk2 = mb[:, None] & mk[None, :]
            kgo = rb64[:, None] * (GATES * H) + rk[None, :]
            wm = mk[:, None] & mj[None, :]
            wo = rk[:, None] * H + rj[None, :]
            d1 = tl.load(dg_ptr + kgo, mask=mk2, other=0.0)
            if LN_HH:
                ka = rb64[:, None] * NBH + rk[None, :]
                d1 = _ln_grad(
                    d1,
                    tl.load(lnw_ptr + rk, mask=mk, other=0.0).to(ACC),
                    tl.load(ahr_ptr + ka, mask=mk2, other=0.0),
                    mean,
                    rstd,
                    c1,
                    c2,
                )
            wr = tl.load(w_ptr + wo, mask=wm, other=0.0).to(DOT)
            acc += tl.dot(d1.to(DOT), wr, out_dtype=ACC, input_precision=PREC)
            if GATES == 2:
                d2 = tl.load(dg_ptr + kgo + H, mask=mk2, other=0.0)
                if LN_HH:
                    d2 = _ln_grad(
                        d2,
                        tl.load(lnw_ptr + H + rk, mask=mk, other=0.0).to(ACC),
                        tl.load(ahr_ptr + ka + H, mask=mk2, other=0.0),
                        mean,
                        rstd,
                        c1,
                        c2,
                    )
                wz = tl.load(w_ptr + H * H + wo, mask=wm, other=0.0).to(DOT)
                acc += tl.dot(d2.to(DOT), wz, out_dtype=ACC, input_precision=PREC)
        if HAS_HMASK:
            acc = acc * tl.load(hm_ptr + off, mask=m2, other=0.0).to(ACC)
        if HAS_RESETS:
            acc = tl.where(rst, 0.0, acc)
        dprev = tl.load(dhout_ptr + off, mask=m2, other=0.0)
        tl.store(dhout_ptr + off, dprev + acc, mask=m2)
    else:
        if LN_HH:
            for k0 in range(0, H, BK):
                rk = k0 + rk0
                mk = rk < H
                mk2 = mb[:, None] & mk[None, :]
                ko = rb64[:, None] * H + rk[None, :]
                kgo = rb64[:, None] * (GATES * H) + rk[None, :]
                ka = rb64[:, None] * NBH + rk[None, :]
                _dh, _hp, rk_, dnk, dzk, _dd, g1k, g2k = _chunk_grads(
                    dhin_ptr, dy_ptr, h_ptr, g_ptr, n_ptr, zo_ptr, ko, kgo, mk2, H, zeta, alive, rst,
                    GATES, COUPLED, CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS, ACC,
                )  # fmt: skip
                if PHASE == 1:
                    dank = dnk
                else:
                    d1k, d2k, dank = _after_grads(
                        dnk, dzk, rk_, g1k, g2k, tl.load(hn_ptr + ko, mask=mk2, other=0.0), GATES, COUPLED, True
                    )
                    if GATES_READ_H:
                        s1, s2 = _ln_sums(
                            d1k, tl.load(lnw_ptr + rk, mask=mk, other=0.0).to(ACC),
                            tl.load(ahr_ptr + ka, mask=mk2, other=0.0), mean, rstd,
                        )  # fmt: skip
                        c1 += s1
                        c2 += s2
                        if GATES == 2:
                            s1, s2 = _ln_sums(
                                d2k, tl.load(lnw_ptr + H + rk, mask=mk, other=0.0).to(ACC),
                                tl.load(ahr_ptr + ka + H, mask=mk2, other=0.0), mean, rstd,
                            )  # fmt: skip
                            c1 += s1
                            c2 += s2
                s1, s2 = _ln_sums(
                    dank, tl.load(lnw_ptr + nrow + rk, mask=mk, other=0.0).to(ACC),
                    tl.load(ahr_ptr + ka + nrow, mask=mk2, other=0.0), mean, rstd,
                )  # fmt: skip
                c1 += s1
                c2 += s2
            width = H if PHASE == 1 else NBH
            c1 = c1 / width
            c2 = c2 / width
        acc = tl.full([BB, BJ], 0.0, ACC)
        for k0 in range(0, H, BK):
            rk = k0 + rk0
            mk = rk < H
            mk2 = mb[:, None] & mk[None, :]
            ko = rb64[:, None] * H + rk[None, :]
            kgo = rb64[:, None] * (GATES * H) + rk[None, :]
            ka = rb64[:, None] * NBH + rk[None, :]
            wm = mk[:, None] & mj[None, :]
            wo = rk[:, None] * H + rj[None, :]
            _dh, _hp, rk_, dnk, dzk, _dd, g1k, g2k = _chunk_grads(
                dhin_ptr, dy_ptr, h_ptr, g_ptr, n_ptr, zo_ptr, ko, kgo, mk2, H, zeta, alive, rst,
                GATES, COUPLED, CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS, ACC,
            )  # fmt: skip
            if PHASE == 1:
                dank = dnk
                if LN_HH:
                    dank = _ln_grad(
                        dank, tl.load(lnw_ptr + nrow + rk, mask=mk, other=0.0).to(ACC),
                        tl.load(ahr_ptr + ka + nrow, mask=mk2, other=0.0), mean, rstd, c1, c2,
                    )  # fmt: skip
                wn = tl.load(w_ptr + nrow * H + wo, mask=wm, other=0.0).to(DOT)
                acc += tl.dot(dank.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
            else:
                if CAND_READS_H:
                    hnk = tl.load(hn_ptr + ko, mask=mk2, other=0.0)
                else:
                    hnk = dnk
                d1k, d2k, dank = _after_grads(dnk, dzk, rk_, g1k, g2k, hnk, GATES, COUPLED, CAND_READS_H)
                if CAND_READS_H:
                    if LN_HH:
                        dank = _ln_grad(
                            dank, tl.load(lnw_ptr + nrow + rk, mask=mk, other=0.0).to(ACC),
                            tl.load(ahr_ptr + ka + nrow, mask=mk2, other=0.0), mean, rstd, c1, c2,
                        )  # fmt: skip
                    wn = tl.load(w_ptr + nrow * H + wo, mask=wm, other=0.0).to(DOT)
                    acc += tl.dot(dank.to(DOT), wn, out_dtype=ACC, input_precision=PREC)
                if GATES_READ_H:
                    if LN_HH:
                        d1k = _ln_grad(
                            d1k, tl.load(lnw_ptr + rk, mask=mk, other=0.0).to(ACC),
                            tl.load(ahr_ptr + ka, mask=mk2, other=0.0), mean, rstd, c1, c2,
                        )  # fmt: skip
                    wr = tl.load(w_ptr + wo, mask=wm, other=0.0).to(DOT)
                    acc += tl.dot(d1k.to(DOT), wr, out_dtype=ACC, input_precision=PREC)
                    if GATES == 2:
                        if LN_HH:
                            d2k = _ln_grad(
                                d2k, tl.load(lnw_ptr + H + rk, mask=mk, other=0.0).to(ACC),
                                tl.load(ahr_ptr + ka + H, mask=mk2, other=0.0), mean, rstd, c1, c2,
                            )  # fmt: skip
                        wz = tl.load(w_ptr + H * H + wo, mask=wm, other=0.0).to(DOT)
                        acc += tl.dot(d2k.to(DOT), wz, out_dtype=ACC, input_precision=PREC)
        # this program's own tile
        dh, hp, r, dnpre, dz, dprev, g1, g2 = _chunk_grads(
            dhin_ptr, dy_ptr, h_ptr, g_ptr, n_ptr, zo_ptr, off, goff, m2, H, zeta, alive, rst,
            GATES, COUPLED, CAND_TANH, HAS_LEN, ZONEOUT, HAS_RESETS, ACC,
        )  # fmt: skip
        if HAS_HMASK:
            hmask = tl.load(hm_ptr + off, mask=m2, other=0.0).to(ACC)
        if PHASE == 1:
            hd = hp
            if HAS_HMASK:
                hd = hp * hmask
            dr = acc * hd
            dprod = acc * r
            d1, d2 = _gates_bwd(dr, dz, g1, g2, GATES, COUPLED)
        else:
            if CAND_READS_H:
                hn = tl.load(hn_ptr + off, mask=m2, other=0.0)
            else:
                hn = dnpre
            d1, d2, dan = _after_grads(dnpre, dz, r, g1, g2, hn, GATES, COUPLED, CAND_READS_H)
            if CAND_READS_H:
                tl.store(dhn_ptr + off, dan, mask=m2)
            dprod = acc
        tl.store(dg_ptr + goff, d1, mask=m2)
        if GATES == 2:
            tl.store(dg_ptr + goff + H, d2, mask=m2)
        tl.store(dn_ptr + off, dnpre, mask=m2)
        if HAS_HMASK:
            dprod = dprod * hmask
        dprev += dprod
        if HAS_RESETS:
            dprev = tl.where(rst, 0.0, dprev)  # no gradient crosses a reset
        if HAS_LEN:
            dprev = tl.where(alive, dprev, dh)
        tl.store(dhout_ptr + off, dprev, mask=m2)
