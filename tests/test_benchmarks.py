"""The benchmark scripts that are not the CLI's (`benchmarks/rows.py`) still run against the engine."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import gatedrnn
from gatedrnn._engines import _fused

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_times_each_wiring_and_restores_the_runner(capsys):
    rows = _load("rows")
    runner = _fused._run_rows
    assert (
        rows.main(
            [
                "--steps",
                "20",
                "--batch",
                "2",
                "--inputs",
                "3",
                "--hidden",
                "8",
                "--repeats",
                "2",
                "--variants",
                "gru0,mingru",
            ]
        )
        == 0
    )
    assert _fused._run_rows is runner
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| gru0") or ln.startswith("| mingru")]
    # gru0 in both reset forms, minGRU once (no reset gate); three positive timings each
    assert [ln.split("|")[1:3] for ln in lines] == [[" gru0 ", " True "], [" gru0 ", " False "], [" mingru ", " True "]]
    for ln in lines:
        assert all(float(c) > 0 for c in ln.split("|")[3:6])


def test_revisions_exports_a_revision_that_imports_only_itself(tmp_path):
    """benchmarks/revisions.py compares against a git revision's package: every module of the
    exported copy must come from the copy (an absolute ``gatedrnn`` import left in it would
    silently run this checkout's code as the "old" side)."""
    import subprocess
    import sys

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    revisions = _load("revisions")
    old = revisions.export("HEAD", dest=tmp_path)
    try:
        assert old.__name__.startswith("gatedrnn_") and old is not gatedrnn
        assert Path(old.__file__).is_relative_to(tmp_path)
        old.info()  # loads the engines' modules of the copy
        copies = {n: m for n, m in sys.modules.items() if n.split(".")[0] == old.__name__}
        assert f"{old.__name__}._engines._fused" in copies
        for name, mod in copies.items():
            assert Path(mod.__file__).is_relative_to(tmp_path), name
        # the copy's source names no module of this checkout
        for py in Path(old.__file__).parent.rglob("*.py"):
            assert not re.search(r"\b(from|import) gatedrnn\b", py.read_text()), py
        assert old.GRU is not gatedrnn.GRU
    finally:
        sys.path.remove(str(Path(old.__file__).parents[1]))
        for name in [n for n in sys.modules if n.split(".")[0] == old.__name__]:
            del sys.modules[name]
