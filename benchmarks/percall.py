"""Where the fixed cost of a fused layer call goes: one layer, one direction, forward+backward on a
tiny input (one step by default), each part timed by wrapping the functions that do it.

The parts are those of the long form (the layer's loops called from Python glue): calls of up to
``_step.SHORT_MAX_STEPS`` steps run as one-call step kernels instead, which this script forces off
while it times the parts, and times whole in the last row (benchmarks/step.py compares them).

    python benchmarks/percall.py                      # B=1, T=1, 32 -> 32, gru0, 1 thread
    python benchmarks/percall.py --hidden 128 --steps 10

Prints the median per call of each part's own time (a wrapper's time less the wrapped parts
inside it), in microseconds. The wrappers themselves add about a microsecond each.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import gatedrnn
from gatedrnn import _layers
from gatedrnn._engines import _fused

# (label, owner, attribute): the wrapped functions, outermost first
PARTS = [
    ("module", gatedrnn.GRU, "forward"),
    ("driver", _layers, "rnn"),
    ("engine", _fused.ENGINE, "layer"),
    ("autograd.Function", _fused._Layer, "apply"),
    ("forward glue", _fused, "_forward"),
    ("backward glue", _fused, "_backward"),
    ("compiled loops", _fused, "run_rows"),
]


@contextmanager
def _wrapped(spent: dict[str, list[float]]) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for _, owner, name in PARTS]

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label].append(time.perf_counter() - t0)

        return run

    for label, owner, name in PARTS:
        setattr(owner, name, timed(label, getattr(owner, name)))
    _fused.ENGINE.short = lambda *a, **k: False  # the long form, whose parts these are
    try:
        yield
    finally:
        del _fused.ENGINE.short
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="gru0")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--calls", type=int, default=3000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = gatedrnn.GRU(a.hidden, a.hidden, variant=a.variant, engine="fused")
    x = torch.randn(a.steps, a.batch, a.hidden, requires_grad=True)
    gy = torch.randn(a.steps, a.batch, a.hidden)
    spent: dict[str, list[float]] = {label: [] for label, _, _ in PARTS}
    spent["call forward"], spent["call backward"] = [], []
    with _wrapped(spent):
        for i in range(a.calls + 200):
            if i == 200:  # warm-up done (compile, first touches)
                for v in spent.values():
                    v.clear()
            t0 = time.perf_counter()
            y, _ = layer(x)
            t1 = time.perf_counter()
            y.backward(gy)
            spent["call forward"].append(t1 - t0)
            spent["call backward"].append(time.perf_counter() - t1)
    s = {k: v for k, v in spent.items()}
    loops_f, loops_b = s["compiled loops"][0::2], s["compiled loops"][1::2]

    def own(outer: list[float], *inner: list[float]) -> float:
        return statistics.median(o - sum(i[n] for i in inner) for n, o in enumerate(outer)) * 1e6

    rows = [
        ("nn.Module call (hooks, dispatch)", own(s["call forward"], s["module"])),
        ("layer forward (checks, h0, weights)", own(s["module"], s["driver"])),
        ("driver (engine choice, directions)", own(s["driver"], s["engine"])),
        ("engine checks (dtypes, contiguity)", own(s["engine"], s["autograd.Function"])),
        ("autograd.Function forward", own(s["autograd.Function"], s["forward glue"])),
        ("forward glue (biases, buffers, projection)", own(s["forward glue"], loops_f)),
        ("compiled forward loop", own(loops_f)),
        ("torch backward machinery", own(s["call backward"], s["backward glue"])),
        ("backward glue (buffers, weight gradients)", own(s["backward glue"], loops_b)),
        ("compiled backward loop", own(loops_b)),
    ]
    total = own([f + b for f, b in zip(s["call forward"], s["call backward"], strict=True)])

    def whole(run: torch.nn.Module) -> float:
        spent_whole = []
        for i in range(a.calls + 200):
            t0 = time.perf_counter()
            y, _ = run(x)
            y.backward(gy)
            if i >= 200:
                spent_whole.append(time.perf_counter() - t0)
        return statistics.median(spent_whole) * 1e6

    us_torch = whole(torch.nn.GRU(a.hidden, a.hidden))
    us_step = whole(layer) if _fused.ENGINE.short(layer.spec, a.steps, a.batch, a.hidden) else None
    print(
        f"Fixed cost of a fused {a.variant} call, forward+backward, B={a.batch}, T={a.steps}, "
        f"{a.hidden} -> {a.hidden}, 1 thread, median of {a.calls} calls (us):\n"
    )
    print("| part | us |\n|---|---|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} |")
    print(f"| total (forward+backward) | {total:.1f} |")
    print(f"| torch.nn.GRU, the same call (unwrapped) | {us_torch:.1f} |")
    step = f"{us_step:.1f}" if us_step is not None else "(runs the long form)"
    print(f"| gatedrnn, the same call as one-call step kernels (unwrapped) | {step} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
