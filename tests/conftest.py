"""Shared fixtures: deterministic seeds, the CPU engines to test, the folder of real data sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from gatedrnn._engines import get_engine
from gatedrnn._specs import SPECS

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_data_dir(root: Path = REPO_ROOT, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder of real data sets: ``shared/data`` beside the checkout (``<root>/../shared/data``),
    else ``$GATEDRNN_DATA``; None when neither is a folder."""
    candidates = [root.parent / "shared" / "data"]
    if environ.get("GATEDRNN_DATA"):
        candidates.append(Path(environ["GATEDRNN_DATA"]))
    return next((c for c in candidates if c.is_dir()), None)


def data_dir_or_skip(root: Path = REPO_ROOT, environ: Mapping[str, str] = os.environ) -> Path:
    found = find_data_dir(root, environ)
    if found is None:
        pytest.skip("no data folder: neither ../shared/data beside the checkout nor $GATEDRNN_DATA")
    return found


def cpu_engines() -> list[str]:
    """Engines that run on CPU float64 here; every layer test runs on each of them."""
    probe = torch.empty(0, dtype=torch.float64)
    return [name for name in ("reference", "fused") if get_engine(name).unavailable(SPECS["gru0"], probe) is None]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets (MNIST's test set, Fashion-MNIST, IMDB, rt-polarity); skips without them."""
    return data_dir_or_skip()


@pytest.fixture(params=cpu_engines())
def engine(request: pytest.FixtureRequest) -> str:
    return request.param
