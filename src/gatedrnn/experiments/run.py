"""A comparison: every (cell, learning rate, seed) of a config trained on one task, into one run folder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .._files import atomic_write_text
from . import distributed as dd
from .config import Config, to_toml
from .report import write_all, write_metrics
from .tasks import build_task, get_task
from .train import RunResult, check_device, train_run

__all__ = ["default_out", "run_compare"]


def default_out(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def _agreed_out(cfg: Config) -> Path:
    """The run folder; under torchrun every process takes rank 0's (its clock names it)."""
    out = [str(Path(cfg.out) if cfg.out else default_out(cfg))]
    if dd.active():
        import torch.distributed as dist

        dist.broadcast_object_list(out, src=0)
    return Path(out[0])


def _say(line: str) -> None:
    tqdm.write(line)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    metric = record["metric"]
    value = f"{100 * record['test_metric']:.1f}%" if metric == "accuracy" else f"{record['test_metric']:.4g}"
    return (
        f"{record['run']} epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
        f"test {metric} {value}, {record['seconds']:.2f} s"
    )


def run_compare(
    cfg: Config, *, resume: bool = False, say: Callable[[str], None] | None = _say
) -> tuple[Path, list[RunResult], str]:
    """Train every run of ``cfg`` and write the run folder. Returns (folder, results, markdown table).

    With ``resume=True`` runs whose checkpoint exists continue from it (finished runs are read back,
    not trained again); without it, a run starts afresh and overwrites its checkpoint.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_compare(cfg, resume, say)
    finally:
        torch.set_num_threads(threads)


def _run_compare(cfg: Config, resume: bool, say: Callable[[str], None] | None) -> tuple[Path, list[RunResult], str]:
    check_device(cfg.device)
    dd.setup(cfg.device)
    out = _agreed_out(cfg)
    cfg.out = str(out)
    task = get_task(cfg.task)
    data = build_task(cfg)
    if dd.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", to_toml(cfg), parents=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n", parents=True)
        if say is not None:
            note = f" ({data.note})" if data.note else ""
            say(f"{task.name}: {len(data.train)} train / {len(data.test)} test examples{note}; run folder {out}")
    records: list[dict[str, Any]] = []
    results = []

    def on_epoch(record: dict[str, Any]) -> None:
        records.append(record)
        if dd.is_main():
            write_metrics(records, out)
            if say is not None:
                say(_epoch_line(record, cfg.epochs))

    for cell in cfg.cells:
        for lr in cfg.lr:
            for seed in cfg.seeds:
                ckpt = out / "checkpoints" / f"{cfg.run_id(cell, lr, seed)}.pt"
                result, _ = train_run(
                    cfg, task, data, cell, lr, seed, checkpoint=ckpt, resume=resume, on_epoch=on_epoch
                )
                results.append(result)
    table = write_all(records, out, cfg.to_dict()) if dd.is_main() else ""
    dd.barrier()
    return out, results, table
