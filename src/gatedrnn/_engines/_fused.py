"""The fused engine (not built yet)."""

from __future__ import annotations

from torch import Tensor

from .._specs import Spec


class _Unbuilt:
    name = "fused"

    def unavailable(self, spec: Spec, x: Tensor) -> str | None:
        return "the fused engine is not built yet"

    def layer(self, *args, **kwargs):
        raise RuntimeError(self.unavailable(None, None))  # type: ignore[arg-type]


ENGINE = _Unbuilt()
