"""Every task's shapes and labels, checked against the raw sources and hand-written arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gatedrnn.experiments.config import Config, ConfigError
from gatedrnn.experiments.models import SequenceModel
from gatedrnn.experiments.tasks import TASKS, build_task, get_task


def cfg(**kw) -> Config:
    return Config(progress=False, **kw)


def test_registry_is_a_plain_dict_of_tasks():
    assert isinstance(TASKS, dict)
    expected = {
        "digits-rows", "digits-pixels", "mnist-rows", "mnist-pixels", "fashion-mnist-rows", "fashion-mnist-pixels",
        "imdb", "rt-polarity", "adding", "binary-addition", "sine", "sunspots", "co2", "noise",
    }  # fmt: skip
    assert set(TASKS) == expected
    for name, task in TASKS.items():
        assert task.name == name
        assert task.kind in {"classification", "regression", "bits"}
        assert task.metric in {"accuracy", "mse"}
    with pytest.raises(ConfigError, match="task: expected one of"):
        get_task("mnist")


@pytest.mark.parametrize("pixels", [False, True])
def test_digits_rows_and_pixels_are_sklearn_digits(pixels):
    from sklearn.datasets import load_digits

    name = "digits-pixels" if pixels else "digits-rows"
    data = build_task(cfg(task=name))
    d = load_digits()
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 1797 // 5
    shape = (64, 1) if pixels else (8, 8)
    assert data.train.x.shape[1:] == shape and data.test.x.shape[1:] == shape
    assert data.input_size == shape[1] and data.output_size == 10
    assert data.train.y.dtype == torch.int64 and set(data.train.y.tolist()) == set(range(10))
    # every example is one of sklearn's images (scaled to [0, 1]) with its own label
    flat = d.images.reshape(1797, 64) / 16.0
    lookup = {tuple(np.round(row, 6)): int(lab) for row, lab in zip(flat, d.target, strict=True)}
    for split in (data.train, data.test):
        for x, y in zip(split.x[:50], split.y[:50], strict=True):
            assert lookup[tuple(np.round(x.reshape(64).double().numpy(), 6))] == int(y)


def test_digits_split_is_fixed_by_data_seed_and_limits_apply():
    a, b = build_task(cfg()), build_task(cfg(seeds=[3]))
    assert torch.equal(a.test.x, b.test.x)  # the run seed does not move the split
    c = build_task(cfg(data_seed=1))
    assert not torch.equal(a.test.y, c.test.y)
    d = build_task(cfg(train_limit=100, test_limit=30))
    assert len(d.train) == 100 and len(d.test) == 30


def test_permute_applies_one_fixed_permutation_to_pixels():
    plain = build_task(cfg(task="digits-pixels"))
    perm = build_task(cfg(task="digits-pixels", permute=True))
    assert torch.equal(plain.train.y, perm.train.y)
    x, xp = plain.train.x[:, :, 0], perm.train.x[:, :, 0]
    # the same permutation for every example: find it from the first one's unique columns
    assert not torch.equal(x, xp)
    assert torch.equal(x.sort(dim=1).values, xp.sort(dim=1).values)
    with pytest.raises(ConfigError, match="permute"):
        build_task(cfg(task="digits-rows", permute=True))


def test_adding_problem_targets_are_the_sum_of_the_two_marked_values():
    data = build_task(cfg(task="adding", seq_len=30, n_train=200, n_test=50))
    x, y = data.train.x.double(), data.train.y.double()
    assert x.shape == (200, 30, 2) and y.shape == (200, 1)
    assert data.test.x.shape == (50, 30, 2)
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2)
    assert torch.all(markers[:, :15].sum(1) == 1) and torch.all(markers[:, 15:].sum(1) == 1)
    for i in range(200):
        marked = [x[i, t, 0].item() for t in range(30) if markers[i, t] == 1]
        assert abs(sum(marked) - y[i, 0].item()) < 1e-6
    assert 0 <= x[..., 0].min() and x[..., 0].max() < 1


def test_binary_addition_bits_add_up_least_significant_first():
    data = build_task(cfg(task="binary-addition", train_bits=6, test_bits=12, n_train=300, n_test=100))
    assert data.train.x.shape == (300, 6, 2) and data.train.y.shape == (300, 6)
    assert data.test.x.shape == (100, 12, 2) and data.test.y.shape == (100, 12)
    assert get_task("binary-addition").seq2seq
    for split, bits in ((data.train, 6), (data.test, 12)):
        weights = 2 ** np.arange(bits)  # least significant bit first
        a = split.x[..., 0].numpy().astype(np.int64) @ weights
        b = split.x[..., 1].numpy().astype(np.int64) @ weights
        s = split.y.numpy().astype(np.int64) @ weights
        assert np.all(a + b == s)
        assert a.max() < 2 ** (bits - 1) and b.max() < 2 ** (bits - 1)
    with pytest.raises(ConfigError, match="test_bits"):
        Config(train_bits=8, test_bits=4)


def test_sine_targets_are_the_next_value():
    data = build_task(cfg(task="sine", seq_len=40, n_train=20, n_test=5))
    x, y = data.train.x, data.train.y
    assert x.shape == (20, 40, 1) and y.shape == (20, 40, 1)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert x.abs().max() <= 1
    assert get_task("sine").seq2seq and get_task("sine").metric == "mse"


@pytest.mark.parametrize("name", ["sunspots", "co2"])
def test_real_series_windows_and_chronological_split(name):
    from statsmodels import datasets

    data = build_task(cfg(task=name, seq_len=20))
    if name == "sunspots":
        raw = datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(float)
    else:
        raw = datasets.co2.load_pandas().data["co2"].to_numpy(float)
    n = len(raw)
    assert len(data.train) + len(data.test) == n - 20
    split = int(n * 0.8)
    assert len(data.train) == split - 20
    if name == "sunspots":  # no gaps: windows are exactly the standardised series
        mean, std = raw[:split].mean(), raw[:split].std()
        z = (raw - mean) / std
        assert np.allclose(data.train.x[0, :, 0].numpy(), z[:20], atol=1e-5)
        assert np.allclose(data.train.y[0, 0].item(), z[20], atol=1e-5)
        assert np.allclose(data.test.y[-1, 0].item(), z[-1], atol=1e-5)
        assert np.allclose(data.test.x[0, :, 0].numpy(), z[split - 20 : split], atol=1e-5)
    else:  # gaps are filled: no NaN reaches the model
        assert torch.isfinite(data.train.x).all() and torch.isfinite(data.test.y).all()
    assert data.train.x.shape[1:] == (20, 1) and data.train.y.shape[1:] == (1,)


def test_noise_is_the_notebook_workload():
    data = build_task(cfg(task="noise", n_train=8, n_test=4))
    assert data.train.x.shape == (8, 20, 500) and data.train.y.shape == (8, 500)
    assert data.test.x.shape == (4, 20, 500)
    assert 0 <= data.train.x.min() and data.train.x.max() < 1
    assert data.input_size == 500 and data.output_size == 500


def test_models_give_the_task_shapes_for_every_cell():
    torch.manual_seed(0)
    for cell in ("gru0", "gru1", "gru2", "gru3", "mgu", "mingru", "lstm", "rnn"):
        m = SequenceModel(cell, 3, 5, 4, layers=2)
        assert m(torch.randn(6, 7, 3)).shape == (6, 4)
        m = SequenceModel(cell, 3, 5, 1, seq2seq=True)
        assert m(torch.randn(6, 7, 3)).shape == (6, 7, 1)


def test_packed_token_model_ignores_padding():
    """Padding past a sequence's length must not change its output (packed through the core)."""
    torch.manual_seed(0)
    for cell in ("gru1", "lstm"):
        m = SequenceModel(cell, 20, 6, 2, tokens=True, embed_dim=4).double()
        x = torch.randint(2, 20, (3, 9))
        lengths = torch.tensor([9, 4, 6])
        x2 = x.clone()
        x2[1, 4:] = 7  # change only the padding of sequence 1
        x2[2, 6:] = 3
        out, out2 = m(x, lengths), m(x2, lengths)
        assert torch.allclose(out, out2, atol=1e-12)
        # and sequence 1 alone, unpadded, gives the same answer
        alone = m(x[1:2, :4], torch.tensor([4]))
        assert torch.allclose(out[1:2], alone, atol=1e-12)


# --- tasks that read the real data sets (the data_dir fixture) -------------------------------------


def test_fashion_mnist_rows_and_pixels_from_real_data(data_dir):
    from gatedrnn.experiments.data import load_image_set

    root = data_dir
    data = build_task(cfg(task="fashion-mnist-rows", data_dir=str(root), train_limit=500, test_limit=200))
    assert data.train.x.shape == (500, 28, 28) and data.test.x.shape == (200, 28, 28)
    assert data.output_size == 10 and data.input_size == 28
    images, labels = load_image_set("fashion-mnist", "test", data_dir=root)
    assert len(labels) == 10000
    # each test example is the loader's image (scaled) with its label
    lookup = {bytes(np.asarray(img).tobytes()): int(lab) for img, lab in zip(images, labels, strict=True)}
    for x, y in zip(data.test.x[:40], data.test.y[:40], strict=True):
        key = bytes(np.round(x.numpy() * 255).astype(np.uint8).tobytes())
        assert lookup[key] == int(y)
    pix = build_task(cfg(task="fashion-mnist-pixels", data_dir=str(root), train_limit=50, test_limit=20))
    assert pix.train.x.shape == (50, 784, 1) and pix.input_size == 1


def test_mnist_without_training_images_is_a_clear_error(tmp_path):
    from gatedrnn.experiments.data import DatasetMissing

    (tmp_path / "mnist").mkdir()  # the labels alone: the training images are missing
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetMissing, match="train-images-idx3-ubyte"):
        build_task(cfg(task="mnist-rows", data_dir=str(tmp_path)))


def test_rt_polarity_tokens_and_labels(data_dir):
    data = build_task(cfg(task="rt-polarity", data_dir=str(data_dir), vocab_size=5000, max_len=30))
    assert data.tokens and data.output_size == 2
    assert len(data.train) + len(data.test) == 10662 and len(data.test) == 1066
    assert data.input_size <= 5000
    lengths, x = data.train.lengths, data.train.x
    assert lengths is not None and int(lengths.max()) <= 30 and int(lengths.min()) >= 1
    assert x.shape[1] == int(lengths.max())
    # padding (id 0) exactly past each length, real token ids before it
    steps = torch.arange(x.shape[1])
    assert torch.all((x == 0) == (steps >= lengths[:, None]))
    assert set(data.train.y.tolist()) == {0, 1}
    assert abs(float(data.train.y.double().mean()) - 0.5) < 0.02


def test_imdb_reviews_become_padded_token_ids_with_lengths(data_dir):
    from gatedrnn.experiments import data as d

    root = data_dir
    data = build_task(cfg(task="imdb", data_dir=str(root), train_limit=300, test_limit=100, max_len=50))
    assert data.tokens and data.output_size == 2
    assert len(data.train) == 300 and len(data.test) == 100
    assert data.input_size <= 20000
    for split in (data.train, data.test):
        lengths = split.lengths
        assert lengths is not None and int(lengths.max()) <= 50 and int(lengths.min()) >= 1
        steps = torch.arange(split.x.shape[1])
        assert torch.all((split.x == d.Vocab.PAD) == (steps >= lengths[:, None]))
        assert set(split.y.tolist()) <= {0, 1}
    # the first training review, found in the loader's output, encodes to its first 50 tokens
    texts, labels = d.load_imdb("train", data_dir=root)
    from gatedrnn.experiments.tasks import _subset

    i = int(_subset(len(texts), 300, 0)[0])
    tokens = d.tokenize(texts[i])[:50]
    assert int(data.train.lengths[0]) == len(tokens)
    assert int(data.train.y[0]) == int(labels[i])
    # train-set words are in the vocabulary unless it is full: UNK only where the word is rare
    known = (data.train.x[0, : len(tokens)] != d.Vocab.UNK).sum()
    assert known >= len(tokens) // 2


def test_mnist_tasks_shapes_labels_and_permutation(monkeypatch, tmp_path):
    """The loader is replaced by known arrays (a real MNIST training set is 47 MB)."""
    from gatedrnn.experiments import data as d

    rng = np.random.default_rng(0)
    sets = {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))
        for split, n in (("train", 60), ("test", 20))
    }
    calls = []

    def fake_load(name, split, data_dir=None, download=False):
        calls.append((name, split, data_dir, download))
        return sets[split]

    monkeypatch.setattr(d, "load_image_set", fake_load)
    where = str(tmp_path / "somewhere")
    rows = build_task(cfg(task="mnist-rows", data_dir=where))
    assert calls == [("mnist", "train", where, False), ("mnist", "test", where, False)]
    assert rows.train.x.shape == (60, 28, 28) and rows.test.x.shape == (20, 28, 28)
    # rows keep every image whole (in a shuffled order) with its label, scaled to [0, 1]
    lookup = {img.tobytes(): int(lab) for img, lab in zip(*sets["train"], strict=True)}
    for x, y in zip(rows.train.x, rows.train.y, strict=True):
        assert lookup[np.round(x.numpy() * 255).astype(np.uint8).tobytes()] == int(y)
    pixels = build_task(cfg(task="mnist-pixels"))
    perm = build_task(cfg(task="mnist-pixels", permute=True))
    assert pixels.train.x.shape == (60, 784, 1) and pixels.input_size == 1
    assert torch.equal(pixels.train.y, perm.train.y)
    # one permutation for every example and both splits: recover it from the pixel values
    flat, pflat = pixels.train.x[:, :, 0], perm.train.x[:, :, 0]
    p = [int(torch.nonzero((flat == pflat[:, [j]]).all(0))[0]) for j in range(784)]
    assert sorted(p) == list(range(784)) and p != list(range(784))
    assert torch.equal(pixels.test.x[:, p, 0], perm.test.x[:, :, 0])
    limited = build_task(cfg(task="mnist-rows", train_limit=10, test_limit=5))
    assert len(limited.train) == 10 and len(limited.test) == 5
