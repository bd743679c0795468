"""The benchmark scripts that are not the CLI's (`benchmarks/rows.py`) still run against the engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
