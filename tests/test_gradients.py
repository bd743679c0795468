"""Gradient-flow numbers against independent computations on tiny models (float64)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import torch.nn.functional as F

from gatedrnn.experiments.config import CELLS, Config, ConfigError
from gatedrnn.experiments.gradients import hidden_grad_norms, run_gradients
from gatedrnn.experiments.models import SequenceModel

B, T, I, H, C = 5, 6, 3, 4, 3


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    return x, y


def test_tanh_rnn_norms_equal_the_hand_written_backward_recursion():
    """h_t = tanh(W x_t + b + U h_(t-1)); dL/dh_T = V^T (softmax - onehot); dL/dh_(t-1) = U^T (dL/dh_t * (1 - h_t^2))."""
    torch.manual_seed(0)
    model = SequenceModel("rnn", I, H, C).double()
    x, y = _data()
    got = hidden_grad_norms(model, x, y, "classification")

    core = model.core
    W, U = core.weight_ih_l0.detach(), core.weight_hh_l0.detach()
    b = (core.bias_ih_l0 + core.bias_hh_l0).detach()
    V, c = model.head.weight.detach(), model.head.bias.detach()
    h = torch.zeros(B, H, dtype=torch.float64)
    hs = []
    for t in range(T):
        h = torch.tanh(x[:, t] @ W.T + b + h @ U.T)
        hs.append(h)
    p = torch.softmax(hs[-1] @ V.T + c, dim=-1)
    delta = (p - F.one_hot(y, C).double()) @ V  # [B, H]
    expected = [None] * T
    expected[T - 1] = delta.norm(dim=-1).mean()
    for t in range(T - 1, 0, -1):
        delta = (delta * (1 - hs[t] ** 2)) @ U
        expected[t - 1] = delta.norm(dim=-1).mean()
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_every_cell_matches_autograd_from_a_leaf_state(cell, layers):
    """dL/dh_t again, by another route: restart the full-sequence layer at step t from h_t as a leaf."""
    torch.manual_seed(0)
    model = SequenceModel(cell, I, H, C, layers=layers).double().eval()
    x, y = _data()
    got = hidden_grad_norms(model, x, y, "classification")
    expected = []
    for t in range(1, T + 1):
        with torch.no_grad():
            _, state = model.core(x[:, :t])
        if isinstance(state, tuple):  # LSTM: h_t is the leaf, c_t a constant
            leaf = state[0].clone().requires_grad_(True)
            hx = (leaf, state[1])
        else:
            leaf = state.clone().requires_grad_(True)
            hx = leaf
        if t < T:
            _, final = model.core(x[:, t:], hx)
            last = (final[0] if isinstance(final, tuple) else final)[-1]
        else:
            last = leaf[-1]
        loss = F.cross_entropy(model.head(last), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
        expected.append(grad[-1].norm(dim=-1).mean())
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-10, atol=1e-13)


def test_regression_loss_is_supported_and_text_tasks_are_refused():
    torch.manual_seed(0)
    model = SequenceModel("gru2", I, H, 1).double()
    x, _ = _data()
    y = torch.randn(B, 1, dtype=torch.float64)
    got = hidden_grad_norms(model, x, y, "regression")
    assert got.shape == (T,) and torch.all(got > 0)
    # the last step's gradient is the head's: 2 (out - y) * v
    out = model(x)
    expected_last = (2 * (out - y) * model.head.weight).norm(dim=-1).mean()
    torch.testing.assert_close(got[-1], expected_last.detach())
    text = SequenceModel("gru0", 10, H, 2, tokens=True, embed_dim=3)
    with pytest.raises(ConfigError, match="seq-to-one"):
        hidden_grad_norms(
            text, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), "classification"
        )


def test_run_gradients_writes_the_figure_and_the_numbers(tmp_path):
    cfg = Config(
        task="digits-pixels",
        cells=["rnn", "gru0"],
        hidden=8,
        epochs=1,
        train_limit=128,
        test_limit=32,
        threads=1,
        progress=False,
        out=str(tmp_path / "g"),
    )
    old = os.umask(0o022)
    try:
        out, table = run_gradients(cfg)
    finally:
        os.umask(old)
    for path in out.rglob("*"):  # the mode of any file the user writes, not mkstemp's 0o600
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    png = (out / "gradients.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "gradients.json").read_text())
    assert data["steps"] == 64 and set(data["norms"]) == {"rnn", "gru0"}
    for cell in ("rnn", "gru0"):
        assert len(data["norms"][cell]["init"]) == 64 and len(data["norms"][cell]["trained"]) == 64
        ratio = data["norms"][cell]["init"][0] / data["norms"][cell]["init"][-1]
        assert f"{ratio:.3g}" in table
    lines = (out / "gradients.csv").read_text().splitlines()
    assert lines[0] == "cell,stage,t,norm" and len(lines) == 1 + 2 * 2 * 64
    assert (out / "metrics.jsonl").is_file()
    with pytest.raises(ConfigError, match="seq-to-one"):
        run_gradients(Config(task="sine", cells=["gru0"], out=str(tmp_path / "s"), progress=False))
