"""Model files: ``save(model, path)`` / ``load(path)`` on safetensors, never pickle.

A file holds the parameters (``torch.nn.GRU`` names) and, in the safetensors metadata, the whole
layer configuration, so the file alone rebuilds the model:

======================  ==================================================================
key                     value (all strings)
======================  ==================================================================
``format``              ``gatedrnn``
``format_version``      ``2`` (``1``: written before the options existed; read with them off)
``kind``                ``GRU`` or ``GRUCell``
``variant``             ``gru0`` ... ``mingru``
``input_size``          integer >= 1
``hidden_size``         integer >= 1
``num_layers``          integer >= 1 (``GRU`` only)
``bias``                ``true`` / ``false``
``batch_first``         ``true`` / ``false`` (``GRU`` only)
``dropout``             a number in [0, 1] (``GRU`` only)
``bidirectional``       ``true`` / ``false`` (``GRU`` only)
``reset_after``         ``true`` / ``false``
``layer_norm``          ``true`` / ``false`` (version 2)
``recurrent_dropout``   a number in [0, 1) (version 2, ``GRU`` only)
``input_dropout``       a number in [0, 1) (version 2, ``GRU`` only)
``zoneout``             a number in [0, 1) (version 2)
``weight_drop``         a number in [0, 1) (version 2, ``GRU`` only)
``dtype``               ``float32``, ``float64``, ``float16`` or ``bfloat16``
``sha256``              digest of every tensor (name, dtype, shape, bytes, in name order)
======================  ==================================================================

The options (:mod:`gatedrnn._options`) are keys of version 2; a version-1 file has none of them
and loads with every option off. :func:`save` writes version 2. :func:`load` refuses, with
:class:`ModelFileError` naming the file, anything that is not exactly such a file: a truncated or corrupt header or data section, malformed or missing metadata, tensor
names or shapes that differ from what the configuration implies, a digest mismatch (tampered
data). Writes are atomic (:mod:`gatedrnn._files`): a temporary file in the same folder, ``fsync``, then
``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any

import torch
from torch import Tensor, nn

from .._engines import check_engine_name
from .._files import atomic_write
from .._layers import GRU, GRUCell
from .._options import PROBABILITIES
from .._specs import SPECS

__all__ = ["FORMAT_VERSION", "ModelFileError", "load", "save"]

FORMAT = "gatedrnn"
FORMAT_VERSION = "2"
_READABLE = ("1", "2")  # version 1: no option keys (written before the options existed)
# the options each kind takes, as metadata keys of version 2 (GRUCell: the per-step ones)
_OPTIONS = {
    "GRU": ("layer_norm", "recurrent_dropout", "input_dropout", "zoneout", "weight_drop"),
    "GRUCell": ("layer_norm", "zoneout"),
}
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAX_HEADER = 100 * 1024 * 1024


class ModelFileError(ValueError):
    """A model file that is not a complete, untampered gatedrnn safetensors file."""


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _config(model: GRU | GRUCell) -> dict[str, str]:
    def b(v: bool) -> str:
        return "true" if v else "false"

    dtype = next(model.parameters()).dtype
    names = {v: k for k, v in _DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"model: expected parameters of dtype {sorted(_DTYPES)}, got {dtype}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": type(model).__name__,
        "variant": model.variant,
        "input_size": str(model.input_size),
        "hidden_size": str(model.hidden_size),
        "bias": b(model.bias),
        "reset_after": b(model.reset_after),
        "dtype": names[dtype],
    }
    if isinstance(model, GRU):
        meta.update(
            num_layers=str(model.num_layers),
            batch_first=b(model.batch_first),
            dropout=repr(float(model.dropout)),
            bidirectional=b(model.bidirectional),
        )
    for key in _OPTIONS[type(model).__name__]:
        value = getattr(model.options, key)
        meta[key] = b(value) if key == "layer_norm" else repr(float(value))
    return meta


def save(model: GRU | GRUCell | nn.GRU | nn.GRUCell, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (parameters + configuration) to a safetensors file, atomically.

    Args:
        model: a :class:`gatedrnn.GRU` / :class:`gatedrnn.GRUCell`, or a ``torch.nn.GRU`` /
            ``torch.nn.GRUCell`` (saved as ``gru0``, ``reset_after=True``).
        path: the file to write (conventionally ``*.safetensors``); replaced if it exists.
    """
    from safetensors.torch import save as st_save

    if isinstance(model, (nn.GRU, nn.GRUCell)):
        from ._torch import from_torch

        model = from_torch(model)
    if not isinstance(model, (GRU, GRUCell)):
        raise TypeError(
            f"model: expected a gatedrnn.GRU / GRUCell or torch.nn.GRU / GRUCell, got {type(model).__name__}"
        )
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()}
    meta = _config(model)
    meta["sha256"] = _digest(tensors)
    atomic_write(os.fspath(path), st_save(tensors, metadata=meta))


def _read_header(path: str, data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ModelFileError(f"{path}: not a safetensors file (only {len(data)} bytes; truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ModelFileError(f"{path}: header length {n} exceeds the file ({len(data)} bytes): truncated or corrupt")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: the safetensors header is not valid JSON ({e}): corrupt or tampered") from e
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the safetensors header is not a JSON object: corrupt or tampered")
    return header


def _parse_bool(path: str, meta: dict[str, str], key: str) -> bool:
    value = meta[key]
    if value not in ("true", "false"):
        raise ModelFileError(f"{path}: metadata {key!r}: expected 'true' or 'false', got {value!r}")
    return value == "true"


def _parse_int(path: str, meta: dict[str, str], key: str) -> int:
    value = meta[key]
    if not value.isdigit() or int(value) < 1:
        raise ModelFileError(f"{path}: metadata {key!r}: expected an integer >= 1, got {value!r}")
    return int(value)


def _parse_probability(path: str, meta: dict[str, str], key: str) -> float:
    value = meta[key]
    try:
        p = float(value)
    except ValueError:
        p = math.nan
    if not 0.0 <= p < 1.0:  # also refuses nan
        raise ModelFileError(f"{path}: metadata {key!r}: expected a number in [0, 1), got {value!r}")
    return p


def _build(path: str, meta: dict[str, str], engine: str) -> GRU | GRUCell:
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: metadata 'format': expected {FORMAT!r}, got {meta.get('format')!r}")
    version = meta.get("format_version")
    if version not in _READABLE:
        raise ModelFileError(
            f"{path}: metadata 'format_version': expected one of {list(_READABLE)} (the versions this gatedrnn "
            f"reads), got {version!r}"
        )
    kind = meta.get("kind")
    common = ["variant", "input_size", "hidden_size", "bias", "reset_after", "dtype", "sha256"]
    layer_keys = ["num_layers", "batch_first", "dropout", "bidirectional"]
    if kind not in ("GRU", "GRUCell"):
        raise ModelFileError(f"{path}: metadata 'kind': expected 'GRU' or 'GRUCell', got {kind!r}")
    options = _OPTIONS[kind] if version != "1" else ()
    wanted = {"format", "format_version", "kind", *common, *(layer_keys if kind == "GRU" else []), *options}
    missing = sorted(wanted - set(meta))
    if missing:
        raise ModelFileError(f"{path}: metadata is missing {missing}")
    extra = sorted(set(meta) - wanted)
    if extra:
        raise ModelFileError(f"{path}: metadata has unexpected keys {extra}")
    if meta["variant"] not in SPECS:
        raise ModelFileError(f"{path}: metadata 'variant': expected one of {sorted(SPECS)}, got {meta['variant']!r}")
    if meta["dtype"] not in _DTYPES:
        raise ModelFileError(f"{path}: metadata 'dtype': expected one of {sorted(_DTYPES)}, got {meta['dtype']!r}")
    kw: dict[str, Any] = {
        "bias": _parse_bool(path, meta, "bias"),
        "variant": meta["variant"],
        "reset_after": _parse_bool(path, meta, "reset_after"),
        "dtype": _DTYPES[meta["dtype"]],
    }
    for key in options:
        kw[key] = _parse_probability(path, meta, key) if key in PROBABILITIES else _parse_bool(path, meta, key)
    sizes = (_parse_int(path, meta, "input_size"), _parse_int(path, meta, "hidden_size"))
    try:
        if kind == "GRUCell":
            return GRUCell(*sizes, **kw)
        try:
            dropout = float(meta["dropout"])
        except ValueError:
            dropout = math.nan  # refused below by GRU's own check, which names the argument
        return GRU(
            *sizes,
            num_layers=_parse_int(path, meta, "num_layers"),
            batch_first=_parse_bool(path, meta, "batch_first"),
            dropout=dropout,
            bidirectional=_parse_bool(path, meta, "bidirectional"),
            engine=engine,
            **kw,
        )
    except ModelFileError:
        raise
    except ValueError as e:
        raise ModelFileError(f"{path}: the configuration in the metadata is not a valid layer: {e}") from e


def load(path: str | os.PathLike[str], *, device: Any = None, engine: str = "auto") -> GRU | GRUCell:
    """Rebuild a model from a file written by :func:`save` (no pickle; the file alone suffices).

    Args:
        path: the safetensors file.
        device: where to put the parameters (default CPU).
        engine: the engine of a rebuilt :class:`gatedrnn.GRU` (not stored: it is a runtime choice).

    Returns:
        A new :class:`gatedrnn.GRU` or :class:`gatedrnn.GRUCell` (in training mode, like any new module).

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: the file is truncated, corrupt, tampered with, not a gatedrnn model file,
            or its tensors do not match its configuration exactly. The message names the file.
    """
    from safetensors.torch import load as st_load

    check_engine_name(engine)  # an argument, not the file: checked before the file is blamed
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no model file at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    header = _read_header(path, data)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ModelFileError(f"{path}: no gatedrnn metadata (not written by gatedrnn.save, or tampered)")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed buffer
        raise ModelFileError(f"{path}: not a valid safetensors file ({e}): truncated, corrupt or tampered") from e
    model = _build(path, meta, engine)
    expected = {name: (tuple(p.shape), p.dtype) for name, p in model.named_parameters()}
    got = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
        detail = "; ".join(
            s
            for s in (
                f"missing tensors {missing}" if missing else "",
                f"unexpected tensors {extra}" if extra else "",
                *(f"{n}: expected shape {expected[n][0]} {expected[n][1]}, got {got[n][0]} {got[n][1]}" for n in wrong),
            )
            if s
        )
        raise ModelFileError(f"{path}: the tensors do not match the configuration in the metadata: {detail}")
    if _digest(tensors) != meta["sha256"]:
        raise ModelFileError(f"{path}: the tensor data does not match its sha256 digest: corrupt or tampered")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[name])
    if device is not None:
        model.to(device)
    return model
