"""The IMDB reviews (aclImdb), from a folder or an archive read in place, with a parsed cache
(private; see ``data``)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pathlib
import zlib
from typing import TYPE_CHECKING

from .._files import atomic_write
from . import _checksums
from ._archives import read_members
from ._checksums import URLS, fetch
from ._datadir import SPLITS, CorruptData, check_choice, missing, resolve

if TYPE_CHECKING:
    import numpy as np

__all__ = ["IMDB_ARCHIVES", "IMDB_DOWNLOAD", "load_imdb"]

IMDB_ARCHIVES = ("aclImdb_train_test.tar.gz", "aclImdb_v1.tar.gz")  # looked for in this order
IMDB_DOWNLOAD = "aclImdb_v1.tar.gz"
_IMDB_CACHE_FORMAT = 1
_LABELS = {"neg": 0, "pos": 1}


def _review(parts: tuple[str, ...]) -> bool:
    """``aclImdb/<split>/<neg|pos>/<name>.txt``: a labelled review (``unsup/`` and the rest are skipped)."""
    return (
        len(parts) == 4
        and parts[0] == "aclImdb"
        and parts[1] in SPLITS
        and parts[2] in _LABELS
        and parts[3].endswith(".txt")
    )


def _parse_imdb_archive(archive: pathlib.Path) -> dict[str, tuple[list[str], list[int]]]:
    """Every review of both splits, straight from the tar (nothing is extracted to disk)."""
    found: dict[str, list[tuple[int, str, str]]] = {s: [] for s in SPLITS}
    for parts, data in read_members(archive, _review):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptData(f"{archive}: member {'/'.join(parts)!r} is not UTF-8 text ({exc})") from exc
        found[parts[1]].append((_LABELS[parts[2]], parts[3], text))
    return {split: _ordered(entries) for split, entries in found.items()}


def _ordered(entries: list[tuple[int, str, str]]) -> tuple[list[str], list[int]]:
    """Deterministic order: neg then pos (sorted relative path), each by sorted file name."""
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries], [e[0] for e in entries]


def _read_imdb_folder(split_dir: pathlib.Path) -> tuple[list[str], list[int]]:
    entries: list[tuple[int, str, str]] = []
    for label_name, label in _LABELS.items():
        for path in (split_dir / label_name).glob("*.txt"):
            try:
                entries.append((label, path.name, path.read_text(encoding="utf-8")))
            except UnicodeDecodeError as exc:
                raise CorruptData(f"{path}: not UTF-8 text ({exc})") from exc
    return _ordered(entries)


def _source_key(kind: str, path: pathlib.Path, verified: bool) -> str:
    """A digest naming one state of a source: its path, whether it was checksum-verified, and the
    size and modification time of the archive (of every review file, for a folder)."""
    h = hashlib.sha256(f"{_IMDB_CACHE_FORMAT}|{kind}|{path.resolve()}|{verified}".encode())
    if kind == "archive":
        st = path.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        for label_name in _LABELS:
            with os.scandir(path / label_name) as entries:
                stats = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
            h.update(f"|{label_name}|{stats}".encode())
    return h.hexdigest()[:20]


def _writable(folder: pathlib.Path) -> bool:
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _cache_folder(imdb_folder: pathlib.Path, cache_dir: str | os.PathLike[str] | None) -> pathlib.Path | None:
    """Explicit cache_dir; else <data_dir>/imdb/cache if writable; else the user cache; else None."""
    if cache_dir is not None:
        folder = pathlib.Path(cache_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if _writable(imdb_folder / "cache"):
        return imdb_folder / "cache"
    import platformdirs

    fallback = pathlib.Path(platformdirs.user_cache_dir("gatedrnn")) / "parsed"
    return fallback if _writable(fallback) else None


def _cache_path(folder: pathlib.Path, split: str, key: str) -> pathlib.Path:
    return folder / f"imdb-{split}-{key}.json.gz"


def _read_cache(path: pathlib.Path, split: str) -> tuple[list[str], list[int]] | None:
    """The cached split, or None when absent or unusable (a bad cache is rebuilt, never trusted)."""
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            blob = json.load(handle)
        texts, labels = blob["texts"], blob["labels"]
        ok = (
            blob.get("format") == _IMDB_CACHE_FORMAT
            and blob.get("split") == split
            and isinstance(texts, list)
            and isinstance(labels, list)
            and len(texts) == len(labels)
            and all(isinstance(t, str) for t in texts)
            and all(v in (0, 1) for v in labels)
        )
        return (texts, labels) if ok else None
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: pathlib.Path, split: str, texts: list[str], labels: list[int]) -> None:
    blob = {"format": _IMDB_CACHE_FORMAT, "split": split, "texts": texts, "labels": labels}
    data = gzip.compress(json.dumps(blob, ensure_ascii=False).encode("utf-8"), compresslevel=1)
    atomic_write(path, data, parents=True)
    for stale in path.parent.glob(f"imdb-{split}-*.json.gz"):  # older states of the same source
        if stale != path:
            with contextlib.suppress(OSError):
                stale.unlink()


def _verify_archive(name: str, path: pathlib.Path, label: str | os.PathLike[str]) -> None:
    _checksums.verify("imdb", name, label, content=path, distributed=path)


def load_imdb(
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Load one split of the IMDB reviews (aclImdb): ``(texts, labels int64 [N])``, 1 = pos, 0 = neg.

    Sources, first found wins: the folder ``<data_dir>/imdb/aclImdb/<split>/{pos,neg}/*.txt``,
    then ``<data_dir>/imdb/aclImdb_train_test.tar.gz``, then the original ``aclImdb_v1.tar.gz``
    (downloaded there by ``download=True``). Archives are verified against ``CHECKSUMS``
    (``verify=False`` skips that) and read in place: nothing is extracted, a member with an
    absolute name, '..' or a link refuses the whole archive. Order: neg reviews then pos, each by
    sorted file name. Texts are returned raw (HTML ``<br />`` included; ``tokenize`` drops it).

    The parsed splits are cached as ``imdb-<split>-<key>.json.gz`` (written atomically) in
    ``cache_dir``, else ``<data_dir>/imdb/cache/`` when writable, else the user cache folder;
    the key changes with the source's path, size and modification time.
    """
    import numpy as np

    check_choice("split", split, SPLITS)
    root, chosen_by = resolve(data_dir)
    folder = root / "imdb"
    split_dir = folder / "aclImdb" / split
    looked_at = [split_dir / "pos", split_dir / "neg"] + [folder / a for a in IMDB_ARCHIVES]
    source: tuple[str, pathlib.Path] | None = None
    if (split_dir / "pos").is_dir() and (split_dir / "neg").is_dir():
        source = ("folder", split_dir)
    else:
        archive = next((folder / a for a in IMDB_ARCHIVES if (folder / a).is_file()), None)
        if archive is None and download:
            urls = [base + IMDB_DOWNLOAD for base in URLS["imdb"]]
            vet = (lambda tmp: _verify_archive(IMDB_DOWNLOAD, tmp, IMDB_DOWNLOAD)) if verify else None
            archive = fetch(urls, folder / IMDB_DOWNLOAD, vet)
        if archive is not None:
            source = ("archive", archive)
    if source is None:
        what = f"IMDB ({split} split)"
        raise missing("imdb", what, root, chosen_by, looked_at, ["aclImdb/ or " + IMDB_DOWNLOAD], URLS["imdb"])

    kind, path = source
    cache = _cache_folder(folder, cache_dir)
    key = _source_key(kind, path, verify and kind == "archive")
    cached = _read_cache(_cache_path(cache, split, key), split) if cache is not None else None
    if cached is None:
        if kind == "folder":
            parsed = {split: _read_imdb_folder(path)}
        else:
            if verify:
                _verify_archive(path.name, path, path)
            parsed = _parse_imdb_archive(path)
        texts, labels = parsed[split]
        if not texts or len(set(labels)) < 2:
            raise CorruptData(f"{path}: no reviews (or only one class) for aclImdb/{split}/{{pos,neg}}/*.txt")
        if cache is not None:
            for s, (t, lab) in parsed.items():
                if t:
                    _write_cache(_cache_path(cache, s, key), s, t, lab)
    else:
        texts, labels = cached
    return texts, np.asarray(labels, dtype=np.int64)
