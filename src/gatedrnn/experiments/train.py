"""The training loop: one cell, one learning rate, one seed; read it top to bottom.

What a seed fixes: ``torch.manual_seed(seed)`` right before the model is built (initialisation),
then a ``torch.Generator`` seeded alike that draws the order of the training examples each epoch;
dropout draws from torch's global generator, which the same ``manual_seed`` started. After every
epoch a checkpoint holds the weights, the optimiser, both generators' states, the history and the
config, written atomically; ``resume=True`` picks it up and continues to the same numbers as a run
that was never interrupted. Checkpoints hold tensors, numbers, strings, lists and dicts only and
are read back with ``torch.load(weights_only=True)``.

Seconds per epoch time the training batches alone, after an untimed warm-up step at each batch
size the epoch uses (an engine compiles on first use; its record keeps that as ``warmup_seconds``).

Under ``torchrun`` (see :mod:`gatedrnn.experiments.distributed`) each process takes its share of
every global batch and the gradients are summed before the step: the same update as one process.
"""

from __future__ import annotations

import io
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .. import SPECS
from .._engines import get_engine
from .._files import atomic_write
from . import distributed as dd
from ._console import on_a_terminal
from .config import Config, ConfigError, parse_cell
from .models import SequenceModel, count_params, default_dtype, model_for
from .tasks import Split, Task, TaskData

__all__ = ["CHECKPOINT_FORMAT", "RunResult", "evaluate", "load_checkpoint", "make_optimizer", "train_run"]

CHECKPOINT_FORMAT = "gatedrnn-checkpoint-1"
# Config keys that may change between a run and its resumption (the rest must match).
_RESUMABLE_CHANGES = {"epochs", "out", "progress", "cells", "lr", "seeds", "data_dir", "download", "threads"}


@dataclass
class RunResult:
    """One finished (or resumed-and-finished) run: its identity, size and per-epoch history."""

    run_id: str
    cell: str
    lr: float
    seed: int
    params: int  # the whole model
    core_params: int  # the recurrent core alone
    history: list[dict[str, Any]] = field(default_factory=list)


def check_device(name: str) -> torch.device:
    """``torch.device(name)``, or a :class:`ConfigError` saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but this torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


def check_engine(cfg: Config, cell: str, dtype: torch.dtype, device: torch.device) -> None:
    """A :class:`ConfigError` when ``cfg.engine``, named explicitly, cannot run ``cell`` here
    (before any training: the layer itself would raise at its first forward)."""
    cell = parse_cell(cell)[0]
    if cfg.engine == "auto" or cell not in SPECS:
        return
    try:
        why = get_engine(cfg.engine).unavailable(SPECS[cell], torch.empty(0, dtype=dtype, device=device))
    except ImportError as e:
        raise ConfigError(f"engine: {cfg.engine!r} is not installed here ({e})") from e
    if why is not None:
        raise ConfigError(f"engine: {cfg.engine!r} cannot run cell {cell!r} here: {why}")


def make_optimizer(cfg: Config, params, lr: float) -> torch.optim.Optimizer:
    """Adam, AdamW, RMSprop or SGD (momentum from the config), with the config's weight decay."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    raise ConfigError(f"optimizer: expected one of adam, adamw, rmsprop, sgd, got {cfg.optimizer!r}")


def loss_and_metric(kind: str, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Summed loss over the batch's elements and summed metric over the batch (see :class:`Task`).

    classification: cross-entropy, number correct. regression: squared error, squared error.
    bits: binary cross-entropy per bit, number of sequences with every bit right.
    """
    if kind == "classification":
        return F.cross_entropy(out, y, reduction="sum"), (out.argmax(-1) == y).sum()
    if kind == "regression":
        se = (out.reshape(y.shape) - y).square().sum()
        return se, se.detach()
    if kind == "bits":
        logits = out.reshape(y.shape)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        return loss, ((logits > 0) == (y > 0.5)).all(dim=1).sum()
    raise ValueError(f"kind: expected classification, regression or bits, got {kind!r}")


def _metric_count(kind: str, split: Split) -> int:
    """What the summed metric is divided by: sequences, or every regression target."""
    return len(split) * (split.y[0].numel() if kind == "regression" else 1)


def _batch(
    split: Split, idx: Tensor, dtype: torch.dtype, device: torch.device, kind: str, tokens: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    x = split.x[idx].to(device)
    if not tokens:
        x = x.to(dtype)
    y = split.y[idx].to(device)
    if kind != "classification":
        y = y.to(dtype)
    lengths = None if split.lengths is None else split.lengths[idx]
    return x, y, lengths


@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, data: TaskData, split: Split, cfg: Config) -> tuple[float, float]:
    """``(mean loss per element, metric)`` on ``split``; each process takes a slice, sums are reduced."""
    was_training = model.training
    model.eval()
    dtype, device = default_dtype(cfg.dtype), torch.device(cfg.device)
    n = len(split)
    per = -(-n // dd.world_size())
    mine = torch.arange(dd.rank() * per, min(n, (dd.rank() + 1) * per))
    sums = torch.zeros(2, dtype=torch.float64)
    for start in range(0, len(mine), max(256, cfg.batch_size)):
        idx = mine[start : start + max(256, cfg.batch_size)]
        x, y, lengths = _batch(split, idx, dtype, device, task.kind, data.tokens)
        loss, metric = loss_and_metric(task.kind, model(x, lengths), y)
        sums += torch.stack([loss.detach().double().cpu(), metric.double().cpu()])
    dd.all_reduce_sum(sums)
    model.train(was_training)
    elems = split.y[0].numel() if task.kind != "classification" else 1
    return float(sums[0]) / (n * elems), float(sums[1]) / _metric_count(task.kind, split)


def _warm_up(
    model: SequenceModel, task: Task, data: TaskData, cfg: Config, dtype: torch.dtype, device: torch.device
) -> float:
    """One untimed forward+backward (and forward without grad) at each batch size an epoch uses;
    returns its seconds. An engine compiles on first use (numba: seconds per variant), which is not
    the speed of the cell. No random stream, optimiser state or gradient is left changed."""
    n = len(data.train)
    sizes = sorted({min(cfg.batch_size, n), n % cfg.batch_size} - {0})
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for size in sizes:
            idx = dd.shard(torch.arange(size))
            if len(idx):
                x, y, lengths = _batch(data.train, idx, dtype, device, task.kind, data.tokens)
                loss_and_metric(task.kind, model(x, lengths), y)[0].backward()
                with torch.no_grad():
                    model(x, lengths)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train_run`, read with ``weights_only=True`` (no pickled objects)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # a damaged or foreign file
        raise ConfigError(f"resume: {str(path)!r} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"resume: {str(path)!r} is not a gatedrnn checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def _check_resumable(ckpt: dict[str, Any], cfg: Config, cell: str, lr: float, seed: int, path: Path) -> None:
    run = ckpt["run"]
    if (run["cell"], run["lr"], run["seed"]) != (cell, lr, seed):
        raise ConfigError(f"resume: {str(path)!r} belongs to run {run}, not cell={cell!r} lr={lr:g} seed={seed}")
    # a key the checkpoint lacks came later, with a default that keeps the old behaviour
    old, new = {**Config().to_dict(), **ckpt["config"]}, cfg.to_dict()
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ConfigError(f"resume: the config differs from the checkpoint's in {diffs}")


def train_run(
    cfg: Config,
    task: Task,
    data: TaskData,
    cell: str,
    lr: float,
    seed: int,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[RunResult, SequenceModel]:
    """Train one model for ``cfg.epochs`` epochs, evaluating after each; returns its result and model.

    Args:
        checkpoint: where to write the checkpoint after every epoch (None: no checkpoints).
        resume: continue from ``checkpoint`` if it exists (its config must match, except for the
            number of epochs and output options).
        on_epoch: called with each epoch's record (also for epochs restored from a checkpoint).
        say: where a resumed run says so ("resuming from epoch N"; None: silent).
    """
    device = check_device(cfg.device)
    dtype = default_dtype(cfg.dtype)
    check_engine(cfg, cell, dtype, device)
    run_id = cfg.run_id(cell, lr, seed)

    # --- the seed: initialisation, then the order of the examples -------------------------------
    torch.manual_seed(seed)
    model = model_for(cell, cfg, data, task.seq2seq).to(device=device, dtype=dtype)
    optimizer = make_optimizer(cfg, model.parameters(), lr)
    order = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt, cfg, cell, lr, seed, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        order.set_state(ckpt["order_rng"])
        if "cuda_rng" in ckpt and device.type == "cuda":  # pragma: no cover - needs a GPU
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        if say is not None and dd.is_main():
            done = " (finished already)" if start_epoch >= cfg.epochs else ""
            say(f"{run_id}: resuming from epoch {start_epoch} of {cfg.epochs}{done}")
        for record in history:
            if on_epoch is not None:
                on_epoch(record)
    dd.broadcast_parameters(model)

    result = RunResult(run_id, cell, lr, seed, count_params(model), count_params(model.core), history)
    train = data.train
    n = len(train)
    elems = train.y[0].numel() if task.kind != "classification" else 1
    model.train()
    warmup = _warm_up(model, task, data, cfg, dtype, device) if start_epoch < cfg.epochs else 0.0
    for epoch in range(start_epoch, cfg.epochs):
        # --- one epoch: shuffled global batches, each process takes its share --------------------
        perm = torch.randperm(n, generator=order)
        loss_sum, t0 = 0.0, time.perf_counter()
        batches = range(0, n, cfg.batch_size)
        bar = tqdm(
            batches,
            desc=f"{run_id} {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not (cfg.progress and dd.is_main() and on_a_terminal()),
            unit="batch",
        )
        for start in bar:
            global_idx = perm[start : start + cfg.batch_size]
            idx = dd.shard(global_idx)
            optimizer.zero_grad(set_to_none=True)
            batch_loss = torch.zeros((), dtype=torch.float64)
            if len(idx):
                x, y, lengths = _batch(train, idx, dtype, device, task.kind, data.tokens)
                loss, _ = loss_and_metric(task.kind, model(x, lengths), y)
                # divide by the *global* element count: summed over processes, this is the mean
                (loss / (len(global_idx) * elems)).backward()
                batch_loss = loss.detach().double().cpu()
            dd.all_reduce_grads(model)
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            loss_sum += float(dd.all_reduce_sum(batch_loss))
        seconds = time.perf_counter() - t0
        train_loss = loss_sum / (n * elems)
        if not math.isfinite(train_loss):
            tqdm.write(f"{run_id}: the training loss is {train_loss} at epoch {epoch + 1}")

        # --- evaluation, then the checkpoint ---------------------------------------------------
        t1 = time.perf_counter()
        test_loss, test_metric = evaluate(model, task, data, data.test, cfg)
        record = {
            "run": run_id,
            "cell": cell,
            "lr": lr,
            "seed": seed,
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "metric": task.metric,
            "test_metric": test_metric,
            "seconds": seconds,
            "eval_seconds": time.perf_counter() - t1,
            "warmup_seconds": warmup if epoch == start_epoch else 0.0,
            "params": result.params,
            "world_size": dd.world_size(),
        }
        history.append(record)
        if ckpt_path is not None and dd.is_main():
            save_checkpoint(ckpt_path, model, optimizer, order, epoch + 1, history, cfg, cell, lr, seed)
        if on_epoch is not None:
            on_epoch(record)
    return result, model


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    epoch: int,
    history: list[dict[str, Any]],
    cfg: Config,
    cell: str,
    lr: float,
    seed: int,
) -> None:
    """Everything to continue the run exactly, atomically (temp file, fsync, rename)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "run": {"cell": cell, "lr": lr, "seed": seed},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "order_rng": order.get_state(),
        "history": history,
        "config": cfg.to_dict(),
    }
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:  # pragma: no cover - needs a GPU
        state["cuda_rng"] = torch.cuda.get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue(), parents=True)
