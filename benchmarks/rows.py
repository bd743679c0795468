"""Per-row cost of the fused engine's compiled loops alone (no projection, no weight gradients, no
Python glue): nanoseconds per (step, batch row), forward and backward, every variant and reset form.

    python benchmarks/rows.py                          # B=1, T=1000, m=n=32 (size E), 1 thread
    python benchmarks/rows.py --batch 16 --steps 200 --inputs 64 --hidden 64   # size D's shape

This is the figure that per-row overheads in the kernels show up in (at B=1 a row is a step, and
size E's time is mostly rows): numba's reference counting of per-row array views cost 100-200 ns a
row before the loops indexed elements directly (see docs/fused.md, "Lessons applied"). The loops
are timed by wrapping the engine's row-range runner, so what is timed is exactly what a layer call
runs, on torch's threads as configured (one by default). Medians of --repeats calls after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import gatedrnn
from gatedrnn._engines import _fused


@contextmanager
def _loop_timer() -> Iterator[list[float]]:
    """Collect the seconds each compiled-loop run takes (forward, then backward, per call)."""
    runner = _fused.run_rows
    spent: list[float] = []

    def timed(run: Callable[..., None], ranges: Any, flops: int) -> None:
        t0 = time.perf_counter()
        runner(run, ranges, flops)
        spent.append(time.perf_counter() - t0)

    _fused.run_rows = timed
    try:
        yield spent
    finally:
        _fused.run_rows = runner


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--inputs", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--variants", default="gru0,gru1,gru2,gru3,mgu,mingru")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = a.steps * a.batch
    print(
        f"Compiled loops alone, ns per row (B={a.batch}, T={a.steps}, m={a.inputs}, n={a.hidden}, "
        f"float32, {a.threads} thread(s), median of {a.repeats}):\n"
    )
    print("| variant | reset_after | forward (saving) | forward (no grad) | backward |")
    print("|---|---|---|---|---|")
    for v in a.variants.split(","):
        for ra in (True, False) if v != "mingru" else (True,):
            torch.manual_seed(0)
            layer = gatedrnn.GRU(a.inputs, a.hidden, variant=v, reset_after=ra, engine="fused")
            x = torch.randn(a.steps, a.batch, a.inputs, requires_grad=True)
            gy = torch.randn(a.steps, a.batch, a.hidden)
            fwd, bwd, inf = [], [], []
            with _loop_timer() as spent:
                for i in range(a.repeats + 3):
                    spent.clear()
                    y, _ = layer(x)
                    y.backward(gy)
                    with torch.no_grad():
                        layer(x)
                    if i >= 3:  # warm-up: compile, first touches
                        fwd.append(spent[0])
                        bwd.append(spent[1])
                        inf.append(spent[2])
            ns = [statistics.median(s) * 1e9 / rows for s in (fwd, inf, bwd)]
            print(f"| {v} | {ra} | {ns[0]:.0f} | {ns[1]:.0f} | {ns[2]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
