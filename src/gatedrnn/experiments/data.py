"""Data loaders for the experiments: MNIST / Fashion-MNIST (IDX), IMDB (aclImdb), rt-polarity.

Where data is looked for (see :func:`resolve_data_dir`): the ``data_dir`` argument (the CLI's
``--data-dir``), else ``$GATEDRNN_DATA``, else ``platformdirs.user_cache_dir("gatedrnn")``. Each
data set lives in its own sub-folder::

    <data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <data_dir>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <data_dir>/imdb/aclImdb/{train,test}/{pos,neg}/*.txt      (an extracted folder), or
    <data_dir>/imdb/aclImdb_train_test.tar.gz | aclImdb_v1.tar.gz   (read in place, never extracted)
    <data_dir>/rt-polarity/rt-polarity.{pos,neg}               (latin-1, one sentence a line)

Known files are checked against :data:`CHECKSUMS` before a single value is returned; a file that
fails (checksum, IDX header, sizes, damaged gzip or tar) raises :class:`CorruptData` and nothing is
half-read. A missing data set raises :class:`DatasetMissing`, whose message lists every path looked
at and how to get the files. ``download=True`` fetches the standard files (mirrors in
:data:`URLS`), streaming to a temporary file, verifying the checksum and only then moving it in
place with ``os.replace``.

Heavy or optional modules (numpy, tarfile, urllib, tqdm, platformdirs) are imported inside the
functions that need them, so importing this module costs nothing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from gatedrnn._files import atomic_write
from gatedrnn.experiments import _download

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CHECKSUMS",
    "IMAGE_SETS",
    "URLS",
    "Checksum",
    "CorruptData",
    "DataError",
    "DatasetMissing",
    "DownloadFailed",
    "Vocab",
    "load_image_set",
    "load_imdb",
    "load_rt_polarity",
    "read_idx",
    "resolve_data_dir",
    "tokenize",
]

ENV_VAR = "GATEDRNN_DATA"
IMAGE_SETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------- errors
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


# ------------------------------------------------------------------------------------ known files
@dataclasses.dataclass(frozen=True)
class Checksum:
    """Digests of one distributed file.

    ``md5``: of the file exactly as distributed (the ``.gz`` or ``.tar.gz``). ``sha256`` and
    ``size``: of the content, i.e. the decompressed bytes for an IDX ``.gz`` (so a re-compressed
    copy, such as Debian's Fashion-MNIST, still verifies) and the file itself otherwise.
    A file is accepted when any digest that is known and applicable matches, and refused when a
    known, applicable digest differs.
    """

    md5: str | None = None
    sha256: str | None = None
    size: int | None = None


# One table for every file we know. MNIST MD5s: the original distribution (LeCun et al.);
# Fashion-MNIST MD5s: Zalando's distribution; SHA-256s: measured on the decompressed bytes of
# byte-identical (MNIST) or content-identical (Fashion-MNIST, re-gzipped by Debian) copies.
CHECKSUMS: dict[tuple[str, str], Checksum] = {
    ("mnist", "train-images-idx3-ubyte.gz"): Checksum(md5="f68b3c2dcbeaaa9fbdd348bbdeb94873", size=47040016),
    ("mnist", "train-labels-idx1-ubyte.gz"): Checksum(
        md5="d53e105ee54ea40749a09fcbcd1e9432",
        sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        size=60008,
    ),
    ("mnist", "t10k-images-idx3-ubyte.gz"): Checksum(
        md5="9fb629c4189551a2d022fa330f9573f3",
        sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        size=7840016,
    ),
    ("mnist", "t10k-labels-idx1-ubyte.gz"): Checksum(
        md5="ec29112dd5afa0611ce80d1b7f02629c",
        sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        size=10008,
    ),
    ("fashion-mnist", "train-images-idx3-ubyte.gz"): Checksum(
        md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        size=47040016,
    ),
    ("fashion-mnist", "train-labels-idx1-ubyte.gz"): Checksum(
        md5="25c81989df183df01b3e8a0aad5dffbe",
        sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        size=60008,
    ),
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"): Checksum(
        md5="bef4ecab320f06d8554ea6380940ec79",
        sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        size=7840016,
    ),
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"): Checksum(
        md5="bb300cfdad3c16e7a12a480ee83cd310",
        sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        size=10008,
    ),
    # IMDB: the original archive (with unsup/) and the train+test repack kept in shared/data.
    ("imdb", "aclImdb_v1.tar.gz"): Checksum(md5="7c2ac02c03563afcf9b574c7e56c153a"),
    ("imdb", "aclImdb_train_test.tar.gz"): Checksum(
        sha256="fc13d7b4f880042ec86140fa82bd5846d73c2dc814b8e67ee52cc56f21310b1f", size=30078464
    ),
    # rt-polarity: the two extracted files (the archive's own digest is not published).
    ("rt-polarity", "rt-polarity.pos"): Checksum(
        sha256="2da124ec187a9d5a29c9f04e91c540e02baed5af8868f550a26bd6fd4dbf8bf0", size=626139
    ),
    ("rt-polarity", "rt-polarity.neg"): Checksum(
        sha256="4ace77d558c3714723843f1d65b60c01e3417b208180f0728808d76ad0eeeaca", size=612256
    ),
}

# Download sources, tried in order (base URLs end with "/"; the file name is appended).
URLS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
    "imdb": ["https://ai.stanford.edu/~amaas/data/sentiment/"],
    "rt-polarity": ["https://www.cs.cornell.edu/people/pabo/movie-review-data/"],
}
IMDB_ARCHIVES = ("aclImdb_train_test.tar.gz", "aclImdb_v1.tar.gz")  # looked for in this order
IMDB_DOWNLOAD = "aclImdb_v1.tar.gz"
RT_ARCHIVE = "rt-polaritydata.tar.gz"
RT_FILES = ("rt-polarity.pos", "rt-polarity.neg")


# ---------------------------------------------------------------------------------- data folder
def _resolve(data_dir: str | os.PathLike[str] | None) -> tuple[pathlib.Path, str]:
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
    return _resolve(data_dir)[0]


def _check_choice(argument: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argument}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _missing(
    dataset: str,
    what: str,
    root: pathlib.Path,
    chosen_by: str,
    looked_at: Sequence[pathlib.Path],
    files: Sequence[str],
    sources: Sequence[str],
) -> DatasetMissing:
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


# ------------------------------------------------------------------------------------------ IDX
# IDX type codes (http://yann.lecun.com/exdb/mnist/): big-endian payload.
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: pathlib.Path) -> tuple[bytes | None, bytes]:
    """(the file's bytes if it is gzip else None, the content). Damaged gzip -> CorruptData."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            return data, gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; truncation: EOFError
            raise CorruptData(f"{path}: damaged or truncated gzip data ({type(exc).__name__}: {exc})") from exc
    if path.suffix == ".gz":
        raise CorruptData(f"{path}: the name ends in .gz but the file is not gzip data (starts with {data[:4]!r})")
    return None, data


def _parse_idx(raw: bytes, path: pathlib.Path) -> np.ndarray:
    import numpy as np

    if len(raw) < 4:
        raise CorruptData(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes of magic)")
    if raw[0] != 0 or raw[1] != 0:
        raise CorruptData(f"{path}: bad IDX magic: the first two bytes must be 0x00 0x00, got {raw[:4].hex(' ')}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise CorruptData(f"{path}: bad IDX magic: unknown type code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise CorruptData(f"{path}: bad IDX magic: 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptData(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    count = 1
    for d in dims:
        count *= d
    expected = count * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated payload" if got < expected else "extra bytes after the payload"
        raise CorruptData(
            f"{path}: {what}: dims {list(dims)} of {dtype.name} need {expected} bytes after the header, got {got}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)  # native byte order, writable


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by content, not by name).

    Checks the magic (``0x00 0x00 <type> <ndim>``), the type code (u8, i8, i16, i32, f32, f64),
    the dimensions and that the payload has exactly ``prod(dims) * itemsize`` bytes; anything else
    raises :class:`CorruptData` (naming the file and what is wrong). Returns a writable array in
    native byte order with shape ``dims``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetMissing(f"IDX file not found: {path}", looked_at=[path])
    return _parse_idx(_read_maybe_gzip(path)[1], path)


def _verify(dataset: str, name: str, path: pathlib.Path, stored: bytes | None, content: bytes) -> None:
    """Check ``path`` against CHECKSUMS[(dataset, name)] (no-op for unknown files).

    ``stored``: the bytes as stored when they differ from ``content`` (a .gz), else None.
    """
    known = CHECKSUMS.get((dataset, name))
    if known is None:
        return
    if (
        known.md5 is not None
        and stored is not None
        and hashlib.md5(stored, usedforsecurity=False).hexdigest() == known.md5
    ):
        return
    if known.size is not None and len(content) != known.size:
        raise CorruptData(
            f"{path}: size check failed: {dataset} {name} has {known.size} bytes of content, got {len(content)}"
        )
    if known.sha256 is not None:
        got = hashlib.sha256(content).hexdigest()
        if got != known.sha256:
            what = "decompressed content" if stored is not None else "file"
            raise CorruptData(f"{path}: checksum mismatch: sha256 of the {what} expected {known.sha256}, got {got}")
        return
    if known.md5 is not None and stored is not None:
        got = hashlib.md5(stored, usedforsecurity=False).hexdigest()
        raise CorruptData(
            f"{path}: checksum mismatch: md5 expected {known.md5} (the original {name}), got {got}; "
            "only the original .gz can be verified for this file"
        )
    # An uncompressed copy of a file whose only published digest is of the .gz (MNIST's training
    # images): the size and the IDX header are all that can be checked.


def _image_files(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def load_image_set(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or Fashion-MNIST: ``(images uint8 [N, 28, 28], labels int64 [N])``.

    name: ``"mnist"`` or ``"fashion-mnist"``; split: ``"train"`` or ``"test"``. Files are
    ``<data_dir>/<name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with or without ``.gz``
    (``.gz`` preferred). Known files are verified against :data:`CHECKSUMS` (``verify=False``
    skips that, for synthetic test data only); the header, shapes, label range (0-9) and that both
    files hold the same number of examples are always checked.
    """
    import numpy as np

    _check_choice("name", name, IMAGE_SETS)
    _check_choice("split", split, SPLITS)
    root, chosen_by = _resolve(data_dir)
    folder = root / name
    files = _image_files(split)
    paths: dict[str, pathlib.Path] = {}
    looked_at: list[pathlib.Path] = []
    for file in files:
        candidates = [folder / file, folder / file[: -len(".gz")]]
        looked_at += candidates
        found = next((p for p in candidates if p.is_file()), None)
        if found is not None:
            paths[file] = found
    missing = [f for f in files if f not in paths]
    if missing:
        if not download:
            raise _missing(name, f"{name} ({split} split)", root, chosen_by, looked_at, files, URLS[name])
        for file in missing:
            known = CHECKSUMS.get((name, file))
            expected = known.md5 if (verify and known is not None) else None
            paths[file] = _fetch([base + file for base in URLS[name]], folder / file, "md5", expected)

    arrays = []
    for file in files:
        path = paths[file]
        stored, content = _read_maybe_gzip(path)
        if verify:
            _verify(name, file, path, stored, content)
        arrays.append(_parse_idx(content, path))
    images, labels = arrays
    ipath, lpath = paths[files[0]], paths[files[1]]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise CorruptData(f"{ipath}: expected uint8 images [N, 28, 28], got {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise CorruptData(f"{lpath}: expected uint8 labels [N], got {labels.dtype} {list(labels.shape)}")
    if len(images) != len(labels):
        raise CorruptData(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels")
    if labels.size and int(labels.max()) > 9:
        raise CorruptData(f"{lpath}: labels must be 0-9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def _fetch(urls: Sequence[str], dest: pathlib.Path, algorithm: str, expected: str | None) -> pathlib.Path:
    try:
        return _download.download(urls, dest, algorithm=algorithm, expected=expected)
    except _download.ChecksumMismatch as exc:
        raise CorruptData(
            f"downloaded {dest.name} refused: checksum mismatch: {exc.algorithm} from {exc.url} "
            f"expected {exc.expected}, got {exc.got}"
        ) from exc
    except _download.DownloadError as exc:
        raise DownloadFailed(
            f"{exc}\nWith no network, copy the file into {dest.parent}/ yourself (see the README, section 'Data sets')."
        ) from exc


# ------------------------------------------------------------------------------------------ IMDB
_IMDB_CACHE_FORMAT = 1
_LABELS = {"neg": 0, "pos": 1}


def _safe_member_name(name: str, archive: pathlib.Path) -> tuple[str, ...]:
    """The normalised path parts of a tar member; refuses absolute paths and '..' (path traversal)."""
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise CorruptData(f"{archive}: unsafe member name {name!r} (absolute path); refused")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise CorruptData(f"{archive}: unsafe member name {name!r} (path traversal '..'); refused")
    return parts


def _parse_imdb_archive(archive: pathlib.Path) -> dict[str, tuple[list[str], list[int]]]:
    """Read every review of both splits straight from the tar (nothing is extracted to disk).

    Every member is checked first: absolute names, '..' and links/devices refuse the archive.
    """
    import tarfile

    found: dict[str, list[tuple[int, str, str]]] = {s: [] for s in SPLITS}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                parts = _safe_member_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise CorruptData(
                        f"{archive}: member {member.name!r} is a link or special file (type {member.type!r}); refused"
                    )
                if (
                    member.isfile()
                    and len(parts) == 4
                    and parts[0] == "aclImdb"
                    and parts[1] in found
                    and parts[2] in _LABELS
                    and parts[3].endswith(".txt")
                ):
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has data
                    data = handle.read()
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise CorruptData(f"{archive}: member {member.name!r} is not UTF-8 text ({exc})") from exc
                    found[parts[1]].append((_LABELS[parts[2]], parts[3], text))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CorruptData(f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc})") from exc
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
    (downloaded there by ``download=True``). Archives are verified against :data:`CHECKSUMS`
    (``verify=False`` skips that) and read in place: nothing is extracted, a member with an
    absolute name, '..' or a link refuses the whole archive. Order: neg reviews then pos, each by
    sorted file name. Texts are returned raw (HTML ``<br />`` included; :func:`tokenize` drops it).

    The parsed splits are cached as ``imdb-<split>-<key>.json.gz`` (written atomically) in
    ``cache_dir``, else ``<data_dir>/imdb/cache/`` when writable, else the user cache folder;
    the key changes with the source's path, size and modification time.
    """
    import numpy as np

    _check_choice("split", split, SPLITS)
    root, chosen_by = _resolve(data_dir)
    folder = root / "imdb"
    split_dir = folder / "aclImdb" / split
    looked_at = [split_dir / "pos", split_dir / "neg"] + [folder / a for a in IMDB_ARCHIVES]
    source: tuple[str, pathlib.Path] | None = None
    if (split_dir / "pos").is_dir() and (split_dir / "neg").is_dir():
        source = ("folder", split_dir)
    else:
        archive = next((folder / a for a in IMDB_ARCHIVES if (folder / a).is_file()), None)
        if archive is None and download:
            known = CHECKSUMS[("imdb", IMDB_DOWNLOAD)]
            urls = [base + IMDB_DOWNLOAD for base in URLS["imdb"]]
            archive = _fetch(urls, folder / IMDB_DOWNLOAD, "md5", known.md5 if verify else None)
        if archive is not None:
            source = ("archive", archive)
    if source is None:
        what = f"IMDB ({split} split)"
        raise _missing("imdb", what, root, chosen_by, looked_at, ["aclImdb/ or " + IMDB_DOWNLOAD], URLS["imdb"])

    kind, path = source
    cache = _cache_folder(folder, cache_dir)
    key = _source_key(kind, path, verify and kind == "archive")
    cached = _read_cache(_cache_path(cache, split, key), split) if cache is not None else None
    if cached is None:
        if kind == "folder":
            parsed = {split: _read_imdb_folder(path)}
        else:
            if verify:
                _verify_file("imdb", path)
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


def _verify_file(dataset: str, path: pathlib.Path) -> None:
    """Verify a whole file (archives, text files) against CHECKSUMS by its name, streaming it."""
    known = CHECKSUMS.get((dataset, path.name))
    if known is None:
        return
    if known.size is not None and path.stat().st_size != known.size:
        raise CorruptData(f"{path}: size check failed: expected {known.size} bytes, got {path.stat().st_size}")
    algorithm, expected = ("sha256", known.sha256) if known.sha256 is not None else ("md5", known.md5)
    if expected is None:
        return
    got = _download.file_digest(path, algorithm)
    if got != expected:
        raise CorruptData(f"{path}: checksum mismatch: {algorithm} expected {expected}, got {got}")


# ----------------------------------------------------------------------------------- rt-polarity
def _split_lines(data: bytes) -> list[str]:
    text = data.decode("latin-1")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def _download_rt(folder: pathlib.Path, verify: bool) -> None:
    """Fetch rt-polaritydata.tar.gz, take the two files from it (checked), write them atomically."""
    import tarfile

    archive = _fetch([base + RT_ARCHIVE for base in URLS["rt-polarity"]], folder / RT_ARCHIVE, "md5", None)
    try:
        contents: dict[str, bytes] = {}
        try:
            with tarfile.open(archive, "r|*") as tar:
                for member in tar:
                    parts = _safe_member_name(member.name, archive)
                    if member.isfile() and parts and parts[-1] in RT_FILES:
                        handle = tar.extractfile(member)
                        assert handle is not None
                        contents[parts[-1]] = handle.read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise CorruptData(f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc})") from exc
        for name in RT_FILES:
            if name not in contents:
                raise CorruptData(f"{archive}: has no member named {name}")
            if verify:
                _verify_bytes("rt-polarity", name, archive / name, contents[name])
        for name in RT_FILES:
            atomic_write(folder / name, contents[name], parents=True)
    finally:
        with contextlib.suppress(OSError):
            archive.unlink()


def _verify_bytes(dataset: str, name: str, path: pathlib.Path, data: bytes) -> None:
    known = CHECKSUMS.get((dataset, name))
    if known is None or known.sha256 is None:
        return
    got = hashlib.sha256(data).hexdigest()
    if got != known.sha256:
        raise CorruptData(f"{path}: checksum mismatch: sha256 expected {known.sha256}, got {got}")


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

    root, chosen_by = _resolve(data_dir)
    folder = root / "rt-polarity"
    layouts = [folder, folder / "rt-polaritydata"]
    looked_at = [d / n for d in layouts for n in RT_FILES]
    base = next((d for d in layouts if all((d / n).is_file() for n in RT_FILES)), None)
    if base is None and download:
        _download_rt(folder, verify)
        base = folder
    if base is None:
        raise _missing("rt-polarity", "rt-polarity", root, chosen_by, looked_at, list(RT_FILES), URLS["rt-polarity"])
    texts: list[str] = []
    labels: list[int] = []
    for name, label in zip(RT_FILES, (1, 0), strict=True):
        path = base / name
        data = path.read_bytes()
        if verify:
            _verify_bytes("rt-polarity", name, path, data)
        lines = _split_lines(data)
        texts += lines
        labels += [label] * len(lines)
    return texts, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------- text helpers
_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-case, replace HTML line breaks (``<br />``, ``<br>``) by spaces, then split into words
    (letters/digits/underscore, inner apostrophes kept: ``don't``) and single punctuation marks."""
    return _TOKEN.findall(_BR.sub(" ", text).lower())


class Vocab:
    """Token <-> id table. Id 0 is padding (``"<pad>"``), id 1 unknown (``"<unk>"``)."""

    PAD = 0
    UNK = 1
    SPECIALS = ("<pad>", "<unk>")

    def __init__(self, itos: Sequence[str]) -> None:
        itos = list(itos)
        if tuple(itos[:2]) != self.SPECIALS:
            raise ValueError(f"itos: expected to start with {list(self.SPECIALS)}, got {itos[:2]}")
        if len(set(itos)) != len(itos):
            raise ValueError("itos: expected unique tokens, got duplicates")
        self.itos = itos
        self.stoi = {tok: i for i, tok in enumerate(itos)}

    @classmethod
    def build(cls, texts: Iterable[list[str]], max_size: int, min_freq: int = 1) -> Vocab:
        """The ``max_size - 2`` most frequent tokens with count >= ``min_freq``, after PAD and UNK.

        ``max_size`` counts the two special ids, so ``len(vocab) <= max_size`` (an embedding of
        ``max_size`` rows fits). Ties are broken deterministically: frequency descending, then token.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 2:
            raise ValueError(f"max_size: expected an int >= 2 (PAD and UNK included), got {max_size!r}")
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq: expected an int >= 1, got {min_freq!r}")
        counts: collections.Counter[str] = collections.Counter()
        for tokens in texts:
            if isinstance(tokens, str):
                raise TypeError("texts: expected an iterable of token lists (see tokenize), got a str inside")
            counts.update(tokens)
        for special in cls.SPECIALS:
            counts.pop(special, None)
        ranked = sorted((item for item in counts.items() if item[1] >= min_freq), key=lambda kv: (-kv[1], kv[0]))
        return cls([*cls.SPECIALS, *(tok for tok, _ in ranked[: max_size - 2])])

    def encode(self, tokens: list[str], max_len: int | None = None) -> list[int]:
        """Ids of ``tokens`` (unknown -> UNK). With ``max_len``, only the first ``max_len`` tokens
        are kept (truncation, never padding); without it nothing is cut."""
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"max_len: expected None or an int >= 1, got {max_len!r}")
        if isinstance(tokens, str):
            raise TypeError("tokens: expected a list of tokens (see tokenize), got a str")
        if max_len is not None:
            tokens = tokens[:max_len]
        get, unk = self.stoi.get, self.UNK
        return [get(tok, unk) for tok in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``; an id outside ``0..len(self)-1`` raises (a negative one would wrap)."""
        out = []
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids: expected ids in 0..{len(self.itos) - 1}, got {i!r}")
            out.append(self.itos[i])
        return out

    def to_list(self) -> list[str]:
        """The id -> token list (save it with a checkpoint; ``Vocab(lst)`` restores the same ids)."""
        return list(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"
