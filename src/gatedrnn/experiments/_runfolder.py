"""Run folders are never overwritten silently (private; used by ``run`` and ``gradients``).

A run writes into ``--out``. A folder that exists and is not empty is refused unless the caller
asks: ``resume`` continues the run it holds (its ``config.json`` says it is one), ``overwrite``
replaces it. An overwrite is built in a hidden sibling folder and swapped into place only when it
has finished, so that a run killed on the way (SIGKILL included) leaves the old run as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._files import fsync_dir

__all__ = ["RunFolder", "RunFolderError", "RunInterrupted", "claim", "finish", "interrupted", "writing"]


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (it holds a run already, or nothing to resume)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str(exc)`` says what was kept and how to continue."""


@dataclass(frozen=True)
class RunFolder:
    """``out``: the folder the user named. ``work``: where this run writes (``out`` itself, or the
    hidden sibling an overwrite is built in). ``mode``: "new", "resume" or "overwrite"."""

    out: Path
    work: Path
    mode: str

    @property
    def replacing(self) -> bool:
        return self.work != self.out


def _holds_anything(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def claim(out: Path, *, resume: bool, overwrite: bool) -> RunFolder:
    """Check ``out`` against what was asked and say where this run writes (creates nothing)."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite: expected one of them, got both")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out}: expected a run folder, got a file")
    if resume:
        if not out.is_dir():
            raise RunFolderError(f"--resume: nothing to resume, {out} does not exist (run without --resume to start)")
        if not (out / "config.json").is_file():
            raise RunFolderError(
                f"--resume: nothing to resume in {out} (no config.json: not a gatedrnn run folder); "
                "run without --resume to start a new run, or choose another --out"
            )
        return RunFolder(out, out, "resume")
    if not _holds_anything(out):
        return RunFolder(out, out, "new")
    if not overwrite:
        raise RunFolderError(
            f"--out {out}: the folder exists and is not empty; pass --resume to continue the run in it, "
            "--overwrite to replace it, or choose another --out"
        )
    return RunFolder(out, out.with_name(f".{out.name}.overwrite-{secrets.token_hex(4)}"), "overwrite")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # a kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def finish(folder: RunFolder) -> None:
    """Put a finished overwrite in place of the old run; the old one goes only once it is out of the way."""
    if not folder.replacing:
        return
    if not folder.out.exists():
        os.replace(folder.work, folder.out)
        fsync_dir(folder.out.parent)
        return
    old = folder.work  # after the exchange it holds the old run
    if not _exchange(folder.work, folder.out):
        old = folder.out.with_name(f".{folder.out.name}.old-{secrets.token_hex(4)}")
        os.replace(folder.out, old)
        os.replace(folder.work, folder.out)
    fsync_dir(folder.out.parent)
    shutil.rmtree(old, ignore_errors=True)


def interrupted(folder: RunFolder) -> RunInterrupted:
    """The interruption of a run in ``folder``: an overwrite is discarded, anything else can resume."""
    if folder.replacing:
        shutil.rmtree(folder.work, ignore_errors=True)
        return RunInterrupted(f"interrupted: {folder.out} still holds the previous run (the new one was discarded)")
    return RunInterrupted(
        f"interrupted: every finished epoch is saved in {folder.out}; "
        f"to continue, run the same command with --resume --out {folder.out}"
    )


@contextlib.contextmanager
def writing(folder: RunFolder, main: bool = True) -> Iterator[Path]:
    """Yield the folder to write into; on success an overwrite replaces the old run, on Ctrl-C
    :class:`RunInterrupted` says what to do, on an error an unfinished overwrite is removed.
    ``main``: this process writes files (rank 0 under torchrun)."""
    try:
        yield folder.work
    except KeyboardInterrupt as exc:
        if isinstance(exc, RunInterrupted):
            raise
        raise (interrupted(folder) if main else RunInterrupted("interrupted")) from None
    except BaseException:
        if main and folder.replacing:
            shutil.rmtree(folder.work, ignore_errors=True)
        raise
    if main:
        finish(folder)
