"""Engines: implementations of one layer, one direction. A plain dict, explicit dispatch.

Every engine computes exactly :func:`gatedrnn._reference.run_layer` (same arguments, same
results, same gradients) and is tested against it. An engine that cannot run a given call says
why in :meth:`Engine.unavailable`; asking for it then raises. ``"auto"`` resolves by device and
dtype through :func:`resolve` (a fixed table, never a silent fallback after a failure).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from .. import _reference
from .._options import NONE, Extras
from .._specs import Spec

__all__ = [
    "CELL_ENGINES",
    "ENGINES",
    "FORWARD_AD",
    "FUNC_TRANSFORM",
    "Engine",
    "auto_cell_choice",
    "autocast_cpu_dtype",
    "check_cell_engine_name",
    "check_engine_name",
    "empty_cache",
    "in_compile",
    "not_yet",
    "opaque",
    "plain",
    "recording",
    "resolve",
]


class Engine(Protocol):
    """One layer, one direction, forward in time.

    ``layer`` takes:
        spec: the variant; reset_after: the reset form.
        x: ``[T, B, I]``; h0: ``[B, H]``.
        w_ih ``[ih_blocks*H, I]``, w_hh ``[hh_blocks*H, H]`` or None, b_ih, b_hh or None
        (layouts in :mod:`gatedrnn._specs`).
        lengths: ``[B]`` int64 or None; steps ``t >= lengths[b]`` keep the state, output 0.
        extras: the options' per-call inputs (:class:`gatedrnn._options.Extras`; default none).
    and returns ``(y [T, B, H], h_n [B, H])``, differentiable in x, h0 and every weight.
    A backward never reads the caller's ``lengths`` (it may be refilled before ``backward()``):
    an engine whose backward needs it keeps a copy. What ``x`` holds at ``t >= lengths[b]``
    (NaN or inf included) reaches no output and no gradient.
    """

    name: str
    # torch.compile may trace ``unavailable`` and ``layer`` (torch operations only); else the
    # callers (``resolve``, ``_functional.rnn``) run them through :func:`opaque` under it
    traceable: bool

    def unavailable(self, spec: Spec, x: Tensor, extras: Extras = NONE) -> str | None:
        """None if this engine can run ``spec`` with these options on tensors like ``x``, else the
        reason (naming the option it cannot run)."""
        ...

    def layer(
        self,
        spec: Spec,
        reset_after: bool,
        x: Tensor,
        h0: Tensor,
        w_ih: Tensor,
        w_hh: Tensor | None,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        lengths: Tensor | None,
        extras: Extras = NONE,
    ) -> tuple[Tensor, Tensor]: ...


class ReferenceEngine:
    """Plain autograd over :func:`gatedrnn._reference.step`: the oracle. Runs everywhere."""

    name = "reference"
    traceable = True

    def unavailable(self, spec: Spec, x: Tensor, extras: Extras = NONE) -> str | None:
        return None

    layer = staticmethod(_reference.run_layer)


class _Lazy:
    """An engine whose module (and its heavy imports: numba, triton) loads on first use."""

    def __init__(self, name: str, module: str) -> None:
        self.name = name
        self._module = module
        self._engine: Engine | None = None

    def get(self) -> Engine:
        if self._engine is None:
            self._engine = importlib.import_module(self._module, __name__).ENGINE
        return self._engine


ENGINES: dict[str, Engine | _Lazy] = {
    "reference": ReferenceEngine(),
    "fused": _Lazy("fused", "._fused"),
    "scan": _Lazy("scan", "._scan"),
    "triton": _Lazy("triton", "._triton"),
}


def _unknown(name: object) -> ValueError:
    return ValueError(f"engine: expected 'auto' or one of {sorted(ENGINES)}, got {name!r}")


def check_engine_name(name: object) -> None:
    """``name`` is ``"auto"`` or a key of :data:`ENGINES` (checked without loading any engine)."""
    if name != "auto" and (not isinstance(name, str) or name not in ENGINES):
        raise _unknown(name)


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise _unknown(name)
    entry = ENGINES[name]
    return entry.get() if isinstance(entry, _Lazy) else entry


def recording() -> str | None:
    """What is recording or transforming this call through its torch operations: torch.export,
    torch.jit.trace, a torch.func transform (grad, vmap, jvp, ...) or forward-mode AD
    (``torch.autograd.forward_ad.dual_level``), by name; else None.

    Engines whose loops run outside torch operations cannot run under these. (``torch.compile`` is
    not one of them: it runs what it cannot trace eagerly, see :func:`in_compile`.)
    """
    if torch.compiler.is_exporting():
        return "torch.export"
    if torch._C._is_tracing():  # (torch.jit.is_tracing() adds a scripting check: 0.7 us a call)
        return "torch.jit.trace"
    if torch._C._functorch.maybe_current_level() is not None:
        return FUNC_TRANSFORM
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:  # inside a dual_level()
        return FORWARD_AD
    return None


def plain() -> bool:
    """Nothing compiles, records or transforms this call: neither torch.compile nor anything
    :func:`recording` names. Callers that cache what they checked about a call (the layers' cached
    calls) may then reuse it; under any of these they check again."""
    return not torch.compiler.is_compiling() and recording() is None


FUNC_TRANSFORM = "a torch.func transform (grad, vmap, jvp, ...)"  # what recording() calls them
FORWARD_AD = "forward-mode AD (torch.autograd.forward_ad)"

_OPAQUE: dict[Callable[..., Any], Callable[..., Any]] = {}


def opaque(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as torch.compile must call it: eagerly, between its graphs, never traced
    (``torch.compiler.disable(fn)``). For the methods of engines that are not ``traceable`` (NumPy
    and numba, ctypes, Triton launches of their own), called through it only when
    ``torch.compiler.is_compiling()`` (:func:`in_compile`). Made on first use there, so that
    importing gatedrnn never imports ``torch._dynamo`` (about 2 s): the first trace also breaks
    once at this call.
    """
    wrapped = _OPAQUE.get(fn)
    if wrapped is None:
        wrapped = _OPAQUE[fn] = torch.compiler.disable(fn)
    return wrapped


def in_compile(engine: Engine, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (of ``engine``) as this call must run it: through :func:`opaque` while
    torch.compile traces and the engine is not ``traceable``, else as it is."""
    if engine.traceable or not torch.compiler.is_compiling():
        return method
    return opaque(method)


# (a set: ``dtype in (a, b, c)`` compares one by one at about 0.2 us each)
_FUSED_DTYPES = frozenset((torch.float32, torch.float64, torch.bfloat16))


def auto_choice(x: Tensor) -> str:
    """What ``engine="auto"`` means for tensors like ``x``.

    Under torch.export, torch.jit.trace, a torch.func transform or forward-mode AD (:func:`recording`):
    ``reference``, the one engine made of torch operations alone. Otherwise CUDA tensors:
    ``triton``; CPU float32/float64/bfloat16: ``fused`` (float32 under an autocast to another type
    than bfloat16: ``reference``); anything else: ``reference``.
    """
    if recording() is not None:
        return "reference"
    if x.is_cuda:
        return "triton"
    if x.is_cpu and x.dtype in _FUSED_DTYPES:
        cast = autocast_cpu_dtype()
        # the fused engine's half type is bfloat16: float32 under another autocast type is not its
        return "fused" if x.dtype != torch.float32 or cast in (None, torch.bfloat16) else "reference"
    return "reference"


# The engines that run a cell's step (GRUCell's engine=): the reference step, and the fused
# engine's one-call step kernels.
CELL_ENGINES = ("reference", "fused")


def check_cell_engine_name(name: object) -> None:
    """``name`` is ``"auto"`` or one of :data:`CELL_ENGINES`."""
    if name != "auto" and (not isinstance(name, str) or name not in CELL_ENGINES):
        raise ValueError(f"engine: a cell runs 'auto' or one of {list(CELL_ENGINES)}, got {name!r}")


def auto_cell_choice(x: Tensor, options: list[str]) -> str:
    """What ``engine="auto"`` means for a cell's step on tensors like ``x`` with these options on
    (by name): ``fused`` for CPU float32/float64 where it runs every one of them, else
    ``reference`` (under torch.export, torch.jit.trace, a torch.func transform, forward-mode AD or
    CPU autocast too; there is no Triton step: CUDA tensors get the reference step)."""
    plain = x.dtype == torch.float64 or (x.dtype == torch.float32 and autocast_cpu_dtype() is None)
    if recording() is None and x.device.type == "cpu" and plain:
        if not_yet(options, get_engine("fused").cell_options) is None:
            return "fused"
    return "reference"


def autocast_cpu_dtype() -> torch.dtype | None:
    """The dtype ``torch.autocast("cpu", ...)`` casts to where it is on, else None."""
    try:
        on = torch.is_autocast_enabled("cpu")
        return torch.get_autocast_dtype("cpu") if on else None
    except (TypeError, AttributeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def resolve(name: str, spec: Spec, x: Tensor, extras: Extras = NONE) -> Engine:
    """The engine for this call; raises if it cannot run it."""
    chosen = auto_choice(x) if name == "auto" else name
    engine = get_engine(chosen)
    why = in_compile(engine, engine.unavailable)(spec, x, extras)
    if why is not None:
        origin = f"engine='auto' chose {chosen!r}, but it" if name == "auto" else f"engine={chosen!r}"
        raise RuntimeError(f"{origin} cannot run here: {why}")
    return engine


def not_yet(extras: Extras | list[str], supported: tuple[str, ...] = ()) -> str | None:
    """An engine's refusal of the options it does not run (None if it runs them all); ``extras``:
    a call's, or the options' names."""
    names = extras if isinstance(extras, list) else extras.names()
    missing = [n for n in names if n not in supported]
    if not missing:
        return None
    return f"it does not run {', '.join(missing)}; engine='reference' runs every option"


def empty_cache() -> None:
    """Free the buffers the engines keep between calls for reuse (the fused engine's pool of saved
    states and its per-thread scratch); buffers a live autograd graph uses stay. Like
    ``torch.cuda.empty_cache``: only needed to hand memory back, e.g. after training."""
    fused = sys.modules.get(f"{__name__}._fused")
    if fused is not None:  # never loaded: nothing cached
        fused.empty_cache()
