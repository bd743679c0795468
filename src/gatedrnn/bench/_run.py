"""A benchmark run: the candidates, the interleaved timer, and the run that writes its JSON."""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from .._files import atomic_write
from ._flops import SGEMM_SIDE, matmul_flops
from ._options import CPU_SIZES, CUDA_SIZES, BenchError, Options

__all__ = ["candidates", "compare_layers", "run", "time_interleaved"]


def candidates(opts: Options, size: tuple[int, int, int, int], backward: bool, dtype, device) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """``{name: callable}`` for one size and pass; every callable runs one full call."""
    import torch

    from .. import GRU

    batch, steps, inp, hid = size
    x = torch.randn(steps, batch, inp, device=device, dtype=dtype, requires_grad=backward)
    gy = torch.randn(steps, batch, hid, device=device, dtype=dtype)
    gh = torch.randn(1, batch, hid, device=device, dtype=dtype)

    def wrap(mod: torch.nn.Module, kind: str) -> Callable[[], None]:
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

    def cell_loop(cell: torch.nn.Module) -> Callable[[], None]:
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
    if opts.baselines:
        cands["torch.nn.LSTM"] = wrap(torch.nn.LSTM(inp, hid), "lstm")
        if device == "cpu":
            cands["python cell"] = cell_loop(torch.nn.GRUCell(inp, hid))
    engine = "fused" if device == "cpu" else "triton"
    cpu32 = device == "cpu" and dtype == torch.float32
    for v in opts.variants or ():
        gru = GRU(inp, hid, variant=v, reset_after=opts.reset_after, engine=engine)
        cands[f"{engine}:{v}"] = wrap(gru, "gru")
        if cpu32:
            from ._floor import gemm_floor

            cands[f"floor:{v}"] = gemm_floor(v, opts.reset_after, size, backward)
    if device == "cpu" and dtype in (torch.float32, torch.bfloat16):
        # the rates: MKL's float32 product (the machine's yardstick) and oneDNN's in this dtype
        from ._floor import onednn_gemm, sgemm

        cands[f"sgemm:{SGEMM_SIDE}"] = sgemm()
        onednn = onednn_gemm(dtype=dtype)
        if onednn is not None:
            cands[f"onednn:{SGEMM_SIDE}"] = onednn
    return cands


def time_interleaved(
    cands: dict[str, Callable[[], None]], repeats: int, warmup: int, sync: Callable[[], None]
) -> dict[str, dict[str, float]]:
    """Interleaved timing: each round runs every candidate once, in an order shuffled afresh each
    round (a fixed seed), so that no candidate always follows the same one; Python's garbage
    collector runs between rounds, untimed, and never inside a call (the Python cell's garbage
    used to be collected in whichever candidate came next). Medians and minima in ms."""
    names = list(cands)
    for _ in range(warmup):
        for n in names:
            cands[n]()
    sync()
    samples: dict[str, list[float]] = {n: [] for n in names}
    shuffle = random.Random(0).shuffle
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            order = list(names)
            shuffle(order)
            gc.collect()
            for n in order:
                sync()
                t0 = time.perf_counter()
                cands[n]()
                sync()
                samples[n].append(time.perf_counter() - t0)
    finally:
        if enabled:
            gc.enable()
    return {n: {"median_ms": statistics.median(s) * 1e3, "min_ms": min(s) * 1e3} for n, s in samples.items()}


def paired_ratio(cands: dict[str, Callable[[], None]], new: str, old: str, repeats: int, warmup: int) -> float:
    """The median over rounds of ``new``'s time ÷ ``old``'s in the same round (each round runs both,
    alternating which goes first): steadier than a ratio of medians while other work comes and
    goes on the cores."""
    ratios = []
    for _ in range(warmup):
        cands[old]()
        cands[new]()
    for r in range(repeats):
        t = {}
        for n in (old, new) if r % 2 == 0 else (new, old):
            t0 = time.perf_counter()
            cands[n]()
            t[n] = time.perf_counter() - t0
        ratios.append(t[new] / t[old])
    return statistics.median(ratios)


def compare_layers(
    old: Callable[..., Any], new: Callable[..., Any], x: Any, gy: Any, repeats: int
) -> tuple[list[str], float]:
    """Two layers (or callables like one) side by side on the same input: table cells (old ms, new
    ms, new ÷ old, for the forward without gradients and the forward+backward with ``gy`` as the
    outputs' gradient) and the largest difference between their input gradients (``x`` requires
    grad). 3 warm-up rounds (compile, first touches), then :func:`time_interleaved` for the
    medians and as many rounds again for :func:`paired_ratio`."""
    import torch

    def fwd(layer: Callable[..., Any]) -> None:
        with torch.no_grad():
            layer(x)

    def fwdbwd(layer: Callable[..., Any]) -> None:
        y, _ = layer(x)
        y.backward(gy)

    cells = []
    for fn in (fwd, fwdbwd):
        cands = {"old": lambda fn=fn: fn(old), "new": lambda fn=fn: fn(new)}
        times = time_interleaved(cands, repeats, 3, lambda: None)
        mo, mn = times["old"]["median_ms"], times["new"]["median_ms"]
        cells += [f"{mo:.3f}", f"{mn:.3f}", f"{paired_ratio(cands, 'new', 'old', repeats, 0):.3f}"]
    grads = []
    for layer in (old, new):
        x.grad = None
        fwdbwd(layer)
        assert x.grad is not None
        grads.append(x.grad.clone())
    return cells, (grads[0] - grads[1]).abs().max().item()


def _json_path(opts: Options) -> str:
    """Where the run's JSON goes: ``--json``, refused if it exists (unless ``--overwrite``); by default
    a new file named by the time under ``runs/bench/``."""
    if opts.json is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return os.path.join("runs", "bench", f"speed-{opts.device}-{stamp}.json")
    if os.path.exists(opts.json) and not opts.overwrite:
        raise BenchError(f"--json: {opts.json!r} exists; pass --overwrite to replace it, or name another file")
    return opts.json


def _device_check(opts: Options) -> Callable[[], None]:
    """The ``sync`` of the device after checking that its engine runs here (:class:`BenchError` if not)."""
    import torch

    from .._engines import get_engine
    from .._specs import get_spec

    if opts.device == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(
                "--device cuda: CUDA is not available here (torch.cuda.is_available() is False); run it on a "
                "machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu"
            )
        why = get_engine("triton").unavailable(get_spec("gru0"), torch.empty(1, device="cuda"))
        if why is not None:
            raise BenchError(f"--device cuda: the triton engine cannot run here: {why}")
        return torch.cuda.synchronize
    why = get_engine("fused").unavailable(get_spec("gru0"), torch.empty(1))
    if why is not None:
        raise BenchError(f"--device cpu: the fused engine cannot run here: {why}")
    return lambda: None


def run(opts: Options, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark: print its tables, write its JSON, and return what the JSON holds.
    ``argv``: the command line, recorded in the JSON. :class:`BenchError` for options it cannot run."""
    import torch

    from ._machine import machine
    from ._measure import compile_times, peak_rss, saved_bytes
    from ._tables import report

    opts = opts.checked()
    path = _json_path(opts)
    sync = _device_check(opts)
    dtypes = []
    for n in opts.dtypes or ():
        dt = getattr(torch, n, None)
        if not isinstance(dt, torch.dtype):
            raise BenchError(f"--dtypes: expected torch dtype names (float32, bfloat16, ...), got {n!r}")
        dtypes.append(dt)
    device = opts.device
    thread_list = opts.threads if device == "cpu" else [torch.get_num_threads()]
    sizes = CPU_SIZES if device == "cpu" else CUDA_SIZES
    variants = opts.variants or []
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []
    saved_threads = torch.get_num_threads()
    t_start = time.perf_counter()
    try:
        for name in opts.sizes or ():
            size = sizes[name]
            for dt in dtypes:
                for th in thread_list:
                    torch.set_num_threads(th)
                    for ps in opts.passes:
                        cands = candidates(opts, size, ps == "fwdbwd", dt, device)
                        times = time_interleaved(cands, opts.repeats, opts.warmup, sync)
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
    if opts.memory and device == "cpu":
        for name in opts.sizes or ():
            size = sizes[name]
            cands = candidates(opts, size, True, torch.float32, device)
            row = {"size": name, "torch.nn.GRU_bytes": saved_bytes(cands["torch.nn.GRU"])}
            for v in variants:
                row[f"fused:{v}_bytes"] = saved_bytes(cands[f"fused:{v}"])
            cols = ["torch.nn.GRU", *[f"fused:{v}" for v in variants]]
            for c, peak in peak_rss(cols, size, opts.reset_after).items():
                row[f"{c}_peak_bytes"] = peak
            print(f"# {name} memory: done", file=sys.stderr, flush=True)
            memory.append(row)
    compiled = compile_times(variants) if opts.compile_time and device == "cpu" else None

    data: dict[str, Any] = {
        "argv": argv if argv is not None else sys.argv[1:],
        "device": device,
        "machine": machine(),
        "repeats": opts.repeats,
        "warmup": opts.warmup,
        "reset_after": opts.reset_after,
        "wall_s": time.perf_counter() - t_start,
        "results": results,
        "memory_saved_for_backward": memory,
        "compile": compiled,
        "matmul_gflop": {
            name: {v: matmul_flops(v, CPU_SIZES[name], True) / 1e9 for v in variants}
            for name in opts.sizes or ()
            if device == "cpu"
        },
    }
    print(report(data))
    atomic_write(path, json.dumps(data, indent=1).encode(), parents=True)
    print(f"JSON: {path}")
    return data
