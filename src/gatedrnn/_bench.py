"""Speed benchmark of the engines: ``gatedrnn bench`` and ``benchmarks/speed.py``.

CPU (default): every variant on the fused engine against ``torch.nn.GRU``, ``torch.nn.LSTM``, a
per-step Python cell (``torch.nn.GRUCell`` in a loop, what the tutorials write) and the GEMM-only
floor (the variant's own matrix products timed alone: the projection and weight-gradient products
in torch, the per-step products in a compiled loop calling the same BLAS). All candidates run
interleaved in one process; each figure is the median of ``--repeats`` runs after warm-up.
It also reports the first-call (cold) and cached compile times of the kernels, measured in fresh
subprocesses, the memory saved for the backward against ``torch.nn.GRU``, and the peak resident
memory one forward+backward adds (a fresh process per candidate and size, see :func:`_peak_child`).

CUDA (``--device cuda``): ``engine="triton"`` against ``torch.nn.GRU`` (cuDNN), float32 and bfloat16,
with two more sizes.

Prints markdown tables and writes JSON (``--json``). Nothing here is imported by the library.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._files import atomic_write

__all__ = ["CPU_SIZES", "CUDA_SIZES", "TARGETS", "main", "matmul_flops"]

# name: (B, T, m, n) = (batch, steps, input size, hidden size)
CPU_SIZES: dict[str, tuple[int, int, int, int]] = {
    "A": (64, 28, 28, 128),
    "B": (32, 784, 1, 128),
    "C": (64, 100, 500, 256),
    "D": (16, 200, 64, 64),
    "E": (1, 1000, 32, 32),
}
CUDA_SIZES: dict[str, tuple[int, int, int, int]] = {
    **CPU_SIZES,
    "F": (64, 512, 512, 512),
    "G": (256, 100, 1024, 1024),
}
# gru0, forward+backward, 2 threads: time / torch.nn.GRU must be at most this.
TARGETS = {"A": 0.35, "B": 0.35, "C": 0.70, "D": 0.12, "E": 0.03}
VARIANTS = ("gru0", "gru1", "gru2", "gru3", "mgu", "mingru")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gatedrnn bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", default=None, help="comma list of size names (CPU: A-E, CUDA: A-G); default all")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma list of variants")
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts (CPU)")
    p.add_argument("--passes", default="fwd,fwdbwd", help="fwd (inference, no_grad) and/or fwdbwd")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per candidate (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per candidate first")
    p.add_argument("--reset-after", type=int, choices=[0, 1], default=1, help="reset form of the variants")
    p.add_argument("--dtypes", default=None, help="CUDA: comma list (default float32,bfloat16); CPU: float32")
    p.add_argument("--no-baselines", action="store_true", help="skip torch.nn.LSTM and the Python cell")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--json", default=None, help="where to write the JSON (default runs/bench/speed-<device>.json)")
    p.add_argument(
        "--report", default=None, metavar="JSON", help="print the tables of a saved run (its JSON) instead of running"
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats: expected at least 1, got {args.repeats}")
    sizes = CPU_SIZES if args.device == "cpu" else CUDA_SIZES
    names = list(sizes) if args.sizes is None else [s.strip() for s in args.sizes.split(",") if s.strip()]
    for n in names:
        if n not in sizes:
            p.error(f"--sizes: expected names from {sorted(sizes)}, got {n!r}")
    args.size_names = names
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variant_list:
        if v not in VARIANTS:
            p.error(f"--variants: expected names from {list(VARIANTS)}, got {v!r}")
    try:
        args.thread_list = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads: expected a comma list of integers, got {args.threads!r}")
    args.pass_list = [s.strip() for s in args.passes.split(",") if s.strip()]
    for s in args.pass_list:
        if s not in ("fwd", "fwdbwd"):
            p.error(f"--passes: expected fwd and/or fwdbwd, got {s!r}")
    return args


# ------------------------------------------------------------------------------------ candidates
# The host's large-product rate: one square float32 product of this side, timed with the candidates.
SGEMM_SIDE = 1024


def matmul_flops(variant: str, size: tuple[int, int, int, int], backward: bool) -> int:
    """Floating-point operations (2 per multiply-add) of the matrix products one call of the variant
    does: what :func:`_gemm_floor` runs. Forward: the input projection over all steps and, where the
    candidate reads h, the recurrent product at every step. The backward does each twice more
    (input gradient and weight gradient of each product), so forward+backward is 3x the forward."""
    from ._specs import get_spec

    spec = get_spec(variant)
    batch, steps, inp, hid = size
    rows = steps * batch
    ihw = spec.ih_blocks() * hid
    hhw = spec.hh_blocks() * hid if spec.candidate_reads_h else 0
    forward = 2 * rows * inp * ihw + 2 * rows * hid * hhw
    return 3 * forward if backward else forward


def _sgemm(side: int = SGEMM_SIDE):
    """A callable doing one ``side``-cubed float32 product (output preallocated), torch's BLAS and threads."""
    import torch

    a, b, out = torch.randn(side, side), torch.randn(side, side), torch.empty(side, side)

    def run() -> None:
        torch.mm(a, b, out=out)

    return run


def _gemm_floor(variant: str, reset_after: bool, size: tuple[int, int, int, int], backward: bool):
    """A callable doing the variant's matrix products alone (float32, same BLAS as the engine).

    The per-step products run the way the engine runs them: with several torch threads, on the
    same batch row ranges at once (one-thread BLAS each, in torch's OpenMP team).
    """
    import numpy as np
    import torch

    from ._engines._fused import SMALL_MIN_STEPS, _small
    from ._engines._kernels import blas, floor_nn, floor_nt
    from ._engines._threads import row_ranges as _row_ranges
    from ._engines._threads import run_rows as _run_rows
    from ._specs import get_spec

    spec = get_spec(variant)
    batch, steps, inp, hid = size
    ihw, hhw, ng = spec.ih_blocks() * hid, spec.hh_blocks() * hid, spec.num_gates * hid
    ra = reset_after and spec.has_reset
    fptr = blas()[0]
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
    # outputs preallocated: the floor times the products, not first touches of fresh memory
    xp, dx = torch.empty(steps * batch, ihw), torch.empty(steps * batch, inp)
    dw_ih, dw_hh = torch.empty(ihw, inp), torch.empty(max(hhw, 1), hid)
    small = _small(spec.candidate_reads_h, batch, hid, hhw)
    small_f = small and steps >= SMALL_MIN_STEPS
    whh_t, wg_t, wn_t = (np.ascontiguousarray(m.T) for m in (whh, wg, wn))
    ranges = _row_ranges(batch, small, 2 * steps * batch * hid * max(hhw, hid))
    step_flops = 2 * batch * hid * hhw

    def forward_rows(_: int, b0: int, b1: int) -> None:
        if ra:
            floor_nt(fptr, h[b0:b1], whh, whh_t, out_f[b0:b1], steps, small_f)
        else:
            if spec.gates_read_h:
                floor_nt(fptr, h[b0:b1], wg, wg_t, out_f[b0:b1, :ng], steps, small_f)
            floor_nt(fptr, h[b0:b1], wn, wn_t, out_f[b0:b1, :hid], steps, small_f)

    def backward_rows(_: int, b0: int, b1: int) -> None:
        if ra:
            floor_nn(fptr, d[b0:b1], whh, out_b[b0:b1], steps, small)
        else:
            floor_nn(fptr, dn[b0:b1], wn, out_b[b0:b1], steps, small)
            if spec.gates_read_h:
                floor_nn(fptr, dg[b0:b1], wg, out_b[b0:b1], steps, small)

    def run() -> None:
        torch.mm(x2, w_ih.t(), out=xp)
        if spec.candidate_reads_h:
            _run_rows(forward_rows, ranges, step_flops)
        if not backward:
            return
        if spec.candidate_reads_h:
            _run_rows(backward_rows, ranges, step_flops)
            torch.mm(dgh.t(), hs, out=dw_hh)
        torch.mm(dgx, w_ih, out=dx)
        torch.mm(dgx.t(), x2, out=dw_ih)

    return run


def _candidates(args: argparse.Namespace, size: tuple[int, int, int, int], backward: bool, dtype, device):
    """``{name: callable}`` for one size and pass; every callable runs one full call."""
    import torch

    from . import GRU

    batch, steps, inp, hid = size
    x = torch.randn(steps, batch, inp, device=device, dtype=dtype, requires_grad=backward)
    gy = torch.randn(steps, batch, hid, device=device, dtype=dtype)
    gh = torch.randn(1, batch, hid, device=device, dtype=dtype)

    def wrap(mod: torch.nn.Module, kind: str):
        mod = mod.to(device=device, dtype=dtype)

        def run() -> None:
            if not backward:
                with torch.no_grad():
                    mod(x)
                return
            if kind == "lstm":
                y, (hn, _) = mod(x)
            else:
                y, hn = mod(x)
            torch.autograd.backward([y, hn], [gy, gh])

        return run

    def cell_loop(cell: torch.nn.Module):
        cell = cell.to(device=device, dtype=dtype)

        def run() -> None:
            with torch.set_grad_enabled(backward):
                h = x.new_zeros(batch, hid)
                ys = []
                for t in range(steps):
                    h = cell(x[t], h)
                    ys.append(h)
                y = torch.stack(ys)
                if backward:
                    torch.autograd.backward([y, h], [gy, gh[0]])

        return run

    cands: dict[str, Any] = {"torch.nn.GRU": wrap(torch.nn.GRU(inp, hid), "gru")}
    if not args.no_baselines:
        cands["torch.nn.LSTM"] = wrap(torch.nn.LSTM(inp, hid), "lstm")
        if device == "cpu":
            cands["python cell"] = cell_loop(torch.nn.GRUCell(inp, hid))
    engine = "fused" if device == "cpu" else "triton"
    for v in args.variant_list:
        gru = GRU(inp, hid, variant=v, reset_after=bool(args.reset_after), engine=engine)
        cands[f"{engine}:{v}"] = wrap(gru, "gru")
        if device == "cpu" and dtype == torch.float32:
            cands[f"floor:{v}"] = _gemm_floor(v, bool(args.reset_after), size, backward)
    if device == "cpu" and dtype == torch.float32:
        cands[f"sgemm:{SGEMM_SIDE}"] = _sgemm()
    return cands


def _time(cands: dict[str, Any], repeats: int, warmup: int, sync) -> dict[str, dict[str, float]]:
    """Interleaved timing: each round runs every candidate once (rotating the order)."""
    names = list(cands)
    for _ in range(warmup):
        for n in names:
            cands[n]()
    sync()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            sync()
            t0 = time.perf_counter()
            cands[n]()
            sync()
            samples[n].append(time.perf_counter() - t0)
    return {n: {"median_ms": statistics.median(s) * 1e3, "min_ms": min(s) * 1e3} for n, s in samples.items()}


# ----------------------------------------------------------------------------- compile and memory
_COMPILE_SNIPPET = """
import time, torch
torch.manual_seed(0)
from gatedrnn import GRU
variants = {variants!r}
x = torch.randn(5, 2, 3, requires_grad=True)
t0 = time.perf_counter()
for v in variants:
    for ra in (True, False):
        for dt in (torch.float32, torch.float64):
            m = GRU(3, 4, variant=v, reset_after=ra, engine="fused", dtype=dt)
            xx = x.detach().to(dt).requires_grad_(True)
            y, h = m(xx)
            (y.sum() + h.sum()).backward()
            with torch.no_grad():
                m(xx)
print(time.perf_counter() - t0)
"""


def _child_env() -> dict[str, str]:
    """The environment of a measuring subprocess: this one's, with its import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
    return env


def _compile_times(variants: list[str]) -> dict[str, Any]:
    """Compile time of the kernels: cold (empty numba cache) and cached, in fresh subprocesses."""
    out: dict[str, Any] = {}
    env = _child_env()
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        for label, vs in (("gru0", ["gru0"]), ("all", variants)):
            code = _COMPILE_SNIPPET.format(variants=vs)
            for phase in ("cold", "cached"):
                r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
                if r.returncode != 0:
                    out[f"{label}_{phase}_error"] = r.stderr.strip().splitlines()[-1:]
                    continue
                out[f"{label}_{phase}_s"] = float(r.stdout.strip().splitlines()[-1])
    out["note"] = (
        "first forward+backward and no-grad forward of every listed variant x both reset forms x "
        "float32/float64 on a tiny input, in a fresh process; cold = empty numba cache "
        "('all' cold excludes gru0, compiled just before), cached = second process on the same cache"
    )
    return out


def _saved_bytes(run) -> int:
    import torch

    total = 0
    seen: set[int] = set()

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def _peak_child(candidate: str, size: tuple[int, int, int, int], reset_after: bool) -> int:
    """Bytes of resident memory one forward+backward of ``candidate`` (``"torch.nn.GRU"`` or
    ``"fused:<variant>"``) adds at its peak; run in a fresh process (:func:`_peak_rss`).

    One forward+backward first (kernels loaded, parameter gradients allocated); then the engine's
    reused buffers are handed back (``empty_cache``, ``malloc_trim``), the kernel's peak-RSS mark is
    reset (``/proc/self/clear_refs``), and the measured call's high-water mark above the resident
    size before it is the answer: what it saves for the backward, its scratch and its temporaries.
    """
    import ctypes
    import gc

    import torch

    from . import GRU, empty_cache

    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, steps, inp, hid = size
    x = torch.randn(steps, batch, inp, requires_grad=True)
    gy, gh = torch.randn(steps, batch, hid), torch.randn(1, batch, hid)
    if candidate == "torch.nn.GRU":
        mod: torch.nn.Module = torch.nn.GRU(inp, hid)
    else:
        mod = GRU(inp, hid, variant=candidate.split(":", 1)[1], reset_after=reset_after, engine="fused")

    def run() -> None:
        y, hn = mod(x)
        torch.autograd.backward([y, hn], [gy, gh])

    run()
    empty_cache()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) * 1024


def _peak_rss(candidates: list[str], size: tuple[int, int, int, int], reset_after: bool) -> dict[str, int | None]:
    """:func:`_peak_child` for each candidate, each in a fresh process (a process reuses what it
    freed, so a second candidate in the same one would look smaller). None where it failed (it
    needs Linux's /proc and glibc)."""
    env = _child_env()
    out: dict[str, int | None] = {}
    for c in candidates:
        code = f"from gatedrnn._bench import _peak_child; print(_peak_child({c!r}, {tuple(size)!r}, {reset_after!r}))"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        out[c] = int(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else None
    return out


# ------------------------------------------------------------------------------------------ main
def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import numba

        info["numba"] = numba.__version__
        from ._engines._kernels import blas

        info["blas"] = blas()[2]
        from ._engines._fused import ENGINE

        info["fused_threads"] = ENGINE.details()["threads"]
    except Exception as e:  # pragma: no cover
        info["numba_error"] = str(e)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def _size_label(r: dict[str, Any]) -> str:
    """A result's size as the tables name it: ``A (64,28,28,128)``."""
    return f"{r['size']} (" + ",".join(str(x) for x in r["shape"]) + ")"


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _markdown(results: list[dict[str, Any]], device: str) -> str:
    eng = "fused" if device == "cpu" else "triton"
    lines = []
    head = (
        "| size (B,T,m,n) | dtype | threads | pass | variant | time ms "
        "| ÷ nn.GRU | ÷ nn.LSTM | ÷ Python cell | ÷ GEMM floor |"
    )
    lines.append(head)
    lines.append("|---" * 10 + "|")
    base_lines = [
        "| size (B,T,m,n) | dtype | threads | pass | nn.GRU ms | nn.LSTM ms | Python cell ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["times"]
        gru = t["torch.nn.GRU"]["median_ms"]
        lstm = t.get("torch.nn.LSTM", {}).get("median_ms")
        cell = t.get("python cell", {}).get("median_ms")
        key = f"| {_size_label(r)} | {r['dtype']} | {r['threads']} | {r['pass']} |"
        base_lines.append(f"{key} {_fmt(gru)} | {_fmt(lstm)} | {_fmt(cell)} |")
        for name, v in t.items():
            if not name.startswith(eng + ":"):
                continue
            var = name.split(":", 1)[1]
            ms = v["median_ms"]
            floor = t.get(f"floor:{var}", {}).get("median_ms")
            ratios = [ms / gru, ms / lstm if lstm else None, ms / cell if cell else None]
            lines.append(
                f"{key} {var} | {_fmt(ms)} | {_fmt(ratios[0], 3)} | {_fmt(ratios[1], 3)} | {_fmt(ratios[2], 4)} | "
                f"{_fmt(ms / floor if floor else None, 2)} |"
            )
    return "\n".join(lines) + "\n\nBaselines (median ms):\n\n" + "\n".join(base_lines)


def _summary(results: list[dict[str, Any]], device: str) -> str:
    """Forward+backward per thread count and dtype: time ÷ torch.nn.GRU (÷ GEMM floor) per variant."""
    eng = "fused" if device == "cpu" else "triton"
    out = []
    groups = sorted({(r["threads"], r["dtype"]) for r in results if r["pass"] == "fwdbwd"})
    for threads, dtype in groups:
        rows = [r for r in results if r["pass"] == "fwdbwd" and r["threads"] == threads and r["dtype"] == dtype]
        variants = [n.split(":", 1)[1] for n in rows[0]["times"] if n.startswith(eng + ":")]
        out.append(f"\nForward+backward, {threads} thread(s), {dtype}: time ÷ torch.nn.GRU (÷ GEMM-only floor)\n")
        out.append("| size (B,T,m,n) | nn.GRU ms | " + " | ".join(variants) + " |")
        out.append("|---" * (len(variants) + 2) + "|")
        for r in rows:
            t = r["times"]
            gru = t["torch.nn.GRU"]["median_ms"]
            cells = []
            for v in variants:
                ms = t[f"{eng}:{v}"]["median_ms"]
                floor = t.get(f"floor:{v}", {}).get("median_ms")
                cells.append(f"{ms / gru:.3f}" + (f" ({ms / floor:.1f})" if floor else ""))
            out.append(f"| {_size_label(r)} | {gru:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _roofline(results: list[dict[str, Any]], variant: str = "gru0") -> str:
    """Forward+backward: the variant's matrix-product work against the host's large-product rate
    (``sgemm:<side>`` in the same rounds): how close the floor and the engine come to it, and what
    share of it each size's target (``TARGETS``, 2 threads) asks of the products alone. Empty where
    the results hold no rate or no such variant."""
    rate_key = f"sgemm:{SGEMM_SIDE}"
    head = (
        f"| size (B,T,m,n) | threads | GFLOP | GEMM rate GFLOP/s | ms at that rate "
        f"| floor ms (% of rate) | {variant} ms (% of rate) | target ms | target needs (% of rate) |"
    )
    lines = [head, "|---" * 9 + "|"]
    for r in results:
        t = r["times"]
        if r["pass"] != "fwdbwd" or rate_key not in t or f"fused:{variant}" not in t:
            continue
        gflop = matmul_flops(variant, tuple(r["shape"]), True) / 1e9  # type: ignore[arg-type]
        rate = 2 * SGEMM_SIDE**3 / 1e9 / (t[rate_key]["median_ms"] / 1e3)
        at_rate = gflop / rate * 1e3
        ms = t[f"fused:{variant}"]["median_ms"]
        floor = t.get(f"floor:{variant}", {}).get("median_ms")
        cells = [
            f"{gflop:.3f}",
            f"{rate:.1f}",
            f"{at_rate:.2f}",
            "-" if floor is None else f"{floor:.2f} ({100 * at_rate / floor:.0f}%)",
            f"{ms:.2f} ({100 * at_rate / ms:.0f}%)",
        ]
        if variant == "gru0" and r["threads"] == 2 and r["size"] in TARGETS:
            target = TARGETS[r["size"]] * t["torch.nn.GRU"]["median_ms"]
            cells += [f"{target:.2f}", f"{100 * at_rate / target:.0f}%"]
        else:
            cells += ["-", "-"]
        lines.append(f"| {_size_label(r)} | {r['threads']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _targets(results: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """gru0's forward+backward ratio to torch.nn.GRU at 2 threads against ``TARGETS``."""
    out = []
    for r in results:
        t = r["times"]
        if (
            device == "cpu"
            and r["pass"] == "fwdbwd"
            and r["threads"] == 2
            and r["size"] in TARGETS
            and "fused:gru0" in t
        ):
            ratio = t["fused:gru0"]["median_ms"] / t["torch.nn.GRU"]["median_ms"]
            out.append(
                {"size": r["size"], "ratio": ratio, "target": TARGETS[r["size"]], "met": ratio <= TARGETS[r["size"]]}
            )
    return out


def _proportions(results: list[dict[str, Any]], device: str, base: str = "gru0") -> str:
    """Forward+backward: each variant's time ÷ ``base``'s, and in brackets its matrix-product FLOP
    ÷ ``base``'s (what "faster in proportion to the work it skips" is measured against). Empty
    where the results hold no ``base``."""
    eng = "fused" if device == "cpu" else "triton"
    rows = [r for r in results if r["pass"] == "fwdbwd" and f"{eng}:{base}" in r["times"]]
    if not rows:
        return ""
    variants = [n.split(":", 1)[1] for n in rows[0]["times"] if n.startswith(eng + ":") and n != f"{eng}:{base}"]
    if not variants:
        return ""
    lines = ["| size (B,T,m,n) | threads | dtype | " + " | ".join(variants) + " |", "|---" * (len(variants) + 3) + "|"]
    for r in rows:
        t, shape = r["times"], tuple(r["shape"])
        ms = t[f"{eng}:{base}"]["median_ms"]
        flops = matmul_flops(base, shape, True)  # type: ignore[arg-type]
        cells = [
            f"{t[f'{eng}:{v}']['median_ms'] / ms:.2f} ({matmul_flops(v, shape, True) / flops:.2f})"  # type: ignore[arg-type]
            for v in variants
        ]
        lines.append(f"| {_size_label(r)} | {r['threads']} | {r['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(data: dict[str, Any]) -> str:
    """Every table of a benchmark run, from what it saves as JSON (``--report`` reprints one)."""
    results, device = data["results"], data["device"]
    out = [_markdown(results, device), _summary(results, device)]
    targets = _targets(results, device)
    if targets:
        out.append("\nTargets (gru0, forward+backward, 2 threads, time ÷ torch.nn.GRU):\n")
        out.append("| size | ratio | target | met |\n|---|---|---|---|")
        for tg in targets:
            out.append(f"| {tg['size']} | {tg['ratio']:.3f} | ≤ {tg['target']} | {'yes' if tg['met'] else 'no'} |")
    props = _proportions(results, device)
    if props:
        out.append(
            "\nEach variant against gru0 (forward+backward): time ÷ gru0's time, and in brackets its "
            "matrix-product FLOP ÷ gru0's:\n"
        )
        out.append(props)
    roof = _roofline(results)
    if roof:
        out.append(
            f"\nMatrix products against this host's GEMM rate (gru0, forward+backward; the rate is one "
            f"{SGEMM_SIDE}x{SGEMM_SIDE}x{SGEMM_SIDE} float32 product timed in the same rounds with the "
            "same threads; above 100% a target asks the products alone to run faster than that):\n"
        )
        out.append(roof)
    memory = data.get("memory_saved_for_backward") or []
    if memory:
        cols = [k[: -len("_bytes")] for k in memory[0] if k.endswith("_bytes") and not k.endswith("_peak_bytes")]
        out.append("\nMemory saved for the backward (MB, forward+backward, float32):\n")
        out.append("| size | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
        for m in memory:
            out.append(f"| {m['size']} | " + " | ".join(f"{m[c + '_bytes'] / 2**20:.1f}" for c in cols) + " |")
        out.append(
            "\nPeak resident memory one forward+backward adds (MB, float32, 1 thread, a fresh process per "
            "cell; the fused engine's buffers handed back first, so its scratch counts):\n"
        )
        out.append("| size | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
        for m in memory:
            cells = [m.get(c + "_peak_bytes") for c in cols]
            out.append(f"| {m['size']} | " + " | ".join("-" if b is None else f"{b / 2**20:.1f}" for b in cells) + " |")
    compile_times = data.get("compile")
    if compile_times:
        out.append(
            "\nCompile time (s): " + ", ".join(f"{k}={v:.2f}" for k, v in compile_times.items() if k.endswith("_s"))
        )
    machine = data.get("machine", {})
    wall = data.get("wall_s")
    load = machine.get("loadavg")
    load = None if load is None else " ".join(f"{v:.2f}" for v in load)
    out.append(
        f"\nMachine: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs, torch {machine.get('torch')}, "
        f"numba {machine.get('numba')}, BLAS: {machine.get('blas')}; fused engine threads: "
        f"{machine.get('fused_threads')}; load average (1, 5, 15 min) {load}; "
        f"median of {data.get('repeats')} runs after {data.get('warmup')} warm-up, candidates interleaved"
        + (f"; wall {wall:.0f} s" if wall is not None else "")
    )
    return "\n".join(out)


def _report_file(path: str) -> int:
    """``--report``: print the tables of a saved run; 2 with a message when the file cannot serve."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        text = report(data)
    except OSError as e:
        print(f"gatedrnn bench: --report: cannot read {path!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as e:
        print(
            f"gatedrnn bench: --report: expected the JSON a benchmark run writes, got {path!r} "
            f"({type(e).__name__}: {e})",
            file=sys.stderr,
        )
        return 2
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns a process exit code (0 on success, 2 when it cannot run)."""
    args = _parse(argv)
    if args.report is not None:
        return _report_file(args.report)
    import torch

    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print(
                "gatedrnn bench --device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                "run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu.",
                file=sys.stderr,
            )
            return 2
        from ._engines import get_engine
        from ._specs import get_spec

        why = get_engine("triton").unavailable(get_spec("gru0"), torch.empty(1, device="cuda"))
        if why is not None:
            print(f"gatedrnn bench --device cuda: the triton engine cannot run here: {why}", file=sys.stderr)
            return 2
        dtype_names = (args.dtypes or "float32,bfloat16").split(",")
        thread_list = [torch.get_num_threads()]

        def sync() -> None:
            torch.cuda.synchronize()

    else:
        dtype_names = (args.dtypes or "float32").split(",")
        thread_list = args.thread_list
        from ._engines import get_engine
        from ._specs import get_spec

        why = get_engine("fused").unavailable(get_spec("gru0"), torch.empty(1))
        if why is not None:
            print(f"gatedrnn bench: the fused engine cannot run here: {why}", file=sys.stderr)
            return 2

        def sync() -> None:
            return None

    dtypes = []
    for n in dtype_names:
        dt = getattr(torch, n.strip(), None)
        if not isinstance(dt, torch.dtype):
            print(f"gatedrnn bench: --dtypes: expected torch dtype names, got {n!r}", file=sys.stderr)
            return 2
        dtypes.append(dt)

    sizes = CPU_SIZES if device == "cpu" else CUDA_SIZES
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    saved_threads = torch.get_num_threads()
    t_start = time.perf_counter()
    try:
        for name in args.size_names:
            size = sizes[name]
            for dt in dtypes:
                for th in thread_list:
                    torch.set_num_threads(th)
                    for ps in args.pass_list:
                        cands = _candidates(args, size, ps == "fwdbwd", dt, device)
                        times = _time(cands, args.repeats, args.warmup, sync)
                        results.append(
                            {
                                "size": name,
                                "shape": list(size),
                                "dtype": str(dt).replace("torch.", ""),
                                "threads": th,
                                "pass": ps,
                                "times": times,
                            }
                        )
                        print(f"# {name} {size} {dt} threads={th} {ps}: done", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(saved_threads)

    memory: list[dict[str, Any]] = []
    if not args.no_memory and device == "cpu":
        for name in args.size_names:
            size = sizes[name]
            cands = _candidates(args, size, True, torch.float32, device)
            row = {"size": name, "torch.nn.GRU_bytes": _saved_bytes(cands["torch.nn.GRU"])}
            for v in args.variant_list:
                row[f"fused:{v}_bytes"] = _saved_bytes(cands[f"fused:{v}"])
            cols = ["torch.nn.GRU", *[f"fused:{v}" for v in args.variant_list]]
            for c, peak in _peak_rss(cols, size, bool(args.reset_after)).items():
                row[f"{c}_peak_bytes"] = peak
            print(f"# {name} memory: done", file=sys.stderr, flush=True)
            memory.append(row)
    compile_times = None
    if not args.no_compile and device == "cpu":
        compile_times = _compile_times(args.variant_list)

    data: dict[str, Any] = {
        "argv": argv if argv is not None else sys.argv[1:],
        "device": device,
        "machine": _machine(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "reset_after": bool(args.reset_after),
        "wall_s": time.perf_counter() - t_start,
        "results": results,
        "targets": _targets(results, device),
        "memory_saved_for_backward": memory,
        "compile": compile_times,
        "matmul_gflop": {
            name: {v: matmul_flops(v, CPU_SIZES[name], True) / 1e9 for v in args.variant_list}
            for name in args.size_names
            if device == "cpu"
        },
    }
    print(report(data))
    path = args.json or os.path.join("runs", "bench", f"speed-{device}.json")
    atomic_write(path, json.dumps(data, indent=1).encode(), parents=True)
    print(f"JSON: {path}")
    return 0
