"""The harness runs the gatedrnn options: cell names such as ``gru0+ln+rd0.25``, the config keys and
the command line's flags, down to the layer each run builds."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from gatedrnn.cli import app
from gatedrnn.experiments.config import Config, ConfigError, parse_cell
from gatedrnn.experiments.models import build_core

SMALL = ["--hidden", "8", "--epochs", "1", "--train-limit", "120", "--test-limit", "40", "--threads", "1"]


def test_cell_names_carry_options():
    assert parse_cell("gru0") == ("gru0", {})
    assert parse_cell("mgu+ln+zo0.1+rd0.25") == ("mgu", {"layer_norm": True, "zoneout": 0.1, "recurrent_dropout": 0.25})
    assert parse_cell("gru1+id0.5+wd0.3") == ("gru1", {"input_dropout": 0.5, "weight_drop": 0.3})


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (["gru0+xx0.1"], "expected options +ln, +rdP"),
        (["gru0+rd"], "expected options +ln, +rdP"),
        (["gru0+lnx"], "expected options +ln, +rdP"),
        (["gru0+rdabc"], "expected a probability after +rd, got 'abc'"),
        (["gru0+zo1.5"], "zoneout: expected a probability in [0, 1), got 1.5"),
        (["lstm+ln"], "options (+ln, +rd, ...) are for the gatedrnn cells, not 'lstm'"),
        (["mgux+ln"], "did you mean 'mgu'"),
    ],
)
def test_bad_cell_options_name_the_key(cells, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(cells=cells)


def test_config_options_apply_to_every_gatedrnn_cell_and_names_win():
    cfg = Config(cells=["gru0", "gru0+zo0.2", "lstm"], layer_norm=True, zoneout=0.1)
    assert cfg.cell_options("gru0") == {"layer_norm": True, "zoneout": 0.1}
    assert cfg.cell_options("gru0+zo0.2") == {"layer_norm": True, "zoneout": 0.2}
    assert cfg.cell_options("lstm") == {}
    with pytest.raises(ConfigError, match="weight_drop: expected a probability"):
        Config(weight_drop=1.0)


def test_the_built_layer_has_the_options():
    core = build_core("mgu+ln+rd0.25", 3, 8, options=Config().cell_options("mgu+ln+rd0.25"))
    assert core.variant == "mgu" and core.options.layer_norm and core.options.recurrent_dropout == 0.25


def test_compare_trains_cells_with_options(tmp_path):
    out = tmp_path / "run"
    args = ["compare", "--cells", "gru0,gru0+ln,gru0+zo0.1+rd0.2", "--weight-drop", "0.2", *SMALL]
    result = CliRunner().invoke(app, [*args, "--set", "engine=reference", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for cell in ("gru0", "gru0+ln", "gru0+zo0.1+rd0.2"):
        assert f"| {cell} |" in result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["weight_drop"] == 0.2 and cfg["cells"][1] == "gru0+ln"
