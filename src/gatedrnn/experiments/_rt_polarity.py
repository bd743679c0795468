"""The sentence polarity data (Pang & Lee 2005), two latin-1 files (private; see ``data``)."""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import TYPE_CHECKING

from .._files import atomic_write
from . import _checksums
from ._archives import read_members
from ._checksums import URLS, fetch
from ._datadir import CorruptData, missing, resolve

if TYPE_CHECKING:
    import numpy as np

__all__ = ["RT_ARCHIVE", "RT_FILES", "load_rt_polarity"]

RT_ARCHIVE = "rt-polaritydata.tar.gz"
RT_FILES = ("rt-polarity.pos", "rt-polarity.neg")


def _split_lines(data: bytes) -> list[str]:
    text = data.decode("latin-1")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def _verify(name: str, label: str | os.PathLike[str], data: bytes) -> None:
    _checksums.verify("rt-polarity", name, label, content=data, distributed=data)


def _download_rt(folder: pathlib.Path, verify: bool) -> None:
    """Fetch rt-polaritydata.tar.gz, take the two files from it (checked), write them atomically."""
    archive = fetch([base + RT_ARCHIVE for base in URLS["rt-polarity"]], folder / RT_ARCHIVE, None)
    try:
        contents = {parts[-1]: data for parts, data in read_members(archive, lambda parts: parts[-1] in RT_FILES)}
        for name in RT_FILES:
            if name not in contents:
                raise CorruptData(f"{archive}: has no member named {name}")
            if verify:
                _verify(name, archive / name, contents[name])
        for name in RT_FILES:
            atomic_write(folder / name, contents[name], parents=True)
    finally:
        with contextlib.suppress(OSError):
            archive.unlink()


def load_rt_polarity(
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Load the sentence polarity data (Pang & Lee 2005): ``(texts, labels int64 [N])``.

    Files ``<data_dir>/rt-polarity/rt-polarity.{pos,neg}`` (or under ``rt-polaritydata/`` there,
    the layout of the original archive), latin-1, one sentence a line (stripped). Returns the
    positive sentences (label 1) then the negative ones (label 0), each in file order. The real
    files (5,331 + 5,331 lines) are verified by SHA-256 (``verify=False`` skips that).
    """
    import numpy as np

    root, chosen_by = resolve(data_dir)
    folder = root / "rt-polarity"
    layouts = [folder, folder / "rt-polaritydata"]
    looked_at = [d / n for d in layouts for n in RT_FILES]
    base = next((d for d in layouts if all((d / n).is_file() for n in RT_FILES)), None)
    if base is None and download:
        _download_rt(folder, verify)
        base = folder
    if base is None:
        raise missing("rt-polarity", "rt-polarity", root, chosen_by, looked_at, list(RT_FILES), URLS["rt-polarity"])
    texts: list[str] = []
    labels: list[int] = []
    for name, label in zip(RT_FILES, (1, 0), strict=True):
        path = base / name
        data = path.read_bytes()
        if verify:
            _verify(name, path, data)
        lines = _split_lines(data)
        texts += lines
        labels += [label] * len(lines)
    return texts, np.asarray(labels, dtype=np.int64)
