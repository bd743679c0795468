"""The README's usage example runs as written, and what its comments say is true."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_and_comments_hold(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a Python usage example"
    spaces: list[dict] = [{} for _ in blocks]
    for code, ns in zip(blocks, spaces, strict=True):
        exec(compile(code, str(README), "exec"), ns)
    ns = spaces[0]  # the usage example
    printed = capsys.readouterr().out.splitlines()
    # "(64, 28, 128), (2, 64, 128)" (the lengths= call leaves the same shapes)
    assert tuple(ns["output"].shape) == (64, 28, 128) and tuple(ns["h_n"].shape) == (2, 64, 128)
    # "53120 = 3n²+nm+3n" with n = 128 units, m = 28 inputs
    assert printed[0] == "53120" == str(3 * 128**2 + 128 * 28 + 3 * 128)
    # "a torch.nn.GRU state_dict loads into the classic variant and gives the same numbers"
    x = ns["x"]
    torch.testing.assert_close(ns["classic"](x)[0], ns["ref"](x)[0])
    # "one step: h = cell(x_t, h)"
    h = ns["cell"](x[:, 0], torch.zeros(64, 128))
    assert tuple(h.shape) == (64, 128)
    # the Interop example: every conversion computes the same function
    io = next(s for s in spaces if "back" in s)
    x = torch.randn(5, 3, 8)
    torch.testing.assert_close(io["back"](x)[0], io["native"](x)[0])
    torch.testing.assert_close(io["gru"](x)[0], io["native"](x)[0])
    torch.testing.assert_close(io["same"](x)[0], io["mgu"](x)[0], rtol=0, atol=0)
    xb = torch.randn(3, 5, 8)
    torch.testing.assert_close(io["again"](xb)[0], io["one"](xb)[0])
    # the options example: shapes as a torch.nn.GRU's
    opt = next(s for s in spaces if "episode_starts" in s)
    assert tuple(opt["y"].shape) == (50, 8, 32) and tuple(opt["h"].shape) == (2, 8, 32)
