"""Gradient flow: how strongly a loss on the last step reaches each earlier hidden state.

For a seq-to-one model the loss ``L`` reads only ``h_T``; ``||dL/dh_t||`` for ``t = 1..T`` shows
how much of the gradient survives the trip back through ``T - t`` steps. A tanh RNN's norms fall
geometrically (vanishing gradients); gates that can hold the state (``z`` near 1) keep them up.
The curves are measured at initialisation and after training, for each cell, on a fixed batch.

``dL/dh_t`` is the gradient at the node ``h_t`` of the unrolled graph: the layer is stepped one
time step at a time (``core(x[:, t:t+1], state)``), so every state is a tensor autograd can report.
For LSTM it is the gradient with respect to ``h_t`` with the cell state ``c_t`` a separate node.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import atomic_write, atomic_write_text
from ._runfolder import claim, writing
from .config import Config, ConfigError, to_toml
from .models import SequenceModel, default_dtype, model_for
from .report import write_metrics
from .tasks import Task, TaskData, build_task, get_task
from .train import check_device, check_engine, loss_and_metric, train_run

__all__ = ["hidden_grad_norms", "run_gradients"]


def hidden_grad_norms(model: SequenceModel, x: Tensor, y: Tensor, kind: str) -> Tensor:
    """``[T]``: the mean over the batch of ``||dL_b/dh_t^b||`` (last layer's state, loss on the last step).

    Args:
        model: a seq-to-one :class:`SequenceModel` on float inputs.
        x: ``[B, T, I]``; y: the targets of the task's ``kind`` (see ``train.loss_and_metric``).

    The loss is summed over the batch, so each example's gradient is its own loss's gradient.
    """
    if model.embedding is not None or model.seq2seq:
        raise ConfigError("task: gradient flow is measured for seq-to-one tasks on float inputs (no text tasks)")
    was_training = model.training
    model.eval()  # no dropout: the same function as a full-sequence forward
    states: list[Tensor] = []
    state: Any = None
    for t in range(x.shape[1]):
        _, state = model.core(x[:, t : t + 1], state)
        h = state[0] if isinstance(state, tuple) else state  # [layers, B, H]
        h.retain_grad()
        states.append(h)
    loss, _ = loss_and_metric(kind, model.head(states[-1][-1]), y)
    loss.backward()
    model.train(was_training)
    return torch.stack([h.grad[-1].norm(dim=-1).mean() for h in states]).detach()


def _plot(curves: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, stage in zip(axes, ("init", "trained"), strict=True):
        for cell, by_stage in curves.items():
            norms = by_stage[stage]
            ax.plot(range(1, len(norms) + 1), norms, label=cell)
        ax.set_yscale("log")
        ax.set_xlabel("time step t (loss on the last step)")
        ax.set_title("at initialisation" if stage == "init" else "after training")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean ||dL/dh_t||")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue(), parents=True)


def run_gradients(
    cfg: Config,
    batch: int = 256,
    *,
    resume: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[Path, str]:
    """Train each cell of ``cfg`` (first lr, first seed) and write the gradient-flow folder.

    Writes ``gradients.png`` (log scale, one line per cell, before/after training),
    ``gradients.csv`` / ``gradients.json`` (the norms), ``metrics.jsonl`` (the training runs),
    a checkpoint per cell and the config. Returns the folder and a markdown table of
    ``||dL/dh_1|| / ||dL/dh_T||``. The run folder is claimed as by ``run_compare``: an existing one
    is refused unless ``resume`` or ``overwrite``.
    """
    task = get_task(cfg.task)
    if task.seq2seq:
        raise ConfigError(f"task: gradient flow needs a seq-to-one task (loss on the last step), got {task.name!r}")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, task, batch, resume, overwrite, say)
    finally:
        torch.set_num_threads(threads)


def _run(
    cfg: Config, task: Task, batch: int, resume: bool, overwrite: bool, say: Callable[[str], None] | None
) -> tuple[Path, str]:
    import time

    device = check_device(cfg.device)
    for cell in cfg.cells:  # before the folder is claimed: a config error leaves nothing behind
        check_engine(cfg, cell, default_dtype(cfg.dtype), device)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"gradients-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = claim(out, resume=resume, overwrite=overwrite)
    cfg.out = str(out)
    data = build_task(cfg)
    if data.tokens:
        raise ConfigError(f"task: gradient flow is measured on float inputs, not on text ({task.name!r})")
    with writing(folder) as work:
        if say is not None and folder.replacing:
            say(f"replacing the run in {out}: it stays as it is until this one has finished")
        text = _measure(cfg, task, data, batch, resume, say, work)
    return out, text


def _measure(
    cfg: Config,
    task: Task,
    data: TaskData,
    batch: int,
    resume: bool,
    say: Callable[[str], None] | None,
    out: Path,
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", to_toml(cfg), parents=True)
    atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n", parents=True)
    dtype, device = default_dtype(cfg.dtype), check_device(cfg.device)
    n = min(batch, len(data.test))
    x = data.test.x[:n].to(device=device, dtype=dtype)
    y = data.test.y[:n].to(device)
    if task.kind != "classification":
        y = y.to(dtype)
    lr, seed = cfg.lr[0], cfg.seeds[0]
    curves: dict[str, dict[str, list[float]]] = {}
    records: list[dict[str, Any]] = []
    rows = []
    for cell in cfg.cells:
        torch.manual_seed(seed)  # the same initialisation train_run starts from
        init_model = model_for(cell, cfg, data, task.seq2seq).to(device=device, dtype=dtype)
        init = hidden_grad_norms(init_model, x, y, task.kind)
        ckpt = out / "checkpoints" / f"{cfg.run_id(cell, lr, seed)}.pt"
        result, trained_model = train_run(
            cfg, task, data, cell, lr, seed, checkpoint=ckpt, resume=resume, on_epoch=records.append, say=say
        )
        trained = hidden_grad_norms(trained_model, x, y, task.kind)
        curves[cell] = {"init": init.tolist(), "trained": trained.tolist()}
        final = result.history[-1] if result.history else {}
        rows.append((cell, float(init[0] / init[-1]), float(trained[0] / trained[-1]), final.get("test_metric")))
    write_metrics(records, out)
    steps = x.shape[1]
    atomic_write_text(
        out / "gradients.json", json.dumps({"task": cfg.task, "steps": steps, "norms": curves}) + "\n", parents=True
    )
    lines = ["cell,stage,t,norm"]
    for cell, by_stage in curves.items():
        for stage, norms in by_stage.items():
            lines += [f"{cell},{stage},{t},{v!r}" for t, v in enumerate(norms, 1)]
    atomic_write_text(out / "gradients.csv", "\n".join(lines) + "\n", parents=True)
    title = f"gradient flow on {cfg.task} ({steps} steps), hidden {cfg.hidden}, {cfg.epochs} epochs"
    _plot(curves, out / "gradients.png", title)
    metric = task.metric
    table = [
        f"| cell | dL/dh_1 / dL/dh_{steps} at init | after training | test {metric} |",
        "|---|---:|---:|---:|",
    ]
    for cell, r_init, r_trained, value in rows:
        shown = "" if value is None else (f"{100 * value:.1f}%" if metric == "accuracy" else f"{value:.4g}")
        table.append(f"| {cell} | {r_init:.3g} | {r_trained:.3g} | {shown} |")
    text = "\n".join(table) + "\n"
    atomic_write_text(out / "gradients.md", f"# {title}\n\n{text}", parents=True)
    return text
