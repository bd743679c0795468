"""Keras GRU files ⇄ gatedrnn, checked in Keras itself: on its torch backend in this process, and
on TensorFlow (where it is installed) by running this file again in a process of its own with
``KERAS_BACKEND=tensorflow`` (Keras picks its backend once, when it is imported).

Keras numbers are first checked against Keras' GRU equations written out here (float64), so
that a wrong gate order, transposition or bias row is caught by two independent references.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gatedrnn
from gatedrnn.interop import KerasFileError, from_keras, from_torch, keras_layers, to_keras, to_torch

HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
BACKEND = os.environ.setdefault("KERAS_BACKEND", "torch")
if BACKEND == "torch":
    # Keras imports TensorFlow, when it is installed, even on the torch backend (to check types
    # while saving): keep it (its threads and seconds of start-up) out of the torch test process.
    sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]

keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

TOL = 1e-5


def _np(t) -> np.ndarray:
    return keras.ops.convert_to_numpy(t)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def keras_gru_by_hand(x, kernel, rec, bias, reset_after: bool, go_backwards: bool) -> np.ndarray:
    """Keras' GRU (return_sequences=True), written out in float64. x: [B, T, I]."""
    x, kernel, rec = x.astype(np.float64), kernel.astype(np.float64), rec.astype(np.float64)
    units = rec.shape[0]
    if bias is None:
        b_in, b_rec = np.zeros(3 * units), np.zeros(3 * units)
    elif reset_after:
        b_in, b_rec = bias[0].astype(np.float64), bias[1].astype(np.float64)
    else:
        b_in, b_rec = bias.astype(np.float64), np.zeros(3 * units)
    if go_backwards:
        x = x[:, ::-1]
    h = np.zeros((x.shape[0], units))
    outs = []
    z_, r_, h_ = slice(0, units), slice(units, 2 * units), slice(2 * units, 3 * units)
    for t in range(x.shape[1]):
        mx = x[:, t] @ kernel + b_in
        z = _sigmoid(mx[:, z_] + h @ rec[:, z_] + b_rec[z_])
        r = _sigmoid(mx[:, r_] + h @ rec[:, r_] + b_rec[r_])
        if reset_after:
            hh = np.tanh(mx[:, h_] + r * (h @ rec[:, h_] + b_rec[h_]))
        else:
            hh = np.tanh(mx[:, h_] + (r * h) @ rec[:, h_])
        h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, axis=1)


def _const(shape: tuple[int, ...], mod: int, scale: float) -> np.ndarray:
    """Distinct, fixed values (every column differs, so a gate-order mistake shows)."""
    n = int(np.prod(shape))
    return (((np.arange(n) * 7) % mod - mod // 2) * scale).reshape(shape).astype(np.float32)


def _keras_gru(units: int, in_size: int, **kw):
    return keras.Sequential([keras.Input((None, in_size)), keras.layers.GRU(units, return_sequences=True, **kw)])


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_equations_and_reading(reset_after: bool, go_backwards: bool, use_bias: bool, tmp_path: Path) -> None:
    units, in_size = 4, 3
    model = _keras_gru(units, in_size, reset_after=reset_after, go_backwards=go_backwards, use_bias=use_bias)
    kernel = _const((in_size, 3 * units), 11, 0.07)
    rec = _const((units, 3 * units), 13, 0.05)
    weights = [kernel, rec]
    bias = None
    if use_bias:
        bias = _const((2, 3 * units) if reset_after else (3 * units,), 9, 0.1)
        weights.append(bias)
    model.layers[0].set_weights(weights)
    x = np.random.default_rng(0).standard_normal((2, 6, in_size)).astype(np.float32)
    got = _np(model(x))
    np.testing.assert_allclose(got, keras_gru_by_hand(x, kernel, rec, bias, reset_after, go_backwards), atol=TOL)

    for name in ("m.keras", "m.weights.h5"):
        path = tmp_path / name
        model.save(path) if name.endswith(".keras") else model.save_weights(path)
        kw = {"reset_after": reset_after} if (name.endswith(".h5") and not use_bias) else {}
        if go_backwards and name.endswith(".keras"):
            with pytest.raises(KerasFileError, match="go_backwards=True"):
                from_keras(path)
            kw["go_backwards"] = True
        ours = from_keras(path, **kw)
        assert (ours.variant, ours.reset_after, ours.bias, ours.batch_first) == ("gru0", reset_after, use_bias, True)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            y = ours(xt.flip(1) if go_backwards else xt)[0].numpy()
        np.testing.assert_allclose(y, got, atol=TOL)


@pytest.mark.parametrize("reset_after", [True, False])
def test_read_bidirectional_stack(reset_after: bool, tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True, reset_after=reset_after)),
            keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True, reset_after=reset_after)),
        ]
    )
    for w in model.weights:  # Keras initialises biases to zero: make them count
        w.assign(np.random.default_rng(len(w.path)).uniform(-0.5, 0.5, w.shape).astype(np.float32))
    x = np.random.default_rng(2).standard_normal((2, 7, 3)).astype(np.float32)
    want = _np(model(x))
    names = [layer.name for layer in model.layers]
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    info = keras_layers(tmp_path / "m.keras")
    assert [i["name"] for i in info] == names and all(i["bidirectional"] for i in info)
    for path, layer in ((tmp_path / "m.keras", names), (tmp_path / "m.weights.h5", names)):
        ours = from_keras(path, layer)
        assert ours.num_layers == 2 and ours.bidirectional
        with torch.no_grad():
            y = ours(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(y, want, atol=TOL)
    # and write a gatedrnn stack into the user's two Keras layers
    torch.manual_seed(10)
    new = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True, reset_after=reset_after)
    to_keras(new, tmp_path / "m.keras", names)
    with torch.no_grad():
        want_new = new(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(_np(keras.saving.load_model(tmp_path / "m.keras")(x)), want_new, atol=TOL)
    with pytest.raises(KerasFileError, match="expected layer="):
        to_keras(new, tmp_path / "m.keras")
    with pytest.raises(KerasFileError, match="expected layer="):
        from_keras(tmp_path / "m.keras")  # two layers: a stack is always named
    with pytest.raises(KerasFileError, match="stack"):
        from_keras(tmp_path / "m.keras", names[::-1])  # wrong order: shapes do not chain
    with pytest.raises(KerasFileError, match="nope"):
        from_keras(tmp_path / "m.keras", "nope")


def _functional(reset_after: bool, use_bias: bool = True):
    inp = keras.Input((None, 3))
    y = keras.layers.GRU(5, return_sequences=True, reset_after=reset_after, use_bias=use_bias, name="enc")(inp)
    out = keras.layers.Dense(2, name="head")(y)
    return keras.Model(inp, out), keras.Model(inp, y)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_write_into_user_model(reset_after: bool, suffix: str, tmp_path: Path) -> None:
    """The essential case: the user built a Keras model; gatedrnn weights go into its GRU layer."""
    keras.utils.set_random_seed(3)
    full, _ = _functional(reset_after)
    path = tmp_path / ("m" + suffix)
    full.save(path) if suffix == ".keras" else full.save_weights(path)
    head = [w.copy() for w in full.get_layer("head").get_weights()]
    torch.manual_seed(4)
    ours = gatedrnn.GRU(3, 5, batch_first=True, reset_after=reset_after)
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(-0.6, 0.6)
    to_keras(ours, path, "enc")
    if suffix == ".keras":
        loaded = keras.saving.load_model(path)
    else:
        loaded, _ = _functional(reset_after)
        loaded.load_weights(path)
    enc = keras.Model(loaded.inputs[0], loaded.get_layer("enc").output)
    x = np.random.default_rng(5).standard_normal((3, 9, 3)).astype(np.float32)
    with torch.no_grad():
        want = ours(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(_np(enc(x)), want, atol=TOL)
    for a, b in zip(loaded.get_layer("head").get_weights(), head, strict=True):
        np.testing.assert_array_equal(a, b)  # the rest of the file is untouched
    back = from_keras(path, "enc")  # and back again
    for name, p in ours.named_parameters():
        torch.testing.assert_close(getattr(back, name), p, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("reset_after", "bias", "bidirectional", "layers"),
    [(True, True, False, 1), (False, True, True, 2), (True, False, True, 1), (False, False, False, 2)],
)
def test_write_new_files(reset_after: bool, bias: bool, bidirectional: bool, layers: int, tmp_path: Path) -> None:
    torch.manual_seed(6)
    ours = gatedrnn.GRU(3, 4, num_layers=layers, bias=bias, bidirectional=bidirectional, reset_after=reset_after)
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(-0.6, 0.6)
    x = np.random.default_rng(7).standard_normal((2, 8, 3)).astype(np.float32)
    with torch.no_grad():
        want = ours(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1).numpy()
    to_keras(ours, tmp_path / "new.keras")
    loaded = keras.saving.load_model(tmp_path / "new.keras")
    np.testing.assert_allclose(_np(loaded(x)), want, atol=TOL)
    to_keras(ours, tmp_path / "new.weights.h5")

    def gru(**kw):
        return keras.layers.GRU(4, return_sequences=True, reset_after=reset_after, use_bias=bias, **kw)

    built = keras.Sequential(
        [keras.Input((None, 3))]
        + [keras.layers.Bidirectional(gru()) if bidirectional else gru() for _ in range(layers)]
    )
    built.load_weights(tmp_path / "new.weights.h5")
    np.testing.assert_allclose(_np(built(x)), want, atol=TOL)


def test_round_trip_torch_gatedrnn_keras(tmp_path: Path) -> None:
    torch.manual_seed(8)
    native = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    path = tmp_path / "m.keras"
    to_keras(from_torch(native), path)
    back = to_torch(from_keras(path, [layer["name"] for layer in keras_layers(path)]))
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        want = native(x)[0]
        torch.testing.assert_close(back(x)[0], want, rtol=0, atol=0)
    np.testing.assert_allclose(_np(keras.saving.load_model(path)(x.numpy())), want.numpy(), atol=TOL)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Keras only has the classic GRU"):
        to_keras(gatedrnn.GRU(3, 4, variant="mgu"), tmp_path / "x.keras")
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        to_keras(gatedrnn.GRU(3, 4), tmp_path / "x.h5")
    full, _ = _functional(reset_after=True)
    full.save(tmp_path / "ra.keras")
    with pytest.raises(KerasFileError, match="reset forms"):
        to_keras(gatedrnn.GRU(3, 5, reset_after=False), tmp_path / "ra.keras", "enc")
    with pytest.raises(KerasFileError, match="shape"):
        to_keras(gatedrnn.GRU(3, 6), tmp_path / "ra.keras", "enc")
    with pytest.raises(KerasFileError, match="Bidirectional"):
        to_keras(gatedrnn.GRU(3, 5, bidirectional=True), tmp_path / "ra.keras", "enc")
    nob, _ = _functional(reset_after=True, use_bias=False)
    nob.save_weights(tmp_path / "nob.weights.h5")
    with pytest.raises(KerasFileError, match="non-zero biases"):
        to_keras(gatedrnn.GRU(3, 5), tmp_path / "nob.weights.h5", "enc")
    with pytest.raises(KerasFileError, match="reset_after"):
        from_keras(tmp_path / "nob.weights.h5")  # no bias, no config: the reset form is unknown
    assert from_keras(tmp_path / "nob.weights.h5", reset_after=False).reset_after is False
    relu = _keras_gru(4, 3, activation="relu")
    relu.save(tmp_path / "relu.keras")
    with pytest.raises(KerasFileError, match="activation='relu'"):
        from_keras(tmp_path / "relu.keras")
    summed = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True), merge_mode="sum"),
        ]
    )
    summed.save(tmp_path / "sum.keras")
    with pytest.raises(KerasFileError, match="merge_mode='sum'"):
        from_keras(tmp_path / "sum.keras")
    with pytest.raises(FileNotFoundError, match="missing"):
        from_keras(tmp_path / "missing.keras")
    (tmp_path / "junk.weights.h5").write_bytes(b"not an h5 file")
    with pytest.raises(KerasFileError, match="junk"):
        from_keras(tmp_path / "junk.weights.h5")


def test_nested_model(tmp_path: Path) -> None:
    """A GRU inside a Sequential inside a functional model is found and written in place."""
    inner = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, return_sequences=True, name="g")], name="sub")
    inp = keras.Input((None, 3))
    keras.Model(inp, keras.layers.Dense(2)(inner(inp))).save(tmp_path / "n.keras")
    (info,) = keras_layers(tmp_path / "n.keras")
    assert info["name"] == "g" and info["path"].count("layers") == 2
    torch.manual_seed(9)
    ours = gatedrnn.GRU(3, 4, batch_first=True)
    to_keras(ours, tmp_path / "n.keras")
    sub = keras.saving.load_model(tmp_path / "n.keras").get_layer("sub")
    x = np.random.default_rng(9).standard_normal((2, 5, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(_np(sub(x)), ours(torch.from_numpy(x))[0].numpy(), atol=TOL)


def _weights_of(model, skip: str) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.weights and layer.name != skip
    }


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_file_with_other_recurrent_layers(suffix: str, tmp_path: Path) -> None:
    """LSTM, SimpleRNN, Bidirectional(LSTM) and an RNN of stacked GRU cells beside one GRU: listed
    as what they are, skipped, never read as a GRU; the one GRU needs no name."""
    keras.utils.set_random_seed(12)

    def build():
        inp = keras.Input((None, 3))
        a = keras.layers.LSTM(4, return_sequences=True, name="lstm")(inp)
        b = keras.layers.GRU(5, return_sequences=True, name="enc")(a)
        c = keras.layers.SimpleRNN(3, return_sequences=True, name="simple")(b)
        d = keras.layers.Bidirectional(keras.layers.LSTM(2, return_sequences=True), name="bilstm")(c)
        cells = [keras.layers.GRUCell(2), keras.layers.GRUCell(2)]
        e = keras.layers.RNN(keras.layers.StackedRNNCells(cells), return_sequences=True, name="cells")(d)
        return keras.Model(inp, keras.layers.Dense(2, name="head")(e))

    model = build()
    for w in model.weights:
        w.assign(np.random.default_rng(len(w.path)).uniform(-0.5, 0.5, w.shape).astype(np.float32))
    path = tmp_path / ("m" + suffix)
    model.save(path) if suffix == ".keras" else model.save_weights(path)

    info = {i["name"]: i for i in keras_layers(path)}
    assert set(info) == {"lstm", "enc", "simple", "bilstm", "cells"}
    assert [n for n, i in info.items() if i["gru"]] == ["enc"]
    cells = {"lstm": "LSTMCell", "enc": "GRUCell", "simple": "SimpleRNNCell", "bilstm": "LSTMCell"}
    assert {n: info[n]["cell"] for n in cells} == cells and info["cells"]["cell"] == "StackedRNNCells"
    assert (info["enc"]["input_size"], info["enc"]["hidden_size"], info["lstm"]["hidden_size"]) == (4, 5, 4)
    if suffix == ".keras":
        assert [i["class_name"] for i in keras_layers(path)] == [
            "LSTM",
            "GRU",
            "SimpleRNN",
            "Bidirectional(LSTM)",
            "RNN(StackedRNNCells)",
        ]
    with pytest.raises(KerasFileError, match=r"'lstm' .* is not a GRU"):
        from_keras(path, "lstm")

    x = np.random.default_rng(13).standard_normal((2, 6, 3)).astype(np.float32)
    into_gru = _np(keras.Model(model.inputs[0], model.get_layer("lstm").output)(x))
    ours = from_keras(path)  # the file's only GRU
    with torch.no_grad():
        y = ours(torch.from_numpy(into_gru))[0].numpy()
    np.testing.assert_allclose(y, _np(keras.Model(model.inputs[0], model.get_layer("enc").output)(x)), atol=TOL)

    torch.manual_seed(14)
    new = gatedrnn.GRU(4, 5, batch_first=True)
    to_keras(new, path)  # no name needed either
    if suffix == ".keras":
        loaded = keras.saving.load_model(path)
    else:
        loaded = build()
        loaded.load_weights(path)
    with torch.no_grad():
        want = new(torch.from_numpy(into_gru))[0].numpy()
    np.testing.assert_allclose(_np(keras.Model(loaded.inputs[0], loaded.get_layer("enc").output)(x)), want, atol=TOL)
    before, after = _weights_of(model, "enc"), _weights_of(loaded, "enc")
    for name in before:
        for a, b in zip(after[name], before[name], strict=True):
            np.testing.assert_array_equal(a, b)  # every other layer untouched


@pytest.mark.parametrize(
    ("reset_after", "use_bias", "go_backwards"), [(True, True, False), (False, True, True), (True, False, True)]
)
def test_rnn_of_gru_cell(reset_after: bool, use_bias: bool, go_backwards: bool, tmp_path: Path) -> None:
    """``RNN(GRUCell(...))``, alone and in a Bidirectional: its settings are read (direction, reset
    form, bias) and it computes as the GRU layer with the same settings."""
    keras.utils.set_random_seed(15)

    def cell(units: int):
        return keras.layers.GRUCell(units, reset_after=reset_after, use_bias=use_bias)

    inp = keras.Input((None, 3))
    r = keras.layers.RNN(cell(4), return_sequences=True, go_backwards=go_backwards, name="r")(inp)
    bi = keras.layers.Bidirectional(keras.layers.RNN(cell(2), return_sequences=True), name="bi")(r)
    model = keras.Model(inp, bi)
    for w in model.weights:
        w.assign(np.random.default_rng(len(w.path)).uniform(-0.6, 0.6, w.shape).astype(np.float32))
    path = tmp_path / "m.keras"
    model.save(path)

    info = {i["name"]: i for i in keras_layers(path)}
    assert info["r"]["class_name"] == "RNN(GRUCell)" and info["bi"]["class_name"] == "Bidirectional(RNN(GRUCell))"
    assert (info["r"]["go_backwards"], info["r"]["reset_after"], info["r"]["use_bias"]) == (
        go_backwards,
        reset_after,
        use_bias,
    )
    assert info["bi"]["bidirectional"] and info["bi"]["go_backwards"] is False

    x = np.random.default_rng(16).standard_normal((2, 7, 3)).astype(np.float32)
    want_r = _np(keras.Model(inp, r)(x))
    if go_backwards:
        with pytest.raises(KerasFileError, match="go_backwards=True"):
            from_keras(path, "r")
    else:
        with pytest.raises(KerasFileError, match=r"go_backwards: .* has go_backwards=False"):
            from_keras(path, "r", go_backwards=True)
    kw = {"go_backwards": True} if go_backwards else {}
    read_r, read_bi = from_keras(path, "r", **kw), from_keras(path, "bi")
    assert (read_r.reset_after, read_r.bias, read_bi.bidirectional) == (reset_after, use_bias, True)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        np.testing.assert_allclose(read_r(xt.flip(1) if go_backwards else xt)[0].numpy(), want_r, atol=TOL)
        np.testing.assert_allclose(read_bi(torch.from_numpy(want_r))[0].numpy(), _np(model(x)), atol=TOL)

    torch.manual_seed(17)
    new = gatedrnn.GRU(3, 4, batch_first=True, bias=use_bias, reset_after=reset_after)
    with torch.no_grad():
        for p in new.parameters():
            p.uniform_(-0.6, 0.6)
    to_keras(new, path, "r", **kw)
    loaded = keras.saving.load_model(path)
    with torch.no_grad():
        want = new(xt.flip(1) if go_backwards else xt)[0].numpy()
    np.testing.assert_allclose(_np(keras.Model(loaded.inputs[0], loaded.get_layer("r").output)(x)), want, atol=TOL)


@pytest.mark.parametrize(
    ("layer", "setting"),
    [
        (
            lambda: keras.layers.RNN(keras.layers.GRUCell(4, activation="relu"), return_sequences=True),
            "activation='relu'",
        ),
        (
            lambda: keras.layers.RNN(keras.layers.GRUCell(4, recurrent_activation="hard_sigmoid")),
            "recurrent_activation='hard_sigmoid'",
        ),
        (lambda: keras.layers.GRU(4, recurrent_activation="relu"), "recurrent_activation='relu'"),
        (
            lambda: keras.layers.Bidirectional(keras.layers.RNN(keras.layers.GRUCell(4, activation="sigmoid"))),
            "activation='sigmoid'",
        ),
    ],
    ids=["rnn-activation", "rnn-recurrent_activation", "gru-recurrent_activation", "bidirectional-rnn-activation"],
)
def test_settings_gatedrnn_cannot_compute_are_refused(layer, setting: str, tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((None, 3)), layer()]).save(path)
    with pytest.raises(KerasFileError, match=setting.replace("(", r"\(")):
        from_keras(path)
    bidirectional = keras_layers(path)[0]["bidirectional"]
    with pytest.raises(KerasFileError, match=setting):
        to_keras(gatedrnn.GRU(3, 4, bidirectional=bidirectional), path)


def test_stacks_of_reversed_layers_are_refused(tmp_path: Path) -> None:
    """Two go_backwards=True layers: the second reads the first's outputs reversed again, so no
    gatedrnn stack computes them; each layer on its own input flipped in time does."""
    keras.utils.set_random_seed(18)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.GRU(4, return_sequences=True, go_backwards=True, name="a"),
            keras.layers.GRU(4, return_sequences=True, go_backwards=True, name="b"),
        ]
    )
    for w in model.weights:
        w.assign(np.random.default_rng(len(w.path)).uniform(-0.6, 0.6, w.shape).astype(np.float32))
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    for path in (tmp_path / "m.keras", tmp_path / "m.weights.h5"):
        with pytest.raises(KerasFileError, match=r"\['a', 'b'\] .* go_backwards=True"):
            from_keras(path, ["a", "b"], go_backwards=True)
        with pytest.raises(KerasFileError, match=r"\['a', 'b'\] .* go_backwards=True"):
            to_keras(gatedrnn.GRU(3, 4, num_layers=2, batch_first=True), path, ["a", "b"], go_backwards=True)
    # the documented way: each layer on its own input, flipped in time
    a, b = (from_keras(tmp_path / "m.keras", name, go_backwards=True) for name in "ab")
    x = np.random.default_rng(19).standard_normal((2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        ya = a(torch.from_numpy(x).flip(1))[0]
        y = b(ya.flip(1))[0].numpy()
    np.testing.assert_allclose(y, _np(model(x)), atol=TOL)

    # a forward layer under a reversed one, and a layer that outputs its last state only
    mixed = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.GRU(4, return_sequences=True, name="f"),
            keras.layers.GRU(4, return_sequences=True, go_backwards=True, name="r"),
        ]
    )
    mixed.save(tmp_path / "mixed.keras")
    with pytest.raises(KerasFileError, match=r"\['r'\] .* go_backwards=True"):
        from_keras(tmp_path / "mixed.keras", ["f", "r"])
    last = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras.layers.GRU(4, name="g1"),
            keras.layers.RepeatVector(5),
            keras.layers.GRU(4, return_sequences=True, name="g2"),
        ]
    )
    last.save(tmp_path / "last.keras")
    with pytest.raises(KerasFileError, match=r"\['g1'\] .* return_sequences=False"):
        from_keras(tmp_path / "last.keras", ["g1", "g2"])
    assert from_keras(tmp_path / "last.keras", "g1").num_layers == 1  # alone it is a GRU: h_n is its output


def test_keras_dropout_masks() -> None:
    """Why the settings map as they do (Keras' own cell): ``dropout`` alone is one mask on the
    input, shared by the gate blocks (gatedrnn's input_dropout); ``recurrent_dropout`` draws one
    mask per gate block (z, r, h), where gatedrnn draws one shared mask, and then three for the
    input too."""
    x, h = keras.ops.ones((5, 3)), keras.ops.ones((5, 4))
    plain = keras.layers.GRU(4, dropout=0.5)
    plain.build((None, None, 3))
    mask = _np(plain.cell.get_dropout_mask(x))
    assert mask.shape == (5, 3) and set(np.unique(mask)) <= {0.0, 2.0}  # one mask, scaled by 1/(1-p)
    both = keras.layers.GRU(4, dropout=0.5, recurrent_dropout=0.5)
    both.build((None, None, 3))
    keras.utils.set_random_seed(0)
    masks = [_np(m) for m in both.cell.get_recurrent_dropout_mask(h)]
    assert len(masks) == 3 and len(both.cell.get_dropout_mask(x)) == 3
    assert not (np.array_equal(masks[0], masks[1]) and np.array_equal(masks[1], masks[2]))


def _gru_layers(model) -> list:
    out = []
    for layer in model.layers:
        out += [layer.forward_layer, layer.backward_layer] if hasattr(layer, "forward_layer") else [layer]
    return out


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_settings_both_ways(bidirectional: bool, tmp_path: Path) -> None:
    """input_dropout is Keras' dropout, in a new file's config and back; recurrent_dropout is
    written and read only when asked for; eval outputs agree in Keras."""
    torch.manual_seed(12)
    ours = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=bidirectional, batch_first=True, input_dropout=0.25)
    x = np.random.default_rng(12).standard_normal((2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        want = ours.eval()(torch.from_numpy(x))[0].numpy()
    path = tmp_path / "new.keras"
    to_keras(ours, path)
    loaded = keras.saving.load_model(path)
    grus = _gru_layers(loaded)
    assert len(grus) == 2 * ours.num_directions
    assert [(g.dropout, g.recurrent_dropout) for g in grus] == [(0.25, 0.0)] * len(grus)
    np.testing.assert_allclose(_np(loaded(x)), want, atol=TOL)  # Keras' call: training=False
    names = [layer["name"] for layer in keras_layers(path)]
    back = from_keras(path, names)
    assert (back.options.input_dropout, back.options.recurrent_dropout) == (0.25, 0.0)

    with_rd = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=bidirectional, batch_first=True, recurrent_dropout=0.5)
    with pytest.raises(ValueError, match=r"recurrent_dropout=0\.5: Keras' recurrent_dropout draws three"):
        to_keras(with_rd, tmp_path / "rd.keras")
    assert not (tmp_path / "rd.keras").exists()
    to_keras(with_rd, tmp_path / "rd.keras", recurrent_dropout=0.375)
    loaded = keras.saving.load_model(tmp_path / "rd.keras")
    assert [(g.dropout, g.recurrent_dropout) for g in _gru_layers(loaded)] == [(0.0, 0.375)] * len(grus)
    with pytest.raises(KerasFileError, match=r"recurrent_dropout: .* have recurrent_dropout=0\.375"):
        from_keras(tmp_path / "rd.keras", names)
    back = from_keras(tmp_path / "rd.keras", names, recurrent_dropout=0.125)
    assert (back.options.input_dropout, back.options.recurrent_dropout) == (0.0, 0.125)


def test_dropout_read_from_a_keras_model_and_written_into_it(tmp_path: Path) -> None:
    """A model built in Keras (a GRU, an RNN(GRUCell)): dropout is read, recurrent_dropout only
    when asked for; writing into a layer replaces its settings with the model's and keeps the
    other layers' configs."""
    keras.utils.set_random_seed(13)
    inp = keras.Input((None, 3))
    y = keras.layers.GRU(5, return_sequences=True, dropout=0.2, name="enc")(inp)
    cell = keras.layers.GRUCell(5, dropout=0.2, recurrent_dropout=0.3)
    y = keras.layers.RNN(cell, return_sequences=True, name="other")(y)
    model = keras.Model(inp, y)
    model.save(tmp_path / "m.keras")
    enc = keras.Model(inp, model.get_layer("enc").output)
    x = np.random.default_rng(13).standard_normal((2, 7, 3)).astype(np.float32)
    ours = from_keras(tmp_path / "m.keras", "enc")
    assert (ours.options.input_dropout, ours.options.recurrent_dropout) == (0.2, 0.0)
    with torch.no_grad():
        np.testing.assert_allclose(ours.eval()(torch.from_numpy(x))[0].numpy(), _np(enc(x)), atol=TOL)
    with pytest.raises(KerasFileError, match=r"recurrent_dropout: .*\['other'\].* have recurrent_dropout=0\.3"):
        from_keras(tmp_path / "m.keras", "other")
    other = from_keras(tmp_path / "m.keras", "other", recurrent_dropout=0.25)
    assert (other.options.input_dropout, other.options.recurrent_dropout) == (0.2, 0.25)
    with pytest.raises(KerasFileError, match="mix dropout settings"):
        from_keras(tmp_path / "m.keras", ["enc", "other"], recurrent_dropout=0.0)

    torch.manual_seed(14)
    new = gatedrnn.GRU(5, 5, batch_first=True, input_dropout=0.125)
    to_keras(new, tmp_path / "m.keras", "other")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert (loaded.get_layer("enc").dropout, loaded.get_layer("enc").recurrent_dropout) == (0.2, 0.0)
    rnn_cell = loaded.get_layer("other").cell
    assert (rnn_cell.dropout, rnn_cell.recurrent_dropout) == (0.125, 0.0)
    hidden = np.random.default_rng(14).standard_normal((2, 7, 5)).astype(np.float32)
    with torch.no_grad():
        want = new.eval()(torch.from_numpy(hidden))[0].numpy()
    np.testing.assert_allclose(_np(loaded.get_layer("other")(hidden)), want, atol=TOL)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"layer_norm": True}, r"Keras' GRU has no layer_norm \(layer_norm=True\)"),
        ({"zoneout": 0.25}, r"Keras' GRU has no zoneout \(zoneout=0\.25\)"),
        ({"weight_drop": 0.25}, r"Keras' GRU has no weight_drop \(weight_drop=0\.25\)"),
        ({"layer_norm": True, "zoneout": 0.5}, "no layer_norm and no zoneout"),
    ],
)
def test_options_keras_lacks_are_refused(option: dict, message: str, tmp_path: Path) -> None:
    model = gatedrnn.GRU(3, 4, batch_first=True, **option)
    for name in ("new.keras", "new.weights.h5"):
        with pytest.raises(ValueError, match=message):
            to_keras(model, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            to_keras(model, tmp_path / name, recurrent_dropout=0.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"recurrent_dropout: expected a probability in \[0, 1\), got 1\.5"):
        to_keras(gatedrnn.GRU(3, 4), tmp_path / "x.keras", recurrent_dropout=1.5)


def test_keras_runs_the_backend_asked_for() -> None:
    assert keras.backend.backend() == BACKEND


@pytest.mark.skipif(not HAS_TENSORFLOW, reason="tensorflow is not installed")
@pytest.mark.skipif(BACKEND != "torch", reason="started from the torch-backend run")
def test_every_case_on_the_tensorflow_backend() -> None:
    """This whole file again, with Keras on TensorFlow: every file gatedrnn writes loads there
    with the same outputs, and files TensorFlow-backed Keras writes read the same."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not tensorflow_backend"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary, summary
