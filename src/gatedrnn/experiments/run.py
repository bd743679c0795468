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
from ._runfolder import RunFolder, RunFolderError, claim, writing
from .config import Config, to_toml
from .models import default_dtype
from .report import write_all, write_metrics
from .tasks import build_task, get_task
from .train import RunResult, check_device, check_engine, train_run

__all__ = ["default_out", "run_compare"]


def default_out(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def _claimed(cfg: Config, resume: bool, overwrite: bool) -> RunFolder:
    """Rank 0's claim on the run folder (its clock names a default one), shared by every process."""
    box: list[RunFolder | RunFolderError | None] = [None]
    if dd.is_main():
        try:
            box[0] = claim(Path(cfg.out) if cfg.out else default_out(cfg), resume=resume, overwrite=overwrite)
        except RunFolderError as e:
            box[0] = e
    if dd.active():
        import torch.distributed as dist

        dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], RunFolderError):
        raise box[0]
    assert box[0] is not None
    return box[0]


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
    cfg: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] | None = _say,
) -> tuple[Path, list[RunResult], str]:
    """Train every run of ``cfg`` and write the run folder. Returns (folder, results, markdown table).

    A run folder that exists and is not empty is refused (:class:`RunFolderError`) unless
    ``resume`` (runs whose checkpoint exists continue from it; finished runs are read back, not
    trained again) or ``overwrite`` (the new run is built beside it and replaces it when done).
    Ctrl-C raises :class:`RunInterrupted`, whose message says how to continue.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_compare(cfg, resume, overwrite, say)
    finally:
        torch.set_num_threads(threads)


def _run_compare(
    cfg: Config, resume: bool, overwrite: bool, say: Callable[[str], None] | None
) -> tuple[Path, list[RunResult], str]:
    device = check_device(cfg.device)
    for cell in cfg.cells:  # before the folder is claimed: a config error leaves nothing behind
        check_engine(cfg, cell, default_dtype(cfg.dtype), device)
    if dd.setup(cfg.device) and dd.is_main() and say is not None:
        say(f"distributed: {dd.world_size()} processes, backend {dd.backend()}")
    folder = _claimed(cfg, resume, overwrite)
    cfg.out = str(folder.out)
    task = get_task(cfg.task)
    data = build_task(cfg)  # before anything is written: a missing data set leaves no folder behind
    records: list[dict[str, Any]] = []
    results = []
    with writing(folder, dd.is_main()) as work:
        if dd.is_main():
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_text(work / "config.toml", to_toml(cfg))
            atomic_write_text(work / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
            if say is not None:
                note = f" ({data.note})" if data.note else ""
                say(
                    f"{task.name}: {len(data.train)} train / {len(data.test)} test examples{note}; run folder {folder.out}"
                )
                if folder.replacing:
                    say(f"replacing the run in {folder.out}: it stays as it is until this one has finished")

        def on_epoch(record: dict[str, Any]) -> None:
            records.append(record)
            if dd.is_main():
                write_metrics(records, work)
                if say is not None:
                    say(_epoch_line(record, cfg.epochs))

        for cell in cfg.cells:
            for lr in cfg.lr:
                for seed in cfg.seeds:
                    ckpt = work / "checkpoints" / f"{cfg.run_id(cell, lr, seed)}.pt"
                    result, _ = train_run(
                        cfg, task, data, cell, lr, seed, checkpoint=ckpt, resume=resume, on_epoch=on_epoch, say=say
                    )
                    results.append(result)
        table = write_all(records, work, cfg.to_dict()) if dd.is_main() else ""
        dd.barrier()
    return folder.out, results, table
