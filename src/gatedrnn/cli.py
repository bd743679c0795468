"""The ``gatedrnn`` command: compare, train, report, gradients, bench, info.

``gatedrnn compare`` trains several cells on one task and writes a run folder (table, curves,
metrics, resolved config); ``gatedrnn --help`` and ``gatedrnn COMMAND --help`` list the options.
Configuration: defaults < ``--config FILE.toml`` < ``--set KEY=VALUE`` < the named options.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from .experiments.config import Config

__all__ = ["app", "main"]

app = typer.Typer(
    name="gatedrnn",
    help="Gated recurrent networks: compare the GRU family (gru0-3, MGU, minGRU) with LSTM on real tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CliError(Exception):
    """A problem to report as one line (no traceback), exit code 1."""


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CliError, ValueError, FileNotFoundError, NotADirectoryError, RuntimeError]
    try:
        from .experiments import data

        errors.append(data.DataError)
    except (ImportError, AttributeError):  # the data module is optional for the synthetic tasks
        pass
    return tuple(errors)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Bad configs, missing or corrupt data: a message on stderr and exit code 1, no traceback."""
    try:
        yield
    except typer.Exit:  # an exit code chosen on purpose (click's Exit is a RuntimeError)
        raise
    except _user_errors() as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None


# --- configuration from options ---------------------------------------------------------------------


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (numbers, true/false, ["a", "b"]) or else a plain string."""
    from .experiments.config import load_toml_text

    try:
        return load_toml_text(f"v = {text}")["v"]
    except ValueError:
        return text


def _floats(name: str, values: list[str]) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise CliError(f"{name}: expected numbers (e.g. 1e-3,1e-4), got {','.join(values)!r}") from None


def _seeds(text: str) -> int | list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"seeds: expected a count (3 = seeds 0,1,2) or a list like 0,1,7, got {text!r}") from None
    if len(values) == 1 and "," not in text:
        return values[0]
    return values


def build_config(config_file: Path | None, sets: list[str] | None, **options: Any) -> Config:
    """Defaults, then the TOML file, then ``--set`` pairs, then the options that were given."""
    from .experiments.config import Config, load_toml

    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_toml(config_file))
    for pair in sets or []:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip():
            raise CliError(f"--set: expected KEY=VALUE, got {pair!r}")
        values[key.strip().replace("-", "_")] = _parse_value(text.strip())
    for key, value in options.items():
        if value is not None:
            values[key] = value
    return Config.from_dict(values)


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A TOML file of config keys (see presets/).")]
TaskOpt = Annotated[str | None, typer.Option(help="Task name (gatedrnn info lists them; default digits-rows).")]
HiddenOpt = Annotated[int | None, typer.Option(help="Hidden units per layer.")]
LayersOpt = Annotated[int | None, typer.Option(help="Stacked recurrent layers.")]
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs.")]
OptimOpt = Annotated[str | None, typer.Option(help="adam, adamw, rmsprop or sgd.")]
BatchOpt = Annotated[int | None, typer.Option(help="Global batch size.")]
DataDirOpt = Annotated[str | None, typer.Option(help="Data folder (default: $GATEDRNN_DATA, else the user cache).")]
OutOpt = Annotated[str | None, typer.Option(help="Run folder (default runs/TASK-TIME).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 or float64.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu or cuda.")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch threads (default 1; 0: torch's default).")]
ClipOpt = Annotated[float | None, typer.Option(help="Max gradient norm (0: no clipping).")]
TrainLimitOpt = Annotated[int | None, typer.Option(help="Use a fixed random subset of N training examples.")]
TestLimitOpt = Annotated[int | None, typer.Option(help="Use a fixed random subset of N test examples.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Any config key: --set seq_len=100 --set permute=true.")
]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Fetch missing data sets (checksums verified).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the checkpoints in --out.")]
ProgressOpt = Annotated[bool | None, typer.Option("--progress/--no-progress", help="tqdm bars per epoch.")]


def _print_table(out: Path, table: str) -> None:
    typer.echo("")
    typer.echo(table, nl=False)
    typer.echo(f"\nrun folder: {out} (summary.md, curves.png, metrics.jsonl, metrics.csv, config.toml)")


@app.command()
def compare(
    config: ConfigOpt = None,
    task: TaskOpt = None,
    cells: Annotated[
        list[str] | None, typer.Option(help="Cells, comma-separated: gru0,gru1,gru2,gru3,mgu,mingru,lstm,rnn.")
    ] = None,
    hidden: HiddenOpt = None,
    layers: LayersOpt = None,
    epochs: EpochsOpt = None,
    lr: Annotated[list[str] | None, typer.Option(help="Learning rate(s); several (1e-3,1e-4) make a sweep.")] = None,
    seeds: Annotated[str | None, typer.Option(help="A count (3 = seeds 0,1,2) or a list (0,5,7).")] = None,
    optimizer: OptimOpt = None,
    batch_size: BatchOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    out: OutOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    clip: ClipOpt = None,
    threads: ThreadsOpt = None,
    train_limit: TrainLimitOpt = None,
    test_limit: TestLimitOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """Train several cells on one task: table, learning curves, metrics and config in a run folder."""
    with _clean_errors():
        from .experiments.run import run_compare

        cfg = build_config(
            config,
            set_,
            task=task,
            cells=_split_list(cells),
            hidden=hidden,
            layers=layers,
            epochs=epochs,
            lr=_floats("lr", _split_list(lr)) if lr else None,
            seeds=_seeds(seeds) if seeds is not None else None,
            optimizer=optimizer,
            batch_size=batch_size,
            data_dir=data_dir,
            download=download or None,
            out=out,
            dtype=dtype,
            device=device,
            clip=clip,
            threads=threads,
            train_limit=train_limit,
            test_limit=test_limit,
            progress=progress,
        )
        folder, _, table = run_compare(cfg, resume=resume)
        from .experiments import distributed as dd

        if dd.is_main():
            _print_table(folder, table)
        dd.teardown()


@app.command()
def train(
    config: ConfigOpt = None,
    task: TaskOpt = None,
    cell: Annotated[str | None, typer.Option(help="One cell (default: the config's only cell).")] = None,
    hidden: HiddenOpt = None,
    layers: LayersOpt = None,
    epochs: EpochsOpt = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="The seed: initialisation, data order, dropout.")] = None,
    optimizer: OptimOpt = None,
    batch_size: BatchOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    out: OutOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    clip: ClipOpt = None,
    threads: ThreadsOpt = None,
    train_limit: TrainLimitOpt = None,
    test_limit: TestLimitOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    progress: ProgressOpt = None,
) -> None:
    """One run (one cell, one learning rate, one seed) from a TOML config plus overrides.

    Checkpoints every epoch into --out; --resume continues a killed run to the same numbers.
    Under torchrun (torchrun --nproc_per_node 2 -m gatedrnn train ...) it trains data-parallel.
    """
    with _clean_errors():
        from .experiments import distributed as dd
        from .experiments.run import run_compare

        cfg = build_config(
            config,
            set_,
            task=task,
            cells=[cell] if cell else None,
            hidden=hidden,
            layers=layers,
            epochs=epochs,
            lr=[lr] if lr is not None else None,
            seeds=[seed] if seed is not None else None,
            optimizer=optimizer,
            batch_size=batch_size,
            data_dir=data_dir,
            download=download or None,
            out=out,
            dtype=dtype,
            device=device,
            clip=clip,
            threads=threads,
            train_limit=train_limit,
            test_limit=test_limit,
            progress=progress,
        )
        for key, flag in (("cells", "--cell"), ("lr", "--lr"), ("seeds", "--seed")):
            if len(getattr(cfg, key)) != 1:
                what = key.rstrip("s")
                raise CliError(f"{flag}: train runs one {what}, got {getattr(cfg, key)} (compare runs grids)")
        folder, _, table = run_compare(cfg, resume=resume)
        if dd.is_main():
            _print_table(folder, table)
        dd.teardown()


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="Run folders written by compare or train.")],
) -> None:
    """Re-draw the table (summary.md/.csv) and the curves (curves.png) of run folders from metrics.jsonl."""
    with _clean_errors():
        from .experiments.report import redraw

        for folder in folders:
            if not folder.is_dir():
                raise CliError(f"folders: expected a run folder, got {str(folder)!r} (not a directory)")
            table = redraw(folder)
            typer.echo(f"{folder}:\n{table}")


@app.command()
def gradients(
    config: ConfigOpt = None,
    task: Annotated[str | None, typer.Option(help="Task to train on (default digits-pixels: 64 steps).")] = None,
    cells: Annotated[list[str] | None, typer.Option(help="Cells (default: rnn, lstm and every GRU variant).")] = None,
    hidden: HiddenOpt = None,
    epochs: EpochsOpt = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    batch_size: BatchOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
    train_limit: TrainLimitOpt = None,
    test_limit: TestLimitOpt = None,
    set_: SetOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Gradient flow: the norm of dL/dh_t against t for a loss on the last step, before and after training."""
    with _clean_errors():
        from .experiments.config import CELLS
        from .experiments.gradients import run_gradients

        cfg = build_config(
            config,
            set_,
            task=task or ("digits-pixels" if config is None else None),
            cells=_split_list(cells) or (list(CELLS) if config is None else None),
            hidden=hidden,
            epochs=epochs,
            lr=[lr] if lr is not None else None,
            seeds=[seed] if seed is not None else None,
            batch_size=batch_size,
            data_dir=data_dir,
            out=out,
            train_limit=train_limit,
            test_limit=test_limit,
            progress=progress,
        )
        folder, table = run_gradients(cfg)
        typer.echo(table, nl=False)
        typer.echo(f"\nrun folder: {folder} (gradients.png, gradients.csv, gradients.json)")


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cpu (the fused engine) or cuda (the triton engine).")] = "cpu",
    sizes: Annotated[
        list[str] | None, typer.Option(help="Size names, comma-separated (CPU A-E, CUDA A-G) (default: all).")
    ] = None,
    variants: Annotated[list[str] | None, typer.Option(help="Variants, comma-separated (default: all).")] = None,
    threads: Annotated[str, typer.Option(help="torch thread counts, comma-separated (CPU).")] = "1,2",
    passes: Annotated[str, typer.Option(help="fwd (inference, no grad) and/or fwdbwd.")] = "fwd,fwdbwd",
    repeats: Annotated[int, typer.Option(help="Timed runs per candidate (the median is reported).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed runs per candidate first.")] = 2,
    reset_after: Annotated[
        bool, typer.Option("--reset-after/--reset-before", help="Reset form of the variants.")
    ] = True,
    dtypes: Annotated[
        list[str] | None,
        typer.Option(help="Data types, comma-separated (default: CPU float32; CUDA float32,bfloat16)."),
    ] = None,
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="Also time torch.nn.LSTM and a Python GRUCell loop.")
    ] = True,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure memory (fresh processes).")] = True,
    compile_time: Annotated[
        bool,
        typer.Option("--compile-time", help="Also time the kernels' compilation, cold and cached (about a minute)."),
    ] = False,
    json_out: Annotated[
        str | None,
        typer.Option("--json", help="Where to write the JSON (default: a new runs/bench/speed-DEVICE-TIME.json)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --json file.")] = False,
    report_json: Annotated[
        str | None, typer.Option("--report", help="Print the tables of a saved run (its JSON) instead of running.")
    ] = None,
) -> None:
    """Speed of the engines against torch.nn.GRU, torch.nn.LSTM and the host's matrix-product rate."""
    with _clean_errors():
        from . import bench as harness

        try:
            if report_json is not None:
                typer.echo(harness.report_file(report_json))
                return
            try:
                thread_list = [int(t) for t in threads.split(",") if t.strip()]
            except ValueError:
                raise harness.BenchError(f"--threads: expected a comma list of integers, got {threads!r}") from None
            opts = harness.Options(
                device=device,
                sizes=_split_list(sizes),
                variants=_split_list(variants),
                threads=thread_list,
                passes=[p.strip() for p in passes.split(",") if p.strip()],
                repeats=repeats,
                warmup=warmup,
                reset_after=reset_after,
                dtypes=_split_list(dtypes),
                baselines=baselines,
                memory=memory,
                compile_time=compile_time,
                json=json_out,
                overwrite=overwrite,
            )
            harness.run(opts, argv=sys.argv[1:])
        except harness.BenchError as e:
            raise CliError(str(e)) from None


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Versions, engines and what engine='auto' picks here; the tasks and cells of the harness."""
    from . import info as gatedrnn_info
    from .experiments.config import CELLS
    from .experiments.tasks import TASKS

    data = gatedrnn_info()
    data["tasks"] = {name: t.description for name, t in TASKS.items()}
    data["cells"] = list(CELLS)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for k, v in value.items():
                typer.echo(f"  {k}: {v}")
        else:
            typer.echo(f"{key}: {value}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``gatedrnn`` script and ``python -m gatedrnn``."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="gatedrnn")
