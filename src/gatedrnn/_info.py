"""``gatedrnn.info()``: versions, engines and what ``engine="auto"`` picks here."""

from __future__ import annotations

import platform
from typing import Any

import torch

from ._engines import ENGINES, auto_choice, get_engine
from ._specs import SPECS

__all__ = ["info"]


def info() -> dict[str, Any]:
    """A dict describing this install: versions, each engine's availability, auto's choices."""
    engines: dict[str, Any] = {}
    for name in ENGINES:
        try:
            engine = get_engine(name)
            device = "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"
            probe = torch.empty(0, device=device)
            why = {v: engine.unavailable(spec, probe) for v, spec in SPECS.items()}
            runs = [v for v, reason in why.items() if reason is None]
            entry: dict[str, Any] = {"available": bool(runs), "variants": runs}
            if not runs:
                entry["why_not"] = why["gru0"]
            details = getattr(engine, "details", None)
            if callable(details):
                entry.update(details())
        except ImportError as e:
            entry = {"available": False, "why_not": f"import failed: {e}"}
        engines[name] = entry
    auto = {"cpu float32": auto_choice(torch.empty(0, dtype=torch.float32))}
    auto["cpu float64"] = auto_choice(torch.empty(0, dtype=torch.float64))
    auto["cpu bfloat16"] = auto_choice(torch.empty(0, dtype=torch.bfloat16))
    if torch.cuda.is_available():
        auto["cuda"] = auto_choice(torch.empty(0, device="cuda"))
    from . import __version__

    return {
        "gatedrnn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "engines": engines,
        "auto": auto,
        "variants": sorted(SPECS),
    }
