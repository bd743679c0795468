"""Data loaders: IDX, MNIST/Fashion-MNIST, aclImdb, rt-polarity, downloads, tokeniser, vocabulary.

Every file here is built by the test itself (tiny IDX files, aclImdb folders and tarballs), with
expected values written by hand or packed independently with ``struct``; downloads go through
``file://`` URLs or a fake opener, and a fixture makes any socket use fail, so no test touches the
network. The real data sets (the ``data_dir`` fixture: ``shared/data`` beside the checkout, else
``$GATEDRNN_DATA``) are read at the end; those tests skip when neither is there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from gatedrnn.experiments import _download, _imdb, data
from gatedrnn.experiments.data import (
    Checksum,
    CorruptData,
    DataError,
    DatasetMissing,
    DownloadFailed,
    Vocab,
    load_image_set,
    load_imdb,
    load_rt_polarity,
    read_idx,
    resolve_data_dir,
    tokenize,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a data test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ------------------------------------------------------------------------------- IDX builders
def idx_bytes(type_code: int, dims: list[int], payload: bytes) -> bytes:
    """An IDX file written by hand: 0x00 0x00 type ndim, big-endian u32 dims, payload."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write(path: Path, blob: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
    return path


# ----------------------------------------------------------------------------------- read_idx
def test_read_idx_u8_raw_and_gz(tmp_path: Path) -> None:
    payload = bytes(range(24))
    blob = idx_bytes(0x08, [2, 3, 4], payload)
    expected = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for gz, name in [(False, "a-idx3-ubyte"), (True, "a-idx3-ubyte.gz"), (True, "gz-without-suffix")]:
        got = read_idx(write(tmp_path / name, blob, gz))
        assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, expected)
        got[0, 0, 0] = 7  # writable copy


@pytest.mark.parametrize(
    ("code", "fmt", "values", "dtype"),
    [
        (0x09, ">3b", [-1, 0, 5], np.int8),
        (0x0B, ">3h", [-300, 2, 30000], np.int16),
        (0x0C, ">3i", [-70000, 1, 2**30], np.int32),
        (0x0D, ">3f", [1.5, -2.25, 0.0], np.float32),
        (0x0E, ">3d", [1e-300, -2.5, 3.0], np.float64),
    ],
)
def test_read_idx_other_types_big_endian(tmp_path: Path, code: int, fmt: str, values: list, dtype: type) -> None:
    got = read_idx(write(tmp_path / "x.idx", idx_bytes(code, [3], struct.pack(fmt, *values))))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, np.array(values, dtype=dtype))


def test_read_idx_zero_length_dimension(tmp_path: Path) -> None:
    got = read_idx(write(tmp_path / "empty.idx", idx_bytes(0x08, [0, 28, 28], b"")))
    assert got.shape == (0, 28, 28)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab", "bad IDX magic"),
        (b"\x00\x07\x08\x01" + struct.pack(">I", 2) + b"ab", "bad IDX magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab", "unknown type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
        (idx_bytes(0x08, [2, 3], bytes(5)), "truncated payload"),  # one byte short
        (idx_bytes(0x08, [2, 3], bytes(7)), "extra bytes"),  # one byte too many
        (idx_bytes(0x08, [3, 28, 28], bytes(2 * 28 * 28)), "need 2352 bytes"),  # wrong dims for the payload
        (idx_bytes(0x0C, [2], bytes(4)), "truncated payload"),  # int32 needs 8 bytes
    ],
)
def test_read_idx_refuses_bad_files(tmp_path: Path, blob: bytes, message: str) -> None:
    for gz in (False, True):
        path = write(tmp_path / f"bad{int(gz)}", blob, gz)
        with pytest.raises(CorruptData, match=message) as info:
            read_idx(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, DataError)


def test_read_idx_refuses_damaged_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(0x08, [1000], bytes(range(250)) * 4), mtime=0)
    truncated = write(tmp_path / "truncated.gz", good[: len(good) // 2])
    with pytest.raises(CorruptData, match=r"truncated gzip|damaged"):
        read_idx(truncated)
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # inside the CRC32 trailer
    with pytest.raises(CorruptData, match=r"damaged"):
        read_idx(write(tmp_path / "crc.gz", bytes(flipped)))
    with pytest.raises(CorruptData, match=r"not gzip"):
        read_idx(write(tmp_path / "plain.gz", idx_bytes(0x08, [1], b"x")))


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="nope\\.idx"):
        read_idx(tmp_path / "nope.idx")


# ------------------------------------------------------------------------------ image sets
def make_image_set(
    root: Path, name: str, split: str, n: int, *, gz: bool = True, labels: list[int] | None = None, side: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny IDX pair; return the arrays it encodes (built independently of the loader)."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, side, 28), dtype=np.uint8)
    lab = np.array(labels if labels is not None else [i % 10 for i in range(n)], dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write(root / name / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(0x08, [n, side, 28], images.tobytes()), gz)
    write(root / name / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(0x08, [len(lab)], lab.tobytes()), gz)
    return images, lab.astype(np.int64)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize(("split", "gz"), [("train", True), ("test", False)])
def test_load_image_set_tiny(tmp_path: Path, name: str, split: str, gz: bool) -> None:
    images, labels = make_image_set(tmp_path, name, split, 12, gz=gz)
    got_x, got_y = load_image_set(name, split, tmp_path, verify=False)
    assert got_x.dtype == np.uint8 and got_x.shape == (12, 28, 28)
    assert got_y.dtype == np.int64 and got_y.shape == (12,)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)


def test_load_image_set_checks_consistency(tmp_path: Path) -> None:
    make_image_set(tmp_path / "a", "mnist", "test", 5, labels=[0, 1, 2, 3])
    with pytest.raises(CorruptData, match=r"5 images but .* 4 labels"):
        load_image_set("mnist", "test", tmp_path / "a", verify=False)
    make_image_set(tmp_path / "b", "mnist", "test", 3, labels=[0, 10, 2])
    with pytest.raises(CorruptData, match=r"labels must be 0-9"):
        load_image_set("mnist", "test", tmp_path / "b", verify=False)
    make_image_set(tmp_path / "c", "mnist", "test", 3, side=27)
    with pytest.raises(CorruptData, match=r"\[N, 28, 28\]"):
        load_image_set("mnist", "test", tmp_path / "c", verify=False)


def test_load_image_set_refuses_checksum_mismatch(tmp_path: Path) -> None:
    # Tiny files under the real names are not MNIST: the known checksums refuse them.
    make_image_set(tmp_path, "mnist", "test", 4)
    with pytest.raises(CorruptData, match=r"t10k-images-idx3-ubyte.gz: (size check|checksum mismatch)"):
        load_image_set("mnist", "test", tmp_path)


def test_checksum_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gz MD5 match, or decompressed SHA-256 match (a re-gzipped copy) accept; a known digest that
    differs refuses; MD5 only known + raw copy: size check only."""
    images, _ = make_image_set(tmp_path, "fashion-mnist", "test", 6)
    folder = tmp_path / "fashion-mnist"
    img_gz = (folder / "t10k-images-idx3-ubyte.gz").read_bytes()
    lab_gz = (folder / "t10k-labels-idx1-ubyte.gz").read_bytes()
    img_raw, lab_raw = gzip.decompress(img_gz), gzip.decompress(lab_gz)

    def use(images_entry: Checksum, labels_entry: Checksum | None = None) -> None:
        monkeypatch.setitem(data.CHECKSUMS, ("fashion-mnist", "t10k-images-idx3-ubyte.gz"), images_entry)
        labels = labels_entry or Checksum(sha256=hashlib.sha256(lab_raw).hexdigest())
        monkeypatch.setitem(data.CHECKSUMS, ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"), labels)

    use(Checksum(md5=hashlib.md5(img_gz).hexdigest()))  # the original .gz
    np.testing.assert_array_equal(load_image_set("fashion-mnist", "test", tmp_path)[0], images)

    # Re-gzipped at another level: MD5 of the .gz differs, SHA-256 of the content matches.
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(img_raw, compresslevel=1, mtime=123))
    assert (
        hashlib.md5((folder / "t10k-images-idx3-ubyte.gz").read_bytes()).hexdigest() != hashlib.md5(img_gz).hexdigest()
    )
    use(Checksum(md5=hashlib.md5(img_gz).hexdigest(), sha256=hashlib.sha256(img_raw).hexdigest(), size=len(img_raw)))
    np.testing.assert_array_equal(load_image_set("fashion-mnist", "test", tmp_path)[0], images)

    # One pixel changed (header intact): the SHA-256 refuses it, naming expected and got.
    damaged = bytearray(img_raw)
    damaged[-1] ^= 1
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(damaged)))
    with pytest.raises(CorruptData, match=r"checksum mismatch: sha256 .* expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        load_image_set("fashion-mnist", "test", tmp_path)

    # Only the .gz MD5 known (like MNIST's training images): a different .gz is refused...
    use(Checksum(md5="0" * 32, size=len(img_raw)))
    with pytest.raises(CorruptData, match=r"checksum mismatch: md5 of the file expected 0{32}"):
        load_image_set("fashion-mnist", "test", tmp_path)
    # ...and an uncompressed copy can only be size-checked.
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    write(folder / "t10k-images-idx3-ubyte", img_raw)
    np.testing.assert_array_equal(load_image_set("fashion-mnist", "test", tmp_path)[0], images)
    use(Checksum(md5="0" * 32, size=len(img_raw) + 1))
    with pytest.raises(CorruptData, match=r"size check"):
        load_image_set("fashion-mnist", "test", tmp_path)


def test_missing_image_set_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEDRNN_DATA", str(tmp_path))
    with pytest.raises(DatasetMissing) as info:
        load_image_set("fashion-mnist", "train")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for stem in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]:
        for path in [tmp_path / "fashion-mnist" / f"{stem}.gz", tmp_path / "fashion-mnist" / stem]:
            assert f"  {path}\n" in message
            assert path in info.value.looked_at
    assert "$GATEDRNN_DATA" in message and "--download" in message and "--data-dir" in message
    assert data.URLS["fashion-mnist"][0] in message
    assert f"into {tmp_path / 'fashion-mnist'}/" in message
    assert info.value.dataset == "fashion-mnist"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"name": "cifar", "split": "train"},
            ValueError,
            "name: expected one of 'mnist', 'fashion-mnist', got 'cifar'",
        ),
        ({"name": "mnist", "split": "valid"}, ValueError, "split: expected one of 'train', 'test', got 'valid'"),
        ({"name": "mnist", "split": "train", "data_dir": ""}, ValueError, "data_dir: expected a folder path"),
        ({"name": "mnist", "split": "train", "data_dir": 3}, TypeError, "data_dir: expected a path"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_image_set(**kwargs)


# ---------------------------------------------------------------------------- resolve_data_dir
def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda appname: str(tmp_path / "cache" / appname))
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    assert resolve_data_dir() == tmp_path / "cache" / "gatedrnn"
    monkeypatch.setenv("GATEDRNN_DATA", "")  # empty counts as unset
    assert resolve_data_dir() == tmp_path / "cache" / "gatedrnn"
    monkeypatch.setenv("GATEDRNN_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir("~/d") == tmp_path / "home" / "d"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("rel") == tmp_path / "rel"  # absolute
    with pytest.raises(DatasetMissing, match=r"GATEDRNN_DATA"):  # the message says what chose the folder
        load_image_set("mnist", "test")


# ----------------------------------------------------------------------------------- downloads
def serve(tmp_path: Path, files: dict[str, bytes]) -> str:
    """A 'mirror': a local folder reached by a file:// URL."""
    mirror = tmp_path / "mirror"
    for name, blob in files.items():
        write(mirror / name, blob)
    return mirror.as_uri() + "/"


def test_download_image_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251
    files = {
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(0x08, [2, 28, 28], images.tobytes())),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(0x08, [2], bytes([3, 9]))),
    }
    base = serve(tmp_path, files)
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setitem(data.URLS, "mnist", [dead, base])  # first mirror fails
    for name, blob in files.items():
        monkeypatch.setitem(data.CHECKSUMS, ("mnist", name), Checksum(md5=hashlib.md5(blob).hexdigest()))
    root = tmp_path / "data"
    x, y = load_image_set("mnist", "test", root, download=True)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [3, 9])
    for name, blob in files.items():
        assert (root / "mnist" / name).read_bytes() == blob
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(files)  # no temp files left
    # A second call reads the files in place (the mirror is gone).
    monkeypatch.setitem(data.URLS, "mnist", [dead])
    np.testing.assert_array_equal(load_image_set("mnist", "test", root, download=True)[0], images)


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = serve(tmp_path, {"t10k-images-idx3-ubyte.gz": b"not the real file"})
    monkeypatch.setitem(data.URLS, "mnist", [base])
    root = tmp_path / "data"
    with pytest.raises(
        CorruptData,
        match=r"t10k-images-idx3-ubyte.gz: checksum mismatch: sha256 .* expected 0fa7898d509279e4.*downloaded from file:",
    ):
        load_image_set("mnist", "test", root, download=True)
    assert list((root / "mnist").iterdir()) == []


def test_download_all_mirrors_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = [(tmp_path / f"dead{i}").as_uri() + "/" for i in range(2)]
    monkeypatch.setitem(data.URLS, "fashion-mnist", dead)
    with pytest.raises(DownloadFailed) as info:
        load_image_set("fashion-mnist", "train", tmp_path / "data", download=True)
    for url in dead:
        assert url + "train-images-idx3-ubyte.gz" in str(info.value)
    assert isinstance(info.value, DataError)


def only(blob: bytes):
    """A download check that accepts exactly ``blob`` (as the checksum rule would refuse the rest)."""

    def check(path: Path) -> None:
        if path.read_bytes() != blob:
            raise CorruptData(f"{path.name}: not the expected bytes")

    return check


def test_download_short_read_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that closes early (fewer bytes than Content-Length) writes nothing."""

    class Response(io.BytesIO):
        def __init__(self, blob: bytes) -> None:
            super().__init__(blob)
            self.headers = {"Content-Length": "100"}

    monkeypatch.setattr(_download, "urlopen", lambda url, timeout: Response(b"x" * 40))
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(_download.DownloadError, match=r"after 40 of 100 bytes"):
        _download.download(["https://example.invalid/f.bin"], dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    monkeypatch.setattr(_download, "urlopen", lambda url, timeout: Response(b"y" * 100))
    _download.download(["https://example.invalid/f.bin"], dest, check=only(b"y" * 100))
    assert dest.read_bytes() == b"y" * 100


def test_download_cut_connection_tries_next_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    class Cut(io.BytesIO):
        headers: dict[str, str] = {}  # noqa: RUF012

        def read(self, size: int = -1) -> bytes:
            raise http.client.IncompleteRead(b"partial", 10)

    seen: list[str] = []

    def opener(url: str, timeout: float) -> io.BytesIO:
        seen.append(url)
        return Cut() if "first" in url else io.BytesIO(b"payload")

    monkeypatch.setattr(_download, "urlopen", opener)
    dest = tmp_path / "f.bin"
    urls = ["https://first.invalid/f.bin", "https://second.invalid/f.bin"]
    _download.download(urls, dest, check=only(b"payload"))
    assert seen == urls and dest.read_bytes() == b"payload"
    monkeypatch.setattr(_download, "urlopen", lambda url, timeout: Cut())
    with pytest.raises(_download.DownloadError, match=r"first\.invalid/f\.bin: IncompleteRead"):
        _download.download(urls[:1], tmp_path / "g.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_download_refused_copy_tries_next_mirror_and_is_never_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_download, "urlopen", lambda url, timeout: io.BytesIO(url.encode()))
    urls = ["https://bad.invalid/f.bin", "https://good.invalid/f.bin"]
    dest = tmp_path / "f.bin"
    _download.download(urls, dest, check=only(urls[1].encode()))
    assert dest.read_bytes() == urls[1].encode()
    with pytest.raises(CorruptData, match=r"not the expected bytes \(downloaded from https://bad\.invalid/f\.bin"):
        _download.download(urls[:1], tmp_path / "g.bin", check=only(b"other"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# ----------------------------------------------------------------------------------------- IMDB
REVIEWS = {
    # (split, label folder, file name): text, with non-ASCII and HTML line breaks
    ("train", "pos", "0_9.txt"): "Great film.<br /><br />Loved it",
    ("train", "pos", "10_8.txt"): "Fine, café scenes",
    ("train", "neg", "1_2.txt"): "Dull.",
    ("train", "neg", "2_1.txt"): "Awful acting",
    ("test", "pos", "3_10.txt"): "Superb",
    ("test", "neg", "4_3.txt"): "Boring plot",
    ("test", "neg", "11_1.txt"): "Worst ever",
}
# Expected order, by hand: neg before pos, each by file name as a string ("10_8" < "0_9" is false:
# "0_9" < "10_8" since "0" < "1"; "11_1" < "4_3").
EXPECTED = {
    "train": (["Dull.", "Awful acting", "Great film.<br /><br />Loved it", "Fine, café scenes"], [0, 0, 1, 1]),
    "test": (["Worst ever", "Boring plot", "Superb"], [0, 0, 1]),
}


def make_imdb_folder(root: Path) -> None:
    for (split, label, name), text in REVIEWS.items():
        path = root / "imdb" / "aclImdb" / split / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def make_tar(path: Path, members: list[tuple[str, bytes | None]], extra: list[tarfile.TarInfo] = ()) -> Path:
    """A .tar.gz with the given (name, bytes) files (None: a directory) and extra raw members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            if blob is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        for info in extra:
            tar.addfile(info)
    return path


def imdb_members() -> list[tuple[str, bytes | None]]:
    members: list[tuple[str, bytes | None]] = [("aclImdb", None), ("aclImdb/README", b"readme")]
    members += [(f"aclImdb/{s}/{lab}/{n}", t.encode()) for (s, lab, n), t in REVIEWS.items()]
    members += [("aclImdb/train/unsup/5_0.txt", b"unlabelled"), ("aclImdb/train/urls_pos.txt", b"http://x")]
    return members


@pytest.mark.parametrize("split", ["train", "test"])
def test_imdb_folder(tmp_path: Path, split: str) -> None:
    make_imdb_folder(tmp_path)
    texts, labels = load_imdb(split, tmp_path)
    assert texts == EXPECTED[split][0]
    assert labels.dtype == np.int64 and labels.tolist() == EXPECTED[split][1]


@pytest.mark.parametrize("archive", ["aclImdb_train_test.tar.gz", "aclImdb_v1.tar.gz", "./"])
def test_imdb_archive(tmp_path: Path, archive: str) -> None:
    if archive == "./":  # members named ./aclImdb/... (as GNU tar writes them)
        members = [("./" + n, b) for n, b in imdb_members()]
        archive = "aclImdb_v1.tar.gz"
    else:
        members = imdb_members()
    make_tar(tmp_path / "imdb" / archive, members)
    for split in ("train", "test"):
        texts, labels = load_imdb(split, tmp_path, verify=False)
        assert texts == EXPECTED[split][0] and labels.tolist() == EXPECTED[split][1]
    assert not (tmp_path / "imdb" / "aclImdb").exists()  # read in place, nothing extracted


def test_imdb_cache_is_used_and_refreshed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", imdb_members())
    cache = tmp_path / "cache"
    assert load_imdb("train", tmp_path, verify=False, cache_dir=cache)[0] == EXPECTED["train"][0]
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].startswith("imdb-test-") and files[1].startswith("imdb-train-")
    blob = json.loads(gzip.decompress((cache / files[1]).read_bytes()))
    assert blob["texts"] == EXPECTED["train"][0] and blob["labels"] == EXPECTED["train"][1]

    def no_parse(path: Path) -> None:
        raise AssertionError("the archive was parsed again despite a valid cache")

    with monkeypatch.context() as m:
        m.setattr(_imdb, "_parse_imdb_archive", no_parse)
        assert load_imdb("test", tmp_path, verify=False, cache_dir=cache)[0] == EXPECTED["test"][0]
        assert load_imdb("train", tmp_path, verify=False, cache_dir=cache)[0] == EXPECTED["train"][0]

    # A damaged cache is ignored and rewritten, never trusted.
    (cache / files[1]).write_bytes(b"\x1f\x8b garbage")
    assert load_imdb("train", tmp_path, verify=False, cache_dir=cache)[0] == EXPECTED["train"][0]
    assert json.loads(gzip.decompress((cache / files[1]).read_bytes()))["texts"] == EXPECTED["train"][0]

    # A changed source (new contents, new mtime) gets a new cache key; the old entry is dropped.
    members = [(n, b"Changed" if n.endswith("1_2.txt") else b) for n, b in imdb_members()]
    make_tar(archive, members)
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    texts, _ = load_imdb("train", tmp_path, verify=False, cache_dir=cache)
    assert texts[0] == "Changed"
    assert len(list(cache.glob("imdb-train-*"))) == 1


def test_imdb_cache_never_skips_verification(tmp_path: Path) -> None:
    """A split cached from an unverified read is not served to a verified one."""
    make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", imdb_members())
    cache = tmp_path / "cache"
    assert load_imdb("train", tmp_path, verify=False, cache_dir=cache)[0] == EXPECTED["train"][0]
    with pytest.raises(CorruptData, match=r"checksum mismatch: md5 of the file expected 7c2ac02c"):
        load_imdb("train", tmp_path, cache_dir=cache)


def test_imdb_folder_cache_sees_edits(tmp_path: Path) -> None:
    make_imdb_folder(tmp_path)
    cache = tmp_path / "cache"
    assert load_imdb("train", tmp_path, cache_dir=cache)[0] == EXPECTED["train"][0]
    assert len(list(cache.glob("imdb-train-*.json.gz"))) == 1
    edited = tmp_path / "imdb" / "aclImdb" / "train" / "neg" / "1_2.txt"
    edited.write_text("Dull!!", encoding="utf-8")
    os.utime(edited, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert load_imdb("train", tmp_path, cache_dir=cache)[0][0] == "Dull!!"


def test_imdb_default_cache_next_to_data(tmp_path: Path) -> None:
    make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", imdb_members())
    load_imdb("test", tmp_path, verify=False)
    assert len(list((tmp_path / "imdb" / "cache").glob("imdb-test-*.json.gz"))) == 1


def test_imdb_cache_falls_back_when_data_folder_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    make_tar(tmp_path / "data" / "imdb" / "aclImdb_v1.tar.gz", imdb_members())
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda appname: str(tmp_path / "user" / appname))
    real_writable = _imdb._writable
    monkeypatch.setattr(_imdb, "_writable", lambda folder: "data" not in folder.parts and real_writable(folder))
    assert load_imdb("test", tmp_path / "data", verify=False)[0] == EXPECTED["test"][0]
    assert not (tmp_path / "data" / "imdb" / "cache").exists()
    assert len(list((tmp_path / "user" / "gatedrnn" / "parsed").glob("imdb-test-*.json.gz"))) == 1


@pytest.mark.parametrize(
    ("bad_name", "message"),
    [
        ("aclImdb/../../evil.txt", "path traversal"),
        ("../aclImdb/train/pos/9_9.txt", "path traversal"),
        ("/etc/aclImdb/train/pos/9_9.txt", "absolute"),
    ],
)
def test_imdb_archive_path_traversal_refused(tmp_path: Path, bad_name: str, message: str) -> None:
    make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", [*imdb_members(), (bad_name, b"x")])
    cache = tmp_path / "cache"
    with pytest.raises(CorruptData, match=message):
        load_imdb("train", tmp_path, verify=False, cache_dir=cache)
    assert list(cache.iterdir()) == []  # nothing cached from a refused archive
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_imdb_archive_link_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("aclImdb/train/pos/99_9.txt")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", imdb_members(), extra=[link])
    with pytest.raises(CorruptData, match=r"link or special file"):
        load_imdb("train", tmp_path, verify=False, cache_dir=tmp_path / "cache")


def test_imdb_archive_damaged_or_wrong(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", imdb_members())
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptData, match=r"damaged or truncated archive"):
        load_imdb("train", tmp_path, verify=False, cache_dir=tmp_path / "c1")
    # Under a known name with checksums on: refused before it is read.
    archive.write_bytes(blob)
    with pytest.raises(
        CorruptData, match=r"checksum mismatch: md5 of the file expected 7c2ac02c03563afcf9b574c7e56c153a"
    ):
        load_imdb("train", tmp_path, cache_dir=tmp_path / "c2")
    archive.unlink()
    make_tar(tmp_path / "imdb" / "aclImdb_train_test.tar.gz", imdb_members())
    with pytest.raises(
        CorruptData, match=r"aclImdb_train_test.tar.gz: checksum mismatch: sha256 of the file expected fc13d7b4"
    ):
        load_imdb("train", tmp_path, cache_dir=tmp_path / "c3")
    # An archive without the split's reviews.
    make_tar(tmp_path / "x" / "imdb" / "aclImdb_v1.tar.gz", [("aclImdb/README", b"r")])
    with pytest.raises(CorruptData, match=r"no reviews"):
        load_imdb("test", tmp_path / "x", verify=False, cache_dir=tmp_path / "c4")


def test_imdb_missing_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing) as info:
        load_imdb("test", tmp_path)
    message = str(info.value)
    imdb = tmp_path / "imdb"
    for path in [
        imdb / "aclImdb" / "test" / "pos",
        imdb / "aclImdb" / "test" / "neg",
        imdb / "aclImdb_train_test.tar.gz",
        imdb / "aclImdb_v1.tar.gz",
    ]:
        assert f"  {path}\n" in message
    assert "ai.stanford.edu" in message and "--download" in message
    assert f"in the data folder {tmp_path} (chosen by the data_dir argument (--data-dir))" in message


def test_imdb_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_tar(tmp_path / "src" / "aclImdb_v1.tar.gz", imdb_members())
    blob = source.read_bytes()
    monkeypatch.setitem(data.URLS, "imdb", [source.parent.as_uri() + "/"])
    monkeypatch.setitem(data.CHECKSUMS, ("imdb", "aclImdb_v1.tar.gz"), Checksum(md5=hashlib.md5(blob).hexdigest()))
    texts, labels = load_imdb("test", tmp_path / "data", download=True)
    assert texts == EXPECTED["test"][0] and labels.tolist() == EXPECTED["test"][1]
    assert (tmp_path / "data" / "imdb" / "aclImdb_v1.tar.gz").read_bytes() == blob


# ---------------------------------------------------------------------------------- rt-polarity
POS = "un film très drôle . \nsimple and moving \n".encode("latin-1")
NEG = "a mess , frankly \nne'er again \nflat \n".encode("latin-1")


@pytest.mark.parametrize("layout", ["rt-polarity", "rt-polarity/rt-polaritydata"])
def test_rt_polarity_latin1(tmp_path: Path, layout: str) -> None:
    write(tmp_path / layout / "rt-polarity.pos", POS)
    write(tmp_path / layout / "rt-polarity.neg", NEG)
    assert b"\xe8" in POS  # a latin-1 byte that is not valid UTF-8
    texts, labels = load_rt_polarity(tmp_path, verify=False)
    assert texts == ["un film très drôle .", "simple and moving", "a mess , frankly", "ne'er again", "flat"]
    assert labels.dtype == np.int64 and labels.tolist() == [1, 1, 0, 0, 0]


def test_rt_polarity_checksum_and_missing(tmp_path: Path) -> None:
    write(tmp_path / "rt-polarity" / "rt-polarity.pos", POS)
    write(tmp_path / "rt-polarity" / "rt-polarity.neg", NEG)
    with pytest.raises(CorruptData, match=r"rt-polarity.pos: checksum mismatch: sha256 of the file expected 2da124ec"):
        load_rt_polarity(tmp_path)
    with pytest.raises(DatasetMissing) as info:
        load_rt_polarity(tmp_path / "empty")
    for sub in ["rt-polarity", "rt-polarity/rt-polaritydata"]:
        for name in ["rt-polarity.pos", "rt-polarity.neg"]:
            assert f"  {tmp_path / 'empty' / sub / name}\n" in str(info.value)


def test_rt_polarity_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_tar(
        tmp_path / "src" / "rt-polaritydata.tar.gz",
        [("rt-polaritydata", None), ("rt-polaritydata/rt-polarity.pos", POS), ("rt-polaritydata/rt-polarity.neg", NEG)],
    )
    monkeypatch.setitem(data.URLS, "rt-polarity", [archive.parent.as_uri() + "/"])
    root = tmp_path / "data"
    # With the real checksums the tiny files are refused and nothing is written.
    with pytest.raises(CorruptData, match=r"checksum mismatch"):
        load_rt_polarity(root, download=True)
    assert list((root / "rt-polarity").iterdir()) == []
    monkeypatch.setitem(
        data.CHECKSUMS, ("rt-polarity", "rt-polarity.pos"), Checksum(sha256=hashlib.sha256(POS).hexdigest())
    )
    monkeypatch.setitem(
        data.CHECKSUMS, ("rt-polarity", "rt-polarity.neg"), Checksum(sha256=hashlib.sha256(NEG).hexdigest())
    )
    texts, labels = load_rt_polarity(root, download=True)
    assert labels.tolist() == [1, 1, 0, 0, 0] and texts[0] == "un film très drôle ."
    assert sorted(p.name for p in (root / "rt-polarity").iterdir()) == ["rt-polarity.neg", "rt-polarity.pos"]


# ----------------------------------------------------------------------- one rule for every file
@pytest.mark.parametrize("kind", ["idx", "archive", "text"])
def test_one_checksum_rule_for_every_kind_of_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """An IDX .gz, an archive and a text file are checked by the same rule: the MD5 of the file as
    distributed accepts it whatever else the table says; else a SHA-256 of the content decides; else
    an MD5 that differs refuses; else a size that differs refuses."""
    if kind == "idx":
        make_image_set(tmp_path, "mnist", "test", 3)
        key, path = ("mnist", "t10k-images-idx3-ubyte.gz"), tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
        monkeypatch.setitem(data.CHECKSUMS, ("mnist", "t10k-labels-idx1-ubyte.gz"), Checksum())
        content = gzip.decompress(path.read_bytes())

        def load(i: int) -> None:
            load_image_set("mnist", "test", tmp_path)

    elif kind == "archive":
        path = make_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", imdb_members())
        key, content = ("imdb", path.name), path.read_bytes()

        def load(i: int) -> None:
            load_imdb("test", tmp_path, cache_dir=tmp_path / f"cache{i}")

    else:
        path = write(tmp_path / "rt-polarity" / "rt-polarity.pos", POS)
        write(tmp_path / "rt-polarity" / "rt-polarity.neg", NEG)
        key, content = ("rt-polarity", path.name), POS
        monkeypatch.setitem(data.CHECKSUMS, ("rt-polarity", "rt-polarity.neg"), Checksum())

        def load(i: int) -> None:
            load_rt_polarity(tmp_path)

    md5, sha = hashlib.md5(path.read_bytes()).hexdigest(), hashlib.sha256(content).hexdigest()
    cases = [
        (Checksum(md5=md5, sha256="0" * 64, size=1), None),  # the original file, byte for byte
        (Checksum(md5="0" * 32, sha256=sha, size=len(content)), None),  # a copy with the same content
        (Checksum(md5="1" * 32, sha256="0" * 64), "sha256 .* expected 0{64}"),
        (Checksum(md5="0" * 32, size=len(content)), "md5 of the file expected 0{32}"),
        (Checksum(size=len(content) + 1), f"size check failed: expected {len(content) + 1} bytes"),
    ]
    for i, (entry, refusal) in enumerate(cases):
        monkeypatch.setitem(data.CHECKSUMS, key, entry)
        if refusal is None:
            load(i)
        else:
            with pytest.raises(CorruptData, match=f"{path.name}: (checksum mismatch: )?{refusal}"):
                load(i)


# ------------------------------------------------------------------------------ tokenize, Vocab
@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, World!", ["hello", ",", "world", "!"]),
        ("I didn't<br />like it.<BR/>No", ["i", "didn't", "like", "it", ".", "no"]),
        ("a<br>b", ["a", "b"]),
        ("  7/10 ... Café  ", ["7", "/", "10", ".", ".", ".", "café"]),
        ("", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_vocab_build_deterministic() -> None:
    docs = [["b", "a", "c", "a"], ["c", "b", "d"], ["e", "a"]]
    # counts by hand: a=3, b=2, c=2, d=1, e=1 -> a, then b/c tie (alphabetical), then d/e tie
    vocab = Vocab.build(docs, max_size=10)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c", "d", "e"]
    assert Vocab.PAD == 0 and Vocab.UNK == 1 and len(vocab) == 7
    assert Vocab.build(reversed(docs), max_size=10) == vocab  # order of the input does not matter
    assert Vocab.build(iter(docs), max_size=4).itos == ["<pad>", "<unk>", "a", "b"]  # max_size counts PAD, UNK
    assert Vocab.build(docs, max_size=100, min_freq=2).itos == ["<pad>", "<unk>", "a", "b", "c"]
    assert Vocab.build([["<pad>", "x"]], max_size=5).itos == ["<pad>", "<unk>", "x"]
    assert Vocab(vocab.to_list()) == vocab


def test_vocab_encode() -> None:
    vocab = Vocab.build([["the", "cat", "the"]], max_size=10)
    assert vocab.itos == ["<pad>", "<unk>", "the", "cat"]
    assert vocab.encode(["the", "dog", "cat"]) == [2, 1, 3]
    assert vocab.encode(["the", "dog", "cat"], max_len=2) == [2, 1]
    assert vocab.encode(["the"], max_len=5) == [2]  # no padding
    assert vocab.encode([]) == []
    assert vocab.decode([2, 3, 1]) == ["the", "cat", "<unk>"]
    assert "cat" in vocab and "dog" not in vocab


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: Vocab.build([["a"]], max_size=1), ValueError, "max_size: expected an int >= 2"),
        (lambda: Vocab.build([["a"]], max_size=5, min_freq=0), ValueError, "min_freq: expected an int >= 1"),
        (lambda: Vocab.build(["abc"], max_size=5), TypeError, "token lists"),
        (lambda: Vocab.build([["a"]], max_size=5).encode(["a"], max_len=0), ValueError, "max_len"),
        (lambda: Vocab.build([["a"]], max_size=5).encode("a"), TypeError, "tokens: expected a list"),
        (lambda: Vocab(["a", "b"]), ValueError, "itos: expected to start with"),
        # a negative id must not wrap around to the last token
        (lambda: Vocab.build([["a"]], max_size=5).decode([2, -1]), ValueError, r"ids: expected .*0\.\.2.*got -1"),
        (lambda: Vocab.build([["a"]], max_size=5).decode([3]), ValueError, r"ids: expected .*0\.\.2.*got 3"),
    ],
)
def test_vocab_errors(call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------- real data (data_dir fixture)
def test_the_data_fixture_finds_the_folder_beside_the_checkout_then_the_env_and_else_skips(tmp_path: Path) -> None:
    from conftest import data_dir_or_skip

    repo = tmp_path / "parent" / "checkout"
    repo.mkdir(parents=True)
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared/data .*GATEDRNN_DATA"):
        data_dir_or_skip(repo, {})
    with pytest.raises(pytest.skip.Exception):
        data_dir_or_skip(repo, {"GATEDRNN_DATA": str(tmp_path / "no-such-folder")})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert data_dir_or_skip(repo, {"GATEDRNN_DATA": str(elsewhere)}) == elsewhere
    beside = tmp_path / "parent" / "shared" / "data"
    beside.mkdir(parents=True)
    assert data_dir_or_skip(repo, {"GATEDRNN_DATA": str(elsewhere)}) == beside
    assert data_dir_or_skip(repo, {}) == beside


def _plain_idx(path: Path) -> np.ndarray:
    """An independent reader: gunzip, skip the fixed header, reshape with the dims from the header."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def test_real_fashion_mnist(data_dir: Path) -> None:
    x, y = load_image_set("fashion-mnist", "test", data_dir)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.shape == (10000,)
    assert np.bincount(y).tolist() == [1000] * 10
    np.testing.assert_array_equal(x, _plain_idx(data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"))
    x, y = load_image_set("fashion-mnist", "train", data_dir)
    assert x.shape == (60000, 28, 28) and np.bincount(y).tolist() == [6000] * 10


def test_real_mnist(data_dir: Path) -> None:
    x, y = load_image_set("mnist", "test", data_dir)
    assert x.shape == (10000, 28, 28)
    # MNIST test-set class counts, as published with the data set.
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    np.testing.assert_array_equal(x, _plain_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"))
    train_labels = read_idx(data_dir / "mnist" / "train-labels-idx1-ubyte.gz")
    assert train_labels.shape == (60000,) and train_labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_real_rt_polarity(data_dir: Path) -> None:
    texts, labels = load_rt_polarity(data_dir)
    assert len(texts) == 10662 and labels.tolist() == [1] * 5331 + [0] * 5331
    assert texts[0].startswith("the rock is destined to be the 21st century's new")
    assert all(texts)


@pytest.fixture(scope="session")
def real_imdb(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], np.ndarray]]:
    """Both IMDB splits, parsed once per session from the real archive (cache in a temp folder)."""
    cache = tmp_path_factory.mktemp("imdb-cache")
    return {split: load_imdb(split, data_dir, cache_dir=cache) for split in ("train", "test")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_imdb(real_imdb: dict, split: str) -> None:
    texts, labels = real_imdb[split]
    assert len(texts) == 25000 and labels.shape == (25000,)
    assert int(labels.sum()) == 12500 and labels[:12500].tolist() == [0] * 12500  # neg first
    assert all(isinstance(t, str) and t for t in texts)
    # The first file of each folder in sorted order (neg/0_*.txt, pos/0_*.txt), read with `tar -xO`.
    first_neg, first_pos = {
        "train": ("Story of a man who has unnatural feelings for a pig.", "Bromwell High is a cartoon comedy."),
        "test": ("Once again Mr. Costner has dragged out a movie", "I went and saw this movie last night"),
    }[split]
    assert texts[0].startswith(first_neg) and texts[12500].startswith(first_pos)
