"""What the options cost in the fused engine: each against the plain layer, side by side.

    python benchmarks/options.py                          # sizes A-E, 1 and 2 threads
    python benchmarks/options.py --sizes A,D --threads 1 --repeats 10

gru0 (reset-after), float32, training mode, forward+backward with random upstream gradients; each
round times every candidate once, in a shuffled order (``gatedrnn.bench.time_interleaved``), and
the table gives medians and ratios to the plain fused layer (the Python cell is timed in rounds of
its own with the fused ``layer_norm`` layer; Python's garbage collector is off while timing, so
that the cell's garbage is not collected in another candidate's time):

* ``layer_norm=True`` (and its time against the same equations as a per-step Python
  :class:`LayerNormGRUCell`, two ``torch.nn.LayerNorm`` and a loop, the way users write it);
* ``recurrent_dropout=0.25``, ``zoneout=0.1``, ``weight_drop=0.5`` and ``resets`` (one step in ten
  of each sequence, at random).

The CPU, the thread count and the load average (``os.getloadavg``) before and after are printed
with the table: on a shared machine compare ratios, not times.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import gatedrnn
from gatedrnn.bench import CPU_SIZES, time_interleaved
from gatedrnn.bench._machine import machine

OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "zoneout": {"zoneout": 0.1},
    "weight_drop": {"weight_drop": 0.5},
    "resets": {},
}


class LayerNormGRUCell(nn.Module):
    """gru0 (reset-after) with layer norm, one step, written the usual way: ``LN(W x)`` and
    ``LN(U h)`` over all three blocks, each with its own ``nn.LayerNorm``, the biases after them.
    The same equations as ``gatedrnn.GRU(layer_norm=True)`` (:mod:`gatedrnn._options`)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.ih = nn.Linear(input_size, 3 * hidden_size, bias=False)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.ln_ih = nn.LayerNorm(3 * hidden_size)
        self.ln_hh = nn.LayerNorm(3 * hidden_size)
        self.bias_ih = nn.Parameter(torch.zeros(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.zeros(3 * hidden_size))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        i_r, i_z, i_n = (self.ln_ih(self.ih(x)) + self.bias_ih).chunk(3, 1)
        h_r, h_z, h_n = (self.ln_hh(self.hh(h)) + self.bias_hh).chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h


class LayerNormGRU(nn.Module):
    """:class:`LayerNormGRUCell` over time in a Python loop (``[T, B, I]`` in, ``(y, h_n)`` out)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = LayerNormGRUCell(input_size, hidden_size)
        self.hidden_size = hidden_size

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if h is None:
            h = x.new_zeros(x.shape[1], self.hidden_size)
        ys = []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            ys.append(h)
        return torch.stack(ys), h

    @torch.no_grad()
    def load_from(self, gru: gatedrnn.GRU) -> LayerNormGRU:
        """Copy the weights of a one-layer ``gatedrnn.GRU(variant="gru0", layer_norm=True)``."""
        c = self.cell
        for mine, theirs in (
            (c.ih.weight, gru.weight_ih_l0),
            (c.hh.weight, gru.weight_hh_l0),
            (c.bias_ih, gru.bias_ih_l0),
            (c.bias_hh, gru.bias_hh_l0),
            (c.ln_ih.weight, gru.ln_weight_ih_l0),
            (c.ln_ih.bias, gru.ln_bias_ih_l0),
            (c.ln_hh.weight, gru.ln_weight_hh_l0),
            (c.ln_hh.bias, gru.ln_bias_hh_l0),
        ):
            mine.copy_(theirs)
        return self


def _candidates(size: tuple[int, int, int, int]) -> tuple[dict[str, Callable[[], None]], Callable[[], None]]:
    """The fused layers by option name, and the Python cell's run."""
    batch, steps, inp, hid = size
    torch.manual_seed(0)
    x = torch.randn(steps, batch, inp, requires_grad=True)
    gy = torch.randn(steps, batch, hid)
    resets = torch.rand(steps, batch) < 0.1
    out: dict[str, Callable[[], None]] = {}
    for name, kw in OPTIONS.items():
        layer = gatedrnn.GRU(inp, hid, engine="fused", **kw).train()
        rs = resets if name == "resets" else None

        def run(layer: nn.Module = layer, rs: Tensor | None = rs) -> None:
            y, _ = layer(x, resets=rs)
            y.backward(gy)

        out[name] = run
    cell = LayerNormGRU(inp, hid).load_from(gatedrnn.GRU(inp, hid, layer_norm=True))

    def run_cell() -> None:
        y, _ = cell(x)
        y.backward(gy)

    return out, run_cell


def _medians(cands: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    gc.collect()
    gc.disable()
    try:
        return {n: t["median_ms"] for n, t in time_interleaved(cands, repeats, warmup, lambda: None).items()}
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(CPU_SIZES), help=f"comma list of {','.join(CPU_SIZES)}")
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (medians)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    a = p.parse_args(argv)
    sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in CPU_SIZES:
            p.error(f"--sizes: expected names from {sorted(CPU_SIZES)}, got {s!r}")
    threads = [int(t) for t in a.threads.split(",")]
    info = machine()
    load0 = os.getloadavg()
    isa = ", ".join(info["isa"]) or "-"
    print(f"CPU: {info['cpu']}; ISA: {isa}; {info['logical_cpus']} logical CPUs; torch {info['torch']}")
    print(f"gru0 reset-after, float32, forward+backward, training mode; median of {a.repeats} interleaved rounds\n")
    names = [n for n in OPTIONS if n != "plain"]
    print(
        "| size (B,T,m,n) | threads | plain ms | "
        + " | ".join(f"{n} ÷ plain" for n in names)
        + " | Python LayerNormGRUCell ms | cell ÷ layer_norm |"
    )
    print("|---" * (len(names) + 5) + "|")
    saved = torch.get_num_threads()
    try:
        for k in threads:
            torch.set_num_threads(k)
            for s in sizes:
                fused, run_cell = _candidates(CPU_SIZES[s])
                med = _medians(fused, a.repeats, a.warmup)
                pair = _medians({"layer_norm": fused["layer_norm"], "python_cell": run_cell}, a.repeats, a.warmup)
                med["python_cell"] = pair["python_cell"]
                cell_ratio = pair["python_cell"] / pair["layer_norm"]
                label = f"{s} ({','.join(map(str, CPU_SIZES[s]))})"
                cells = [f"{med[n] / med['plain']:.2f}" for n in names]
                row = [label, str(k), f"{med['plain']:.2f}", *cells, f"{med['python_cell']:.1f}", f"{cell_ratio:.1f}"]
                print("| " + " | ".join(row) + " |", flush=True)
    finally:
        torch.set_num_threads(saved)
    load1 = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): before {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, ", end="")
    print(f"after {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
