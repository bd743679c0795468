"""The tasks: a plain registry dict, ``TASKS = {name: Task}``.

A :class:`Task` says what kind of problem it is (classification, regression, or bit sequences),
whether the network answers once at the end (seq-to-one) or at every step (seq-to-seq), which test
metric is reported, and how to build its data. Building returns a :class:`TaskData`: tensors held
in memory (``x`` as ``[N, T, I]`` floats, or ``[N, T]`` token ids with ``lengths`` for text), so
that the training loop batches by indexing, the same way for every task.

The data of a comparison is built once, from ``config.data_seed``: every cell and every seed sees
the same training and test examples; the run seed only changes initialisation, order and dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import Config, ConfigError, did_you_mean

__all__ = ["TASKS", "Split", "Task", "TaskData", "build_task", "get_task"]


@dataclass
class Split:
    """One side of a data set: ``x`` ``[N, T, I]`` (float) or ``[N, T]`` (token ids); ``y``; ``lengths``."""

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None  # [N] int64 for variable-length (packed) sequences

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], None if self.lengths is None else self.lengths[idx])


@dataclass
class TaskData:
    """What a task's builder returns: the two splits and the shapes the model needs."""

    train: Split
    test: Split
    input_size: int  # features per step (for token tasks: the vocabulary size)
    output_size: int  # classes, regression targets, or 1 (a bit per step)
    tokens: bool = False  # x holds token ids: the model starts with an embedding
    note: str = ""  # one line for the report (e.g. "tested on 16-bit numbers")


@dataclass(frozen=True)
class Task:
    """One entry of :data:`TASKS`.

    Attributes:
        name: the registry key (``--task``).
        description: one line for ``--help`` and reports.
        kind: ``"classification"`` (cross-entropy, one label per sequence), ``"regression"``
            (mean squared error) or ``"bits"`` (a binary target at every step, BCE).
        seq2seq: the model answers at every step (True) or once after the last step (False).
        metric: the test metric: ``"accuracy"`` (higher is better) or ``"mse"`` (lower is better).
        build: ``build(config, data_dir, seed) -> TaskData``.
    """

    name: str
    description: str
    kind: str
    seq2seq: bool
    metric: str
    build: Callable[[Config, str | Path | None, int], TaskData]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a fixed random subset of ``limit`` of ``n`` examples (all of them, shuffled, if None)."""
    idx = _rng(seed + 7919).permutation(n)
    return idx if limit is None else idx[: min(limit, n)]


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# --- images: digits, MNIST, Fashion-MNIST ----------------------------------------------------------


def _image_split(images: np.ndarray, labels: np.ndarray, scale: float, pixels: bool, perm: np.ndarray | None) -> Split:
    n, h, w = images.shape
    x = images.astype(np.float32) / scale
    x = x.reshape(n, h * w, 1) if pixels else x.reshape(n, h, w)
    if perm is not None:
        x = x[:, perm]
    return Split(_f32(x), torch.from_numpy(labels.astype(np.int64)))


def _pixel_perm(cfg: Config, pixels: bool, size: int) -> np.ndarray | None:
    if not cfg.permute:
        return None
    if not pixels:
        raise ConfigError("permute: a pixel permutation applies to the *-pixels tasks only, not to *-rows")
    return _rng(0).permutation(size)  # fixed: the same permutation for every run


def _digits(pixels: bool) -> Callable[[Config, str | Path | None, int], TaskData]:
    def build(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, labels = d.images, d.target  # [1797, 8, 8] in 0..16, [1797]
        order = _rng(seed).permutation(len(labels))
        n_test = len(labels) // 5  # a fixed 80/20 split
        tr, te = order[n_test:], order[:n_test]
        tr = tr[_subset(len(tr), cfg.train_limit, seed)]
        te = te[_subset(len(te), cfg.test_limit, seed + 1)]
        perm = _pixel_perm(cfg, pixels, 64)
        train = _image_split(images[tr], labels[tr], 16.0, pixels, perm)
        test = _image_split(images[te], labels[te], 16.0, pixels, perm)
        return TaskData(train, test, input_size=1 if pixels else 8, output_size=10)

    return build


def _image_set(name: str, pixels: bool) -> Callable[[Config, str | Path | None, int], TaskData]:
    def build(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
        from . import data

        splits = []
        for split, limit, s in (("train", cfg.train_limit, seed), ("test", cfg.test_limit, seed + 1)):
            images, labels = data.load_image_set(name, split, data_dir=data_dir, download=cfg.download)
            images, labels = np.asarray(images), np.asarray(labels)
            if limit is not None:
                keep = _subset(len(labels), limit, s)
                images, labels = images[keep], labels[keep]
            splits.append((images, labels))
        perm = _pixel_perm(cfg, pixels, 28 * 28)
        train = _image_split(*splits[0], 255.0, pixels, perm)
        test = _image_split(*splits[1], 255.0, pixels, perm)
        return TaskData(train, test, input_size=1 if pixels else 28, output_size=10)

    return build


# --- text: IMDB, rt-polarity -------------------------------------------------------------------------


def _encode(texts: list[str], labels: np.ndarray, vocab, max_len: int) -> Split:
    from . import data

    ids = [vocab.encode(data.tokenize(t), max_len=max_len) for t in texts]
    width = max(1, max((len(s) for s in ids), default=1))
    x = torch.full((len(ids), width), data.Vocab.PAD, dtype=torch.int64)
    lengths = torch.ones(len(ids), dtype=torch.int64)  # an empty text is one PAD step
    for i, s in enumerate(ids):
        if s:
            x[i, : len(s)] = torch.as_tensor(s, dtype=torch.int64)
            lengths[i] = len(s)
    return Split(x, torch.as_tensor(np.asarray(labels), dtype=torch.int64), lengths)


def _text_task(train_texts, train_labels, test_texts, test_labels, cfg: Config) -> TaskData:
    from . import data

    vocab = data.Vocab.build([data.tokenize(t) for t in train_texts], max_size=cfg.vocab_size)
    train = _encode(train_texts, train_labels, vocab, cfg.max_len)
    test = _encode(test_texts, test_labels, vocab, cfg.max_len)
    note = f"vocabulary {len(vocab)}, texts cut to {cfg.max_len} tokens"
    return TaskData(train, test, input_size=len(vocab), output_size=2, tokens=True, note=note)


def _pick(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> tuple[list[str], np.ndarray]:
    return [texts[i] for i in idx], labels[idx]


def _imdb(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
    from . import data

    parts = []
    for split, limit, s in (("train", cfg.train_limit, seed), ("test", cfg.test_limit, seed + 1)):
        texts, labels = data.load_imdb(split, data_dir=data_dir, download=cfg.download)
        parts.append(_pick(list(texts), np.asarray(labels), _subset(len(texts), limit, s)))
    return _text_task(*parts[0], *parts[1], cfg)


def _rt_polarity(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
    from . import data

    texts, labels = data.load_rt_polarity(data_dir=data_dir, download=cfg.download)
    texts, labels = list(texts), np.asarray(labels)
    order = _rng(seed).permutation(len(texts))
    n_test = len(texts) // 10  # a fixed 90/10 split
    tr, te = order[n_test:], order[:n_test]
    tr = tr[_subset(len(tr), cfg.train_limit, seed)]
    te = te[_subset(len(te), cfg.test_limit, seed + 1)]
    return _text_task(*_pick(texts, labels, tr), *_pick(texts, labels, te), cfg)


# --- synthetic long-memory tasks -------------------------------------------------------------------


def _limits(cfg: Config) -> tuple[int, int]:
    n_train = cfg.n_train if cfg.train_limit is None else min(cfg.n_train, cfg.train_limit)
    n_test = cfg.n_test if cfg.test_limit is None else min(cfg.n_test, cfg.test_limit)
    return n_train, n_test


def adding_examples(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hochreiter & Schmidhuber's adding problem: ``x`` ``[n, length, 2]`` (a value in [0, 1) and a
    marker), two marked steps (one in each half); the target is the sum of the two marked values."""
    if length < 2:
        raise ConfigError(f"seq_len: the adding problem needs at least 2 steps, got {length}")
    values = rng.random((n, length))
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    markers = np.zeros((n, length))
    markers[np.arange(n), first] = 1.0
    markers[np.arange(n), second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = values[np.arange(n), first] + values[np.arange(n), second]
    return x, y[:, None]


def _adding(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
    n_train, n_test = _limits(cfg)
    rng = _rng(seed)
    train = Split(*map(_f32, adding_examples(n_train, cfg.seq_len, rng)))
    test = Split(*map(_f32, adding_examples(n_test, cfg.seq_len, rng)))
    note = f"{cfg.seq_len} steps; always predicting 1 gives mse ~0.167"
    return TaskData(train, test, input_size=2, output_size=1, note=note)


def binary_addition_examples(n: int, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two integers below ``2**(bits-1)`` written bit by bit, least significant first: ``x``
    ``[n, bits, 2]``; the target ``[n, bits]`` is the bits of their sum (which fits in ``bits``)."""
    if bits < 2:
        raise ConfigError(f"train_bits: binary addition needs at least 2 bits, got {bits}")
    a = rng.integers(0, 2 ** (bits - 1), n, dtype=np.int64)
    b = rng.integers(0, 2 ** (bits - 1), n, dtype=np.int64)
    shifts = np.arange(bits)
    x = np.stack([(a[:, None] >> shifts) & 1, (b[:, None] >> shifts) & 1], axis=-1)
    y = ((a + b)[:, None] >> shifts) & 1
    return x.astype(np.float32), y.astype(np.float32)


def _binary_addition(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
    if cfg.test_bits > 62:
        raise ConfigError(f"test_bits: expected at most 62 (int64 sums), got {cfg.test_bits}")
    n_train, n_test = _limits(cfg)
    rng = _rng(seed)
    train = Split(*map(_f32, binary_addition_examples(n_train, cfg.train_bits, rng)))
    test = Split(*map(_f32, binary_addition_examples(n_test, cfg.test_bits, rng)))
    note = f"trained on {cfg.train_bits}-bit, tested on {cfg.test_bits}-bit numbers; accuracy = every bit right"
    return TaskData(train, test, input_size=2, output_size=1, note=note)


def sine_examples(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sine waves of random frequency and phase: ``x`` ``[n, length, 1]`` and, at every step, the
    next value as target ``[n, length, 1]``."""
    freq = rng.uniform(0.05, 0.3, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    wave = np.sin(freq * np.arange(length + 1) + phase)
    return wave[:, :-1, None], wave[:, 1:, None]


def _sine(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
    n_train, n_test = _limits(cfg)
    rng = _rng(seed)
    train = Split(*map(_f32, sine_examples(n_train, cfg.seq_len, rng)))
    test = Split(*map(_f32, sine_examples(n_test, cfg.seq_len, rng)))
    return TaskData(train, test, input_size=1, output_size=1, note="next-step prediction at every step")


def load_series(name: str) -> np.ndarray:
    """A real series shipped with statsmodels: yearly sunspot numbers (1700-2008) or weekly
    Mauna Loa CO2 (1958-2001, gaps filled by linear interpolation)."""
    try:
        from statsmodels import datasets
    except ImportError as e:
        raise ConfigError(f"task: {name!r} reads its series from statsmodels; install gatedrnn[data]") from e
    if name == "sunspots":
        values = datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    else:
        values = datasets.co2.load_pandas().data["co2"].to_numpy(dtype=np.float64, copy=True)
        missing = np.isnan(values)
        values[missing] = np.interp(np.flatnonzero(missing), np.flatnonzero(~missing), values[~missing])
    return values


def _series(name: str) -> Callable[[Config, str | Path | None, int], TaskData]:
    def build(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
        values = load_series(name)
        length = cfg.seq_len
        n_windows = len(values) - length
        if n_windows < 10:
            raise ConfigError(f"seq_len: {name} has {len(values)} points; expected seq_len <= {len(values) - 10}")
        split = int(len(values) * 0.8)  # chronological: the last 20% of targets are the test set
        mean, std = values[:split].mean(), values[:split].std()
        z = (values - mean) / std
        windows = np.lib.stride_tricks.sliding_window_view(z, length + 1)  # [n_windows, length+1]
        x, y = windows[:, :length, None], windows[:, length:]
        is_test = np.arange(n_windows) + length >= split
        train = Split(_f32(x[~is_test]), _f32(y[~is_test]))
        test = Split(_f32(x[is_test]), _f32(y[is_test]))
        if cfg.train_limit is not None:
            train = train.take(torch.arange(min(cfg.train_limit, len(train))))
        if cfg.test_limit is not None:
            test = test.take(torch.arange(min(cfg.test_limit, len(test))))
        note = f"{len(values)} points, windows of {length}, last 20% for test, standardised"
        return TaskData(train, test, input_size=1, output_size=1, note=note)

    return build


def _noise(cfg: Config, data_dir: str | Path | None, seed: int) -> TaskData:
    n_train, n_test = _limits(cfg)
    gen = torch.Generator().manual_seed(seed)
    train = Split(torch.rand(n_train, 20, 500, generator=gen), torch.rand(n_train, 500, generator=gen))
    test = Split(torch.rand(n_test, 20, 500, generator=gen), torch.rand(n_test, 500, generator=gen))
    return TaskData(train, test, input_size=500, output_size=500, note="random inputs and targets: a timing workload")


_ALL = [
    Task(
        "digits-rows", "scikit-learn digits, 8 steps of 8 pixels", "classification", False, "accuracy", _digits(False)
    ),
    Task(
        "digits-pixels", "scikit-learn digits, 64 steps of 1 pixel", "classification", False, "accuracy", _digits(True)
    ),
    Task("mnist-rows", "MNIST, 28 steps of 28 pixels", "classification", False, "accuracy", _image_set("mnist", False)),
    Task(
        "mnist-pixels",
        "MNIST, 784 steps of 1 pixel (permute: a fixed permutation)",
        "classification",
        False,
        "accuracy",
        _image_set("mnist", True),
    ),
    Task(
        "fashion-mnist-rows",
        "Fashion-MNIST, 28 steps of 28 pixels",
        "classification",
        False,
        "accuracy",
        _image_set("fashion-mnist", False),
    ),
    Task(
        "fashion-mnist-pixels",
        "Fashion-MNIST, 784 steps of 1 pixel",
        "classification",
        False,
        "accuracy",
        _image_set("fashion-mnist", True),
    ),
    Task(
        "imdb",
        "IMDB reviews (Maas et al. 2011), sentiment, embedding + packed sequences",
        "classification",
        False,
        "accuracy",
        _imdb,
    ),
    Task(
        "rt-polarity",
        "Movie-review sentences (Pang & Lee 2005), sentiment",
        "classification",
        False,
        "accuracy",
        _rt_polarity,
    ),
    Task("adding", "Hochreiter & Schmidhuber's adding problem (length: seq_len)", "regression", False, "mse", _adding),
    Task(
        "binary-addition",
        "add two integers bit by bit, least significant first",
        "bits",
        True,
        "accuracy",
        _binary_addition,
    ),
    Task("sine", "next-step prediction of sine waves", "regression", True, "mse", _sine),
    Task(
        "sunspots", "yearly sunspot numbers (statsmodels), next value", "regression", False, "mse", _series("sunspots")
    ),
    Task("co2", "weekly Mauna Loa CO2 (statsmodels), next value", "regression", False, "mse", _series("co2")),
    Task(
        "noise",
        "uniform noise (batch, 20, 500) -> 500 targets: the timing workload of the public notebook of Dey & Salem's variants",
        "regression",
        False,
        "mse",
        _noise,
    ),
]
TASKS: dict[str, Task] = {task.name: task for task in _ALL}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task: expected one of {sorted(TASKS)}, got {name!r}{did_you_mean(name, TASKS)}")
    return TASKS[name]


def build_task(cfg: Config, seed: int | None = None) -> TaskData:
    """Build ``cfg.task``'s data from ``cfg.data_dir`` and ``cfg.data_seed`` (or ``seed``)."""
    task = get_task(cfg.task)
    return task.build(cfg, cfg.data_dir, cfg.data_seed if seed is None else seed)
