"""Keras GRU weights ⇄ gatedrnn, through the files alone (h5py; no TensorFlow, no Keras import).

Keras has one recurrent GRU: the classic GRU, gatedrnn's ``gru0``. Other variants have no Keras
layer and are refused. The mapping (exact, both reset forms):

===========================  ======================================  ===============================
Keras (``cell/vars/i``)      shape                                   gatedrnn (``gru0``)
===========================  ======================================  ===============================
``0`` kernel                 ``(I, 3H)``, columns ``z, r, h``        ``weight_ih`` ``(3H, I)``, rows ``r, z, n``
``1`` recurrent_kernel       ``(H, 3H)``, columns ``z, r, h``        ``weight_hh`` ``(3H, H)``
``2`` bias, reset_after=True ``(2, 3H)``: [input; recurrent]         ``bias_ih``, ``bias_hh``
``2`` bias, reset_after=False ``(3H,)``                               ``bias_ih`` (no ``bias_hh``)
===========================  ======================================  ===============================

Keras' update ``h = z * h_prev + (1 - z) * hh`` is gatedrnn's (and PyTorch's). A Keras
``Bidirectional(GRU, merge_mode="concat")`` is a ``bidirectional=True`` layer (its backward GRU
runs with ``go_backwards=True`` and its outputs are flipped back, as gatedrnn's reverse direction).
A plain Keras GRU with ``go_backwards=True`` reads the sequence backwards and returns its outputs
in that reversed order: the same weights, applied as ``gru(x.flip(1))`` (batch-first); both
functions ask for ``go_backwards=True`` to confirm that.

Files: a ``.weights.h5`` (``model.save_weights``) or a ``.keras`` archive (``model.save``: a zip
of ``config.json``, ``metadata.json`` and ``model.weights.h5``). Inside the h5 a GRU layer is a
group ``.../cell/vars/{0,1,2}`` next to ``.../vars`` whose ``name`` attribute is the Keras layer
name; a Bidirectional layer has ``forward_layer`` and ``backward_layer`` such groups. Layers are
chosen by their Keras name (``model.layers[i].name``) or h5 group path.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from .._files import atomic_write
from .._layers import GRU

__all__ = ["KerasFileError", "from_keras", "keras_layers", "to_keras"]

_WEIGHTS = "model.weights.h5"


class KerasFileError(ValueError):
    """A Keras file or layer that cannot be read or written exactly."""


@dataclass
class _Slot:
    """One Keras GRU or Bidirectional(GRU) layer in a file."""

    name: str
    path: str
    bidirectional: bool
    config: dict[str, Any] | None = None  # the GRU config (forward layer for Bidirectional)
    backward_config: dict[str, Any] | None = None
    merge_mode: str | None = None
    dirs: list[str] = field(default_factory=list)  # h5 group paths of the GRU(s), forward first


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Keras interop needs the 'h5py' package: pip install 'gatedrnn[interop]'") from e
    return h5py


def _is_gru_group(g: Any) -> bool:
    h5py = _h5py()
    try:
        v = g["cell"]["vars"]
    except (KeyError, TypeError):
        return False
    return isinstance(v, h5py.Group) and "0" in v and "1" in v and getattr(v["0"], "ndim", 0) == 2


def _vars_name(g: Any, default: str) -> str:
    v = g.get("vars")
    name = v.attrs.get("name") if v is not None else None
    if isinstance(name, bytes):
        name = name.decode()
    return str(name) if name else default


def _find_slots(f: Any) -> list[_Slot]:
    h5py = _h5py()
    slots: list[_Slot] = []

    def walk(g: Any) -> None:
        for key in g:
            child = g[key]
            if not isinstance(child, h5py.Group):
                continue
            fw, bw = child.get("forward_layer"), child.get("backward_layer")
            if fw is not None and bw is not None and _is_gru_group(fw) and _is_gru_group(bw):
                slots.append(_Slot(_vars_name(child, key), child.name, True, dirs=[fw.name, bw.name]))
            elif _is_gru_group(child):
                slots.append(_Slot(_vars_name(child, key), child.name, False, dirs=[child.name]))
            else:
                walk(child)

    walk(f)
    return slots


def _config_layers(node: Any, out: list[dict[str, Any]]) -> None:
    """Every GRU / Bidirectional layer config in ``config.json``, in file order."""
    if isinstance(node, dict):
        if node.get("class_name") in ("GRU", "Bidirectional") and isinstance(node.get("config"), dict):
            out.append(node)
            return
        for v in node.values():
            _config_layers(v, out)
    elif isinstance(node, list):
        for v in node:
            _config_layers(v, out)


def _attach_configs(path: str, slots: list[_Slot], config: dict[str, Any]) -> list[_Slot]:
    """Match the h5 slots with config.json's layers by name; return the slots in config order."""
    layers: list[dict[str, Any]] = []
    _config_layers(config, layers)
    by_name = {s.name: s for s in slots}
    ordered = []
    for node in layers:
        cfg = node["config"]
        slot = by_name.get(cfg.get("name"))
        if slot is None:
            continue
        if node["class_name"] == "Bidirectional":
            inner, back = cfg.get("layer", {}), cfg.get("backward_layer") or cfg.get("layer", {})
            if inner.get("class_name") != "GRU":
                continue
            slot.config, slot.backward_config = inner.get("config", {}), back.get("config", {})
            slot.merge_mode = cfg.get("merge_mode")
        else:
            slot.config = cfg
        ordered.append(slot)
    ordered += [s for s in slots if s not in ordered]
    return ordered


class _Source:
    """An opened Keras file: the h5 weights (read-only) and config.json if any."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"path: no Keras file at {self.path!r}")
        self.config: dict[str, Any] | None = None
        self.is_archive = zipfile.is_zipfile(self.path)
        if self.is_archive:
            with zipfile.ZipFile(self.path) as z:
                names = z.namelist()
                if _WEIGHTS not in names or "config.json" not in names:
                    raise KerasFileError(
                        f"{self.path}: a .keras archive must hold {_WEIGHTS} and config.json, got {names}"
                    )
                try:
                    self.config = json.loads(z.read("config.json"))
                except ValueError as e:
                    raise KerasFileError(f"{self.path}: config.json is not valid JSON ({e})") from e
                self.h5_bytes = z.read(_WEIGHTS)
        else:
            with open(self.path, "rb") as fh:
                self.h5_bytes = fh.read()

    def open(self) -> Any:
        h5py = _h5py()
        try:
            return h5py.File(io.BytesIO(self.h5_bytes), "r")
        except OSError as e:
            raise KerasFileError(f"{self.path}: not a Keras weights file (h5py: {e})") from e

    def slots(self, f: Any) -> list[_Slot]:
        slots = _find_slots(f)
        if self.config is not None:
            slots = _attach_configs(self.path, slots, self.config)
        return slots


def _select(
    path: str, slots: list[_Slot], layer: str | list[str] | tuple[str, ...] | None, want: int | None
) -> list[_Slot]:
    names = [s.name for s in slots]
    if not slots:
        raise KerasFileError(f"{path}: no Keras GRU or Bidirectional(GRU) layer found")
    if layer is None:
        # Only an unambiguous single layer is taken implicitly: two GRU layers in a file need not
        # feed each other (a Dense may sit between them), so a stack is always named.
        if len(slots) == 1 and want in (None, 1):
            return slots
        raise KerasFileError(
            f"layer: {path} holds the GRU layers {names}; expected layer= naming "
            + ("one of them" if want in (None, 1) else f"{want} of them in order")
        )
    wanted = [layer] if isinstance(layer, str) else list(layer)
    out = []
    for name in wanted:
        found = [s for s in slots if name in (s.name, s.path, s.path.lstrip("/"))]
        if not found:
            raise KerasFileError(f"layer: expected one of {names} in {path}, got {name!r}")
        out.append(found[0])
    if want is not None and len(out) != want:
        raise KerasFileError(f"layer: the model has num_layers={want}; expected {want} Keras layers, got {wanted}")
    return out


def _check_slot_config(path: str, slot: _Slot, go_backwards: bool | None) -> bool | None:
    """Refuse what gatedrnn does not compute; return the config's reset_after (None: unknown)."""
    cfg = slot.config
    if cfg is None:
        return None
    for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if cfg.get(key, want) != want:
            raise KerasFileError(
                f"{path}: layer {slot.name!r} has {key}={cfg.get(key)!r}; gatedrnn's GRU uses {key}={want!r}"
            )
    if slot.bidirectional:
        if slot.merge_mode != "concat":
            raise KerasFileError(
                f"{path}: layer {slot.name!r} has merge_mode={slot.merge_mode!r}; expected 'concat' "
                "(gatedrnn's bidirectional output concatenates the two directions)"
            )
        fw, bw = cfg.get("go_backwards", False), (slot.backward_config or {}).get("go_backwards", True)
        if fw or not bw:
            raise KerasFileError(f"{path}: layer {slot.name!r}: expected a forward layer and a go_backwards layer")
    else:
        backwards = bool(cfg.get("go_backwards", False))
        if backwards and go_backwards is not True:
            raise KerasFileError(
                f"{path}: layer {slot.name!r} has go_backwards=True: it reads the sequence backwards and returns "
                "outputs in reversed order. Pass go_backwards=True to confirm (then run the gatedrnn layer on "
                "x.flip(1) for batch-first input)"
            )
        if go_backwards is True and not backwards:
            raise KerasFileError(f"go_backwards: layer {slot.name!r} in {path} has go_backwards=False, got True")
    return bool(cfg.get("reset_after", True))


def _read_cell(f: Any, path: str, group: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    v = f[group]["cell"]["vars"]
    k, rk = np.asarray(v["0"][...]), np.asarray(v["1"][...])
    b = np.asarray(v["2"][...]) if "2" in v else None
    h = rk.shape[0]
    ok = k.ndim == 2 and k.shape[1] == 3 * h and rk.shape == (h, 3 * h)
    ok = ok and (b is None or b.shape in ((3 * h,), (2, 3 * h)))
    if not ok:
        shapes = (k.shape, rk.shape, None if b is None else b.shape)
        raise KerasFileError(
            f"{path}: {group} is not a Keras GRU cell: expected kernel (I, 3H), recurrent_kernel (H, 3H), "
            f"bias (3H,) or (2, 3H); got {shapes}"
        )
    return k, rk, b


def _zrh_to_rzn(a: np.ndarray, h: int) -> np.ndarray:
    """Keras columns ``z, r, h`` (last axis) → gatedrnn rows ``r, z, n`` (first axis)."""
    a = np.moveaxis(a, -1, 0)
    return np.concatenate([a[h : 2 * h], a[:h], a[2 * h :]])


def _rzn_to_zrh(a: np.ndarray, h: int) -> np.ndarray:
    """gatedrnn rows ``r, z, n`` (first axis) → Keras columns ``z, r, h`` (last axis)."""
    a = np.concatenate([a[h : 2 * h], a[:h], a[2 * h :]])
    return np.moveaxis(a, 0, -1)


def keras_layers(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The Keras GRU / Bidirectional(GRU) layers in a ``.keras`` or ``.weights.h5`` file.

    Returns one dict per layer (config order for ``.keras``): ``name``, ``path`` (h5 group),
    ``bidirectional``, ``input_size``, ``hidden_size``, ``use_bias``, and ``reset_after`` /
    ``go_backwards`` where the file says (None when a bare weights file cannot tell).
    """
    src = _Source(path)
    out = []
    with src.open() as f:
        for s in src.slots(f):
            k, rk, b = _read_cell(f, src.path, s.dirs[0])
            reset_after = None if b is None else b.ndim == 2
            if s.config is not None:
                reset_after = bool(s.config.get("reset_after", True))
            out.append(
                {
                    "name": s.name,
                    "path": s.path,
                    "bidirectional": s.bidirectional,
                    "input_size": k.shape[0],
                    "hidden_size": rk.shape[0],
                    "use_bias": b is not None,
                    "reset_after": reset_after,
                    "go_backwards": None if s.config is None else bool(s.config.get("go_backwards", False)),
                }
            )
    return out


def from_keras(
    path: str | os.PathLike[str],
    layer: str | list[str] | None = None,
    *,
    reset_after: bool | None = None,
    go_backwards: bool | None = None,
    batch_first: bool = True,
    engine: str = "auto",
) -> GRU:
    """A gatedrnn ``gru0`` layer with the weights of Keras GRU layer(s) from a file.

    Args:
        path: a ``.keras`` archive or a ``.weights.h5`` file (no Keras or TensorFlow needed).
        layer: the Keras layer name (or h5 group path); a list of names stacks them into a
            ``num_layers=len(layer)`` GRU (each must take the previous one's output). None: the
            file's only GRU layer.
        reset_after: the reset form; read from ``config.json`` or the bias shape. Needed only for
            a bare ``.weights.h5`` whose layer has ``use_bias=False`` (then the file cannot tell).
        go_backwards: confirm a Keras layer with ``go_backwards=True`` (see the module docstring).
        batch_first: of the new layer (Keras is batch-first; default True).
        engine: of the new layer.

    Raises:
        KerasFileError: no such layer, an ambiguous choice, activations other than tanh/sigmoid,
            a merge_mode other than concat, go_backwards unconfirmed, layers that do not stack,
            a reset form that disagrees with ``reset_after``.
    """
    src = _Source(path)
    with src.open() as f:
        slots = _select(src.path, src.slots(f), layer, None)
        layers_w = []
        forms = set()
        for s in slots:
            form = _check_slot_config(src.path, s, go_backwards)
            dirs = [_read_cell(f, src.path, g) for g in s.dirs]
            b = dirs[0][2]
            if b is not None:
                form_b = b.ndim == 2
                if form is not None and form != form_b:
                    raise KerasFileError(
                        f"{src.path}: layer {s.name!r}: config says reset_after={form} but the bias has shape {b.shape}"
                    )
                form = form_b
            forms.add(form)
            layers_w.append((s, dirs))
    if len({s.bidirectional for s, _ in layers_w}) != 1:
        raise KerasFileError(
            f"layer: expected all Bidirectional or all plain GRU layers, got {[s.name for s in slots]}"
        )
    known = {f for f in forms if f is not None}
    if len(known) > 1:
        raise KerasFileError(f"layer: the layers {[s.name for s in slots]} mix reset_after=True and False")
    form = known.pop() if known else None
    if reset_after is not None and form is not None and reset_after != form:
        raise KerasFileError(
            f"reset_after: the Keras layer(s) in {src.path} have reset_after={form}, got {reset_after}"
        )
    if form is None:
        if reset_after is None:
            raise KerasFileError(
                f"reset_after: {src.path} has no bias and no config.json, so the reset form is unknown; "
                "pass reset_after=True or False (the Keras layer's setting)"
            )
        form = reset_after
    d = 2 if layers_w[0][0].bidirectional else 1
    hidden = layers_w[0][1][0][1].shape[0]
    input_size = layers_w[0][1][0][0].shape[0]
    use_bias = {dirs[0][2] is not None for _, dirs in layers_w}
    for k, (s, dirs) in enumerate(layers_w):
        want_in = input_size if k == 0 else hidden * d
        if dirs[0][1].shape[0] != hidden or dirs[0][0].shape[0] != want_in:
            raise KerasFileError(
                f"layer: {s.name!r} takes {dirs[0][0].shape[0]} inputs with {dirs[0][1].shape[0]} units; to stack "
                f"it as layer {k} expected {want_in} inputs and {hidden} units"
            )
    if len(use_bias) != 1:
        raise KerasFileError(f"layer: the layers {[s.name for s, _ in layers_w]} mix use_bias=True and False")
    bias = use_bias.pop()
    dtype = torch.float64 if layers_w[0][1][0][0].dtype == np.float64 else torch.float32
    model = GRU(
        input_size,
        hidden,
        num_layers=len(layers_w),
        bias=bias,
        batch_first=batch_first,
        bidirectional=d == 2,
        variant="gru0",
        reset_after=form,
        engine=engine,
        dtype=dtype,
    )
    with torch.no_grad():
        for lw, (_, dirs) in zip(model.layer_weights(), layers_w, strict=True):
            for w, (k, rk, b) in zip(lw, dirs, strict=True):
                w.w_ih.copy_(torch.from_numpy(_zrh_to_rzn(k, hidden).copy()))
                assert w.w_hh is not None
                w.w_hh.copy_(torch.from_numpy(_zrh_to_rzn(rk, hidden).copy()))
                if b is not None:
                    assert w.b_ih is not None
                    bb = b if b.ndim == 2 else b[None]
                    w.b_ih.copy_(torch.from_numpy(_zrh_to_rzn(bb[0], hidden).copy()))
                    if form:
                        assert w.b_hh is not None
                        w.b_hh.copy_(torch.from_numpy(_zrh_to_rzn(bb[1], hidden).copy()))
    return model


def _check_exportable(model: Any) -> None:
    if not isinstance(model, GRU):
        raise TypeError(f"model: expected a gatedrnn.GRU, got {type(model).__name__}")
    if not model.spec.is_classic:
        raise ValueError(
            f"model: Keras only has the classic GRU (variant 'gru0'); variant {model.variant!r} has no Keras layer. "
            "Use gatedrnn.save (safetensors) or gatedrnn.export_onnx for it"
        )


def _keras_arrays(model: GRU, w: Any, keras_bias: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """kernel, recurrent_kernel and bias (None when the Keras layer has no bias) of one direction."""
    h = model.hidden_size

    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    k, rk = _rzn_to_zrh(a(w.w_ih), h), _rzn_to_zrh(a(w.w_hh), h)
    if keras_bias is None:
        keras_bias = model.bias
    if not keras_bias:
        if model.bias and any(t is not None and bool(t.detach().any()) for t in (w.b_ih, w.b_hh)):
            raise KerasFileError(
                "model: the Keras layer has use_bias=False but the model has non-zero biases; cannot be exact"
            )
        return k, rk, None
    b_ih = a(w.b_ih) if w.b_ih is not None else np.zeros(3 * h)
    if model.reset_after:
        b_hh = a(w.b_hh) if w.b_hh is not None else np.zeros(3 * h)
        return k, rk, np.stack([_rzn_to_zrh(b_ih, h), _rzn_to_zrh(b_hh, h)])
    return k, rk, _rzn_to_zrh(b_ih, h)


def _write_into(f: Any, path: str, model: GRU, slots: list[_Slot], go_backwards: bool | None) -> None:
    for k, (lw, slot) in enumerate(zip(model.layer_weights(), slots, strict=True)):
        form = _check_slot_config(path, slot, go_backwards)
        if slot.bidirectional != model.bidirectional:
            raise KerasFileError(
                f"{path}: layer {slot.name!r} is {'' if slot.bidirectional else 'not '}Bidirectional; "
                f"the model has bidirectional={model.bidirectional}"
            )
        for group, w in zip(slot.dirs, lw, strict=True):
            v = f[group]["cell"]["vars"]
            k_ds, rk_ds = v["0"], v["1"]
            b_ds = v["2"] if "2" in v else None
            if b_ds is not None:
                form = b_ds.ndim == 2 if form is None else form
            if form is not None and form != model.reset_after:
                raise KerasFileError(
                    f"{path}: layer {slot.name!r} has reset_after={form}, the model reset_after={model.reset_after}: "
                    "the two reset forms are different functions; build the Keras layer with "
                    f"reset_after={model.reset_after}"
                )
            kernel, rec, bias = _keras_arrays(model, w, b_ds is not None)
            for ds, arr, what in ((k_ds, kernel, "kernel"), (rk_ds, rec, "recurrent_kernel"), (b_ds, bias, "bias")):
                if ds is None:
                    continue
                if ds.shape != arr.shape:
                    raise KerasFileError(
                        f"{path}: layer {slot.name!r} {what} has shape {ds.shape}; layer {k} of the model needs "
                        f"{arr.shape} (input_size, hidden_size or reset form differ)"
                    )
                ds[...] = arr.astype(ds.dtype)


def _gru_config(name: str, model: GRU, input_size: int, go_backwards: bool) -> dict[str, Any]:
    return {
        "module": "keras.layers",
        "class_name": "GRU",
        "config": {
            "name": name,
            "trainable": True,
            "dtype": "float32",
            "return_sequences": True,
            "return_state": False,
            "go_backwards": go_backwards,
            "stateful": False,
            "unroll": False,
            "units": model.hidden_size,
            "activation": "tanh",
            "recurrent_activation": "sigmoid",
            "use_bias": model.bias,
            "dropout": 0.0,
            "recurrent_dropout": 0.0,
            "reset_after": model.reset_after,
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, None, input_size]},
    }


def _new_file(model: GRU) -> tuple[dict[str, Any], bytes]:
    """config.json and model.weights.h5 of ``Sequential([Input((None, I)), GRU or Bidirectional(GRU), ...])``."""
    h5py = _h5py()
    layers: list[dict[str, Any]] = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {"batch_shape": [None, None, model.input_size], "dtype": "float32", "name": "input_layer"},
            "registered_name": None,
        }
    ]
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        root = f.create_group("layers")
        for k, lw in enumerate(model.layer_weights()):
            suffix = f"_{k}" if k else ""
            in_size = model.input_size if k == 0 else model.hidden_size * model.num_directions
            if model.bidirectional:
                name = "bidirectional" + suffix
                g = root.create_group(name)
                g.create_group("vars").attrs["name"] = name
                cfg = {
                    "name": name,
                    "trainable": True,
                    "dtype": "float32",
                    "merge_mode": "concat",
                    "layer": _gru_config(f"forward_gru{suffix}", model, in_size, False),
                    "backward_layer": _gru_config(f"backward_gru{suffix}", model, in_size, True),
                }
                layers.append(
                    {
                        "module": "keras.layers",
                        "class_name": "Bidirectional",
                        "config": cfg,
                        "registered_name": None,
                        "build_config": {"input_shape": [None, None, in_size]},
                    }
                )
                dirs = [
                    (g.create_group("forward_layer"), f"forward_gru{suffix}"),
                    (g.create_group("backward_layer"), f"backward_gru{suffix}"),
                ]
            else:
                name = "gru" + suffix
                layers.append(_gru_config(name, model, in_size, False))
                dirs = [(root.create_group(name), name)]
            for (g, gname), w in zip(dirs, lw, strict=True):
                g.create_group("vars").attrs["name"] = gname
                v = g.create_group("cell").create_group("vars")
                v.attrs["name"] = "gru_cell"
                for i, arr in enumerate(_keras_arrays(model, w, None)):
                    if arr is not None:
                        v.create_dataset(str(i), data=arr.astype(np.float32))
        f.create_group("vars").attrs["name"] = "sequential"
    shape = [None, None, model.input_size]
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "trainable": True,
            "dtype": "float32",
            "layers": layers,
            "build_input_shape": shape,
        },
        "registered_name": None,
        "build_config": {"input_shape": shape},
    }
    return config, bio.getvalue()


def _keras_version() -> str:
    try:
        from importlib.metadata import version

        return version("keras")
    except Exception:
        return "3.0.0"


def to_keras(
    model: GRU,
    path: str | os.PathLike[str],
    layer: str | list[str] | None = None,
    *,
    go_backwards: bool | None = None,
) -> None:
    """Write a ``gru0`` layer's weights to a Keras file (atomically).

    * ``path`` exists (``.keras`` or ``.weights.h5`` of a Keras model you built): the weights of
      the chosen Keras layer(s) are replaced in place, everything else in the file is kept.
      ``layer`` names the Keras layer (a list of ``num_layers`` names, in order, for a stacked
      model); None takes the file's only GRU layer. The Keras layer must match: same sizes,
      reset form and Bidirectional-ness; ``use_bias=False`` in Keras only if the model's biases are
      zero (a model without bias writes zero biases into a Keras layer that has them).
    * ``path`` does not exist: a new file for ``keras.Sequential([keras.Input((None, I)),
      GRU(H, return_sequences=True, reset_after=..., use_bias=...)])`` (``Bidirectional(GRU(...))``
      when bidirectional, one per layer). A ``.keras`` file loads with
      ``keras.saving.load_model``; a ``.weights.h5`` with ``load_weights`` into that model.

    Raises:
        ValueError: a variant other than ``gru0`` (Keras has only the classic GRU).
        KerasFileError: no matching layer, shapes or reset form that differ, non-zero biases into a
            Keras layer without bias, go_backwards unconfirmed.
    """
    _check_exportable(model)
    path = os.fspath(path)
    h5py = _h5py()
    if not os.path.exists(path):
        config, h5 = _new_file(model)
        if path.endswith(".keras"):
            meta = {
                "keras_version": _keras_version(),
                "date_saved": datetime.now(timezone.utc).strftime("%Y-%m-%d@%H:%M:%S"),
            }
            bio = io.BytesIO()
            with zipfile.ZipFile(bio, "w", zipfile.ZIP_STORED) as z:
                z.writestr("metadata.json", json.dumps(meta))
                z.writestr("config.json", json.dumps(config))
                z.writestr(_WEIGHTS, h5)
            atomic_write(path, bio.getvalue())
        elif path.endswith(".weights.h5"):  # Keras 3's load_weights wants this suffix
            atomic_write(path, h5)
        else:
            raise ValueError(f"path: expected a name ending in .keras or .weights.h5 for a new file, got {path!r}")
        return
    src = _Source(path)
    with src.open() as f:
        slots = _select(path, src.slots(f), layer, model.num_layers)
    bio = io.BytesIO(src.h5_bytes)
    with h5py.File(bio, "r+") as f:
        _write_into(f, path, model, slots, go_backwards)
    if not src.is_archive:
        atomic_write(path, bio.getvalue())
        return
    out = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = bio.getvalue() if info.filename == _WEIGHTS else zin.read(info.filename)
            zout.writestr(info, data)
    atomic_write(path, out.getvalue())
