"""Speed benchmark of the engines: ``gatedrnn bench`` and ``benchmarks/speed.py``.

CPU (default): every variant on the fused engine against ``torch.nn.GRU``, ``torch.nn.LSTM``, a
per-step Python cell (``torch.nn.GRUCell`` in a loop, what the tutorials write) and the GEMM-only
floor (the variant's own matrix products timed alone: the projection and weight-gradient products
in torch, the per-step products in a compiled loop calling the same BLAS), with one large float32
product that gives the host's matrix-product rate. All candidates run interleaved in one process;
each figure is the median of ``repeats`` runs after warm-up. Also the memory saved for the backward
against ``torch.nn.GRU``, the peak resident memory one forward+backward adds (a fresh process per
candidate and size), and on request the kernels' compile time (fresh processes, about a minute).

Stepping (:func:`stepping`, ``gatedrnn bench --stepping``): ``GRUCell`` and one-step ``GRU``
calls against ``torch.nn.GRUCell``, ``torch.nn.GRU`` and ``torch.nn.LSTMCell``, per call and in two
loops (a policy rollout, a trained unroll).

CUDA (``device="cuda"``): ``engine="triton"`` against ``torch.nn.GRU`` (cuDNN), float32 and
bfloat16, with two more sizes.

Prints markdown tables and writes JSON; :func:`report` reprints the tables of a saved run. The
library never imports this package.
"""

from __future__ import annotations

from ._flops import SGEMM_SIDE, candidate_flops, matmul_flops
from ._options import CPU_SIZES, CUDA_SIZES, PASSES, BenchError, Options
from ._run import compare_layers, paired_ratio, run, time_interleaved
from ._stepping import stepping
from ._tables import report, report_file

__all__ = [
    "CPU_SIZES",
    "CUDA_SIZES",
    "PASSES",
    "SGEMM_SIDE",
    "BenchError",
    "Options",
    "candidate_flops",
    "compare_layers",
    "matmul_flops",
    "paired_ratio",
    "report",
    "report_file",
    "run",
    "stepping",
    "time_interleaved",
]
