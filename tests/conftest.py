"""Shared fixtures: deterministic seeds, the CPU engines to test, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from gatedrnn._engines import get_engine
from gatedrnn._specs import SPECS

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

VARIANTS = sorted(SPECS)
RESET_FORMS = [True, False]

# The shared data folder beside the checkout (present in CI); tests that read it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cpu_engines() -> list[str]:
    """Engines that run on CPU float64 here; every layer test runs on each of them."""
    probe = torch.empty(0, dtype=torch.float64)
    return [name for name in ("reference", "fused") if get_engine(name).unavailable(SPECS["gru0"], probe) is None]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=cpu_engines())
def engine(request: pytest.FixtureRequest) -> str:
    return request.param
