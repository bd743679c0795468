"""Atomic file writes: the one writer of model files (interop), run folders, downloads and caches.

A file is written under a temporary name beside its destination, flushed and fsynced, then moved
onto the destination with ``os.replace``; on any error the temporary file is removed and the
destination is left as it was (never half-written). The temporary file is created with mode
``0o666`` so that the user's umask applies, as for any file the user writes (``tempfile.mkstemp``
would make it private, ``0o600``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["atomic_file", "atomic_write", "atomic_write_text", "fsync_dir"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry (after os.replace) where the platform allows it (best effort)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_beside(dest: pathlib.Path) -> tuple[int, pathlib.Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {dest}")


@contextlib.contextmanager
def atomic_file(
    dest: str | os.PathLike[str],
    *,
    parents: bool = False,
    check: Callable[[pathlib.Path], object] | None = None,
) -> Iterator[IO[bytes]]:
    """Yield a temporary file beside ``dest``; on success fsync it and os.replace it onto ``dest``.

    ``parents``: create ``dest``'s folder (and its parents) if missing. ``check``: called with the
    temporary file's path once it is complete; what it raises aborts the write (a download whose
    checksum fails never takes the destination's name).
    """
    dest = pathlib.Path(dest)
    if parents:
        dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(dest)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)


def atomic_write(dest: str | os.PathLike[str], data: bytes, *, parents: bool = False) -> None:
    """Write ``data`` to ``dest`` atomically (see :func:`atomic_file`)."""
    with atomic_file(dest, parents=parents) as handle:
        handle.write(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str, *, parents: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically (see :func:`atomic_file`)."""
    atomic_write(dest, text.encode("utf-8"), parents=parents)
