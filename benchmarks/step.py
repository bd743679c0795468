"""Stepping one call at a time: ``gatedrnn.GRUCell`` and one-step ``gatedrnn.GRU`` calls against
``torch.nn.GRUCell``, ``torch.nn.GRU`` and ``torch.nn.LSTMCell``, per call and in two loops.

    python benchmarks/step.py                      # the full grid, 1 and 2 threads
    python benchmarks/step.py --threads 1 --sizes 1x32,16x128 --repeats 7
    python benchmarks/step.py --help

Same as ``gatedrnn bench --stepping`` (which takes ``--threads``); the harness is
:mod:`gatedrnn.bench._stepping`.
"""

from __future__ import annotations

import sys

from gatedrnn.bench import stepping


def main(argv: list[str] | None = None) -> int:
    return stepping(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
