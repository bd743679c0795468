"""The experiment configuration: one flat dataclass, read from TOML, overridden from the command line.

Every knob of a run lives here, with its default. A TOML file (``--config FILE.toml``) sets any of
them by name; options given on the command line win over the file. The resolved configuration is
written into the run folder (``config.toml`` and ``config.json``) so that a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._engines import ENGINES
from .._options import Options
from .._specs import SPECS

__all__ = [
    "CELLS",
    "CELL_OPTIONS",
    "DEFAULT_CELLS",
    "OPTIMIZERS",
    "Config",
    "ConfigError",
    "did_you_mean",
    "load_toml",
    "parse_cell",
    "run_id",
    "to_toml",
]

#: Cells the harness can build: the gatedrnn variants, then torch's LSTM and tanh RNN as baselines.
CELLS = (*SPECS, "lstm", "rnn")
DEFAULT_CELLS = (*SPECS, "lstm")
#: A gatedrnn cell's name may carry options (gatedrnn._options): ``gru0+ln`` (layer norm),
#: ``gru0+rd0.25`` (recurrent dropout 0.25), ``+id`` input dropout, ``+zo`` zoneout, ``+wd``
#: DropConnect; e.g. ``mgu+ln+zo0.1``. They win over the config's keys of the same options.
CELL_OPTIONS = {
    "ln": "layer_norm",
    "rd": "recurrent_dropout",
    "id": "input_dropout",
    "zo": "zoneout",
    "wd": "weight_drop",
}


def parse_cell(name: str) -> tuple[str, dict[str, bool | float]]:
    """``(base cell, options)`` of a cell name such as ``"gru0+ln+rd0.25"``; ConfigError if malformed."""
    base, *parts = name.split("+")
    options: dict[str, bool | float] = {}
    for part in parts:
        key, value = part[:2], part[2:]
        if key not in CELL_OPTIONS or (key == "ln") != (value == ""):
            raise ConfigError(
                f"cells: {name!r}: expected options +ln, +rdP, +idP, +zoP or +wdP (P a probability), got +{part}"
            )
        if key == "ln":
            options["layer_norm"] = True
            continue
        try:
            options[CELL_OPTIONS[key]] = float(value)
        except ValueError:
            raise ConfigError(f"cells: {name!r}: expected a probability after +{key}, got {value!r}") from None
    return base, options


OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration value (from a TOML file or the command line) that cannot be used."""


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``word``, else ""."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Config:
    """Everything that defines a run. Lists (``cells``, ``lr``, ``seeds``) make a comparison grid.

    Task-specific knobs are read only by the tasks that use them (see ``gatedrnn.experiments.tasks``).
    """

    # what to train
    task: str = "digits-rows"
    cells: list[str] = field(default_factory=lambda: list(DEFAULT_CELLS))
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0  # between stacked layers
    reset_after: bool = True  # the reset form of the gatedrnn cells
    engine: str = "auto"  # gatedrnn engine ("auto", "reference", "fused", "triton")
    # the gatedrnn cells' options (gatedrnn._options); a cell name's +ln, +rdP ... win over these
    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    input_dropout: float = 0.0
    zoneout: float = 0.0
    weight_drop: float = 0.0
    # how to train
    epochs: int = 15
    lr: list[float] = field(default_factory=lambda: [5e-3])  # several values: a sweep
    seeds: list[int] = field(default_factory=lambda: [0])
    optimizer: str = "adam"
    batch_size: int = 32
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD and RMSprop only
    clip: float = 1.0  # max gradient norm; 0 turns clipping off
    dtype: str = "float32"
    device: str = "cpu"
    # torch intra-op threads; 0 keeps torch's default. 1 by default: the matrices of one RNN step are
    # small, and on a busy machine waiting threads made a digits comparison 10x slower (4 min vs 23 s)
    threads: int = 1
    # data
    data_dir: str | None = None
    download: bool = False  # fetch missing data sets (checksums verified) into data_dir
    data_seed: int = 0  # the split / synthetic examples: the same for every cell and seed of a comparison
    train_limit: int | None = None  # use only the first N training examples (after a fixed shuffle)
    test_limit: int | None = None
    # task knobs
    permute: bool = False  # *-pixels: a fixed random permutation of the pixels
    seq_len: int = 50  # adding, sine, sunspots/co2 windows
    train_bits: int = 8  # binary-addition: numbers of this many bits to train on ...
    test_bits: int = 16  # ... and longer ones to test on
    n_train: int = 2000  # synthetic tasks (adding, binary-addition, sine, noise)
    n_test: int = 500
    vocab_size: int = 20000  # imdb, rt-polarity
    max_len: int = 200  # imdb, rt-polarity: tokens kept per text
    embed_dim: int = 64
    # output
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming the key, what was expected and what came."""
        if isinstance(self.cells, str):
            self.cells = [c.strip() for c in self.cells.split(",") if c.strip()]
        if not isinstance(self.cells, list) or not self.cells:
            raise ConfigError(f"cells: expected a non-empty list of cell names from {list(CELLS)}, got {self.cells!r}")
        for c in self.cells:
            base, options = parse_cell(c)
            if base not in CELLS:
                raise ConfigError(f"cells: expected names from {list(CELLS)}, got {c!r}{did_you_mean(base, CELLS)}")
            if options and base not in SPECS:
                raise ConfigError(f"cells: {c!r}: options (+ln, +rd, ...) are for the gatedrnn cells, not {base!r}")
        if len(set(self.cells)) != len(self.cells):
            raise ConfigError(f"cells: expected each cell once, got {self.cells!r}")
        if isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool):
            self.lr = [float(self.lr)]
        if not isinstance(self.lr, list) or not self.lr:
            raise ConfigError(f"lr: expected a positive number or a list of them, got {self.lr!r}")
        self.lr = [_positive_float("lr", v) for v in self.lr]
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            if self.seeds < 1:
                raise ConfigError(f"seeds: expected a count >= 1 or a list of seeds, got {self.seeds!r}")
            self.seeds = list(range(self.seeds))
        if not isinstance(self.seeds, list) or not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise ConfigError(f"seeds: expected a count >= 1 or a list of integers >= 0, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: expected distinct seeds, got {self.seeds!r}")
        for name in ("hidden", "layers", "epochs", "batch_size", "seq_len", "train_bits", "test_bits", "n_train"):
            _check_int(name, getattr(self, name), 1)
        for name in ("n_test", "vocab_size", "max_len", "embed_dim"):
            _check_int(name, getattr(self, name), 1)
        _check_int("data_seed", self.data_seed, 0)
        _check_int("threads", self.threads, 0)
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.optimizer not in OPTIMIZERS:
            hint = did_you_mean(self.optimizer, OPTIMIZERS)
            raise ConfigError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {self.optimizer!r}{hint}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: expected one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("weight_decay", "clip", "momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name}: expected a number >= 0, got {v!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        try:
            Options(self.layer_norm, self.recurrent_dropout, self.input_dropout, self.zoneout, self.weight_drop)
            for c in self.cells:
                self.cell_options(c)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for name in ("reset_after", "permute", "progress", "download"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        for name in ("task", "engine", "device"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}: expected a string, got {getattr(self, name)!r}")
        if self.engine != "auto" and self.engine not in ENGINES:
            choices = ["auto", *ENGINES]
            raise ConfigError(
                f"engine: expected one of {choices}, got {self.engine!r}{did_you_mean(self.engine, choices)}"
            )
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir):
            raise ConfigError(f"data_dir: expected a folder path, got {self.data_dir!r}")
        if self.out is not None and (not isinstance(self.out, str) or not self.out):
            raise ConfigError(f"out: expected a folder path, got {self.out!r}")
        if self.test_bits < self.train_bits:
            raise ConfigError(f"test_bits: expected >= train_bits ({self.train_bits}), got {self.test_bits}")

    def cell_options(self, cell: str) -> dict[str, bool | float]:
        """The gatedrnn options of ``cell`` (none for torch's cells): the config's, then its name's."""
        base, own = parse_cell(cell)
        if base not in SPECS:
            return {}
        options = {f: getattr(self, f) for f in CELL_OPTIONS.values()}
        options.update(own)
        return Options(**options).non_default()

    # --- conversions -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Config | None = None) -> Config:
        """A config from ``values`` (unknown keys are an error), on top of ``base`` or the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            named = ", ".join(f"{k!r}{did_you_mean(k, known)}" for k in unknown)
            raise ConfigError(f"config: unknown key(s) {named}; expected keys from {sorted(known)}")
        merged = base.to_dict() if base is not None else {}
        merged.update(values)
        try:
            return cls(**merged)
        except TypeError as e:  # pragma: no cover - every field has a default
            raise ConfigError(f"config: {e}") from e

    def run_id(self, cell: str, lr: float, seed: int) -> str:
        """The name of one (cell, learning rate, seed) run inside a run folder."""
        return run_id(cell, lr, seed)

    def runs(self) -> list[str]:
        """Every run of the grid, in the order they are trained."""
        return [run_id(c, lr, s) for c in self.cells for lr in self.lr for s in self.seeds]


def run_id(cell: str, lr: float, seed: int) -> str:
    """The name of one (cell, learning rate, seed) run inside a run folder."""
    return f"{cell}_lr{lr:g}_s{seed}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name: str, v: Any, minimum: int) -> None:
    if not _is_int(v) or v < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {v!r}")


def _positive_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name}: expected positive numbers, got {v!r}")
    return float(v)


def _tomllib() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10
        import tomli

        return tomli
    except ImportError as e:  # pragma: no cover
        raise ConfigError("config: reading TOML on Python 3.10 needs the 'tomli' package") from e


def load_toml_text(text: str) -> dict[str, Any]:
    """TOML text as a dict; :class:`ConfigError` (a ``ValueError``) if it does not parse."""
    tomllib = _tomllib()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from e


def load_toml(path: str | Path) -> dict[str, Any]:
    """The key/value pairs of a TOML config file (checked later by :meth:`Config.from_dict`)."""
    tomllib = _tomllib()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: expected an existing TOML file, got {str(path)!r} (not found)")
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {str(path)!r} is not valid TOML: {e}") from e
    return data


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: Config) -> str:
    """The config as a TOML file that :func:`load_toml` reads back (unset optional keys are omitted)."""
    lines = ["# resolved configuration of this run (gatedrnn compare --config config.toml repeats it)"]
    for k, v in cfg.to_dict().items():
        if v is None:
            continue
        lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
