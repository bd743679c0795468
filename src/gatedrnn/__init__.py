"""gatedrnn: the GRU family (GRU, Dey & Salem's GRU1/2/3, MGU, minGRU) as drop-in PyTorch layers."""

from __future__ import annotations

from ._engines import empty_cache
from ._info import info
from ._layers import GRU, GRUCell, InputError
from ._specs import SPECS, Spec, count_parameters, get_spec
from .interop import (
    KerasFileError,
    ModelFileError,
    export_onnx,
    from_keras,
    from_torch,
    keras_layers,
    load,
    save,
    to_keras,
    to_torch,
)

__all__ = [
    "GRU",
    "SPECS",
    "GRUCell",
    "InputError",
    "KerasFileError",
    "ModelFileError",
    "Spec",
    "count_parameters",
    "empty_cache",
    "export_onnx",
    "from_keras",
    "from_torch",
    "get_spec",
    "info",
    "keras_layers",
    "load",
    "save",
    "to_keras",
    "to_torch",
]
__version__ = "0.1.0"
