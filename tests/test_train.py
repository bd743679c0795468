"""The training loop and the run folder: learning, artefacts, reproducibility, checkpoints, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gatedrnn.experiments.config import Config, ConfigError, load_toml
from gatedrnn.experiments.report import read_metrics
from gatedrnn.experiments.run import run_compare
from gatedrnn.experiments.train import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def small(tmp_path: Path, **kw) -> Config:
    base = {"hidden": 16, "epochs": 3, "batch_size": 32, "lr": [1e-2], "threads": 1, "progress": False}
    base.update(kw)
    base.setdefault("out", str(tmp_path / "run"))
    return Config(**base)


def test_compare_on_digits_learns_and_writes_every_artefact(tmp_path):
    cfg = small(tmp_path, cells=["gru1", "lstm"], epochs=4)
    out, results, table = run_compare(cfg, say=None)
    for name in ("config.toml", "config.json", "metrics.jsonl", "metrics.csv", "summary.md", "summary.csv"):
        assert (out / name).is_file(), name
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for cell in ("gru1", "lstm"):
        assert (out / "checkpoints" / f"{cell}_lr0.01_s0.pt").is_file()
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"

    records = read_metrics(out)
    assert len(records) == 2 * 4
    finals = {r["cell"]: r for r in records if r["epoch"] == 4}
    for cell, r in finals.items():
        assert r["metric"] == "accuracy"
        assert r["test_metric"] > 0.6, f"{cell} did not learn: {r['test_metric']:.3f} (chance 0.1)"
        first = next(x for x in records if x["cell"] == cell and x["epoch"] == 1)
        assert r["train_loss"] < first["train_loss"]
    # the results carry the same histories and true parameter counts
    for res in results:
        assert res.history[-1]["test_metric"] == finals[res.cell]["test_metric"]
        assert res.params == sum(p.numel() for p in _model_params(res.cell, 16))
    # the table shows each cell's final numbers (as written in metrics.jsonl)
    summary = (out / "summary.md").read_text()
    assert table in summary
    for cell, r in finals.items():
        row = next(line for line in summary.splitlines() if line.startswith(f"| {cell} |"))
        cols = [c.strip() for c in row.strip("|").split("|")]
        assert cols[2] == f"{r['params']:,}"
        assert float(cols[3]) == pytest.approx(r["train_loss"], rel=1e-3)  # 4 significant digits
        assert cols[4] == f"{100 * r['test_metric']:.1f}"
    rows = _csv(out / "metrics.csv")
    assert len(rows) == 8 and float(rows[-1]["test_metric"]) == records[-1]["test_metric"]
    # the resolved config reads back as the same config
    again = Config.from_dict(load_toml(out / "config.toml"))
    assert again == cfg
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()


def test_run_files_get_the_mode_of_any_file_the_user_writes(tmp_path):
    """0o666 & ~umask (0o644 under umask 022), as open() gives, not mkstemp's private 0o600."""
    old = os.umask(0o022)
    try:
        out, _, _ = run_compare(small(tmp_path, cells=["gru3"], epochs=1, train_limit=64, test_limit=32), say=None)
    finally:
        os.umask(old)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert Path("checkpoints/gru3_lr0.01_s0.pt") in files and Path("summary.md") in files
    assert {str(f): oct(stat.S_IMODE((out / f).stat().st_mode)) for f in files} == {str(f): "0o644" for f in files}


def test_seconds_per_epoch_leave_out_first_use_compilation(tmp_path, monkeypatch):
    """The first forward of each cell stands for an engine compiling on first use: it moves a fake
    clock by 100 s. No epoch's seconds may include it; the warm-up records it, the table says so."""
    import types

    from gatedrnn.experiments import train
    from gatedrnn.experiments.models import SequenceModel

    clock, compiled = [0.0], set()
    real_forward = SequenceModel.forward

    def forward(self, *args, **kwargs):
        if self.cell not in compiled:
            compiled.add(self.cell)
            clock[0] += 100.0
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(SequenceModel, "forward", forward)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    out, _, table = run_compare(small(tmp_path, cells=["gru3", "mgu"], epochs=2, train_limit=64), say=None)
    records = read_metrics(out)
    assert [r["seconds"] for r in records] == [0.0] * 4
    assert [r["warmup_seconds"] for r in records] == [100.0, 0.0, 100.0, 0.0]
    assert all(float(row["seconds"]) == 0.0 for row in _csv(out / "summary.csv"))
    assert "timed after an untimed warm-up step" in table and table in (out / "summary.md").read_text()


def _model_params(cell: str, hidden: int):
    from gatedrnn.experiments.models import SequenceModel

    return list(SequenceModel(cell, 8, hidden, 10).parameters())


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    def run(seed: int, name: str):
        cfg = small(tmp_path, cells=["mgu"], seeds=[seed], epochs=2, out=str(tmp_path / name), dropout=0.0)
        run_compare(cfg, say=None)
        recs = read_metrics(tmp_path / name)
        state = load_checkpoint(tmp_path / name / "checkpoints" / f"mgu_lr0.01_s{seed}.pt")["model"]
        return [(r["train_loss"], r["test_loss"], r["test_metric"]) for r in recs], state

    a, wa = run(1, "a")
    b, wb = run(1, "b")
    c, wc = run(2, "c")
    assert a == b
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a != c
    assert not torch.equal(wa["core.weight_ih_l0"], wc["core.weight_ih_l0"])


def test_dropout_is_seeded_too(tmp_path):
    def run(name: str):
        cfg = small(tmp_path, cells=["gru0"], layers=2, dropout=0.3, epochs=1, out=str(tmp_path / name))
        run_compare(cfg, say=None)
        return read_metrics(tmp_path / name)[0]["train_loss"]

    assert run("a") == run("b")


def test_seeds_give_mean_and_std_in_the_table(tmp_path):
    cfg = small(tmp_path, cells=["gru3"], seeds=3, epochs=1, train_limit=300)
    out, _, _ = run_compare(cfg, say=None)
    records = read_metrics(out)
    accs = [r["test_metric"] for r in records]
    assert len(accs) == 3 and len(set(accs)) > 1
    row = _csv(out / "summary.csv")[0]
    assert int(row["seeds"]) == 3
    assert abs(float(row["test_metric"]) - statistics.fmean(accs)) < 1e-12
    assert abs(float(row["test_metric_std"]) - statistics.stdev(accs)) < 1e-12
    line = next(x for x in (out / "summary.md").read_text().splitlines() if x.startswith("| gru3"))
    assert f"{100 * statistics.fmean(accs):.1f} ± {100 * statistics.stdev(accs):.1f}" in line


def test_learning_rate_sweep_makes_one_row_per_rate(tmp_path):
    cfg = small(tmp_path, cells=["mingru"], lr=[1e-2, 1e-3], epochs=1, train_limit=200)
    out, results, _ = run_compare(cfg, say=None)
    assert [r.lr for r in results] == [1e-2, 1e-3]
    rows = _csv(out / "summary.csv")
    assert sorted(float(r["lr"]) for r in rows) == [1e-3, 1e-2]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "rmsprop", "sgd"])
def test_every_optimizer_trains(tmp_path, optimizer):
    cfg = small(tmp_path, cells=["gru2"], optimizer=optimizer, epochs=2, train_limit=400)
    out, _, _ = run_compare(cfg, say=None)
    ckpt = load_checkpoint(out / "checkpoints" / "gru2_lr0.01_s0.pt")
    groups = ckpt["optimizer"]["param_groups"]
    expected = {"adam": "betas", "adamw": "betas", "rmsprop": "alpha", "sgd": "nesterov"}[optimizer]
    assert expected in groups[0]
    records = read_metrics(out)
    assert records[1]["train_loss"] < records[0]["train_loss"]


def test_regression_and_bit_tasks_run_through_the_same_loop(tmp_path):
    cfg = small(tmp_path, task="sine", cells=["gru0"], seq_len=15, n_train=128, n_test=32, epochs=3, lr=[2e-2])
    out, _, _ = run_compare(cfg, say=None)
    recs = read_metrics(out)
    assert recs[0]["metric"] == "mse" and recs[-1]["test_metric"] < recs[0]["test_metric"]
    b = str(tmp_path / "b")
    cfg = small(tmp_path, task="binary-addition", cells=["gru0"], n_train=200, n_test=50, epochs=1, out=b)
    out, _, _ = run_compare(cfg, say=None)
    assert read_metrics(out)[0]["metric"] == "accuracy"


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    cfg = small(tmp_path, cells=["gru1"], epochs=2, train_limit=200)
    out, _, _ = run_compare(cfg, say=None)
    path = out / "checkpoints" / "gru1_lr0.01_s0.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["run"] == {"cell": "gru1", "lr": 0.01, "seed": 0}
    assert {"model", "optimizer", "torch_rng", "order_rng", "history", "config"} <= set(ckpt)
    assert ckpt["config"] == cfg.to_dict()
    assert len(ckpt["history"]) == 2
    # a file that is no checkpoint: a clear error, through the CLI's error type
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not a gatedrnn checkpoint"):
        load_checkpoint(bad)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = small(tmp_path, cells=["gru1"], epochs=1, train_limit=100)
    run_compare(cfg, say=None)
    changed = small(tmp_path, cells=["gru1"], epochs=2, train_limit=100, hidden=8)
    with pytest.raises(ConfigError, match="hidden: 16 -> 8"):
        run_compare(changed, resume=True, say=None)


def test_resume_reads_checkpoints_written_before_a_config_key_existed(tmp_path):
    """A key added later (the options) and absent from an older checkpoint's config is its
    default there: such a run resumes; a non-default value is still a change."""
    cfg = small(tmp_path, cells=["gru1"], epochs=1, train_limit=100)
    run_compare(cfg, say=None)
    ckpt_path = next((Path(cfg.out) / "checkpoints").glob("*.pt"))
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["config"]["zoneout"], ckpt["config"]["layer_norm"]
    torch.save(ckpt, ckpt_path)
    _, results, _ = run_compare(small(tmp_path, cells=["gru1"], epochs=2, train_limit=100), resume=True, say=None)
    assert [r["epoch"] for r in results[0].history] == [1, 2]
    with pytest.raises(ConfigError, match=r"zoneout: 0\.0 -> 0\.1"):
        run_compare(small(tmp_path, cells=["gru1"], epochs=3, train_limit=100, zoneout=0.1), resume=True, say=None)


def test_resume_of_a_finished_run_trains_only_the_new_epochs(tmp_path):
    cfg = small(tmp_path, cells=["gru1"], epochs=2, train_limit=200)
    run_compare(cfg, say=None)
    longer = small(tmp_path, cells=["gru1"], epochs=3, train_limit=200)
    _, results, _ = run_compare(longer, resume=True, say=None)
    assert [r["epoch"] for r in results[0].history] == [1, 2, 3]
    uninterrupted = small(tmp_path, cells=["gru1"], epochs=3, train_limit=200, out=str(tmp_path / "u"))
    _, ref, _ = run_compare(uninterrupted, say=None)
    assert results[0].history[-1]["test_loss"] == ref[0].history[-1]["test_loss"]


# --- SIGKILL, then --resume: the same numbers as a run never interrupted ----------------------------


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gatedrnn", "train", "--task", "digits-pixels", "--cell", "gru1", "--hidden", "8",
        "--epochs", "8", "--lr", "0.01", "--batch-size", "64", "--train-limit", "256", "--test-limit", "64",
        "--dtype", "float64", "--threads", "1", "--seed", "3", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _kill_at_first_checkpoint(cmd: list[str], written: Callable[[], object], log: Path) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``written()`` (its first checkpoint) is true."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not written():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before its first checkpoint: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 120 s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    ckpt = killed / "checkpoints" / "gru1_lr0.01_s3.pt"
    _kill_at_first_checkpoint(_train_cmd(killed), lambda: ckpt.exists(), tmp_path / "killed.log")
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < 8, f"the run was killed after epoch {done} of 8"

    subprocess.run(_train_cmd(killed, "--resume"), env=_env(), check=True, capture_output=True)
    subprocess.run(_train_cmd(ref), env=_env(), check=True, capture_output=True)

    a = load_checkpoint(ckpt)
    b = load_checkpoint(ref / "checkpoints" / "gru1_lr0.01_s3.pt")
    assert a["epoch"] == b["epoch"] == 8
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    keys = ("epoch", "train_loss", "test_loss", "test_metric")
    assert [[r[k] for k in keys] for r in a["history"]] == [[r[k] for k in keys] for r in b["history"]]
    # the run folder's metrics hold every epoch once, restored ones included
    assert [r["epoch"] for r in read_metrics(killed)] == list(range(1, 9))


@pytest.mark.slow
def test_sigkill_during_an_overwrite_leaves_the_old_run_intact(tmp_path):
    old = tmp_path / "run"
    run_compare(small(tmp_path, cells=["gru3"], epochs=1, train_limit=64, test_limit=16, out=str(old)), say=None)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}

    def building() -> bool:  # the new run's first checkpoint, in the hidden folder beside the old one
        return bool(list(tmp_path.glob(".run.overwrite-*/checkpoints/*.pt")))

    _kill_at_first_checkpoint(_train_cmd(old, "--overwrite"), building, tmp_path / "overwrite.log")
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert read_metrics(old)[0]["cell"] == "gru3"
