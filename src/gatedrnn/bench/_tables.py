"""The tables of a benchmark run, as a function of the JSON it writes (``--report`` reprints them)."""

from __future__ import annotations

import json
import re
from typing import Any

from ._flops import SGEMM_SIDE, matmul_flops
from ._options import BenchError

__all__ = ["report", "report_file"]


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


_PASS_TITLE = {"fwdbwd": "Forward+backward", "fwd": "Forward (no grad)"}


def _ratio(a: float | None, b: float | None, nd: int) -> str:
    return "-" if a is None or not b else f"{a / b:.{nd}f}"


def _half_note(machine: dict[str, Any]) -> str:
    """How a bfloat16 run's products ran: in hardware (AVX512-BF16 or AMX) or emulated."""
    isa = machine.get("isa")
    if isa is None:
        return "bfloat16 hardware not recorded"
    have = [i for i in isa if i in ("AVX512-BF16", "AMX")]
    return f"bfloat16 in hardware: {', '.join(have)}" if have else "bfloat16 emulated: no AVX512-BF16 or AMX"


def _rates(t: dict[str, Any]) -> tuple[float | None, float | None]:
    """``(MKL, oneDNN)`` FLOP/s of the large product timed in the same rounds (``sgemm:<side>``:
    torch's float32 ``mm``, the BLAS the engine calls; ``onednn:<side>``: the same product through
    oneDNN, bfloat16 in a bfloat16 run), None where the run lacks one."""
    flop = 2 * SGEMM_SIDE**3
    gemm = t.get(f"sgemm:{SGEMM_SIDE}", {}).get("median_ms")
    dnn = t.get(f"onednn:{SGEMM_SIDE}", {}).get("median_ms")
    return (flop / (gemm / 1e3) if gemm else None), (flop / (dnn / 1e3) if dnn else None)


def _best_rate(t: dict[str, Any]) -> float | None:
    """The host's large-GEMM rate (FLOP/s): the faster of the two products of :func:`_rates`. (MKL
    runs a slower kernel on some CPUs, e.g. its AVX2 one on AMD's AVX-512 cores: the machine's
    limit is the faster library's.)"""
    rates = [r for r in _rates(t) if r is not None]
    return max(rates) if rates else None


def _yardsticks(results: list[dict[str, Any]], device: str, machine: dict[str, Any] | None = None) -> str:
    """Per pass, thread count and dtype: each candidate's share of the host's large-GEMM rate (its
    matrix-product FLOP ÷ time ÷ rate, the rate :func:`_best_rate` of the products timed in the same
    rounds, MKL's and oneDNN's both shown), its time ÷ ``torch.nn.GRU``'s and ÷ ``torch.nn.LSTM``'s,
    one table per group, a row per size."""
    from ._flops import candidate_flops

    eng = "fused" if device == "cpu" else "triton"
    out = []
    order = {p: i for i, p in enumerate(_PASS_TITLE)}
    # forward+backward first; within a pass, the dtypes in the order the run measured them
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    groups = sorted(
        {(r["pass"], r["threads"], r["dtype"]) for r in results},
        key=lambda g: (order.get(g[0], 9), dtypes.index(g[2]), g[1]),
    )
    for ps, threads, dtype in groups:
        rows = [r for r in results if (r["pass"], r["threads"], r["dtype"]) == (ps, threads, dtype)]
        names = [n for n in ("torch.nn.GRU", "torch.nn.LSTM") if n in rows[0]["times"]]
        names += [n for n in rows[0]["times"] if n.startswith(eng + ":")]
        labels = [n.replace("torch.", "").split(":")[-1] for n in names]
        half = f" ({_half_note(machine or {})}; oneDNN GFLOP/s: its bfloat16 product)" if dtype == "bfloat16" else ""
        out.append(
            f"\n{_PASS_TITLE.get(ps, ps)}, {threads} thread(s), {dtype}{half}: share of the GEMM rate (the faster "
            "of MKL's and oneDNN's) · time ÷ torch.nn.GRU · time ÷ torch.nn.LSTM\n"
        )
        out.append("| size (B,T,m,n) | MKL GFLOP/s | oneDNN GFLOP/s | nn.GRU ms | " + " | ".join(labels) + " |")
        out.append("|---" * (len(labels) + 4) + "|")
        for r in rows:
            t, shape = r["times"], tuple(r["shape"])
            mkl, dnn = _rates(t)
            rate = _best_rate(t)
            gru = t.get("torch.nn.GRU", {}).get("median_ms")
            lstm = t.get("torch.nn.LSTM", {}).get("median_ms")
            cells = []
            for n in names:
                ms = t.get(n, {}).get("median_ms")
                flops = candidate_flops(n, shape, ps == "fwdbwd")  # type: ignore[arg-type]
                share = (
                    "-" if ms is None or rate is None or flops is None else f"{100 * flops / (ms / 1e3) / rate:.0f}%"
                )
                cells.append(f"{share} · {_ratio(ms, gru, 3)} · {_ratio(ms, lstm, 3)}")
            head = (
                f"| {_size_label(r)} | {_fmt(mkl / 1e9 if mkl else None, 1)} | "
                f"{_fmt(dnn / 1e9 if dnn else None, 1)} | {_fmt(gru)} | "
            )
            out.append(head + " | ".join(cells) + " |")
    return "\n".join(out)


def _half_speed(results: list[dict[str, Any]], device: str) -> str:
    """Each variant's bfloat16 time ÷ its float32 time (same size, threads and pass), where the run
    has both dtypes; empty otherwise."""
    eng = "fused" if device == "cpu" else "triton"
    f32 = {(r["size"], r["threads"], r["pass"]): r["times"] for r in results if r["dtype"] == "float32"}
    rows = [r for r in results if r["dtype"] == "bfloat16" and (r["size"], r["threads"], r["pass"]) in f32]
    if not rows:
        return ""
    names = [n for n in rows[0]["times"] if n.startswith(eng + ":") or n in ("torch.nn.GRU", "torch.nn.LSTM")]
    labels = [n.replace("torch.", "").split(":")[-1] for n in names]
    lines = ["| size (B,T,m,n) | threads | pass | " + " | ".join(labels) + " |", "|---" * (len(labels) + 3) + "|"]
    for r in rows:
        base = f32[(r["size"], r["threads"], r["pass"])]
        cells = [_ratio(r["times"].get(n, {}).get("median_ms"), base.get(n, {}).get("median_ms"), 2) for n in names]
        lines.append(f"| {_size_label(r)} | {r['threads']} | {r['pass']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _header(machine: dict[str, Any]) -> str:
    """The CPU and its instruction sets (AVX2, AVX-512, AVX512-BF16, AMX), first line of a report."""
    isa = machine.get("isa")
    isa_text = "not recorded" if isa is None else (", ".join(isa) or "none of AVX2, AVX-512, AVX512-BF16, AMX")
    return f"CPU: {machine.get('cpu')}; ISA: {isa_text}; {machine.get('logical_cpus')} logical CPUs"


def _roofline(results: list[dict[str, Any]], variant: str = "gru0") -> str:
    """Forward+backward: the variant's matrix-product work against the host's large-product rate
    (:func:`_best_rate` in the same rounds): how close the floor and the engine come to it. Empty
    where the results hold no rate or no such variant."""
    head = (
        f"| size (B,T,m,n) | threads | GFLOP | GEMM rate GFLOP/s | ms at that rate "
        f"| floor ms (% of rate) | {variant} ms (% of rate) |"
    )
    lines = [head, "|---" * 7 + "|"]
    for r in results:
        t = r["times"]
        best = _best_rate(t)
        if r["pass"] != "fwdbwd" or best is None or f"fused:{variant}" not in t:
            continue
        gflop = matmul_flops(variant, tuple(r["shape"]), True) / 1e9  # type: ignore[arg-type]
        rate = best / 1e9
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
        lines.append(f"| {_size_label(r)} | {r['threads']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


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
    out = [_header(data.get("machine", {})), _yardsticks(results, device, data.get("machine", {}))]
    half = _half_speed(results, device)
    if half:
        out.append(
            f"\nbfloat16 time ÷ float32 time, each candidate against itself ({_half_note(data.get('machine', {}))}):\n"
        )
        out.append(half)
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
            f"\nMatrix products against this host's GEMM rate (gru0, forward+backward; the rate is the "
            f"faster of MKL's and oneDNN's {SGEMM_SIDE}x{SGEMM_SIDE}x{SGEMM_SIDE} product, timed in the "
            "same rounds with the same threads):\n"
        )
        out.append(roof)
    out.append("\nEvery candidate (median ms and ratios; ÷ GEMM floor: the variant's matrix products timed alone):\n")
    out.append(_markdown(results, device))
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
    # the libraries by their file names, not where this install keeps them
    threads_text = re.sub(r"/[^\s;()]*/", "", str(machine.get("fused_threads")))
    wall = data.get("wall_s")
    load = machine.get("loadavg")
    load = None if load is None else " ".join(f"{v:.2f}" for v in load)
    out.append(
        f"\nMachine: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs, torch {machine.get('torch')}, "
        f"numba {machine.get('numba')}, BLAS: {machine.get('blas')}; fused engine threads: "
        f"{threads_text}; load average (1, 5, 15 min) {load}; "
        f"median of {data.get('repeats')} runs after {data.get('warmup')} warm-up, candidates interleaved"
        + (f"; wall {wall:.0f} s" if wall is not None else "")
    )
    return "\n".join(out)


def report_file(path: str) -> str:
    """The tables of a saved run (``--report``); :class:`BenchError` when the file cannot serve."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return report(data)
    except OSError as e:
        raise BenchError(f"--report: cannot read {path!r}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(
            f"--report: expected the JSON a benchmark run writes, got {path!r} ({type(e).__name__}: {e})"
        ) from None
