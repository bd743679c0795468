"""gatedrnn: the GRU family (GRU, Dey & Salem's GRU1/2/3, MGU, minGRU) as drop-in PyTorch layers."""

from __future__ import annotations

from ._info import info
from ._layers import GRU, GRUCell, InputError
from ._specs import SPECS, Spec, count_parameters, get_spec

__all__ = ["GRU", "SPECS", "GRUCell", "InputError", "Spec", "count_parameters", "get_spec", "info"]
__version__ = "0.1.0"
