"""The spec layer: combinations the equations do not define are refused, the parameter layout
splits and joins back exactly, and the kernels' switches have one set of names."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import gatedrnn
from gatedrnn._specs import SPECS, Wiring, join_bias, param_shapes, split


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gates": ("r",)}, "gates: expected one of"),
        ({"gates_read_x": False, "gates_read_h": False, "gates_have_bias": False}, "constant 0.5"),
        ({"gates": ("z",), "gates_read_h": False}, "no reset gate"),
        ({"gates": ("f",), "candidate_reads_h": False, "gates_read_h": False}, "coupled gate f"),
        ({"candidate_reads_h": False}, "gates that read h"),
        ({"candidate_tanh": False}, "linear candidate"),
        ({"gates_read_x": False}, "torch_hh_bias"),
    ],
)
def test_spec_refuses_wirings_the_engines_do_not_define(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SPECS["gru0"], name="custom", **change)


def test_every_registered_spec_is_valid() -> None:
    for spec in SPECS.values():
        assert dataclasses.replace(spec) == spec  # __post_init__ accepts it


@pytest.mark.parametrize("variant", sorted(SPECS))
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_layout_split_then_join(variant: str, reset_after: bool, bias: bool) -> None:
    """Every block lands where the layout says, and the biases join back to what they were."""
    spec = SPECS[variant]
    if spec.gates_need_bias and not bias:
        return
    h, i = 3, 2
    shapes = param_shapes(spec, i, h, bias, reset_after)
    p = {k: np.arange(np.prod(s), dtype=np.float64).reshape(s) + 1000 * n for n, (k, s) in enumerate(shapes.items())}
    b = split(spec, p["weight_ih"], p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"), h)
    gh = spec.num_gates * h
    rows = [b.w_g, b.w_n]
    assert np.array_equal(np.concatenate([r for r in rows if r is not None]), p["weight_ih"])
    if "weight_hh" in p:
        assert np.array_equal(np.concatenate([r for r in (b.u_g, b.u_n) if r is not None]), p["weight_hh"])
    else:
        assert b.u_g is None and b.u_n is None
    if not bias:
        assert b.b_g is b.b_n is b.b_hg is b.b_hn is None
        return
    assert (b.b_hn is not None) == ("bias_hh" in p) == (reset_after and spec.has_reset)
    b_ih, b_hh = join_bias(spec, b.b_g if b.b_g is not None else np.zeros(gh), b.b_n, b.b_hn, np.concatenate)
    assert np.array_equal(b_ih, p["bias_ih"])
    if b_hh is None:
        assert "bias_hh" not in p
    elif spec.torch_hh_bias:  # join_bias writes b_g into both: the gates' gradient is shared
        assert np.array_equal(b_hh[gh:], p["bias_hh"][gh:]) and np.array_equal(b_hh[:gh], p["bias_ih"][:gh])
    else:
        assert np.array_equal(b_hh, p["bias_hh"])


def test_gate_bias_sums_torch_hh_bias() -> None:
    """gru0's gates see ``b_ih[:2H] + b_hh[:2H]``, as torch.nn.GRU computes them."""
    b_ih, b_hh = torch.randn(9), torch.randn(9)
    b = split(SPECS["gru0"], None, None, b_ih, b_hh, 3)
    torch.testing.assert_close(b.gate_bias(), b_ih[:6] + b_hh[:6])
    assert b.b_hn is not None and torch.equal(b.b_hn, b_hh[6:])


def test_wiring_names_are_the_triton_kernels_constexprs() -> None:
    """numba's and Triton's kernels take one set of switches: every Wiring field, in capitals, is
    a parameter of every Triton kernel."""
    pytest.importorskip("triton")
    from gatedrnn._engines import _triton

    kernels = _triton._kernels()
    names = set(SPECS["gru0"].wiring(True).constexprs())
    assert names == {f.upper() for f in Wiring._fields}
    for fn in (kernels.rnn_persistent_fwd, kernels.rnn_persistent_bwd, kernels.rnn_step_fwd, kernels.rnn_step_bwd):
        params = set(inspect.signature(fn.fn).parameters)
        assert names <= params, (fn.fn.__name__, names - params)


def test_capabilities_replace_variant_names() -> None:
    assert [v for v, s in SPECS.items() if s.gates_need_bias] == ["gru3"]
    assert [v for v, s in SPECS.items() if s.is_classic] == ["gru0"]
    assert [v for v, s in SPECS.items() if s.torch_expressible(True) is not None] == ["mingru"]
    assert all(s.torch_expressible(False) is not None for s in SPECS.values())
    with pytest.raises(ValueError, match="bias"):
        gatedrnn.GRU(2, 3, variant="gru3", bias=False)
