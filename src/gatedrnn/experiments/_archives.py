"""Tar archives read in place, member by member, never extracted (private; see ``data``).

Every member is checked before any is used: an absolute name, a ``..`` component, or a link or
device entry refuses the whole archive (nothing is written outside, nothing is followed).
"""

from __future__ import annotations

import pathlib
import re
import zlib
from collections.abc import Callable

from ._datadir import CorruptData

__all__ = ["read_members", "safe_member_name"]


def safe_member_name(name: str, archive: pathlib.Path) -> tuple[str, ...]:
    """The normalised path parts of a tar member; refuses absolute paths and '..' (path traversal)."""
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise CorruptData(f"{archive}: unsafe member name {name!r} (absolute path); refused")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise CorruptData(f"{archive}: unsafe member name {name!r} (path traversal '..'); refused")
    return parts


def read_members(
    archive: pathlib.Path, wanted: Callable[[tuple[str, ...]], bool]
) -> list[tuple[tuple[str, ...], bytes]]:
    """``(path parts, bytes)`` of every regular file whose parts ``wanted`` accepts, in archive order.

    The archive is streamed once (any compression tarfile knows); a damaged or truncated one, an
    unsafe name or a link or special member raises :class:`CorruptData`.
    """
    import tarfile

    found: list[tuple[tuple[str, ...], bytes]] = []
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                parts = safe_member_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise CorruptData(
                        f"{archive}: member {member.name!r} is a link or special file (type {member.type!r}); refused"
                    )
                if member.isfile() and wanted(parts):
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has data
                    found.append((parts, handle.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CorruptData(f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc})") from exc
    return found
