"""Speed benchmark of the fused CPU engine (and, with --device cuda, the triton engine).

    python benchmarks/speed.py                      # full CPU run: sizes A-E, every variant, 1 and 2 threads
    python benchmarks/speed.py --sizes A --variants gru0 --threads 2 --repeats 5   # a quick run
    python benchmarks/speed.py --help

Same as ``gatedrnn bench``; the harness is the package :mod:`gatedrnn.bench`.
"""

from __future__ import annotations

import sys

from gatedrnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
