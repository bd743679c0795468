"""Where the data sets live, and the errors every loader raises (private; see ``data``)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

__all__ = [
    "ENV_VAR",
    "SPLITS",
    "CorruptData",
    "DataError",
    "DatasetMissing",
    "DownloadFailed",
    "check_choice",
    "missing",
    "resolve",
    "resolve_data_dir",
]

ENV_VAR = "GATEDRNN_DATA"
SPLITS = ("train", "test")


class DataError(Exception):
    """Base class of every error raised by the data loaders."""


class DatasetMissing(DataError, FileNotFoundError):
    """A data set is not in the data directory (and ``download`` was off).

    ``str(exc)`` names the data set, every path looked at and how to get the files;
    ``exc.dataset`` and ``exc.looked_at`` (list of paths) carry the same for programs.
    """

    def __init__(self, message: str, *, dataset: str = "", looked_at: Sequence[pathlib.Path] = ()) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.looked_at = list(looked_at)

    def __str__(self) -> str:  # OSError would format (errno, strerror) otherwise
        return str(self.args[0])


class CorruptData(DataError, ValueError):
    """A data file is damaged or not what its name says: refused as a whole, never half-read."""


class DownloadFailed(DataError, OSError):
    """Every mirror of a download failed (network error); the message lists each URL and error."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve(data_dir: str | os.PathLike[str] | None) -> tuple[pathlib.Path, str]:
    """The data folder and a phrase saying what chose it (for error messages)."""
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir: expected a path (str or os.PathLike) or None, got {type(data_dir).__name__}")
        if os.fspath(data_dir) == "":
            raise ValueError("data_dir: expected a folder path or None, got an empty string")
        return pathlib.Path(data_dir).expanduser().absolute(), "the data_dir argument (--data-dir)"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return pathlib.Path(env).expanduser().absolute(), f"${ENV_VAR}"
    import platformdirs

    default = pathlib.Path(platformdirs.user_cache_dir("gatedrnn")).absolute()
    return default, f"the default user cache folder (no --data-dir given, ${ENV_VAR} unset)"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The data folder: ``data_dir`` if given, else ``$GATEDRNN_DATA`` if set and non-empty, else
    ``platformdirs.user_cache_dir("gatedrnn")``. Returned absolute; it need not exist yet."""
    return resolve(data_dir)[0]


def check_choice(argument: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argument}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def missing(
    dataset: str,
    what: str,
    root: pathlib.Path,
    chosen_by: str,
    looked_at: Sequence[pathlib.Path],
    files: Sequence[str],
    sources: Sequence[str],
) -> DatasetMissing:
    """The error for a data set that is not there: every path looked at and the three ways to get it."""
    folder = root / dataset
    lines = [
        f"{what} not found in the data folder {root} (chosen by {chosen_by}).",
        "Looked at:",
        *(f"  {p}" for p in looked_at),
        "To get it, either:",
        f"  - pass --download (download=True) to fetch it from {' or '.join(sources)} (checksums verified);",
        f"  - copy {', '.join(files)} into {folder}/;",
        f"  - or point --data-dir or ${ENV_VAR} at a folder that has {dataset}/ with those files.",
    ]
    return DatasetMissing("\n".join(lines), dataset=dataset, looked_at=looked_at)
