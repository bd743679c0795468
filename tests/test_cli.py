"""The gatedrnn command through typer's test runner (and once as ``python -m gatedrnn``)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gatedrnn.cli import app
from gatedrnn.experiments.report import read_metrics

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = ["--hidden", "8", "--epochs", "1", "--train-limit", "200", "--test-limit", "50", "--threads", "1"]


def shared_data() -> Path:
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("../shared/data (the real data sets) is missing beside the repository")


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for f in fragments:
        assert f in result.output, result.output


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("compare", "train", "report", "gradients", "bench", "info"):
        assert command in result.output
    result = invoke("compare", "--help")
    assert result.exit_code == 0
    for option in ("--task", "--cells", "--hidden", "--layers", "--epochs", "--lr", "--seeds", "--optimizer"):
        assert option in result.output
    for option in ("--batch-size", "--data-dir", "--out", "--config", "--resume"):
        assert option in result.output


def test_compare_prints_the_table_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = invoke("compare", "--cells", "gru0,mingru", "--lr", "1e-2", *SMALL, "--no-progress", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "| gru0 | 0.01 |" in result.output and "| mingru | 0.01 |" in result.output
    assert (out / "summary.md").read_text().endswith(result.output.split("\n\n")[1].split("\nrun folder")[0] + "\n")
    for name in ("curves.png", "metrics.jsonl", "metrics.csv", "config.toml", "summary.csv"):
        assert (out / name).is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["cells"] == ["gru0", "mingru"] and cfg["lr"] == [0.01] and cfg["task"] == "digits-rows"


def test_config_file_then_set_then_options(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'task = "adding"\ncells = ["gru2"]\nhidden = 6\nseq_len = 12\nn_train = 64\nn_test = 16\nepochs = 1\n'
    )
    out = tmp_path / "run"
    result = invoke(
        "compare", "--config", str(toml), "--set", "seq_len=9", "--hidden", "5", "--seeds", "2", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["task"], cfg["hidden"], cfg["seq_len"], cfg["seeds"], cfg["n_train"]) == ("adding", 5, 9, [0, 1], 64)
    assert {r["seed"] for r in read_metrics(out)} == {0, 1}
    # the written config.toml repeats the run
    again = tmp_path / "again"
    result = invoke("compare", "--config", str(out / "config.toml"), "--out", str(again))
    assert result.exit_code == 0, result.output
    a = [r["test_metric"] for r in read_metrics(out)]
    b = [r["test_metric"] for r in read_metrics(again)]
    assert a == b


def test_train_runs_one_model_and_refuses_a_grid(tmp_path):
    out = tmp_path / "one"
    result = invoke("train", "--cell", "lstm", "--lr", "0.01", "--seed", "4", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "lstm_lr0.01_s4.pt").is_file()
    toml = tmp_path / "grid.toml"
    toml.write_text('cells = ["gru0", "gru1"]\n')
    assert_clean_error(invoke("train", "--config", str(toml), "--out", str(tmp_path / "x")), "--cell")


def test_report_redraws_table_and_curves(tmp_path):
    out = tmp_path / "run"
    assert invoke("compare", "--cells", "gru3", *SMALL, "--out", str(out)).exit_code == 0
    table = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    (out / "curves.png").unlink()
    result = invoke("report", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "summary.md").read_text() == table
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert_clean_error(invoke("report", str(tmp_path / "nothing")), "not a directory")
    (tmp_path / "empty").mkdir()
    assert_clean_error(invoke("report", str(tmp_path / "empty")), "metrics.jsonl")


def test_bad_options_are_one_line_errors(tmp_path):
    out = str(tmp_path / "r")
    assert_clean_error(invoke("compare", "--task", "nope", "--out", out), "task: expected one of")
    assert_clean_error(invoke("compare", "--cells", "gru9", "--out", out), "cells: expected names")
    assert_clean_error(invoke("compare", "--lr", "fast", "--out", out), "lr: expected numbers")
    assert_clean_error(invoke("compare", "--optimizer", "adagrad", "--out", out), "optimizer: expected one of")
    assert_clean_error(invoke("compare", "--set", "hiden=3", "--out", out), "unknown key")
    assert_clean_error(invoke("compare", "--device", "gpu", "--out", out), "device: expected")
    assert_clean_error(invoke("compare", "--dtype", "float16", "--out", out), "dtype: expected one of")
    assert_clean_error(invoke("compare", "--config", str(tmp_path / "missing.toml"), "--out", out), "not found")
    bad = tmp_path / "bad.toml"
    bad.write_text("hidden = [")
    assert_clean_error(invoke("compare", "--config", str(bad), "--out", out), "not valid TOML")


def test_missing_mnist_training_images_are_a_clean_error(tmp_path):
    result = invoke("compare", "--task", "mnist-rows", "--data-dir", str(shared_data()), "--out", str(tmp_path / "m"))
    assert_clean_error(result, "train")


def test_corrupt_data_is_a_clean_error(tmp_path):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03 this is not an IDX file"))
    result = invoke(
        "compare", "--task", "fashion-mnist-rows", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o")
    )
    assert_clean_error(result)


def test_info_prints_versions_engines_tasks():
    result = invoke("info")
    assert result.exit_code == 0
    assert "engines:" in result.output and "digits-rows" in result.output
    result = invoke("info", "--json")
    data = json.loads(result.output)
    import gatedrnn

    expected = gatedrnn.info()
    assert data["gatedrnn"] == expected["gatedrnn"] and data["variants"] == expected["variants"]
    assert set(data["engines"]) == set(expected["engines"])
    assert "imdb" in data["tasks"] and "lstm" in data["cells"]


def test_bench_options_reach_the_harness(monkeypatch):
    """`gatedrnn bench` parses its options into the harness's (gatedrnn.bench.Options); compile
    timing only when asked for; a bad option is one line naming it."""
    from gatedrnn import bench

    result = invoke("bench", "--help")
    assert result.exit_code == 0 and "--compile-time" in result.output and "--report" in result.output
    calls = []
    monkeypatch.setattr(bench, "run", lambda opts, argv=None: calls.append(opts.checked()))
    result = invoke("bench", "--sizes", "A,D", "--variants", "gru0", "--threads", "2", "--no-memory")
    assert result.exit_code == 0, result.output
    (opts,) = calls
    assert opts.sizes == ["A", "D"] and opts.variants == ["gru0"] and opts.threads == [2]
    assert not opts.memory and not opts.compile_time and opts.baselines and opts.reset_after
    invoke("bench", "--compile-time")
    assert calls[-1].compile_time and calls[-1].variants == list(bench.Options().checked().variants)
    monkeypatch.undo()
    assert_clean_error(invoke("bench", "--sizes", "Z", "--no-memory"), "--sizes", "'Z'")
    assert_clean_error(invoke("bench", "--threads", "one"), "--threads")
    assert_clean_error(invoke("bench", "--report", "missing.json"), "--report", "cannot read")


def test_python_dash_m_gatedrnn():
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "gatedrnn", "--help"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "compare" in proc.stdout


@pytest.mark.parametrize("task", ["sine", "binary-addition", "sunspots", "noise"])
def test_compare_runs_each_synthetic_and_series_task(tmp_path, task):
    args = ["--set", "n_train=32", "--set", "n_test=16", "--set", "seq_len=10"]
    result = invoke("compare", "--task", task, "--cells", "mgu", *SMALL, *args, "--out", str(tmp_path / task))
    assert result.exit_code == 0, result.output
    rec = read_metrics(tmp_path / task)[0]
    assert rec["metric"] == ("accuracy" if task == "binary-addition" else "mse")


PRESETS = sorted((Path(__file__).resolve().parents[1] / "presets").glob("*.toml"))


def test_every_preset_is_a_valid_config():
    from gatedrnn.experiments.config import Config, load_toml
    from gatedrnn.experiments.tasks import TASKS

    names = {p.stem for p in PRESETS}
    expected = {"dey-salem-mnist-rows", "dey-salem-mnist-pixels", "dey-salem-imdb", "noise-timing"}
    assert expected | {"binary-addition", "sine", "lstm-vs-gru"} <= names
    for path in PRESETS:
        cfg = Config.from_dict(load_toml(path))
        assert cfg.task in TASKS, path.name
        assert f"--config presets/{path.name}" in path.read_text(), f"{path.name} should show its command"
    for name in ("dey-salem-mnist-rows", "dey-salem-mnist-pixels", "dey-salem-imdb"):
        cfg = Config.from_dict(load_toml(next(p for p in PRESETS if p.stem == name)))
        assert cfg.lr == [1e-3, 1e-4] and cfg.cells == ["gru0", "gru1", "gru2", "gru3"]


def test_a_preset_runs_through_compare(tmp_path):
    preset = next(p for p in PRESETS if p.stem == "binary-addition")
    out = tmp_path / "ba"
    args = ["--cells", "gru1,lstm", "--epochs", "1", "--seeds", "1", "--set", "n_train=64", "--set", "n_test=16"]
    result = invoke("compare", "--config", str(preset), *args, "--threads", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["train_bits"], cfg["test_bits"], cfg["hidden"]) == (8, 16, 16)
