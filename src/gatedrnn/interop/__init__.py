"""Interop: torch.nn.GRU, Keras weight files, ONNX export, safetensors model files.

Heavy optional dependencies (``onnx``, ``h5py``) are imported inside the functions that need them,
never at ``import gatedrnn``.
"""

from __future__ import annotations

from ._io import ModelFileError, load, save
from ._keras import KerasFileError, from_keras, keras_layers, to_keras
from ._onnx import export_onnx
from ._torch import from_torch, to_torch

__all__ = [
    "KerasFileError",
    "ModelFileError",
    "export_onnx",
    "from_keras",
    "from_torch",
    "keras_layers",
    "load",
    "save",
    "to_keras",
    "to_torch",
]
