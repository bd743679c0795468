"""Data-parallel training on ``torch.distributed``, as started by ``torchrun``.

``torchrun --nproc_per_node 2 -m gatedrnn train ...`` starts two processes with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`setup` joins them into one process
group (``gloo`` on CPU, ``nccl`` on CUDA). Each step, every process takes its share of the same
global batch, and the gradients are summed across processes (one flat all-reduce) before the
optimiser step, so that the update equals one process on the whole global batch (the loss of each
share is divided by the *global* example count). Only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_reduce_grads",
    "all_reduce_sum",
    "backend",
    "is_main",
    "rank",
    "setup",
    "shard",
    "teardown",
    "world_size",
]


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and "RANK" in os.environ


def setup(device: str) -> bool:
    """Join the process group described by torchrun's environment; False when not launched that way."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":  # pragma: no cover - needs GPUs
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend() -> str:
    """The process group's backend (gloo, nccl), or "" when not distributed."""
    return str(dist.get_backend()) if active() else ""


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(indices: Tensor) -> Tensor:
    """This process's share of a global batch: every ``world_size``-th index from ``rank``."""
    return indices[rank() :: world_size()] if active() else indices


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over processes (in place; ``t`` itself when alone). CPU tensors under nccl go via the GPU."""
    if active():
        if dist.get_backend() == "nccl" and not t.is_cuda:  # pragma: no cover - needs GPUs
            on_gpu = t.cuda()
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            t.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_parameters(model: nn.Module) -> None:
    """Start every process from rank 0's weights (they agree already when seeded alike)."""
    if active():
        for p in model.state_dict().values():
            dist.broadcast(p, src=0)


def all_reduce_grads(model: nn.Module) -> None:
    """Sum every parameter's gradient over processes with one flat all-reduce."""
    if not active():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a process whose share missed a parameter (e.g. an embedding row)
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def barrier() -> None:
    if active():
        dist.barrier()
