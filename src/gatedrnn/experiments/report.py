"""Reports of a run folder: the metrics files, the summary table and the learning curves.

A run folder holds ``metrics.jsonl`` (one record per run and epoch, the source of truth),
``metrics.csv`` (the same rows), ``summary.md`` / ``summary.csv`` (one row per cell and learning
rate: final values, mean ± std over seeds), ``curves.png`` and the resolved ``config.toml`` /
``config.json``. :func:`redraw` rebuilds the table and the figure from ``metrics.jsonl`` alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .._files import atomic_write, atomic_write_text
from ._runfolder import RunFolderError
from .config import run_id

__all__ = [
    "format_table",
    "plot_curves",
    "read_config",
    "read_metrics",
    "redraw",
    "summarize",
    "unfinished",
    "write_metrics",
]

METRIC_LABELS = {"accuracy": "test accuracy (%)", "mse": "test mse"}
TIMING_NOTE = (
    "s / epoch: the training batches of an epoch (evaluation not included), mean over epochs, timed after "
    "an untimed warm-up step, so that an engine's first-use compilation is not counted."
)
_CSV_FIELDS = [
    "run", "cell", "lr", "seed", "epoch", "train_loss", "test_loss", "metric", "test_metric",
    "seconds", "eval_seconds", "warmup_seconds", "params",
]  # fmt: skip


def write_metrics(records: list[dict[str, Any]], folder: str | Path) -> None:
    """``metrics.jsonl`` and ``metrics.csv`` from every epoch record so far (atomic rewrites)."""
    folder = Path(folder)
    atomic_write_text(
        folder / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records), parents=True
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(folder / "metrics.csv", buf.getvalue(), parents=True)


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """Every record of a run folder's ``metrics.jsonl``; :class:`RunFolderError` if there are none."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        if (Path(folder) / "config.json").is_file():
            raise RunFolderError(f"{folder}: no epoch has finished yet (no metrics.jsonl); {continue_hint(folder)}")
        raise RunFolderError(f"run folder: expected {str(path)!r} (a folder written by gatedrnn compare/train)")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RunFolderError(f"{path}: line {i} is not JSON: {e}") from e
    if not records:
        raise RunFolderError(f"{path}: no records")
    return records


def read_config(folder: str | Path) -> dict[str, Any]:
    """A run folder's resolved config (``config.json``), or {} when it has none."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def unfinished(records: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    """The runs of the config's grid that ``records`` do not hold to the last epoch, each as
    ``"<run> (not started)"`` or ``"<run> (k of N epochs)"``; [] for a complete run (or no config)."""
    if not config:
        return []
    done: dict[str, int] = defaultdict(int)
    for r in records:
        done[r["run"]] = max(done[r["run"]], r["epoch"])
    epochs = config["epochs"]
    lines = []
    for cell in config["cells"]:
        for lr in config["lr"]:
            for seed in config["seeds"]:
                run = run_id(cell, lr, seed)
                if done[run] < epochs:
                    lines.append(f"{run} ({f'{done[run]} of {epochs} epochs' if done[run] else 'not started'})")
    return lines


def continue_hint(folder: str | Path) -> str:
    """How to continue the run in ``folder`` (its config.toml repeats it)."""
    return f"to continue: gatedrnn compare --config {Path(folder) / 'config.toml'} --resume --out {folder}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cell, lr): the last epoch of each seed, mean and std over seeds.

    Seconds per epoch: each seed's mean over its epochs, then mean ± std over seeds.
    """
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_run[r["run"]].append(r)
    groups: dict[tuple[str, float], list[list[dict[str, Any]]]] = defaultdict(list)
    for run in by_run.values():
        run.sort(key=lambda r: r["epoch"])
        groups[(run[0]["cell"], run[0]["lr"])].append(run)
    rows = []
    for (cell, lr), runs in groups.items():
        finals = [run[-1] for run in runs]
        row: dict[str, Any] = {
            "cell": cell,
            "lr": lr,
            "params": finals[0]["params"],
            "seeds": len(runs),
            "epochs": finals[0]["epoch"],
            "metric": finals[0]["metric"],
        }
        for key in ("train_loss", "test_metric"):
            row[key], row[key + "_std"] = _mean_std([f[key] for f in finals])
        row["seconds"], row["seconds_std"] = _mean_std([statistics.fmean(r["seconds"] for r in run) for run in runs])
        rows.append(row)
    return rows


def _pm(mean: float, std: float, n: int, decimals: int | None = None, scale: float = 1.0) -> str:
    """``mean ± std`` (just ``mean`` for one seed); both to ``decimals`` places, by default those
    that give the mean 4 significant digits."""
    mean, std = mean * scale, std * scale
    if not math.isfinite(mean):
        return str(mean)
    if decimals is None:
        decimals = 4 if mean == 0 else min(10, max(0, 3 - math.floor(math.log10(abs(mean)))))
    s = f"{mean:.{decimals}f}"
    return s + (f" ± {std:.{decimals}f}" if n > 1 else "")


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: cell, learning rate, parameters, final train loss, test metric, s/epoch."""
    if not rows:
        return "(no runs)\n"
    metric = rows[0]["metric"]
    acc = metric == "accuracy"
    head = ["cell", "lr", "params", "train loss", METRIC_LABELS.get(metric, metric), "s / epoch", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
    for r in rows:
        n = r["seeds"]
        cells = [
            r["cell"],
            f"{r['lr']:g}",
            f"{r['params']:,}",
            _pm(r["train_loss"], r["train_loss_std"], n),
            _pm(r["test_metric"], r["test_metric_std"], n, 1, 100.0)
            if acc
            else _pm(r["test_metric"], r["test_metric_std"], n),
            _pm(r["seconds"], r["seconds_std"], n, 2),
            str(n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + TIMING_NOTE + "\n"


def write_summary(rows: list[dict[str, Any]], folder: str | Path, title: str) -> str:
    table = format_table(rows)
    folder = Path(folder)
    atomic_write_text(folder / "summary.md", f"# {title}\n\n{table}", parents=True)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(folder / "summary.csv", buf.getvalue(), parents=True)
    return table


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Train loss and test metric per epoch, one line per (cell, lr), a mean ± std band over seeds."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves: dict[tuple[str, float], dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        epoch = curves[(r["cell"], r["lr"])][r["epoch"]]
        epoch.setdefault("train_loss", []).append(r["train_loss"])
        epoch.setdefault("test_metric", []).append(r["test_metric"])
    metric = records[0]["metric"] if records else "accuracy"
    scale = 100.0 if metric == "accuracy" else 1.0
    several_lr = len({lr for _, lr in curves}) > 1
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for (cell, lr), by_epoch in curves.items():
        epochs = sorted(by_epoch)
        label = f"{cell} lr={lr:g}" if several_lr else cell
        for ax, key, k in ((axes[0], "train_loss", 1.0), (axes[1], "test_metric", scale)):
            stats = [_mean_std(by_epoch[e][key]) for e in epochs]
            mean = [m * k for m, _ in stats]
            std = [s * k for _, s in stats]
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
            if any(std):
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    axes[0].set_ylabel("train loss")
    axes[0].set_yscale("log")
    axes[1].set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric == "mse":
        axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue(), parents=True)


def title_of(config: dict[str, Any]) -> str:
    seeds = config.get("seeds") or [0]
    return (
        f"{config.get('task')}: hidden {config.get('hidden')}, {config.get('layers')} layer(s), "
        f"{config.get('optimizer')}, batch {config.get('batch_size')}, {len(seeds)} seed(s)"
    )


def write_all(records: list[dict[str, Any]], folder: str | Path, config: dict[str, Any]) -> str:
    """Metrics, summary table and curves of a run folder; returns the markdown table."""
    title = title_of(config)
    write_metrics(records, folder)
    table = write_summary(summarize(records), folder, title)
    plot_curves(records, Path(folder) / "curves.png", title)
    return table


def redraw(folder: str | Path) -> str:
    """Rebuild ``summary.md``/``.csv`` and ``curves.png`` of a run folder from its ``metrics.jsonl``."""
    folder = Path(folder)
    records = read_metrics(folder)
    config = read_config(folder)
    title = title_of(config) if config else folder.name
    table = write_summary(summarize(records), folder, title)
    plot_curves(records, folder / "curves.png", title)
    return table
