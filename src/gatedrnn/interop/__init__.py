"""Interop: torch.nn.GRU, Keras weight files, ONNX export, safetensors model files.

Heavy optional dependencies (``onnx``, ``h5py``) are imported inside the functions that need them,
never at ``import gatedrnn``.
"""

from __future__ import annotations

from ._onnx import export_onnx
from ._torch import from_torch, to_torch

__all__ = ["export_onnx", "from_torch", "to_torch"]
