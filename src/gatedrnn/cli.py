"""The ``gatedrnn`` command: compare, train, report, gradients, bench, info.

``gatedrnn compare`` trains several cells on one task and writes a run folder (table, curves,
metrics, resolved config); ``gatedrnn --help`` and ``gatedrnn COMMAND --help`` list the options.
Configuration: defaults < ``--config FILE.toml`` < ``--set KEY=VALUE`` < the named options.

Errors: the project's own error types (:class:`CliError`, ``ConfigError``, ``RunFolderError``,
the data loaders' ``DataError``, ``gatedrnn.InputError`` and the model-file errors) are the
user's to fix: one line on stderr, exit code 1. Anything else is a bug in gatedrnn and keeps its
traceback. Ctrl-C exits with 130 after a line saying how to continue the run.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from . import InputError, KerasFileError, ModelFileError, __version__
from .experiments._datadir import DataError
from .experiments._runfolder import RunFolderError, RunInterrupted
from .experiments.config import CELLS, Config, ConfigError

__all__ = ["CliError", "app", "main"]

app = typer.Typer(
    name="gatedrnn",
    help="Gated recurrent networks: compare the GRU family (gru0-3, MGU, minGRU) with LSTM on real tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no boxes in logs, no <bool> beside a flag
)


class CliError(Exception):
    """A problem with the command line itself: one line (no traceback), exit code 1."""


#: What the user can fix: printed as one line. Everything else keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CliError,
    ConfigError,
    RunFolderError,
    DataError,
    InputError,
    ModelFileError,
    KerasFileError,
)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """The project's own errors: a message on stderr and exit code 1; Ctrl-C: exit code 130."""
    try:
        yield
    except RunInterrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=130) from None
    except USER_ERRORS as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gatedrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Gated recurrent networks: compare the GRU family (gru0-3, MGU, minGRU) with LSTM on real tasks."""


# --- configuration from options ---------------------------------------------------------------------

_DEFAULTS = Config()


def _default(key: str) -> str:
    value = getattr(_DEFAULTS, key)
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(text: str, key: str | None = None, default: str | None = None) -> str:
    """``text`` with the default the config gives (or ``default``), as --help shows it."""
    shown = default if default is not None else (_default(key) if key is not None else None)
    return f"{text} [default: {shown}]" if shown is not None else text


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
    from .experiments.config import load_toml

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


# --- the options compare, train and gradients share: one definition ---------------------------------

#: name -> (annotation, default). The named options default to None so that --config and --set
#: are not overridden by an option that was not given; --help shows the config's default.
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "config": (
        Annotated[Path | None, typer.Option("--config", help="A TOML file of config keys (see presets/).")],
        None,
    ),
    "task": (Annotated[str | None, typer.Option(help=_help("Task name (gatedrnn info lists them).", "task"))], None),
    "hidden": (Annotated[int | None, typer.Option(help=_help("Hidden units per layer.", "hidden"))], None),
    "layers": (Annotated[int | None, typer.Option(help=_help("Stacked recurrent layers.", "layers"))], None),
    "epochs": (Annotated[int | None, typer.Option(help=_help("Training epochs.", "epochs"))], None),
    "optimizer": (Annotated[str | None, typer.Option(help=_help("adam, adamw, rmsprop or sgd.", "optimizer"))], None),
    "layer_norm": (
        Annotated[
            bool | None,
            typer.Option(
                "--layer-norm/--no-layer-norm",
                help="Layer-normalised gatedrnn cells (a cell name's +ln does it for one cell).",
                show_default=False,
            ),
        ],
        None,
    ),
    "recurrent_dropout": (
        Annotated[
            float | None,
            typer.Option(help=_help("Variational dropout of h in the recurrent products (+rdP).", "recurrent_dropout")),
        ],
        None,
    ),
    "input_dropout": (
        Annotated[
            float | None, typer.Option(help=_help("Variational dropout of each layer's input (+idP).", "input_dropout"))
        ],
        None,
    ),
    "zoneout": (
        Annotated[float | None, typer.Option(help=_help("Zoneout probability (+zoP).", "zoneout"))],
        None,
    ),
    "weight_drop": (
        Annotated[float | None, typer.Option(help=_help("DropConnect on weight_hh (+wdP).", "weight_drop"))],
        None,
    ),
    "batch_size": (Annotated[int | None, typer.Option(help=_help("Global batch size.", "batch_size"))], None),
    "clip": (Annotated[float | None, typer.Option(help=_help("Max gradient norm (0: no clipping).", "clip"))], None),
    "dtype": (Annotated[str | None, typer.Option(help=_help("float32 or float64.", "dtype"))], None),
    "device": (Annotated[str | None, typer.Option(help=_help("cpu, cuda or cuda:N.", "device"))], None),
    "threads": (
        Annotated[int | None, typer.Option(help=_help("torch threads (0: torch's default).", "threads"))],
        None,
    ),
    "train_limit": (
        Annotated[int | None, typer.Option(help=_help("A fixed random subset of N training examples.", None, "all"))],
        None,
    ),
    "test_limit": (
        Annotated[int | None, typer.Option(help=_help("A fixed random subset of N test examples.", None, "all"))],
        None,
    ),
    "data_dir": (
        Annotated[str | None, typer.Option(help=_help("Data folder.", None, "$GATEDRNN_DATA, else the user cache"))],
        None,
    ),
    "download": (
        Annotated[bool, typer.Option("--download", help="Fetch missing data sets (checksums verified).")],
        False,
    ),
    "out": (Annotated[str | None, typer.Option(help=_help("Run folder.", None, "runs/TASK-TIME"))], None),
    "resume": (
        Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoints.")],
        False,
    ),
    "overwrite": (
        Annotated[bool, typer.Option("--overwrite", help="Replace the run in --out (kept until the new one is done).")],
        False,
    ),
    "progress": (
        Annotated[
            bool | None,
            typer.Option("--progress/--no-progress", help="Progress bars, where stdout and stderr are a terminal."),
        ],
        None,
    ),
    "set_": (
        Annotated[
            list[str] | None, typer.Option("--set", help="Any config key: --set seq_len=100 --set permute=true.")
        ],
        None,
    ),
}


def run_options(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the options of :data:`RUN_OPTIONS` it does not define itself; it receives
    them as one dict, ``opts``."""
    own = [p for name, p in inspect.signature(func, eval_str=True).parameters.items() if name != "opts"]
    own_names = {p.name for p in own}
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, (annotation, default) in RUN_OPTIONS.items()
        if name not in own_names
    ]

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        opts = {name: kwargs.pop(name) for name in list(kwargs) if name in RUN_OPTIONS and name not in own_names}
        func(opts=opts, **kwargs)

    params = own + shared
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _config(opts: dict[str, Any], **command_values: Any) -> Config:
    """The config from the shared options plus a command's own values (None: not given)."""
    values = {k: v for k, v in opts.items() if k not in ("config", "set_", "resume", "overwrite")}
    values["download"] = values["download"] or None
    values.update({k: v for k, v in command_values.items() if v is not None})
    return build_config(opts["config"], opts["set_"], **values)


def _print_table(out: Path, table: str) -> None:
    typer.echo("")
    typer.echo(table, nl=False)
    typer.echo(f"\nrun folder: {out} (summary.md, curves.png, metrics.jsonl, metrics.csv, config.toml)")


def _run(cfg: Config, opts: dict[str, Any]) -> None:
    from .experiments import distributed as dd
    from .experiments.run import run_compare

    folder, _, table = run_compare(cfg, resume=opts["resume"], overwrite=opts["overwrite"])
    if dd.is_main():
        _print_table(folder, table)
    dd.teardown()


@app.command()
@run_options
def compare(
    opts: dict[str, Any],
    cells: Annotated[
        list[str] | None,
        typer.Option(
            help=_help(
                f"Cells, comma-separated, from {','.join(CELLS)}; options as gru0+ln, mgu+zo0.1+rd0.25.", "cells"
            )
        ),
    ] = None,
    lr: Annotated[
        list[str] | None, typer.Option(help=_help("Learning rate(s); several (1e-3,1e-4) make a sweep.", "lr"))
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help=_help("A count (3 = seeds 0,1,2) or a list (0,5,7).", "seeds"))
    ] = None,
) -> None:
    """Train several cells on one task: table, learning curves, metrics and config in a run folder."""
    with _clean_errors():
        cfg = _config(
            opts,
            cells=_split_list(cells),
            lr=_floats("lr", _split_list(lr)) if lr else None,
            seeds=_seeds(seeds) if seeds is not None else None,
        )
        _run(cfg, opts)


@app.command()
@run_options
def train(
    opts: dict[str, Any],
    cell: Annotated[str | None, typer.Option(help=_help("One cell.", None, "the config's only cell"))] = None,
    lr: Annotated[float | None, typer.Option(help=_help("Learning rate.", "lr"))] = None,
    seed: Annotated[
        int | None, typer.Option(help=_help("The seed: initialisation, data order, dropout.", "seeds"))
    ] = None,
) -> None:
    """One run (one cell, one learning rate, one seed) from a TOML config plus overrides.

    Checkpoints every epoch into --out; --resume continues a killed run to the same numbers.
    Under torchrun (torchrun --nproc_per_node 2 -m gatedrnn train ...) it trains data-parallel.
    """
    with _clean_errors():
        cfg = _config(
            opts,
            cells=[cell] if cell else None,
            lr=[lr] if lr is not None else None,
            seeds=[seed] if seed is not None else None,
        )
        for key, flag in (("cells", "--cell"), ("lr", "--lr"), ("seeds", "--seed")):
            if len(getattr(cfg, key)) != 1:
                what = key.rstrip("s")
                raise CliError(f"{flag}: train runs one {what}, got {getattr(cfg, key)} (compare runs grids)")
        _run(cfg, opts)


@app.command()
@run_options
def gradients(
    opts: dict[str, Any],
    task: Annotated[
        str | None, typer.Option(help=_help("Task (seq-to-one, float inputs).", None, "digits-pixels"))
    ] = None,
    cells: Annotated[
        list[str] | None, typer.Option(help=_help("Cells, comma-separated.", None, ",".join(CELLS)))
    ] = None,
    lr: Annotated[float | None, typer.Option(help=_help("Learning rate.", "lr"))] = None,
    seed: Annotated[int | None, typer.Option(help=_help("Seed.", "seeds"))] = None,
) -> None:
    """Gradient flow: the norm of dL/dh_t against t for a loss on the last step, before and after training."""
    with _clean_errors():
        from .experiments.gradients import run_gradients

        defaults = opts["config"] is None  # a config file's own task and cells win over these defaults
        cfg = _config(
            opts,
            task=task or ("digits-pixels" if defaults else None),
            cells=_split_list(cells) or (list(CELLS) if defaults else None),
            lr=[lr] if lr is not None else None,
            seeds=[seed] if seed is not None else None,
        )
        folder, table = run_gradients(cfg, resume=opts["resume"], overwrite=opts["overwrite"], say=typer.echo)
        typer.echo(table, nl=False)
        typer.echo(f"\nrun folder: {folder} (gradients.png, gradients.csv, gradients.json)")


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="Run folders written by compare or train.")],
) -> None:
    """Re-draw the table (summary.md/.csv) and the curves (curves.png) of run folders from metrics.jsonl."""
    with _clean_errors():
        from .experiments.report import continue_hint, read_config, read_metrics, redraw, unfinished

        for folder in folders:
            if not folder.is_dir():
                raise CliError(f"folders: expected a run folder, got {str(folder)!r} (not a directory)")
            table = redraw(folder)
            typer.echo(f"{folder}:\n{table}")
            missing = unfinished(read_metrics(folder), read_config(folder))
            if missing:
                typer.echo(f"partial run: {len(missing)} run(s) unfinished: {', '.join(missing)}")
                typer.echo(continue_hint(folder))


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
    stepping: Annotated[
        bool,
        typer.Option(
            "--stepping",
            help="Time stepping one call at a time instead (GRUCell and one-step GRU against torch's "
            "cells; takes --threads; benchmarks/step.py has the other settings).",
        ),
    ] = False,
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
            if stepping:
                harness.stepping(["--threads", ",".join(str(t) for t in thread_list)])
                return
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


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Rows of left-aligned columns, two spaces apart, under a header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _yes(value: object) -> str:
    return "yes" if value else "no"


def format_info(data: dict[str, Any]) -> str:
    """``gatedrnn info`` as tables: versions, engines (with their details), auto's choices, tasks, cells."""
    lines = [
        f"gatedrnn {data['gatedrnn']}, torch {data['torch']}, Python {data['python']}, {data['machine']}, "
        f"{data['threads']} torch thread(s), CUDA: {_yes(data['cuda'])}",
        "",
    ]
    rows = []
    for name, entry in data["engines"].items():
        variants = ", ".join(entry.get("variants", [])) or "-"
        rows.append([name, _yes(entry.get("available")), variants])
    lines += _table(["engine", "available", "variants"], rows)
    for name, entry in data["engines"].items():
        details = {k: v for k, v in entry.items() if k not in ("available", "variants")}
        if details:
            lines += ["", f"{name}:", *(f"  {k}: {v}" for k, v in details.items())]
    lines += ["", *_table(['engine="auto" on', "picks"], [[k, v] for k, v in data["auto"].items()])]
    lines += ["", *_table(["task", "what"], [[k, v] for k, v in data["tasks"].items()])]
    lines += ["", f"cells: {', '.join(data['cells'])}"]
    return "\n".join(lines)


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """Versions, engines and what engine='auto' picks here; the tasks and cells of the harness."""
    from . import info as gatedrnn_info
    from .experiments.tasks import TASKS

    data = gatedrnn_info()
    data["tasks"] = {name: t.description for name, t in TASKS.items()}
    data["cells"] = list(CELLS)
    typer.echo(json.dumps(data, indent=2) if as_json else format_info(data))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``gatedrnn`` script and ``python -m gatedrnn``."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="gatedrnn")
