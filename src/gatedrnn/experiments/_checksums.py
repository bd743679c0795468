"""The known files: their digests, where they are downloaded from, and the one rule that checks
them, on every load and on every download (private; see ``data``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Callable, Sequence

from . import _download
from ._datadir import CorruptData, DownloadFailed

__all__ = ["CHECKSUMS", "URLS", "Checksum", "fetch", "verify"]


@dataclasses.dataclass(frozen=True)
class Checksum:
    """Digests of one distributed file.

    ``md5``: of the file exactly as distributed (the ``.gz`` or ``.tar.gz``). ``sha256`` and
    ``size``: of the content, i.e. the decompressed bytes for an IDX ``.gz`` (so a re-compressed
    copy, such as Debian's Fashion-MNIST, still verifies) and the file itself otherwise.
    See :func:`verify` for the rule.
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
    # IMDB: the original archive (with unsup/) and a repack of its train and test folders alone.
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

Blob = bytes | pathlib.Path  # bytes in memory, or a file read in chunks


def _digest(blob: Blob, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    if isinstance(blob, bytes):
        digest.update(blob)
    else:
        with open(blob, "rb") as handle:
            for chunk in iter(lambda: handle.read(_download.CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _size(blob: Blob) -> int:
    return len(blob) if isinstance(blob, bytes) else blob.stat().st_size


def verify(dataset: str, name: str, label: str | os.PathLike[str], *, content: Blob, distributed: Blob | None) -> None:
    """Check one file against ``CHECKSUMS[(dataset, name)]`` (files not in the table pass).

    ``content``: what the loader reads (the decompressed bytes of an IDX ``.gz``, else the file);
    ``distributed``: the file as it was distributed (the ``.gz`` itself, an archive, a text file),
    or None when the copy on disk is not in that form (an uncompressed IDX file). ``label`` names
    the file in errors. The rule, strongest digest first:

    1. the MD5 of the distributed file matches: accepted (the original, byte for byte);
    2. else a SHA-256 of the content is known: it decides;
    3. else an MD5 is known and the distributed form is at hand: refused (it differs);
    4. else the size of the content, where known, is all that can be checked (an uncompressed
       copy of a file whose one published digest is of its ``.gz``: MNIST's training images).

    A refusal raises :class:`CorruptData` naming the file, the digest, what was expected and what came.
    """
    known = CHECKSUMS.get((dataset, name))
    if known is None:
        return
    if known.md5 is not None and distributed is not None and _digest(distributed, "md5") == known.md5:
        return
    what = "decompressed content" if distributed is not None and distributed is not content else "file"
    if known.sha256 is not None:
        got = _digest(content, "sha256")
        if got != known.sha256:
            raise CorruptData(f"{label}: checksum mismatch: sha256 of the {what} expected {known.sha256}, got {got}")
        return
    if known.md5 is not None and distributed is not None:
        got = _digest(distributed, "md5")
        raise CorruptData(f"{label}: checksum mismatch: md5 of the file expected {known.md5}, got {got}")
    if known.size is not None and _size(content) != known.size:
        raise CorruptData(f"{label}: size check failed: expected {known.size} bytes of {what}, got {_size(content)}")


def fetch(urls: Sequence[str], dest: pathlib.Path, check: Callable[[pathlib.Path], object] | None) -> pathlib.Path:
    """Download the first mirror that works into ``dest``; ``check`` (usually :func:`verify` on the
    temporary file) refuses a bad copy before it takes ``dest``'s name."""
    try:
        return _download.download(urls, dest, check=check)
    except _download.DownloadError as exc:
        raise DownloadFailed(
            f"{exc}\nWith no network, copy the file into {dest.parent}/ yourself (see docs/data.md)."
        ) from exc
