"""MNIST and Fashion-MNIST from their IDX files (private; see ``data``)."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

from . import _checksums
from ._checksums import URLS, fetch
from ._datadir import SPLITS, CorruptData, check_choice, missing, resolve
from ._idx import parse_idx, read_maybe_gzip

if TYPE_CHECKING:
    import numpy as np

__all__ = ["IMAGE_SETS", "load_image_set"]

IMAGE_SETS = ("mnist", "fashion-mnist")


def _image_files(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _checked_content(dataset: str, name: str, path: pathlib.Path, label: str | os.PathLike[str], check: bool) -> bytes:
    """An IDX file's content (gunzipped when gzip), checked against ``CHECKSUMS`` when ``check``."""
    stored, content = read_maybe_gzip(path)
    if check:
        _checksums.verify(dataset, name, label, content=content, distributed=stored)
    return content


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
    (``.gz`` preferred). Known files are verified against ``CHECKSUMS`` (``verify=False``
    skips that, for synthetic test data only); the header, shapes, label range (0-9) and that both
    files hold the same number of examples are always checked.
    """
    import numpy as np

    check_choice("name", name, IMAGE_SETS)
    check_choice("split", split, SPLITS)
    root, chosen_by = resolve(data_dir)
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
    absent = [f for f in files if f not in paths]
    if absent:
        if not download:
            raise missing(name, f"{name} ({split} split)", root, chosen_by, looked_at, files, URLS[name])
        for file in absent:
            urls = [base + file for base in URLS[name]]
            vet = (lambda tmp, f=file: _checked_content(name, f, tmp, f, True)) if verify else None
            paths[file] = fetch(urls, folder / file, vet)

    arrays = [parse_idx(_checked_content(name, f, paths[f], paths[f], verify), paths[f]) for f in files]
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
