"""The README's usage example runs as written, and what its comments say is true."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
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


# --- the command lines of the README and docs/experiments.md, and the set-up they rely on ------------

ROOT = README.parent
PAGES = [README, ROOT / "docs" / "experiments.md"]


def _command_lines(page: Path) -> list[list[str]]:
    """Every command of the page's bash/console blocks (console: the lines after "$ "), split as a shell would."""
    lines = []
    for lang, body in re.findall(r"```(bash|console)\n(.*?)```", page.read_text(), re.S):
        for line in body.splitlines():
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            args = shlex.split(line, comments=True)
            if args:
                lines.append(args)
    return lines


def _gatedrnn_args(args: list[str]) -> list[str] | None:
    """The arguments given to the gatedrnn command (directly, python -m, torchrun -m), else None."""
    if args[0] in ("gatedrnn", ".venv/bin/gatedrnn"):
        return args[1:]
    for i in range(len(args) - 1):
        if args[i] == "-m" and args[i + 1] == "gatedrnn":
            return args[i + 2 :]
    return None


def test_the_readme_opens_with_make_demo_and_make_test():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert first is not None and README.read_text().index(first.group(0)) < README.read_text().index("## ")
    commands = [shlex.split(line, comments=True) for line in first.group(1).splitlines()]
    assert commands == [["make", "demo"], ["make", "test"]]


def test_every_command_line_parses_and_names_no_placeholder():
    """Each gatedrnn line of the README and docs/experiments.md, as written: options the command
    has, files that exist, no DATA/DIR/FILE.toml/... left for the reader to fill in."""
    from typer.main import get_command

    from gatedrnn.cli import app

    group = get_command(app)
    seen = 0
    for page in PAGES:
        for args in _command_lines(page):
            rest = _gatedrnn_args(args)
            if rest is None:
                continue
            seen += 1
            line = " ".join(args)
            assert not [a for a in args if a == "..." or re.fullmatch(r"[A-Z_]+(\.toml)?|FILE\.\w+", a)], line
            assert rest and rest[0] in group.commands, line
            group.commands[rest[0]].make_context(rest[0], rest[1:])  # raises on an option the command lacks
            for flag, value in itertools.pairwise(rest):
                if flag == "--config":
                    assert (ROOT / value).is_file(), line
    assert seen >= 12


def test_install_names_every_extra_and_how_to_reach_the_command():
    from gatedrnn.experiments.config import load_toml

    text = README.read_text()
    install = text[text.index("## Install") : text.index("## Usage")]
    extras = load_toml(ROOT / "pyproject.toml")["project"]["optional-dependencies"]
    for extra, requirements in extras.items():
        row = next(line for line in install.splitlines() if line.startswith(f"| `{extra}` |"))
        for requirement in requirements:
            name = re.split(r"[<>=\[; ]", requirement, maxsplit=1)[0]
            if name != "gatedrnn":
                assert name in row, (extra, name)
    assert ".venv/bin/gatedrnn" in text and ". .venv/bin/activate" in install


def _make(target: str, tmp_path: Path) -> str:
    proc = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_what_the_demo_needs_and_make_test_the_test_extras(tmp_path):
    demo, test = _make("demo", tmp_path), _make("test", tmp_path)
    assert "pip install" in demo and "[test]" not in demo and "[triton]" not in demo
    assert "gatedrnn compare --out runs/demo --overwrite" in demo  # a second make demo replaces the first
    assert '-e ".[test]"' in test and "pytest" in test
    assert "`--overwrite`" in README.read_text()[: README.read_text().index("## Install")]


def test_the_pages_name_no_path_of_one_machine():
    """The pages speak of gatedrnn and its measurements: no absolute path of the machine a figure
    came from (a URL or a path relative to the checkout is fine), no "this machine"."""
    absolute = re.compile(r"(?<![\w.:/~-])/(?:[\w.-]+/)+[\w.-]*")
    assert absolute.search("measured in /opt/proj/runs/x.json")  # the pattern finds such a path
    assert not absolute.search("see https://example.org/a/b and docs/img/x.png")
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        found = absolute.findall(page.read_text())
        assert not found, (page.name, found)
    for page in [ROOT / "docs" / "experiments.md", ROOT / "docs" / "data.md"]:
        assert "this machine" not in page.read_text().lower(), page.name
