"""The triton engine: every variant of the family on CUDA tensors (or CPU tensors in Triton's interpreter).

One :class:`torch.autograd.Function` per layer and direction, with a hand-written backward:

* forward: the input projection of all steps is one GEMM (:func:`gatedrnn._reference.project`);
  the recurrence runs in Triton, either as one **persistent** launch (small ``H``: the recurrent
  weights stay in registers, each program owns a batch tile and loops over T) or as one **step**
  launch per time step (any ``H``; two launches per step for the reset-before form), the
  recurrent matmul fused with the gate epilogue. On CUDA the step loop can be captured in a CUDA
  graph and replayed.
* backward: the mirror kernels compute ``dh(t-1)`` and the pre-activation gradients of every
  step; ``dx``, ``dW_ih``, ``dW_hh`` and the bias gradients are single matrix products / sums in
  torch outside the loop.
* options (:mod:`gatedrnn._options`): the layer norm of ``W x`` is torch's, outside the loop (its
  backward by torch's autograd); the layer norm of the recurrent products, the recurrent-dropout
  mask, zoneout and the resets are inside the kernels (``LN_HH``, ``HAS_HMASK``, ``ZONEOUT``,
  ``HAS_RESETS``). After the loop, torch's layer-norm backward on the raw recurrent products the
  forward saved gives the gains' and shifts' gradients and the products' own (for ``dW_hh``).

Triton is imported here only (this module is loaded lazily by the engine registry), and the
kernels module is exec'd once per Triton mode (compiled / ``TRITON_INTERPRET=1``) on first use.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .. import _reference
from .._options import LN_EPS, NONE, Extras
from .._specs import Spec, join_bias, split
from . import not_yet, recording
from ._second_order import first_order

__all__ = ["ENGINE", "PERSISTENT_MAX_H", "TritonEngine", "run"]

#: Largest hidden size run by the persistent kernel (weights held on chip); larger sizes use the
#: step kernels. Half of it for float64, and half again with the layer norm of the recurrent
#: products (:func:`_persistent_max_h`). Not tuned on a GPU yet; shared memory and registers at
#: these sizes: docs/triton.md.
PERSISTENT_MAX_H = 64

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_KERNELS: dict[bool, ModuleType] = {}


def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton cannot be imported ({type(e).__name__}: {e}); install it with pip install 'gatedrnn[triton]'"
    return None


def _interpreting() -> bool:
    """Whether Triton's interpreter mode is on now (``TRITON_INTERPRET=1``), read at call time."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except Exception:  # an older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels() -> ModuleType:
    """The kernels module for the current Triton mode (``@triton.jit`` picks the mode at decoration)."""
    mode = _interpreting()
    mod = _KERNELS.get(mode)
    if mod is None:
        name = "gatedrnn._engines._triton_kernels" + ("_interpreted" if mode else "_compiled")
        spec = importlib.util.find_spec("gatedrnn._engines._triton_kernels")
        assert spec is not None and spec.loader is not None
        spec = importlib.util.spec_from_file_location(name, spec.origin)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _KERNELS[mode] = mod
    return mod


def _pow2(n: int, lo: int = 16) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


@dataclass(frozen=True)
class _Config:
    """What a layer call needs to launch its kernels (hashable: also keys CUDA graphs)."""

    spec: Spec
    reset_after: bool
    persistent: bool
    graphs: bool
    ln_hh: bool = False  # layer norm of the recurrent products
    h_mask: bool = False  # recurrent dropout
    zoneout: int = 0  # 0: off, 1: a mask per step (training), 2: the constant p (eval)
    resets: bool = False


#: The options this engine runs (:meth:`gatedrnn._options.Extras.names`).
_RUNS = ("layer_norm", "recurrent_dropout", "zoneout", "resets")


def _flags(cfg: _Config) -> dict[str, Any]:
    return cfg.spec.wiring(cfg.reset_after).constexprs()


def _option_flags(cfg: _Config) -> dict[str, Any]:
    """The options' constexprs (the kernels' switches beside the wiring)."""
    return {"LN_HH": cfg.ln_hh, "HAS_HMASK": cfg.h_mask, "ZONEOUT": cfg.zoneout, "HAS_RESETS": cfg.resets}


def _ln_groups(cfg: _Config, hidden: int) -> list[tuple[int, int]]:
    """The column ranges of the recurrent products that are normalised together: every block
    (reset-after), else the gates' blocks and then the candidate's (:mod:`gatedrnn._options`)."""
    width = cfg.spec.hh_blocks() * hidden
    if cfg.reset_after:
        return [(0, width)]
    gates = [(0, width - hidden)] if cfg.spec.gates_read_h else []
    return [*gates, (width - hidden, width)]


def _fwd_launches(flags: dict[str, Any], ln_hh: bool) -> tuple[tuple[int, int], ...]:
    """The step path's forward launches per step, as ``(PHASE, STAGE)`` of ``rnn_step_fwd``: with
    the layer norm of the recurrent products, each phase that has products takes two stages."""
    if flags["CAND_READS_H"] and not flags["RESET_AFTER"]:
        gates = ((1, 1), (1, 2)) if ln_hh and flags["GATES_READ_H"] else ((1, 0),)
        return gates + (((2, 1), (2, 2)) if ln_hh else ((2, 0),))
    return ((0, 1), (0, 2)) if ln_hh else ((0, 0),)


def _bwd_phases(flags: dict[str, Any]) -> tuple[int, ...]:
    """The step path's backward launches per step, as ``PHASE`` of ``rnn_step_bwd``."""
    if flags["CAND_READS_H"] and not flags["RESET_AFTER"]:
        return (1, 2) if flags["GATES_READ_H"] else (1,)
    return (0,)


def _option_tensors(
    acc: torch.dtype,
    device: torch.device,
    ln_hh: tuple[Tensor, Tensor] | None,
    h_mask: Tensor | None,
    zeta: Tensor | None,
    resets: Tensor | None,
    zoneout_p: float | None,
) -> dict[str, Tensor]:
    """The options' inputs as the kernels read them, by buffer name: ``lnw``, ``lnb`` (γ_hh, β_hh),
    ``hm`` (the recurrent-dropout mask), ``zo`` (ζ), ``rs`` (resets as uint8), ``sc`` (eps and
    zoneout's p in the work dtype: a float64 kernel reads them exactly). Only those in use."""
    opt: dict[str, Tensor] = {}
    if ln_hh is not None:
        opt["lnw"], opt["lnb"] = (v.contiguous() for v in ln_hh)
    if h_mask is not None:
        opt["hm"] = h_mask.contiguous()
    if zeta is not None:
        opt["zo"] = zeta.contiguous()
    if resets is not None:
        opt["rs"] = resets.contiguous().view(torch.uint8)
    if ln_hh is not None or zoneout_p is not None:
        # filled on the device (no host copy: works while a CUDA graph is being captured)
        opt["sc"] = torch.full((2,), LN_EPS, dtype=acc, device=device)
        if zoneout_p is not None:
            opt["sc"][1] = zoneout_p
    return opt


def _ln_backward(
    a: Tensor, gain_shift: tuple[Tensor, Tensor], d_out: Tensor, groups: list[tuple[int, int]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Layer norm's backward by torch's autograd (:func:`gatedrnn._reference.layer_norm` again):
    the gradients of its input ``a [..., W]``, gain and shift, given that of its output ``d_out``.
    ``groups``: the column ranges normalised separately, each with its slice of gain and shift."""
    with torch.enable_grad():
        a = a.detach().requires_grad_()
        gain, shift = (v.detach().to(a.dtype).requires_grad_() for v in gain_shift)
        outs = [_reference.layer_norm(a[..., s:e], (gain, shift), s, e) for s, e in groups]
        da, dgain, dshift = torch.autograd.grad(outs, (a, gain, shift), [d_out[..., s:e] for s, e in groups])
    return da, dgain, dshift


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_dtype(w: Tensor | None, acc: torch.dtype) -> Any:
    """The tl.dot operand dtype: the weights' dtype (float32 for bfloat16 under the interpreter,
    whose tl.dot mishandles bfloat16 operands)."""
    import triton.language as tl

    dtype = w.dtype if w is not None else acc
    if dtype == torch.bfloat16 and _interpreting():
        dtype = torch.float32
    return {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
    }[dtype]


def _precision(dtype: torch.dtype) -> str:
    # float32 follows torch's matmul setting (exact "ieee" by default, like torch's own matmuls).
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _forward(
    cfg: _Config,
    gx: Tensor | None,
    nx: Tensor,
    w_hh: Tensor | None,
    b_hn: Tensor | None,
    lengths: Tensor | None,
    h0: Tensor,
    opt: dict[str, Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Run the recurrence. Returns ``hs [T+1, B, H]``, ``g [T, B, G*H]``, ``n``, ``hn`` and, with
    the layer norm of the recurrent products, ``ahr [T, B, NB*H]`` and ``st [T, B, 4]`` (all ACC).
    ``opt``: the options' inputs (:func:`_option_tensors`)."""
    k = _kernels()
    steps, batch, hidden = nx.shape
    acc = _acc(nx.dtype)
    dev = nx.device
    gates = cfg.spec.num_gates
    hs = torch.empty(steps + 1, batch, hidden, device=dev, dtype=acc)
    hs[0] = h0
    g = torch.empty(steps, batch, gates * hidden, device=dev, dtype=acc)
    n = torch.empty(steps, batch, hidden, device=dev, dtype=acc)
    flags = _flags(cfg)
    needs_hn = flags["RESET_AFTER"] and cfg.spec.candidate_reads_h
    hn = torch.empty(steps, batch, hidden, device=dev, dtype=acc) if needs_hn else n
    ahr = st = None
    if cfg.ln_hh:
        ahr = torch.empty(steps, batch, cfg.spec.hh_blocks() * hidden, device=dev, dtype=acc)
        st = torch.empty(steps, batch, 4, device=dev, dtype=acc)
    w = w_hh if w_hh is not None else hs  # unread without recurrent weights
    bhn = b_hn if b_hn is not None else hs
    lens = lengths if lengths is not None else hs
    if gx is None:
        gx_t, s_gt, s_gb = nx, 0, 0
    elif gx.dim() == 1:
        gx_t, s_gt, s_gb = gx.contiguous(), 0, 0
    else:
        gx_t, s_gt, s_gb = gx, gx.stride(0), gx.stride(1)
    common = dict(
        **flags,
        HAS_GX=gx is not None,
        HAS_BHN=b_hn is not None and needs_hn,
        HAS_LEN=lengths is not None,
        **_option_flags(cfg),
        ACC=_tl_dtype(nx.dtype),
        PREC=_precision(nx.dtype),
        DOT=_dot_dtype(w_hh, acc),
    )
    if steps == 0 or batch == 0:
        return hs, g, n, hn, ahr, st
    if cfg.persistent:
        bh = _pow2(hidden) if w_hh is not None else min(_pow2(hidden), 64)
        bb = _PERSISTENT_BB
        grid = (_cdiv(batch, bb), _cdiv(hidden, bh))
        k.rnn_persistent_fwd[grid](
            gx_t,
            s_gt,
            s_gb,
            nx,
            nx.stride(0),
            nx.stride(1),
            w,
            bhn,
            lens,
            *(opt.get(name, hs) for name in ("lnw", "lnb", "hm", "zo", "rs", "sc")),
            hs,
            g,
            n,
            hn,
            hs if ahr is None else ahr,
            hs if st is None else st,
            steps,
            batch,
            hidden,
            **common,
            BB=bb,
            BH=bh,
            **_launch_options(bh, cfg.ln_hh),
        )
        return hs, g, n, hn, ahr, st
    assert w_hh is not None
    bb, bj, bk = _step_tiles(batch, hidden, cfg.ln_hh and acc == torch.float64)
    grid = (_cdiv(batch, bb), _cdiv(hidden, bj))
    bufs = {"nx": nx, "w": w_hh, "hs": hs, "g": g, "n": n, **opt}
    if gx is not None:
        bufs["gx"] = gx_t
    if b_hn is not None:
        bufs["bhn"] = b_hn
    if lengths is not None:
        bufs["lens"] = lengths
    if needs_hn:
        bufs["hn"] = hn
    if ahr is not None and st is not None:
        bufs["ahr"], bufs["st"] = ahr, st
    if flags["CAND_READS_H"] and not flags["RESET_AFTER"]:
        bufs["rh"] = torch.empty(batch, hidden, device=dev, dtype=acc)
    launches = _fwd_launches(flags, cfg.ln_hh)
    del common["LN_HH"]  # the step kernel's STAGE says it

    def loop(b: dict[str, Tensor]) -> None:
        hs_, n_, g_, nx_ = b["hs"], b["n"], b["g"], b["nx"]
        gx_, hn_ = b.get("gx", nx_), b.get("hn", n_)
        bhn_, lens_, rh_ = b.get("bhn", hs_), b.get("lens", hs_), b.get("rh", hs_)
        lnw_, lnb_, hm_, sc_ = (b.get(name, hs_) for name in ("lnw", "lnb", "hm", "sc"))
        per_step = [b.get(name, hs_) for name in ("zo", "rs", "ahr", "st")]  # hs_: unread
        for t in range(steps):
            gxt = gx_[t] if s_gt else gx_
            zo_t, rs_t, ahr_t, st_t = (v[t] for v in per_step)
            args = (gxt, s_gb, nx_[t], nx_.stride(1), b["w"], bhn_, lens_, lnw_, lnb_, hm_, zo_t, rs_t, sc_)
            outs = (hs_[t], hs_[t + 1], g_[t], n_[t], hn_[t], rh_, ahr_t, st_t)
            for phase, stage in launches:
                k.rnn_step_fwd[grid](
                    *args,
                    *outs,
                    t,
                    batch,
                    hidden,
                    **common,
                    PHASE=phase,
                    STAGE=stage,
                    BB=bb,
                    BJ=bj,
                    BK=bk,
                    **_launch_options(None),
                )

    outputs = ("hs", "g", "n", "hn", "ahr", "st")  # hs is also an input (hs[0] = h0)
    _run_loop(cfg, ("fwd", steps), bufs, tuple(x for x in bufs if x not in outputs[1:]), outputs, loop, dev)
    return hs, g, n, hn, ahr, st


def _backward(
    cfg: _Config,
    dy: Tensor,
    dh_n: Tensor,
    hs: Tensor,
    g: Tensor,
    n: Tensor,
    hn: Tensor,
    w_hh: Tensor | None,
    lengths: Tensor | None,
    opt: dict[str, Tensor],
    ahr: Tensor | None,
    st: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The recurrence's backward. Returns ``dG [T,B,G*H]``, ``dN [T,B,H]``, ``dHN [T,B,H]``, ``dh0 [B,H]``
    (the gradients of the gates' pre-activations, of the candidate's and of ``â_n + b_hn``: after
    the layer norm of the recurrent products, which the engine differentiates in torch)."""
    k = _kernels()
    steps, batch, hidden = n.shape
    acc = n.dtype
    dev = n.device
    flags = _flags(cfg)
    needs_hn = flags["RESET_AFTER"] and cfg.spec.candidate_reads_h
    dg = torch.empty_like(g)
    dn = torch.empty_like(n)
    dhn = torch.empty_like(n) if needs_hn else dn
    w = w_hh if w_hh is not None else hs
    lens = lengths if lengths is not None else hs
    dy = dy.contiguous()
    common = dict(
        **flags,
        HAS_LEN=lengths is not None,
        **_option_flags(cfg),
        ACC=_tl_dtype(acc),
        PREC=_precision(_w_dtype(w_hh, acc)),
        DOT=_dot_dtype(w_hh, acc),
    )
    if steps == 0 or batch == 0:
        return dg, dn, dhn, dh_n.to(acc)
    if cfg.persistent:
        dh_n = dh_n.to(acc).contiguous()
        dh0 = torch.empty(batch, hidden, device=dev, dtype=acc)
        bh = _pow2(hidden) if w_hh is not None else min(_pow2(hidden), 64)
        bb = _PERSISTENT_BB
        grid = (_cdiv(batch, bb), _cdiv(hidden, bh))
        k.rnn_persistent_bwd[grid](
            dy,
            dh_n,
            hs,
            g,
            n,
            hn,
            w,
            lens,
            *(opt.get(name, hs) for name in ("lnw", "hm", "zo", "rs", "sc")),
            hs if ahr is None else ahr,
            hs if st is None else st,
            dg,
            dn,
            dhn,
            dh0,
            steps,
            batch,
            hidden,
            **common,
            BB=bb,
            BH=bh,
            **_launch_options(bh, cfg.ln_hh),
        )
        return dg, dn, dhn, dh0
    bb, bj, bk = _step_tiles(batch, hidden, cfg.ln_hh and acc == torch.float64)
    grid = (_cdiv(batch, bb), _cdiv(hidden, bj))
    dhb = torch.empty(2, batch, hidden, device=dev, dtype=acc)
    dhb[steps % 2] = dh_n
    assert w_hh is not None
    bufs = {"dy": dy, "hs": hs, "g": g, "n": n, "w": w_hh, "dhb": dhb, "dg": dg, "dn": dn, **opt}
    if lengths is not None:
        bufs["lens"] = lengths
    if needs_hn:
        bufs["hn"] = hn
        bufs["dhn"] = dhn
    if ahr is not None and st is not None:
        bufs["ahr"], bufs["st"] = ahr, st
    phases = _bwd_phases(flags)

    def loop(b: dict[str, Tensor]) -> None:
        hs_, n_, dn_, dhb_ = b["hs"], b["n"], b["dn"], b["dhb"]
        hn_, dhn_, lens_ = b.get("hn", n_), b.get("dhn", dn_), b.get("lens", hs_)
        lnw_, hm_, sc_ = (b.get(name, hs_) for name in ("lnw", "hm", "sc"))
        per_step = [b.get(name, hs_) for name in ("zo", "rs", "ahr", "st")]  # hs_: unread
        for t in range(steps - 1, -1, -1):
            zo_t, rs_t, ahr_t, st_t = (v[t] for v in per_step)
            saved_t = (b["dy"][t], hs_[t], b["g"][t], n_[t], hn_[t], b["w"], lens_, lnw_, hm_, zo_t, rs_t, sc_)
            grads_t = (ahr_t, st_t, dhb_[(t + 1) % 2], dhb_[t % 2], b["dg"][t], dn_[t], dhn_[t])
            for phase in phases:
                k.rnn_step_bwd[grid](
                    *saved_t,
                    *grads_t,
                    t,
                    batch,
                    hidden,
                    **common,
                    PHASE=phase,
                    BB=bb,
                    BJ=bj,
                    BK=bk,
                    **_launch_options(None),
                )

    outputs = ("dg", "dn", "dhn", "dhb")  # dhb is also an input (dh_n)
    _run_loop(cfg, ("bwd", steps), bufs, tuple(x for x in bufs if x not in outputs[:3]), outputs, loop, dev)
    return dg, dn, dhn, dhb[0]


def _launch_options(bh: int | None, ln_hh: bool = False) -> dict[str, Any]:
    """Launch options of a persistent kernel with hidden tile ``bh``, or of the step kernels (None).

    ``num_stages=1``: no software pipelining, the least shared memory (the loops are short or
    latency-bound anyway). ``enable_fp_fusion`` explicit (FMA contraction on, Triton's default).
    Warps: more for larger weight tiles held in registers; with the layer norm of the recurrent
    products (``ln_hh``) the persistent kernels take the warps of a tile twice as large (see
    :func:`_persistent_max_h`). ``maxnreg=255``: every register a thread can have (at most
    256 threads here); without it ptxas may stop at an occupancy step (64, 80 or 128 registers)
    and spill a few bytes instead. Untuned on a GPU.
    """
    warps = _STEP_WARPS if bh is None else (4 if bh <= 32 and not ln_hh else 8)
    return {"num_warps": warps, "num_stages": 1, "enable_fp_fusion": True, "maxnreg": 255}


def _persistent_max_h(dtype: torch.dtype, ln_hh: bool) -> int:
    """The largest H that ``path="auto"`` runs persistently: :data:`PERSISTENT_MAX_H`, halved for
    float64, and halved again with the layer norm of the recurrent products, whose backward keeps
    every block's gradient live across the products: at the full tile ptxas spills registers, also
    with twice the warps (16 warps cap a thread at 128 registers); half the tile with the full
    tile's warps does not (:func:`_launch_options`; figures in docs/triton.md)."""
    return PERSISTENT_MAX_H // (2 if dtype == torch.float64 else 1) // (2 if ln_hh else 1)


def _w_dtype(w_hh: Tensor | None, acc: torch.dtype) -> torch.dtype:
    return w_hh.dtype if w_hh is not None else acc


def _step_tiles(batch: int, hidden: int, wide: bool = False) -> tuple[int, int, int]:
    """Tiles of the step kernels: batch tile BB, output-column tile BJ, reduction chunk BK.

    Small tiles give more programs per step (a step is a skinny matmul). ``wide``: float64 with
    the layer norm of the recurrent products, whose backward holds every block's gradient in
    64-bit registers: batch tiles of 16 rows. With ``_STEP_WARPS`` warps and ``num_stages=1`` no
    configuration spills registers (ptxas for sm_90 and sm_80; shared memory: docs/triton.md).
    Untuned on a GPU.
    """
    return min(max(_pow2(batch), 16), 16 if wide else 32), 32, 32


_STEP_WARPS = 8
_PERSISTENT_BB = 16  # batch rows per persistent program (the least tl.dot allows)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_GRAPHS: dict[tuple[Any, ...], tuple[Any, dict[str, Tensor]]] = {}
_MAX_GRAPHS = 4


def _run_loop(
    cfg: _Config,
    tag: tuple[Any, ...],
    bufs: dict[str, Tensor],
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    loop: Any,
    device: torch.device,
) -> None:
    """Run a step loop ``loop(bufs)``; with ``cfg.graphs`` on CUDA, through a cached CUDA graph.

    The graph is captured once per (config, shapes, dtypes) on static copies of ``bufs``; each
    call copies ``inputs`` into them, replays, and copies ``outputs`` back. At most
    ``_MAX_GRAPHS`` graphs (and their static buffers) are kept, oldest dropped first.
    """
    if not (cfg.graphs and _graphs_possible(device)):
        loop(bufs)
        return
    key = (
        cfg,
        tag,
        str(device),
        torch.backends.cuda.matmul.allow_tf32,  # baked into the captured launches (PREC)
        tuple((name, tuple(t.shape), t.stride(), t.dtype) for name, t in sorted(bufs.items())),
    )
    entry = _GRAPHS.get(key)
    if entry is None:
        static = {name: t.clone() for name, t in bufs.items()}
        graph = _capture(lambda: loop(static), device)
        while len(_GRAPHS) >= _MAX_GRAPHS:
            _GRAPHS.pop(next(iter(_GRAPHS)))
        entry = _GRAPHS[key] = (graph, static)
    graph, static = entry
    for name in inputs:
        static[name].copy_(bufs[name])
    graph.replay()
    for name in outputs:
        if name in bufs:
            bufs[name].copy_(static[name])


def _graphs_possible(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device, and no capture already running (then launch plainly)."""
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def _capture(fn: Any, device: torch.device) -> Any:
    """Capture ``fn()`` (Triton launches) in a CUDA graph; returns it (``.replay()``)."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()  # compiles every kernel before the capture (no compilation inside a capture)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _graphs_enabled() -> bool:
    """CUDA graphs for the step loop: opt-in with ``GATEDRNN_TRITON_GRAPHS=1`` (unmeasured so far)."""
    return os.environ.get("GATEDRNN_TRITON_GRAPHS", "0") == "1"


class _TritonLayer(torch.autograd.Function):
    """One layer, one direction: Triton recurrence, hand-written backward, GEMMs outside the loop."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        cfg: _Config,
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor | None,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        lengths: Tensor | None,
        ln_w_ih: Tensor | None,
        ln_b_ih: Tensor | None,
        ln_w_hh: Tensor | None,
        ln_b_hh: Tensor | None,
        h_mask: Tensor | None,
        zeta: Tensor | None,
        resets: Tensor | None,
        zoneout_p: float | None,
    ) -> tuple[Tensor, Tensor]:
        spec = cfg.spec
        hidden = h0.shape[-1]
        ln_ih = (ln_w_ih, ln_b_ih) if ln_w_ih is not None and ln_b_ih is not None else None
        ln_hh = (ln_w_hh, ln_b_hh) if ln_w_hh is not None and ln_b_hh is not None else None
        gx, nx = _reference.project(spec, x, w_ih, b_ih, b_hh, hidden, ln_ih)
        if gx is not None and gx.dim() > 1:
            gx = gx.contiguous()
        nx = nx.contiguous()
        b_hn = split(spec, None, None, None, b_hh, hidden).b_hn
        b_hn = b_hn.contiguous() if b_hn is not None else None
        w = w_hh.contiguous() if w_hh is not None else None
        opt = _option_tensors(_acc(x.dtype), x.device, ln_hh, h_mask, zeta, resets, zoneout_p)
        hs, g, n, hn, ahr, st = _forward(cfg, gx, nx, w, b_hn, lengths, h0, opt)
        y = hs[1:].to(x.dtype)
        if lengths is not None:
            alive = torch.arange(x.shape[0], device=x.device).unsqueeze(1) < lengths.unsqueeze(0)
            y = y * alive.unsqueeze(-1).to(y.dtype)
        h_n = hs[-1].to(h0.dtype)
        ctx.cfg = cfg
        ctx.has = (w_hh is not None, b_ih is not None, b_hh is not None, lengths is not None)
        ctx.lengths = lengths
        ctx.zoneout_p = zoneout_p
        ctx.save_for_backward(
            x, w_ih, w, hs, g, n, hn, lengths if lengths is not None else hs, h0, w_hh, b_ih, b_hh,
            ahr, st, ln_w_ih, ln_b_ih, ln_w_hh, ln_b_hh, h_mask, zeta, resets,
        )  # fmt: skip
        return y, h_n

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dh_n: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        cfg: _Config = ctx.cfg
        saved = ctx.saved_tensors  # unpacked once: non-reentrant checkpointing refuses a second unpack
        x, w_ih = saved[:2]
        h0, w_hh, b_ih, b_hh = saved[8:12]
        ln_params = saved[14:18]  # ln_w_ih, ln_b_ih, ln_w_hh, ln_b_hh
        h_mask, zeta, resets = saved[18:21]
        zoneout = zeta if zeta is not None else ctx.zoneout_p
        lengths = ctx.lengths

        def reference(*ins: Tensor | None) -> tuple[Tensor, Tensor]:
            lwi, lbi, lwh, lbh = ins[6:]
            extras = Extras(
                (lwi, lbi) if lwi is not None else None,  # type: ignore[arg-type]
                (lwh, lbh) if lwh is not None else None,  # type: ignore[arg-type]
                h_mask,
                zoneout,
                resets,
            )
            return _reference.run_layer(cfg.spec, cfg.reset_after, *ins[:6], lengths, extras)  # type: ignore[arg-type]

        grads = first_order(
            lambda: _TritonLayer.first_order(ctx, saved, dy, dh_n),
            reference,
            (dy, dh_n),
            (x, h0, w_ih, w_hh, b_ih, b_hh, *ln_params),
        )
        return (None, *grads[:6], None, *grads[6:], None, None, None, None)

    @staticmethod
    def first_order(ctx: Any, saved: tuple[Tensor, ...], dy: Tensor, dh_n: Tensor) -> tuple[Tensor | None, ...]:
        """The hand-written backward: gradients for (x, h0, w_ih, w_hh, b_ih, b_hh) and the layer
        norms' (gain_ih, shift_ih, gain_hh, shift_hh). ``saved``: ``ctx.saved_tensors``, unpacked
        once by the caller."""
        cfg: _Config = ctx.cfg
        spec = cfg.spec
        has_whh, has_bih, has_bhh, has_len = ctx.has
        x, w_ih, w, hs, g, n, hn, lens = saved[:8]
        ahr, st, ln_w_ih, ln_b_ih, ln_w_hh, ln_b_hh, h_mask, zeta, resets = saved[12:21]
        w_hh = w if has_whh else None
        lengths = lens if has_len else None
        steps, batch, hidden = n.shape
        ln_hh = (ln_w_hh, ln_b_hh) if cfg.ln_hh else None
        opt = _option_tensors(n.dtype, n.device, ln_hh, h_mask if cfg.h_mask else None, zeta, resets, ctx.zoneout_p)
        if n.is_cuda:
            with torch.cuda.device(n.device):
                dg, dn, dhn, dh0 = _backward(cfg, dy, dh_n, hs, g, n, hn, w_hh, lengths, opt, ahr, st)
        else:
            dg, dn, dhn, dh0 = _backward(cfg, dy, dh_n, hs, g, n, hn, w_hh, lengths, opt, ahr, st)
        wd = x.dtype
        rows = steps * batch
        gh = spec.num_gates * hidden
        # (cfg, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ln_w_ih, ln_b_ih, ln_w_hh, ln_b_hh, masks...)
        need = ctx.needs_input_grad
        dxp = torch.cat([dg, dn], dim=-1) if spec.gates_read_x else dn
        dx = dw_ih = dw_hh = db_ih = db_hh = None
        dln_ih: tuple[Tensor | None, Tensor | None] = (None, None)
        dln_hh: tuple[Tensor | None, Tensor | None] = (None, None)
        if ln_w_ih is not None and ln_b_ih is not None and any(need[i] for i in (1, 3, 8, 9)):
            # the biases come after the layer norm of W x: dxp is its output's gradient
            a = (x @ w_ih.t()).to(dxp.dtype)
            dxp, dgain, dshift = _ln_backward(a, (ln_w_ih, ln_b_ih), dxp, [(0, a.shape[-1])])
            dln_ih = (dgain.to(ln_w_ih.dtype) if need[8] else None, dshift.to(ln_b_ih.dtype) if need[9] else None)
        if need[1]:
            dx = (dxp.to(wd) @ w_ih).reshape(x.shape)
        if need[3]:
            dw_ih = dxp.reshape(rows, -1).to(wd).t() @ x.reshape(rows, -1)
        if has_whh and (need[4] or (cfg.ln_hh and (need[10] or need[11]))):
            # the gradients of the recurrent products' blocks, after their layer norm (if any)
            post = [dg] if spec.gates_read_h else []
            post.append(dhn if cfg.reset_after else dn)
            if ln_hh is not None and ahr is not None:
                da, dgain, dshift = _ln_backward(ahr, ln_hh, torch.cat(post, dim=-1), _ln_groups(cfg, hidden))
                post = [da[..., :gh], da[..., gh:]] if spec.gates_read_h else [da]
                dln_hh = (
                    dgain.to(ln_hh[0].dtype) if need[10] else None,
                    dshift.to(ln_hh[1].dtype) if need[11] else None,
                )
            if need[4]:
                # h̃(t-1): the state after a reset, times the recurrent-dropout mask
                h_prev = hs[:-1]
                if resets is not None:
                    h_prev = h_prev.masked_fill(resets.unsqueeze(-1), 0.0)
                if h_mask is not None and cfg.h_mask:
                    h_prev = h_prev * h_mask
                h_prev = h_prev.reshape(rows, hidden)
                blocks = []
                if spec.gates_read_h:
                    blocks.append(post[0].reshape(rows, gh).t() @ h_prev)
                cand = post[-1].reshape(rows, hidden).t()
                if cfg.reset_after:
                    blocks.append(cand @ h_prev)
                else:
                    blocks.append(cand @ (g[..., :hidden].reshape(rows, hidden) * h_prev))
                dw_hh = torch.cat(blocks, dim=0).to(w.dtype)
        if (has_bih and need[5]) or (has_bhh and need[6]):
            b_ih, b_hh = join_bias(
                spec, dg.sum((0, 1)), dn.sum((0, 1)), dhn.sum((0, 1)) if has_bhh else None, torch.cat
            )
            db_ih = b_ih.to(w_ih.dtype) if need[5] else None
            db_hh = b_hh.to(w_ih.dtype) if (has_bhh and need[6] and b_hh is not None) else None
        return dx, dh0.to(wd) if need[2] else None, dw_ih, dw_hh, db_ih, db_hh, *dln_ih, *dln_hh


class TritonEngine:
    """Every variant, both reset forms, float32/float64/bfloat16/float16 on CUDA (Triton kernels)."""

    name = "triton"
    traceable = False  # imports, Triton's mode, launches of our own: run eagerly under torch.compile

    def unavailable(self, spec: Spec, x: Tensor, extras: Extras = NONE) -> str | None:
        why = not_yet(extras, _RUNS)
        if why is not None:
            return why
        rec = recording()
        if rec is not None:
            return (
                f"{rec} sees only torch operations, and this engine launches its own Triton kernels "
                "outside them; use engine='reference' (what engine='auto' picks there)"
            )
        why = _triton_import_error()
        if why is not None:
            return why
        if x.dtype not in _DTYPES:
            return f"the triton engine runs float32, float64, bfloat16 and float16; got dtype {x.dtype}"
        if x.is_cuda:
            major, minor = torch.cuda.get_device_capability(x.device)
            if (major, minor) < (7, 5):
                return f"Triton needs a GPU of compute capability 7.5 or newer; got {major}.{minor}"
            if x.dtype == torch.bfloat16 and major < 8:
                return f"bfloat16 needs compute capability 8.0 or newer; got {major}.{minor}"
            return None
        if x.device.type == "cpu" and _interpreting():
            return None
        return (
            "the triton engine runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); "
            f"got device {x.device.type}"
        )

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
            raise RuntimeError(f"engine='triton' cannot run here: {why}")
        return run(spec, reset_after, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, extras)

    def details(self) -> dict[str, Any]:
        """Version and mode, for ``gatedrnn info`` and benchmark headers."""
        why = _triton_import_error()
        if why is not None:
            return {"triton": None, "interpreter": False, "error": why}
        import triton

        return {
            "triton": triton.__version__,
            "interpreter": _interpreting(),
            "persistent_max_h": PERSISTENT_MAX_H,
            "cuda_graphs": _graphs_enabled(),
        }


def run(
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
    *,
    path: str = "auto",
    graphs: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """One layer-direction through the Triton kernels (what :meth:`TritonEngine.layer` calls).

    Args:
        extras: the options' inputs (:class:`gatedrnn._options.Extras`). Without recurrent
            weights (minGRU) the layer norm and mask of ``h`` have nothing to act on, as in
            :func:`gatedrnn._reference.step`.
        path: ``"auto"`` (persistent if ``H <= PERSISTENT_MAX_H`` (halved for float64, and with
            the layer norm of the recurrent products) or no recurrent weights, else step),
            ``"persistent"`` or ``"step"`` (tests use it to cover both).
        graphs: capture the step loop in a CUDA graph (CUDA only); None: ``GATEDRNN_TRITON_GRAPHS``.
    """
    hidden = h0.shape[-1]
    if path not in ("auto", "persistent", "step"):
        raise ValueError(f"path: expected 'auto', 'persistent' or 'step', got {path!r}")
    if w_hh is None:
        persistent = True  # minGRU: no recurrent matmul, the persistent kernel tiles H too
    elif path == "auto":
        persistent = hidden <= _persistent_max_h(x.dtype, extras.ln_hh is not None)
    else:
        persistent = path == "persistent"
    if graphs is None:
        graphs = _graphs_enabled()
    if lengths is not None:  # a copy: the backward reads it, and the caller may refill theirs before it runs
        lengths = lengths.clone(memory_format=torch.contiguous_format)
        # the dW_ih product multiplies the padding by its zero gradient: zeros there, not NaN
        x = _reference.mask_padding(x, lengths)
    has_u = w_hh is not None
    zoneout = extras.zoneout
    zeta = zoneout if isinstance(zoneout, Tensor) else None
    cfg = _Config(
        spec,
        bool(reset_after),
        persistent,
        bool(graphs),
        ln_hh=has_u and extras.ln_hh is not None,
        h_mask=has_u and extras.h_mask is not None,
        zoneout=0 if zoneout is None else 1 if zeta is not None else 2,
        resets=extras.resets is not None,
    )
    args = (
        cfg,
        x,
        h0,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        lengths,
        *(extras.ln_ih or (None, None)),
        *(extras.ln_hh if cfg.ln_hh and extras.ln_hh is not None else (None, None)),
        extras.h_mask if cfg.h_mask else None,
        zeta,
        extras.resets,
        float(zoneout) if cfg.zoneout == 2 else None,  # type: ignore[arg-type]
    )
    if x.is_cuda:
        with torch.cuda.device(x.device):  # Triton launches on the current device
            return _TritonLayer.apply(*args)
    return _TritonLayer.apply(*args)


ENGINE = TritonEngine()
