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

Keras' update ``h = z * h_prev + (1 - z) * hh`` is gatedrnn's (and PyTorch's). A Keras ``GRU``
and an ``RNN(GRUCell(...))`` are the same function; their settings are read from ``config.json``
(the RNN's and its cell's), and what gatedrnn does not compute is refused, naming the setting:
activations other than tanh / sigmoid, a ``merge_mode`` other than concat. A Keras
``Bidirectional(GRU, merge_mode="concat")`` is a ``bidirectional=True`` layer (its backward GRU
runs with ``go_backwards=True`` and its outputs are flipped back, as gatedrnn's reverse direction).
A plain Keras GRU with ``go_backwards=True`` reads its input backwards and returns its outputs in
that reversed order: the same weights, applied as ``gru(x.flip(1))`` (batch-first); both functions
ask for ``go_backwards=True`` to confirm that. A stack holding such a layer is refused: each Keras
layer reverses its own input, so the next one reads the outputs reversed again, which no gatedrnn
stack computes (read the layers one by one). ``return_sequences=False`` returns ``h_n``.

Settings: Keras' ``dropout`` (one mask on the input per sequence, the same at every step, when
``recurrent_dropout`` is 0) is gatedrnn's ``input_dropout``, read from and written to a
``.keras`` file's config. Keras' ``recurrent_dropout`` is not gatedrnn's: Keras draws three
independent masks, one per gate block (z, r, h; and then three for ``dropout`` too), where
gatedrnn draws one shared by the blocks. Both place them where ``h(t-1)`` enters the recurrent
kernel, in both reset forms, and are the identity in eval, but they train differently, so both
functions ask for ``recurrent_dropout=`` to set it explicitly. ``layer_norm``, ``zoneout`` and
``weight_drop`` have no Keras equivalent and are refused.

Files: a ``.weights.h5`` (``model.save_weights``) or a ``.keras`` archive (``model.save``: a zip
of ``config.json``, ``metadata.json`` and ``model.weights.h5``). Inside the h5 a recurrent layer is
a group ``.../cell/vars/{0,1,2}`` next to ``.../vars`` whose ``name`` attribute is the Keras layer
name; a Bidirectional layer has ``forward_layer`` and ``backward_layer`` such groups. Other
recurrent layers (LSTM, SimpleRNN, ...) are told apart by ``config.json``, or in a bare weights
file by their shapes (a GRU's recurrent kernel is ``(H, 3H)``), listed and skipped. Layers are
chosen by their Keras name (``model.layers[i].name``) or h5 group path.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from .._files import atomic_write
from .._layers import GRU
from .._options import Options

__all__ = ["KerasFileError", "from_keras", "keras_layers", "to_keras"]

_WEIGHTS = "model.weights.h5"


class KerasFileError(ValueError):
    """A Keras file or layer that cannot be read or written exactly."""


# The recurrent kernel of a Keras cell is (H, k*H): what k says the cell is, in a bare weights file
_CELL_BY_WIDTH = {3: "GRUCell", 4: "LSTMCell", 1: "SimpleRNNCell"}
# the Keras layers gatedrnn computes: a GRU, or an RNN of one GRUCell (alone or in a Bidirectional)
_GRU_CLASSES = ("GRU", "RNN(GRUCell)")


@dataclass
class _Slot:
    """One recurrent Keras layer in a file (a GRU, or any other layer with a cell: listed, not read)."""

    name: str
    path: str
    bidirectional: bool
    cell: str | None  # the cell the weights' shapes say ("GRUCell", "LSTMCell", ...); None: unknown
    dirs: list[str] = field(default_factory=list)  # h5 group paths of the layer(s), forward first
    class_name: str | None = None  # from config.json: "GRU", "RNN(GRUCell)", "Bidirectional(LSTM)", ...
    settings: dict[str, Any] | None = None  # a GRU's settings, the RNN's and its cell's (forward layer)
    backward_settings: dict[str, Any] | None = None
    merge_mode: str | None = None

    @property
    def is_gru(self) -> bool:
        """Whether gatedrnn computes this layer: by config.json where there is one, else by shapes."""
        if self.class_name is None:
            return self.cell == "GRUCell"
        inner = self.class_name[len("Bidirectional(") : -1] if self.bidirectional else self.class_name
        return inner in _GRU_CLASSES

    @property
    def kind(self) -> str:
        """What the layer is, for messages: its Keras class, else what its weights look like."""
        if self.class_name is not None:
            return self.class_name
        weights = f"{self.cell} weights" if self.cell else "weights of an unknown cell"
        return f"Bidirectional, {weights}" if self.bidirectional else weights


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Keras interop needs the 'h5py' package: pip install 'gatedrnn[interop]'") from e
    return h5py


def _has_cell(g: Any) -> bool:
    """Whether an h5 group is a recurrent layer (Keras saves its cell's weights under ``cell``)."""
    h5py = _h5py()
    return isinstance(g, h5py.Group) and isinstance(g.get("cell"), h5py.Group)


def _cell_kind(g: Any) -> str | None:
    """The cell of a recurrent layer's h5 group, from the shapes of its weights alone."""
    h5py = _h5py()
    cell = g["cell"]
    if "cells" in cell:
        return "StackedRNNCells"
    v = cell.get("vars")
    k, rk = (v.get("0"), v.get("1")) if isinstance(v, h5py.Group) else (None, None)
    if not (isinstance(k, h5py.Dataset) and isinstance(rk, h5py.Dataset) and k.ndim == 2 and rk.ndim == 2):
        return None
    units, width = rk.shape
    if units == 0 or width % units or k.shape[1] != width:
        return None
    return _CELL_BY_WIDTH.get(width // units)


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
            if _has_cell(fw) and _has_cell(bw):
                slots.append(_Slot(_vars_name(child, key), child.name, True, _cell_kind(fw), [fw.name, bw.name]))
            elif _has_cell(child):
                slots.append(_Slot(_vars_name(child, key), child.name, False, _cell_kind(child), [child.name]))
            else:
                walk(child)

    walk(f)
    return slots


def _class_name(node: dict[str, Any]) -> str:
    """A layer config's class, with what it wraps: ``GRU``, ``RNN(GRUCell)``, ``Bidirectional(LSTM)``."""
    cls, cfg = str(node.get("class_name")), node.get("config") or {}
    if cls == "RNN":
        return f"RNN({(cfg.get('cell') or {}).get('class_name')})"
    if cls == "Bidirectional":
        return f"Bidirectional({_class_name(cfg.get('layer') or {})})"
    return cls


def _gru_settings(node: dict[str, Any]) -> dict[str, Any] | None:
    """The settings of a ``GRU`` or ``RNN(GRUCell)`` layer config as one dict (the RNN's over its
    cell's: activations, reset form and bias are the cell's, direction and outputs the RNN's)."""
    cfg = node.get("config") or {}
    if node.get("class_name") == "GRU":
        return dict(cfg)
    if _class_name(node) == "RNN(GRUCell)":
        return {**(cfg["cell"].get("config") or {}), **{k: v for k, v in cfg.items() if k != "cell"}}
    return None


def _config_layers(node: Any, out: list[dict[str, Any]]) -> None:
    """Every layer config in ``config.json`` (a dict with a class and a named config), in file order;
    nested models are searched, the layers a Bidirectional or RNN wraps are part of theirs."""
    if isinstance(node, dict):
        cfg = node.get("config")
        if "class_name" in node and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            out.append(node)
            if node["class_name"] in ("Bidirectional", "RNN"):
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
        slot = by_name.get(cfg["name"])
        if slot is None or slot in ordered:
            continue
        slot.class_name = _class_name(node)
        if slot.bidirectional:
            inner = cfg.get("layer") or {}
            slot.settings = _gru_settings(inner)
            slot.backward_settings = _gru_settings(cfg.get("backward_layer") or {})
            slot.merge_mode = cfg.get("merge_mode")
        else:
            slot.settings = _gru_settings(node)
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
    grus = [s for s in slots if s.is_gru]
    names = [s.name for s in grus]
    others = [f"{s.name} ({s.kind})" for s in slots if not s.is_gru]
    also = f" (and other recurrent layers, which gatedrnn does not read: {', '.join(others)})" if others else ""
    if not grus:
        raise KerasFileError(f"{path}: no Keras GRU or RNN(GRUCell) layer found, alone or in a Bidirectional{also}")
    if layer is None:
        # Only an unambiguous single layer is taken implicitly: two GRU layers in a file need not
        # feed each other (a Dense may sit between them), so a stack is always named.
        if len(grus) == 1 and want in (None, 1):
            return grus
        raise KerasFileError(
            f"layer: {path} holds the GRU layers {names}{also}; expected layer= naming "
            + ("one of them" if want in (None, 1) else f"{want} of them in order")
        )
    wanted = [layer] if isinstance(layer, str) else list(layer)
    out = []
    for name in wanted:
        found = [s for s in slots if name in (s.name, s.path, s.path.lstrip("/"))]
        if not found:
            raise KerasFileError(f"layer: expected one of {names} in {path}, got {name!r}")
        if not found[0].is_gru:
            raise KerasFileError(f"layer: {name!r} in {path} is not a GRU ({found[0].kind}); expected one of {names}")
        out.append(found[0])
    if want is not None and len(out) != want:
        raise KerasFileError(f"layer: the model has num_layers={want}; expected {want} Keras layers, got {wanted}")
    return out


def _check_slot_config(path: str, slot: _Slot, go_backwards: bool | None) -> bool | None:
    """Refuse the settings gatedrnn does not compute, naming them; return the config's reset_after
    (None: a bare weights file, which has no config). ``unroll``, ``stateful``, ``return_state``
    and the training-only dropouts leave the function of the weights as it is."""
    cfg = slot.settings
    if cfg is None:
        return None
    both = [("", cfg), ("the backward layer of ", slot.backward_settings)] if slot.bidirectional else [("", cfg)]
    forms = set()
    for where, settings in both:
        if settings is None:
            raise KerasFileError(f"{path}: {where}layer {slot.name!r} is not a GRU ({slot.kind})")
        for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
            if settings.get(key, want) != want:
                raise KerasFileError(
                    f"{path}: {where}layer {slot.name!r} has {key}={settings.get(key)!r}; "
                    f"gatedrnn's GRU uses {key}={want!r}"
                )
        forms.add(bool(settings.get("reset_after", True)))
    if len(forms) > 1:
        raise KerasFileError(f"{path}: layer {slot.name!r}: its two directions differ in reset_after")
    if slot.bidirectional:
        if slot.merge_mode != "concat":
            raise KerasFileError(
                f"{path}: layer {slot.name!r} has merge_mode={slot.merge_mode!r}; expected 'concat' "
                "(gatedrnn's bidirectional output concatenates the two directions)"
            )
        assert slot.backward_settings is not None
        if cfg.get("go_backwards", False) or not slot.backward_settings.get("go_backwards", True):
            raise KerasFileError(f"{path}: layer {slot.name!r}: expected a forward layer and a go_backwards layer")
    else:
        backwards = bool(cfg.get("go_backwards", False))
        if backwards and go_backwards is not True:
            raise KerasFileError(
                f"{path}: layer {slot.name!r} has go_backwards=True: it reads its input backwards and returns "
                "its outputs in that reversed order. Pass go_backwards=True to confirm (then run the gatedrnn "
                "layer on its input flipped in time: x.flip(1) for batch-first input)"
            )
        if go_backwards is True and not backwards:
            raise KerasFileError(f"go_backwards: layer {slot.name!r} in {path} has go_backwards=False, got True")
    return forms.pop()


def _check_stack(path: str, slots: list[_Slot], go_backwards: bool | None) -> None:
    """Refuse Keras layers that do not form one gatedrnn stack (each must take every step of the
    previous one's output, in order)."""
    if len(slots) < 2:
        return
    names = [s.name for s in slots]
    back = [s.name for s in slots if not s.bidirectional and (go_backwards or (s.settings or {}).get("go_backwards"))]
    if back:
        raise KerasFileError(
            f"layer: {back} in the stack {names} of {path} read their input backwards (go_backwards=True): each "
            "such Keras layer reverses its own input and returns its outputs in that reversed order, which the "
            "next layer reads reversed again. No gatedrnn stack computes that; read each layer on its own "
            "(from_keras(path, name, go_backwards=True)) and run each on its own input flipped in time"
        )
    last = [s.name for s in slots[:-1] if (s.settings or {}).get("return_sequences", True) is False]
    if last:
        raise KerasFileError(
            f"layer: {last} in the stack {names} of {path} have return_sequences=False (they output their last "
            "state only); in a stack every layer but the last must output every step"
        )


_RD_DIFFERS = (
    "Keras' recurrent_dropout draws three independent masks, one per gate block (z, r, h; and then three for "
    "dropout too), gatedrnn's one mask shared by the blocks: the same function in eval, a different one in training"
)


def _check_rate(value: float | None) -> float | None:
    """A ``recurrent_dropout=`` argument: None or a probability in [0, 1) (else a ValueError naming it)."""
    return None if value is None else Options(recurrent_dropout=value).recurrent_dropout


def _slot_dropouts(path: str, slot: _Slot) -> tuple[float, float] | None:
    """The Keras layer's ``(dropout, recurrent_dropout)`` (None: no config.json); the two
    directions of a Bidirectional must agree."""
    found = set()
    for settings in (slot.settings, slot.backward_settings if slot.bidirectional else None):
        if settings is None:
            continue
        pair = []
        for key in ("dropout", "recurrent_dropout"):
            value = settings.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise KerasFileError(f"{path}: layer {slot.name!r} has {key}={value!r}; expected a number in [0, 1)")
            pair.append(float(value))
        found.add((pair[0], pair[1]))
    if len(found) > 1:
        raise KerasFileError(
            f"{path}: layer {slot.name!r}: its two directions differ in dropout settings {sorted(found)}"
        )
    return found.pop() if found else None


def _dropout_configs(config: dict[str, Any], names: set[str] | None) -> list[dict[str, Any]]:
    """The dicts of ``config.json`` that hold the dropout settings of the GRU layers named (all:
    None): a ``GRU``'s config, an ``RNN(GRUCell)``'s cell's, both directions' of a Bidirectional."""
    nodes: list[dict[str, Any]] = []
    _config_layers(config, nodes)

    def holders(node: dict[str, Any]) -> list[dict[str, Any]]:
        cfg = node.get("config") or {}
        if node.get("class_name") == "Bidirectional":
            return [c for n in (cfg.get("layer"), cfg.get("backward_layer")) if n for c in holders(n)]
        if _class_name(node) == "RNN(GRUCell)":
            return [cfg["cell"]["config"]]
        return [cfg] if node.get("class_name") == "GRU" else []

    return [c for n in nodes if names is None or n["config"]["name"] in names for c in holders(n)]


def _set_dropouts(cfgs: Sequence[dict[str, Any]], dropout: float, recurrent_dropout: float) -> bool:
    """Write the settings into Keras GRU (cell) configs; True if any changed."""
    changed = False
    for cfg in cfgs:
        for key, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if cfg.get(key, 0.0) != value:
                cfg[key] = value
                changed = True
    return changed


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
    """The recurrent layers of a ``.keras`` or ``.weights.h5`` file: its GRUs, and what else has a
    Keras cell (LSTM, SimpleRNN, RNN of another cell...), listed as what it is and not read.

    Returns one dict per layer (config order for ``.keras``): ``name``, ``path`` (h5 group),
    ``class_name`` (from the config: ``"GRU"``, ``"RNN(GRUCell)"``, ``"Bidirectional(LSTM)"``...;
    None in a bare weights file), ``cell`` (what the weights' shapes are: ``"GRUCell"``,
    ``"LSTMCell"``, ``"SimpleRNNCell"``, ``"StackedRNNCells"`` or None), ``gru`` (whether
    :func:`from_keras` reads it), ``bidirectional``, ``input_size``, ``hidden_size``, ``use_bias``,
    and ``reset_after`` / ``go_backwards`` where the file says (None when it cannot tell, and for
    layers other than GRUs).
    """
    src = _Source(path)
    out = []
    with src.open() as f:
        for s in src.slots(f):
            info: dict[str, Any] = {
                "name": s.name,
                "path": s.path,
                "class_name": s.class_name,
                "cell": s.cell,
                "gru": s.is_gru,
                "bidirectional": s.bidirectional,
                "input_size": None,
                "hidden_size": None,
                "use_bias": None,
                "reset_after": None,
                "go_backwards": None,
            }
            if s.cell in _CELL_BY_WIDTH.values():
                v = f[s.dirs[0]]["cell"]["vars"]
                info.update(input_size=v["0"].shape[0], hidden_size=v["1"].shape[0], use_bias="2" in v)
            if s.is_gru:
                k, rk, b = _read_cell(f, src.path, s.dirs[0])
                info.update(input_size=k.shape[0], hidden_size=rk.shape[0], use_bias=b is not None)
                info["reset_after"] = None if b is None else b.ndim == 2
                if s.settings is not None:
                    info["reset_after"] = bool(s.settings.get("reset_after", True))
                    info["go_backwards"] = bool(s.settings.get("go_backwards", False))
            out.append(info)
    return out


def from_keras(
    path: str | os.PathLike[str],
    layer: str | list[str] | None = None,
    *,
    reset_after: bool | None = None,
    go_backwards: bool | None = None,
    recurrent_dropout: float | None = None,
    batch_first: bool = True,
    engine: str = "auto",
) -> GRU:
    """A gatedrnn ``gru0`` layer with the weights of Keras GRU layer(s) from a file.

    Args:
        path: a ``.keras`` archive or a ``.weights.h5`` file (no Keras or TensorFlow needed).
        layer: the Keras layer name (or h5 group path) of a ``GRU`` or ``RNN(GRUCell)`` layer,
            alone or in a ``Bidirectional``; a list of names stacks them into a
            ``num_layers=len(layer)`` GRU (each must take every step of the previous one's
            output). None: the file's only GRU layer (other layers, LSTMs included, are skipped).
        reset_after: the reset form; read from ``config.json`` or the bias shape. Needed only for
            a bare ``.weights.h5`` whose layer has ``use_bias=False`` (then the file cannot tell).
        go_backwards: confirm a Keras layer with ``go_backwards=True`` (see the module docstring).
        recurrent_dropout: the new layer's ``recurrent_dropout`` (gatedrnn's: one mask shared by
            the blocks). None: 0, and a Keras layer with ``recurrent_dropout`` > 0 is refused
            (Keras' masks differ, see the module docstring); pass it to load such a layer. Keras'
            ``dropout`` becomes ``input_dropout`` (from ``config.json``; a bare weights file has
            no settings).
        batch_first: of the new layer (Keras is batch-first; default True).
        engine: of the new layer.

    Raises:
        KerasFileError: no such layer, a layer that is not a GRU, an ambiguous choice, activations
            other than tanh/sigmoid, a merge_mode other than concat, go_backwards unconfirmed,
            layers that do not stack (go_backwards layers, return_sequences=False before the
            last, sizes that do not chain), a reset form that disagrees with ``reset_after``,
            Keras ``recurrent_dropout`` > 0 without ``recurrent_dropout=``, layers with different
            dropout settings.
    """
    recurrent_dropout = _check_rate(recurrent_dropout)
    src = _Source(path)
    with src.open() as f:
        slots = _select(src.path, src.slots(f), layer, None)
        _check_stack(src.path, slots, go_backwards)
        layers_w = []
        forms = set()
        settings = set()
        for s in slots:
            form = _check_slot_config(src.path, s, go_backwards)
            settings.add(_slot_dropouts(src.path, s))
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
    known_settings = {x for x in settings if x is not None}
    if len(known_settings) > 1:
        raise KerasFileError(
            f"layer: the layers {[s.name for s, _ in layers_w]} mix dropout settings (dropout, recurrent_dropout) "
            f"{sorted(known_settings)}; a gatedrnn layer has one of each"
        )
    keras_dropout, keras_rd = known_settings.pop() if known_settings else (0.0, 0.0)
    if keras_rd and recurrent_dropout is None:
        raise KerasFileError(
            f"recurrent_dropout: the Keras layer(s) {[s.name for s, _ in layers_w]} in {src.path} have "
            f"recurrent_dropout={keras_rd}: {_RD_DIFFERS}. Pass recurrent_dropout= (gatedrnn's, 0.0 for none) "
            "to load them"
        )
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
        input_dropout=keras_dropout,
        recurrent_dropout=recurrent_dropout or 0.0,
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


def _check_exportable(model: Any, recurrent_dropout: float | None) -> None:
    if not isinstance(model, GRU):
        raise TypeError(f"model: expected a gatedrnn.GRU, got {type(model).__name__}")
    if not model.spec.is_classic:
        raise ValueError(
            f"model: Keras only has the classic GRU (variant 'gru0'); variant {model.variant!r} has no Keras layer. "
            "Use gatedrnn.save (safetensors) or gatedrnn.export_onnx for it"
        )
    lacks = {k: v for k, v in model.options.non_default().items() if k in ("layer_norm", "zoneout", "weight_drop")}
    if lacks:
        listed = ", ".join(f"{k}={v!r}" for k, v in lacks.items())
        raise ValueError(
            f"model: Keras' GRU has no {' and no '.join(lacks)} ({listed}); expected a layer without them. "
            "Use gatedrnn.save (safetensors) or gatedrnn.export_onnx for it"
        )
    if model.options.recurrent_dropout and recurrent_dropout is None:
        raise ValueError(
            f"model: recurrent_dropout={model.options.recurrent_dropout}: {_RD_DIFFERS}. Pass recurrent_dropout= "
            "(the Keras layer's, 0.0 for none) to write the layer anyway"
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
    recurrent_dropout: float | None = None,
) -> None:
    """Write a ``gru0`` layer's weights to a Keras file (atomically).

    * ``path`` exists (``.keras`` or ``.weights.h5`` of a Keras model you built): the weights of
      the chosen Keras layer(s) are replaced in place, everything else in the file is kept.
      ``layer`` names the Keras ``GRU`` or ``RNN(GRUCell)`` layer (a list of ``num_layers``
      names, in order, for a stacked model); None takes the file's only GRU layer (other layers,
      LSTMs included, are skipped). The Keras layer must match: same sizes, reset form,
      Bidirectional-ness and settings gatedrnn computes (as :func:`from_keras` reads them);
      ``use_bias=False`` in Keras only if the model's biases are zero (a model without bias writes
      zero biases into a Keras layer that has them).
    * ``path`` does not exist: a new file for ``keras.Sequential([keras.Input((None, I)),
      GRU(H, return_sequences=True, reset_after=..., use_bias=...)])`` (``Bidirectional(GRU(...))``
      when bidirectional, one per layer). A ``.keras`` file loads with
      ``keras.saving.load_model``; a ``.weights.h5`` with ``load_weights`` into that model.

    The Keras layer's ``dropout`` is the model's ``input_dropout`` and its ``recurrent_dropout`` is
    ``recurrent_dropout`` (None: 0, and a model with ``recurrent_dropout`` > 0 is refused, since
    Keras' masks differ: see the module docstring), in a new file's config and in the config of
    the chosen layer(s) of a ``.keras`` file; a ``.weights.h5`` holds no settings.

    Raises:
        ValueError: a variant other than ``gru0`` (Keras has only the classic GRU), ``layer_norm``,
            ``zoneout`` or ``weight_drop`` (Keras has none), ``recurrent_dropout`` unconfirmed.
        KerasFileError: no matching layer, a layer that is not a GRU, shapes, settings or reset
            form that differ, non-zero biases into a Keras layer without bias, go_backwards
            unconfirmed, Keras layers that do not form one stack (as for :func:`from_keras`).
    """
    recurrent_dropout = _check_rate(recurrent_dropout)
    _check_exportable(model, recurrent_dropout)
    dropouts = (model.options.input_dropout, recurrent_dropout or 0.0)
    path = os.fspath(path)
    h5py = _h5py()
    if not os.path.exists(path):
        config, h5 = _new_file(model)
        _set_dropouts(_dropout_configs(config, None), *dropouts)
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
    _check_stack(path, slots, go_backwards)
    bio = io.BytesIO(src.h5_bytes)
    with h5py.File(bio, "r+") as f:
        _write_into(f, path, model, slots, go_backwards)
    if not src.is_archive:
        atomic_write(path, bio.getvalue())
        return
    # the settings go into the chosen layers' configs (the rest of config.json is kept as it is)
    assert src.config is not None
    changed = _set_dropouts(_dropout_configs(src.config, {s.name for s in slots}), *dropouts)
    new_config = json.dumps(src.config).encode() if changed else None
    out = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = bio.getvalue() if info.filename == _WEIGHTS else zin.read(info.filename)
            if info.filename == "config.json" and new_config is not None:
                data = new_config
            zout.writestr(info, data)
    atomic_write(path, out.getvalue())
