"""Data-parallel training: 2 gloo processes under torchrun equal 1 process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gatedrnn.experiments.report import read_metrics
from gatedrnn.experiments.train import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train_args(out: Path, cell: str) -> list[str]:
    # 100 examples in global batches of 15: shares of 8 and 7, and a last batch of 10
    return [
        "-m", "gatedrnn", "train", "--task", "digits-rows", "--cell", cell, "--hidden", "6", "--epochs", "2",
        "--lr", "0.01", "--batch-size", "15", "--train-limit", "100", "--test-limit", "37", "--dtype", "float64",
        "--threads", "1", "--no-progress", "--out", str(out),
    ]  # fmt: skip


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    for cell in ("gru1",):
        one, two = tmp_path / f"one-{cell}", tmp_path / f"two-{cell}"
        assert "distributed" not in _run([sys.executable, *_train_args(one, cell)])
        torchrun = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        ]  # fmt: skip
        said = _run([*torchrun, *_train_args(two, cell)])
        assert said.count("distributed: 2 processes, backend gloo") == 1  # said once, by rank 0

        a = load_checkpoint(one / "checkpoints" / f"{cell}_lr0.01_s0.pt")
        b = load_checkpoint(two / "checkpoints" / f"{cell}_lr0.01_s0.pt")
        assert a["epoch"] == b["epoch"] == 2
        for k, w in a["model"].items():
            torch.testing.assert_close(b["model"][k], w, rtol=0, atol=1e-6)
            assert b["model"][k].dtype == torch.float64
        # the weights moved: the comparison is not between two untouched initialisations
        assert not torch.equal(a["model"]["head.weight"], _init_head(cell))
        for ra, rb in zip(read_metrics(one), read_metrics(two), strict=True):
            assert (ra["world_size"], rb["world_size"]) == (1, 2)
            for key in ("train_loss", "test_loss", "test_metric"):
                assert abs(ra[key] - rb[key]) < 1e-6, (key, ra[key], rb[key])


def _init_head(cell: str) -> torch.Tensor:
    from gatedrnn.experiments.models import SequenceModel

    torch.manual_seed(0)
    return SequenceModel(cell, 8, 6, 10).double().head.weight.detach()
