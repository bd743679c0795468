"""This checkout's gatedrnn against an earlier git revision's, interleaved in one process.

    python benchmarks/revisions.py HEAD~1                     # sizes D and E, gru0/gru3/mingru, 1 thread
    python benchmarks/revisions.py 9c96b8a --sizes A,D --variants gru0 --threads 2 --both-forms

On a shared machine absolute times move by tens of percent between runs, so a change to the engine
is judged by running old and new code side by side: the revision's ``src/gatedrnn`` is exported
with ``git archive`` into ``runs/revisions/<commit>/`` as a package of another name, both layers
get the same weights, and each round times both, alternating which goes first
(``gatedrnn.bench.compare_layers``), forward without gradients and forward+backward with random
upstream gradients. Prints medians, new ÷ old (the median of each round's ratio), and the largest
difference between the two input gradients (0 when the arithmetic is unchanged).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import torch

import gatedrnn
from gatedrnn.bench import CPU_SIZES, compare_layers

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, dest: Path = ROOT / "runs" / "revisions") -> Any:
    """The revision's package, imported under the name ``gatedrnn_<commit>`` from
    ``dest/<commit>/`` (exported once, then reused with its numba cache)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short=10", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    name = f"gatedrnn_{commit}"
    base = dest / commit
    if not (base / name).is_dir():
        tar = subprocess.run(
            ["git", "archive", commit, "src/gatedrnn"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        tmp = base.with_name(commit + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=BytesIO(tar)) as tf:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tf.extractall(tmp, filter="data")
            else:  # our own git archive of our own tree
                tf.extractall(tmp)
        pkg = tmp / "src" / "gatedrnn"
        for py in pkg.rglob("*.py"):  # absolute self-imports must reach the old code, not this one
            text = py.read_text()
            py.write_text(re.sub(r"\b(from|import) gatedrnn\b", rf"\1 {name}", text))
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        pkg.rename(base / name)
        shutil.rmtree(tmp)
    sys.path.insert(0, str(base))
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="git revision to compare against (e.g. HEAD~1, a commit)")
    p.add_argument("--sizes", default="D,E", help=f"comma list of {','.join(CPU_SIZES)}")
    p.add_argument("--variants", default="gru0,gru3,mingru")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--both-forms", action="store_true", help="reset_after True and False (else True)")
    a = p.parse_args(argv)
    old = export(a.rev)
    torch.set_num_threads(a.threads)
    print(f"new = this checkout, old = {a.rev} ({old.__name__}); {a.threads} thread(s), median of {a.repeats}\n")
    print(
        "| size | variant | reset_after | fwd old ms | fwd new ms | new ÷ old | fwd+bwd old ms | fwd+bwd new ms | new ÷ old | max abs dx diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in a.sizes.split(","):
        batch, steps, inp, hid = CPU_SIZES[s]
        for v in a.variants.split(","):
            for ra in (True, False) if a.both_forms and v != "mingru" else (True,):
                torch.manual_seed(0)
                lo = old.GRU(inp, hid, variant=v, reset_after=ra)
                ln = gatedrnn.GRU(inp, hid, variant=v, reset_after=ra)
                ln.load_state_dict(lo.state_dict())
                x = torch.randn(steps, batch, inp, requires_grad=True)
                cells, diff = compare_layers(lo, ln, x, torch.randn(steps, batch, hid), a.repeats)
                print(f"| {s} | {v} | {ra} | " + " | ".join(cells) + f" | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
