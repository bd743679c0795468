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
    printed = result.output.split("\n\n", 1)[1].split("\nrun folder")[0]  # the table and its timing note
    assert printed.startswith("| cell |") and (out / "summary.md").read_text().endswith(printed)
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
    assert_clean_error(invoke("compare", "--set", "engine=fusd", "--out", out), "did you mean 'fused'?")
    assert_clean_error(invoke("compare", "--data-dir", "", "--out", out), "data_dir: expected a folder path")
    # an engine named explicitly that cannot run here: said before training, not a traceback from the layer
    assert_clean_error(invoke("compare", *TINY, "--set", "engine=scan", "--out", out), "engine: 'scan' cannot run")
    assert not Path(out).exists()


def test_missing_mnist_training_images_are_a_clean_error(tmp_path):
    (tmp_path / "data" / "mnist").mkdir(parents=True)  # an empty MNIST folder
    result = invoke(
        "compare", "--task", "mnist-rows", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "m")
    )
    assert_clean_error(result, "train-images-idx3-ubyte", "--download")


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
    import gatedrnn

    result = invoke("info")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith(f"gatedrnn {gatedrnn.__version__}, torch ")
    assert lines[2].split() == ["engine", "available", "variants"]
    expected = gatedrnn.info()["engines"]
    for name, entry in expected.items():  # one row per engine: its name, yes/no, its variants
        row = next(line for line in lines if line.split()[:1] == [name])
        assert row.split()[1] == ("yes" if entry["available"] else "no")
        assert row.endswith(", ".join(entry["variants"]) or "-")
    assert any(
        line.split() == ["digits-rows", "scikit-learn", "digits,", "8", "steps", "of", "8", "pixels"] for line in lines
    )
    assert "{" not in result.output and "'available'" not in result.output  # no raw dicts
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
    # --stepping runs the stepping benchmark instead, with the thread counts
    stepped = []
    monkeypatch.setattr(bench, "stepping", lambda argv=None: stepped.append(argv) or 0)
    result = invoke("bench", "--stepping", "--threads", "1,2")
    assert result.exit_code == 0, result.output
    assert stepped == [["--threads", "1,2"]] and len(calls) == 2
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


# --- run folders: never overwritten silently ---------------------------------------------------------

TINY = ["--hidden", "4", "--epochs", "1", "--train-limit", "64", "--test-limit", "16", "--set", "threads=1"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_run_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    assert invoke("compare", "--cells", "gru3", *TINY, "--out", str(out)).exit_code == 0
    before = _snapshot(out)
    for command in (["compare", "--cells", "mgu"], ["train", "--cell", "mgu"], ["gradients", "--cells", "mgu"]):
        result = invoke(*command, *TINY, "--out", str(out))
        assert_clean_error(result, f"--out {out}", "--resume", "--overwrite")
    assert _snapshot(out) == before


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    for command in (["compare"], ["train", "--cell", "gru3"], ["gradients"]):
        assert_clean_error(invoke(*command, *TINY, "--resume", "--out", str(tmp_path / "none")), "nothing to resume")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert_clean_error(invoke("compare", *TINY, "--resume", "--out", str(tmp_path / "other")), "not a gatedrnn run")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "none").exists()


def test_overwrite_replaces_the_run_and_leaves_nothing_beside_it(tmp_path):
    out = tmp_path / "run"
    assert invoke("compare", "--cells", "gru3", *TINY, "--out", str(out)).exit_code == 0
    result = invoke("compare", "--cells", "mgu", *TINY, "--overwrite", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "replacing the run" in result.output
    assert {r["cell"] for r in read_metrics(out)} == {"mgu"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["mgu_lr0.005_s0.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no hidden build or old folder left


def test_ctrl_c_during_an_overwrite_keeps_the_old_run(tmp_path, monkeypatch):
    from gatedrnn.experiments import run as run_module

    out = tmp_path / "run"
    assert invoke("compare", "--cells", "gru3", *TINY, "--out", str(out)).exit_code == 0
    before = _snapshot(out)
    real = run_module.train_run

    def train_then_ctrl_c(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train_run", train_then_ctrl_c)
    result = invoke("compare", "--cells", "mgu", *TINY, "--overwrite", "--out", str(out))
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert f"interrupted: {out} still holds the previous run" in result.output
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_ctrl_c_says_how_to_resume_and_report_names_the_missing_runs(tmp_path, monkeypatch):
    from gatedrnn.experiments import run as run_module

    out = tmp_path / "run"
    real, calls = run_module.train_run, []

    def second_run_interrupted(*args, **kwargs):
        calls.append(args[4])  # the cell
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_run", second_run_interrupted)
    args = ["compare", "--cells", "gru3,mgu,mingru", "--hidden", "4", "--epochs", "2", "--train-limit", "64"]
    args += ["--test-limit", "16", "--threads", "1", "--no-progress", "--out", str(out)]
    result = invoke(*args)
    assert result.exit_code == 130
    assert f"--resume --out {out}" in result.output and "Traceback" not in result.output
    report = invoke("report", str(out))
    assert report.exit_code == 0, report.output
    assert "mgu_lr0.005_s0 (not started)" in report.output and "mingru_lr0.005_s0 (not started)" in report.output
    assert "gru3_lr0.005_s0" not in report.output.split("unfinished")[1]
    assert f"--config {out / 'config.toml'} --resume --out {out}" in report.output
    monkeypatch.setattr(run_module, "train_run", real)
    result = invoke("compare", "--config", str(out / "config.toml"), "--resume", "--out", str(out))  # the hint
    assert result.exit_code == 0, result.output
    assert "gru3_lr0.005_s0: resuming from epoch 2 of 2" in result.output
    assert {r["cell"] for r in read_metrics(out)} == {"gru3", "mgu", "mingru"}
    assert "unfinished" not in invoke("report", str(out)).output


# --- the command line itself ---------------------------------------------------------------------------


def _unwrapped(text: str) -> str:
    return "".join(text.split())  # help text wraps anywhere, hyphens included


def test_help_shows_defaults_and_plain_flags():
    for command in ("compare", "train", "gradients"):
        text = invoke(command, "--help").output
        assert "<bool>" not in text, command
        flat = _unwrapped(text)
        assert "Hiddenunitsperlayer.[default:64]" in flat and "Trainingepochs.[default:15]" in flat
        assert "--downloadFetch" in flat and "--resumeContinue" in flat and "--overwriteReplace" in flat
    assert "[default:digits-rows]" in _unwrapped(invoke("compare", "--help").output)
    assert "[default:digits-pixels]" in _unwrapped(invoke("gradients", "--help").output)
    assert "<bool>" not in invoke("--help").output


def test_version():
    import gatedrnn

    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"gatedrnn {gatedrnn.__version__}\n"


def test_compare_train_and_gradients_share_every_run_option():
    from gatedrnn.cli import RUN_OPTIONS

    flags = {"set_": "--set", "progress": "--progress"}
    for command in ("compare", "train", "gradients"):
        text = invoke(command, "--help").output
        for name in RUN_OPTIONS:
            flag = flags.get(name, "--" + name.replace("_", "-"))
            assert f"  {flag} " in text, (command, flag)


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--task", "digits-row"], "did you mean 'digits-rows'?"),
        (["--cells", "gru0,mgx"], "did you mean 'mgu'?"),
        (["--set", "hiden=3"], "did you mean 'hidden'?"),
        (["--set", "seq_lenght=3"], "did you mean 'seq_len'?"),
    ],
)
def test_typos_get_a_did_you_mean(tmp_path, args, hint):
    assert_clean_error(invoke("compare", *args, "--out", str(tmp_path / "r")), hint)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("error", [ValueError, RuntimeError, KeyError])
def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch, error):
    """Only the project's own error types are one-line messages: a plain ValueError from deep code
    is a bug and must show where it came from."""
    from gatedrnn.experiments import run as run_module

    def broken(*args, **kwargs):
        raise error("deep inside")

    monkeypatch.setattr(run_module, "run_compare", broken)
    result = invoke("compare", "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and isinstance(result.exception, error)
    assert "error: " not in result.output


def test_progress_bars_only_on_a_terminal(tmp_path, monkeypatch):
    args = ["compare", "--cells", "gru3", *TINY]
    quiet = invoke(*args, "--out", str(tmp_path / "a"))  # CliRunner's streams are not a terminal
    assert quiet.exit_code == 0, quiet.output
    assert "\r" not in quiet.output and "batch/s" not in quiet.output
    from gatedrnn.experiments import train

    monkeypatch.setattr(train, "on_a_terminal", lambda: True)
    shown = invoke(*args, "--out", str(tmp_path / "b"))
    assert shown.exit_code == 0 and "\r" in shown.output and "batch" in shown.output
    hidden = invoke(*args, "--no-progress", "--out", str(tmp_path / "c"))
    assert hidden.exit_code == 0 and "\r" not in hidden.output
