"""gatedrnn: the GRU family (GRU, Dey & Salem's GRU1/2/3, MGU, minGRU) as drop-in PyTorch layers."""

from __future__ import annotations

from ._info import info
from ._layers import GRU, GRUCell, InputError
from ._specs import SPECS, Spec, count_parameters, get_spec
from .interop import ModelFileError, export_onnx, from_torch, load, save, to_torch

__all__ = [
    "GRU",
    "SPECS",
    "GRUCell",
    "InputError",
    "ModelFileError",
    "Spec",
    "count_parameters",
    "export_onnx",
    "from_torch",
    "get_spec",
    "info",
    "load",
    "save",
    "to_torch",
]
__version__ = "0.1.0"
