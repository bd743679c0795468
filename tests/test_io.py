"""safetensors model files: round trips, a fresh process, and refusal of truncated / tampered files."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gatedrnn
from gatedrnn.interop import ModelFileError, load, save

VARIANTS = sorted(gatedrnn.SPECS)


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b)
    assert repr(a) == repr(b)
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_every_variant(variant: str, reset_after: bool, tmp_path: Path) -> None:
    model = gatedrnn.GRU(
        3, 4, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25, variant=variant, reset_after=reset_after
    )
    path = tmp_path / "m.safetensors"
    save(model, path)
    back = load(path)
    _same_model(model, back)
    assert (back.num_layers, back.bidirectional, back.batch_first, back.dropout) == (2, True, True, 0.25)
    x = torch.randn(2, 5, 3)
    model.eval(), back.eval()
    torch.testing.assert_close(back(x)[0], model(x)[0], rtol=0, atol=0)
    cell = gatedrnn.GRUCell(3, 4, bias=variant == "gru3", variant=variant, reset_after=reset_after, dtype=torch.float64)
    save(cell, path)
    _same_model(cell, load(path))


OPTIONS = {"layer_norm": True, "recurrent_dropout": 0.25, "input_dropout": 0.125, "zoneout": 0.375, "weight_drop": 0.5}


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_keeps_the_options(variant: str, reset_after: bool, tmp_path: Path) -> None:
    torch.manual_seed(11)
    model = gatedrnn.GRU(
        3, 4, num_layers=2, bidirectional=True, variant=variant, reset_after=reset_after, engine="reference", **OPTIONS
    )
    with torch.no_grad():  # gains and shifts away from 1 and 0, so that a lost one shows
        for p in model.parameters():
            p.uniform_(-0.8, 0.8)
    path = tmp_path / "m.safetensors"
    save(model, path)
    back = load(path, engine="reference")
    _same_model(model, back)
    assert back.options == model.options
    assert any(name.startswith("ln_weight_hh_l1_reverse") for name, _ in back.named_parameters()) == (
        variant != "mingru"
    )
    x = torch.randn(5, 2, 3)
    model.eval(), back.eval()  # zoneout's expectation: the options change the eval output too
    torch.testing.assert_close(back(x)[0], model(x)[0], rtol=0, atol=0)
    cell = gatedrnn.GRUCell(3, 4, variant=variant, reset_after=reset_after, layer_norm=True, zoneout=0.25)
    save(cell, path)
    cell_back = load(path)
    _same_model(cell, cell_back)
    assert cell_back.options == cell.options


def _header(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def test_version_1_files_load_with_the_options_off(tmp_path: Path) -> None:
    """Files written before the options existed: format_version 1, no option keys."""
    path = tmp_path / "m.safetensors"
    model = gatedrnn.GRU(3, 4, num_layers=2, variant="gru2", reset_after=False)
    save(model, path)
    meta = _header(path)["__metadata__"]
    assert meta["format_version"] == "2"
    assert {k: meta[k] for k in OPTIONS} == {
        "layer_norm": "false",
        "recurrent_dropout": "0.0",
        "input_dropout": "0.0",
        "zoneout": "0.0",
        "weight_drop": "0.0",
    }
    data = path.read_bytes()

    def to_v1(h: dict) -> None:
        h["__metadata__"]["format_version"] = "1"
        for key in OPTIONS:
            del h["__metadata__"][key]

    _rewrite_header(path, data, to_v1)
    back = load(path)
    _same_model(model, back)
    assert back.options == gatedrnn.GRU(1, 1).options  # all off
    # a version-1 file never had option keys
    _rewrite_header(path, data, lambda h: h["__metadata__"].update(format_version="1"))
    with pytest.raises(ModelFileError, match=r"m\.safetensors: metadata has unexpected keys \['input_dropout'"):
        load(path)
    cell = gatedrnn.GRUCell(3, 4)
    save(cell, path)
    assert sorted(set(_header(path)["__metadata__"]) & set(OPTIONS)) == ["layer_norm", "zoneout"]
    full = gatedrnn.GRU(3, 4, num_layers=2, dropout=1.0)  # torch.nn.GRU's range for dropout: [0, 1]
    save(full, path)
    assert load(path).dropout == 1.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("layer_norm", "yes"),
        ("zoneout", "1.0"),
        ("zoneout", "nan"),
        ("recurrent_dropout", "-0.25"),
        ("input_dropout", "inf"),
        ("weight_drop", "a half"),
        ("weight_drop", None),  # missing
    ],
)
def test_bad_option_metadata_is_refused(tmp_path: Path, key: str, value: str | None) -> None:
    path = tmp_path / "m.safetensors"
    save(gatedrnn.GRU(3, 4, zoneout=0.5), path)

    def edit(h: dict) -> None:
        if value is None:
            del h["__metadata__"][key]
        else:
            h["__metadata__"][key] = value

    _rewrite_header(path, path.read_bytes(), edit)
    want = rf"missing \['{key}'\]" if value is None else f"metadata '{key}': expected"
    with pytest.raises(ModelFileError, match=want) as info:
        load(path)
    assert "m.safetensors" in str(info.value)


def test_torch_gru_is_saved_as_gru0(tmp_path: Path) -> None:
    ref = torch.nn.GRU(3, 4, num_layers=2)
    save(ref, tmp_path / "t.safetensors")
    back = load(tmp_path / "t.safetensors")
    assert isinstance(back, gatedrnn.GRU) and back.variant == "gru0" and back.reset_after
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(back(x)[0], ref(x)[0])


def test_loads_in_a_fresh_process(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = gatedrnn.GRU(3, 5, num_layers=2, bidirectional=True, variant="mgu", reset_after=False)
    path = tmp_path / "m.safetensors"
    save(model, path)
    x = torch.randn(6, 2, 3)
    save_file({"x": x}, tmp_path / "x.safetensors")
    code = (
        "import sys, gatedrnn, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "m = gatedrnn.load(sys.argv[1])\n"
        "x = load_file(sys.argv[2])['x']\n"
        "with torch.no_grad():\n"
        "    y, h = m(x)\n"
        "save_file({'y': y.contiguous(), 'h': h.contiguous()}, sys.argv[3])\n"
    )
    src = str(Path(gatedrnn.__file__).parents[1])
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    out = tmp_path / "y.safetensors"
    subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "x.safetensors"), str(out)], check=True, env=env
    )
    got = load_file(out)
    with torch.no_grad():
        y, h = model(x)
    torch.testing.assert_close(got["y"], y, rtol=0, atol=0)
    torch.testing.assert_close(got["h"], h, rtol=0, atol=0)


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(gatedrnn.GRU(2, 3), path)
    save(gatedrnn.GRU(2, 4), path)  # replaces
    assert load(path).hidden_size == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def _saved(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "m.safetensors"
    save(gatedrnn.GRU(3, 4, num_layers=2, variant="gru1"), path)
    return path, path.read_bytes()


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1, -17])
def test_truncated_file_is_refused(tmp_path: Path, keep: int) -> None:
    path, data = _saved(tmp_path)
    path.write_bytes(data[:keep])
    with pytest.raises(ModelFileError, match=r"m\.safetensors"):
        load(path)


def test_tampered_data_is_refused(tmp_path: Path) -> None:
    path, data = _saved(tmp_path)
    b = bytearray(data)
    b[-3] ^= 0x40  # one bit of one weight
    path.write_bytes(bytes(b))
    with pytest.raises(ModelFileError, match="sha256"):
        load(path)


def _rewrite_header(path: Path, data: bytes, edit) -> None:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["__metadata__"].update(hidden_size="5"), "do not match the configuration"),
        (lambda h: h["__metadata__"].update(variant="gru9"), "variant"),
        (lambda h: h["__metadata__"].update(format_version="99"), "format_version"),
        (lambda h: h["__metadata__"].update(bias="yes"), "'bias'"),
        (lambda h: h["__metadata__"].update(num_layers="-1"), "num_layers"),
        (lambda h: h["__metadata__"].update(dropout="nan"), "dropout"),
        (lambda h: h["__metadata__"].pop("reset_after"), "missing"),
        (lambda h: h["__metadata__"].update(pickle="cos\nsystem"), "unexpected keys"),
        (lambda h: h.pop("__metadata__"), "no gatedrnn metadata"),
        (lambda h: h.pop("bias_hh_l1"), "not a valid safetensors file|do not match"),
    ],
)
def test_tampered_header_is_refused(tmp_path: Path, edit, message: str) -> None:
    path, data = _saved(tmp_path)
    _rewrite_header(path, data, edit)
    with pytest.raises(ModelFileError, match=message) as info:
        load(path)
    assert "m.safetensors" in str(info.value)


def test_corrupt_header_bytes_are_refused(tmp_path: Path) -> None:
    path, data = _saved(tmp_path)
    b = bytearray(data)
    b[10] = 0xFF  # inside the JSON header
    path.write_bytes(bytes(b))
    with pytest.raises(ModelFileError, match=r"m\.safetensors"):
        load(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])  # absurd header length
    with pytest.raises(ModelFileError, match="header length"):
        load(path)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError, match="no gatedrnn metadata"):
        load(path)
    save_file(dict(torch.nn.GRU(2, 3).state_dict()), path, metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="'format'"):
        load(path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="model"):
        save(torch.nn.LSTM(2, 3), tmp_path / "x.safetensors")  # type: ignore[arg-type]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    """Model files get the permissions of any file the user writes (0o666 & ~umask), not
    mkstemp's private 0o600, and overwriting keeps working."""
    import os
    import stat

    old = os.umask(umask)
    try:
        for _ in range(2):  # a new file, then the same path replaced (Keras: written into)
            save(gatedrnn.GRU(2, 3), tmp_path / "m.safetensors")
            gatedrnn.to_keras(gatedrnn.GRU(2, 3, batch_first=True), tmp_path / "k.weights.h5")
        for name in ("m.safetensors", "k.weights.h5"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
        assert sorted(p.name for p in tmp_path.iterdir()) == ["k.weights.h5", "m.safetensors"]  # no temp files
    finally:
        os.umask(old)


def test_bad_engine_is_blamed_on_the_argument_not_the_file(tmp_path: Path) -> None:
    save(gatedrnn.GRU(2, 3), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"engine: expected 'auto' or one of .*got 'cudnn'") as info:
        load(tmp_path / "m.safetensors", engine="cudnn")
    assert not isinstance(info.value, ModelFileError)  # the file is fine
