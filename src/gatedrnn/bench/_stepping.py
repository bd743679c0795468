"""Stepping one call at a time: ``gatedrnn.GRUCell`` and one-step ``gatedrnn.GRU`` calls against
``torch.nn.GRUCell``, ``torch.nn.GRU`` and ``torch.nn.LSTMCell``, per call and in two loops.

    gatedrnn bench --stepping                      # the full grid, 1 and 2 threads
    python benchmarks/step.py                      # the same
    python benchmarks/step.py --threads 1 --sizes 1x32,16x128 --repeats 7

Per call (``B`` rows, ``H`` units, ``H`` inputs, float32): each candidate is called again and
again on the same input and state, without gradients (inference, acting) and with them (a call
and its backward, ``h.sum().backward()``, parameters requiring gradients: what a training step
pays per call). Two loops users run: a policy rollout (``--rollout`` steps, B=16, H=256, without
gradients: ``h = cell(obs[t], h)``) and a cell unrolled over ``--unroll`` steps and trained
(B=16, H=128: ``h = cell(x[t], h)`` at every step, then one backward of the mean square of every
step's state).

Every candidate is timed in the same process, interleaved: each round times every candidate once
(in alternating order) over about 0.4 ms of calls, medians over ``--repeats`` rounds after a
warm-up. Printed: the host
(CPU model and ISA flags, torch's CPU capability, the load average before and after), then
markdown tables of time ÷ the torch cell or layer it replaces.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .. import GRU, GRUCell, __version__

__all__ = ["stepping"]

ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")


def host() -> str:
    """The CPU (model, family/model numbers, the ISA flags that matter here) and torch's build."""
    model, flags, fam = platform.processor() or "unknown CPU", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key in ("cpu family", "model") and key not in fam:
                    fam[key] = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    where = f" (family {fam['cpu family']}, model {fam['model']})" if len(fam) == 2 else ""
    isa = ", ".join(f for f in ISA if f in flags) or "unknown"
    return (
        f"CPU: {model}{where}, {os.cpu_count()} logical CPUs; ISA: {isa}; torch {torch.__version__} "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), gatedrnn {__version__}"
    )


def load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def interleaved(fns: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in rounds that alternate their order."""
    for fn in fns.values():  # warm-up: compilation, caches, allocator
        for _ in range(max(2, calls // 4)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(v) for name, v in times.items()}


def _calls(fn: Callable[[], object]) -> int:
    """Calls per timed sample: about 0.4 ms worth (short samples mostly fit between the scheduler's
    preemptions on a shared machine, so that their median is the unpreempted time)."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    fn()
    return max(1, min(500, int(4e-4 / max(time.perf_counter() - t0, 1e-7))))


def per_call(batch: int, hidden: int, grad: bool, repeats: int) -> dict[str, float]:
    """Seconds per call (with ``grad``: a call and its backward) of every candidate."""
    torch.manual_seed(0)
    cells = {
        "nn.GRUCell": nn.GRUCell(hidden, hidden),
        "GRUCell": GRUCell(hidden, hidden),
        "nn.LSTMCell": nn.LSTMCell(hidden, hidden),
        "nn.GRU": nn.GRU(hidden, hidden),
        "GRU": GRU(hidden, hidden),
    }
    cells["GRUCell"].load_state_dict(cells["nn.GRUCell"].state_dict())
    cells["GRU"].load_state_dict(cells["nn.GRU"].state_dict())
    x, h, c = torch.randn(batch, hidden), torch.randn(batch, hidden), torch.randn(batch, hidden)
    x1, h1 = x.unsqueeze(0), h.unsqueeze(0)
    steps = {
        "nn.GRUCell": lambda: cells["nn.GRUCell"](x, h),
        "GRUCell": lambda: cells["GRUCell"](x, h),
        "nn.LSTMCell": lambda: cells["nn.LSTMCell"](x, (h, c))[0],
        "nn.GRU": lambda: cells["nn.GRU"](x1, h1)[1],
        "GRU": lambda: cells["GRU"](x1, h1)[1],
    }
    with torch.set_grad_enabled(grad):
        fns = {k: (lambda f=f: f().sum().backward()) for k, f in steps.items()} if grad else steps
        return interleaved(fns, _calls(fns["nn.GRUCell"]), repeats)


def _loop(cell: nn.Module, xs: torch.Tensor, train: bool, lstm: bool = False) -> None:
    """``h = cell(xs[t], h)`` over every step from a zero state; with ``train``, then one backward
    of the mean square of every step's state."""
    h = xs.new_zeros(xs.shape[1], cell.hidden_size)
    state = (h, h) if lstm else h
    outs = []
    for t in range(xs.shape[0]):
        state = cell(xs[t], state)
        if train:
            outs.append(state[0] if lstm else state)
    if train:
        torch.stack(outs).square().mean().backward()


def loops(rollout: int, unroll: int, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per loop: the policy rollout (no gradients) and the trained unroll, per candidate."""
    torch.manual_seed(0)
    out: dict[str, dict[str, float]] = {}
    for name, batch, hidden, steps, train in (
        (f"rollout {rollout} steps, B=16, H=256, no grad", 16, 256, rollout, False),
        (f"unroll {unroll} steps + backward, B=16, H=128", 16, 128, unroll, True),
    ):
        ref = nn.GRUCell(hidden, hidden)
        ours = GRUCell(hidden, hidden)
        ours.load_state_dict(ref.state_dict())
        lstm = nn.LSTMCell(hidden, hidden)
        xs = torch.randn(steps, batch, hidden)
        fns = {
            "nn.GRUCell": lambda ref=ref, xs=xs, train=train: _loop(ref, xs, train),
            "GRUCell": lambda ours=ours, xs=xs, train=train: _loop(ours, xs, train),
            "nn.LSTMCell": lambda lstm=lstm, xs=xs, train=train: _loop(lstm, xs, train, lstm=True),
        }
        with torch.set_grad_enabled(train):
            out[name] = interleaved(fns, 1, repeats)
    return out


def stepping(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    p.add_argument("--sizes", default="1x32,1x128,1x512,16x32,16x128,16x512,64x32,64x128,64x512", help="BxH,...")
    p.add_argument("--repeats", type=int, default=31, help="timed rounds (medians)")
    p.add_argument("--rollout", type=int, default=1000, help="steps of the policy rollout")
    p.add_argument("--unroll", type=int, default=100, help="steps of the trained unroll")
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in a.sizes.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    print(host())
    print(f"before: {load()}; float32, input size = H, medians of {a.repeats} interleaved rounds\n")
    for n in threads:
        torch.set_num_threads(n)
        for grad in (False, True):
            what = "a call and its backward" if grad else "a call without gradients"
            print(f"Per call, {n} thread(s), {what}: time ÷ the torch module it replaces\n")
            print("| B | H | nn.GRUCell µs | GRUCell | nn.LSTMCell | nn.GRU µs | GRU (one step) |")
            print("|---|---|---|---|---|---|---|")
            for batch, hidden in sizes:
                t = per_call(batch, hidden, grad, a.repeats)
                cell, layer = t["nn.GRUCell"], t["nn.GRU"]
                print(
                    f"| {batch} | {hidden} | {cell * 1e6:.1f} | {t['GRUCell'] / cell:.2f} | "
                    f"{t['nn.LSTMCell'] / cell:.2f} | {layer * 1e6:.1f} | {t['GRU'] / layer:.2f} |"
                )
            print()
        print(f"Loops, {n} thread(s): time ÷ the same loop with torch.nn.GRUCell\n")
        print("| loop | nn.GRUCell ms | GRUCell | nn.LSTMCell |")
        print("|---|---|---|---|")
        for name, t in loops(a.rollout, a.unroll, a.repeats).items():
            ref = t["nn.GRUCell"]
            print(f"| {name} | {ref * 1e3:.2f} | {t['GRUCell'] / ref:.2f} | {t['nn.LSTMCell'] / ref:.2f} |")
        print()
    print(f"after: {load()}")
    return 0
