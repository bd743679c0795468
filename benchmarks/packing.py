"""The fused engine's per-step products on packed recurrent weights against plain ``?gemm`` calls,
interleaved in one process (the same layer, ``_fused.PACK`` switched between the two).

    python benchmarks/packing.py                                  # sizes A-E, gru0, 1 and 2 threads
    python benchmarks/packing.py --sizes A,D --variants gru0,mgu --both-forms --repeats 30

Each round times both, alternating which goes first (``gatedrnn.bench.compare_layers``), forward
without gradients and forward+backward with random upstream gradients. Prints medians, packed ÷
plain (the median of each round's ratio), and the largest difference between the two input gradients. Where the engine runs a size's
products as its own row loops (batches of 1-3 rows) neither side packs, and the row says so.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

import gatedrnn
from gatedrnn._engines import _fused, _kernels
from gatedrnn.bench import CPU_SIZES, compare_layers


class _Forced:
    """The layer with the engine's packing switched on or off for each call."""

    def __init__(self, layer: torch.nn.Module, pack: bool) -> None:
        self.layer, self.pack = layer, pack

    def __call__(self, x: torch.Tensor) -> Any:
        saved = _fused.PACK
        _fused.PACK = self.pack
        try:
            return self.layer(x)
        finally:
            _fused.PACK = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(CPU_SIZES), help=f"comma list of {','.join(CPU_SIZES)}")
    p.add_argument("--variants", default="gru0")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--both-forms", action="store_true", help="reset_after True and False (else True)")
    a = p.parse_args(argv)
    if "s" not in _kernels.packed_blas():
        print(f"the BLAS ({_kernels.blas()[2]}) exports no sgemm_pack/sgemm_compute: nothing to compare")
        return 1
    print(f"packed ÷ plain per-step products, float32, median of {a.repeats}\n")
    print(
        "| size | threads | variant | reset_after | fwd plain ms | fwd packed ms | packed ÷ plain "
        "| fwd+bwd plain ms | fwd+bwd packed ms | packed ÷ plain | max abs dx diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    saved_threads = torch.get_num_threads()
    try:
        for s in a.sizes.split(","):
            batch, steps, inp, hid = CPU_SIZES[s]
            note = "" if batch > _kernels.SMALL_MAX_BATCH else " (row loops: not packed)"
            for th in (int(t) for t in a.threads.split(",")):
                torch.set_num_threads(th)
                for v in a.variants.split(","):
                    for ra in (True, False) if a.both_forms and v != "mingru" else (True,):
                        torch.manual_seed(0)
                        layer = gatedrnn.GRU(inp, hid, variant=v, reset_after=ra, engine="fused")
                        x = torch.randn(steps, batch, inp, requires_grad=True)
                        gy = torch.randn(steps, batch, hid)
                        cells, diff = compare_layers(_Forced(layer, False), _Forced(layer, True), x, gy, a.repeats)
                        print(
                            f"| {s}{note} | {th} | {v} | {ra} | " + " | ".join(cells) + f" | {diff:.1e} |", flush=True
                        )
    finally:
        torch.set_num_threads(saved_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
