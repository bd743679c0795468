"""Parameter counts against the papers' formulas, names, round trips, pickling, dtype moves."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import gatedrnn

# Dey & Salem 2017 (m inputs, n units), Zhou et al. 2016, Feng et al. 2024: one layer, one direction,
# single biases (reset_after=False).
FORMULAS = {
    "gru0": lambda n, m: 3 * (n * n + n * m + n),
    "gru1": lambda n, m: 3 * n * n + n * m + 3 * n,
    "gru2": lambda n, m: 3 * n * n + n * m + n,
    "gru3": lambda n, m: n * n + n * m + 3 * n,
    "mgu": lambda n, m: 2 * (n * n + n * m + n),
    "mingru": lambda n, m: 2 * (n * m + n),
}


@pytest.mark.parametrize("variant", sorted(FORMULAS))
@pytest.mark.parametrize(("n", "m"), [(1, 1), (20, 10), (128, 28), (7, 300)])
def test_counts_match_papers(variant, n, m):
    want = FORMULAS[variant](n, m)
    assert gatedrnn.count_parameters(variant, m, n, reset_after=False) == want
    layer = gatedrnn.GRU(m, n, variant=variant, reset_after=False)
    assert sum(p.numel() for p in layer.parameters()) == want
    # reset after: gru0 is torch.nn.GRU (3 more vectors: b_hr, b_hz, b_hn); others one more (b_hn)
    extra = 0 if variant == "mingru" else (3 * n if variant == "gru0" else n)
    assert gatedrnn.count_parameters(variant, m, n, reset_after=True) == want + extra
    assert sum(p.numel() for p in gatedrnn.GRU(m, n, variant=variant).parameters()) == want + extra


def test_gru0_count_equals_torch():
    for layers, bidir in [(1, False), (3, True)]:
        ref = torch.nn.GRU(10, 20, layers, bidirectional=bidir)
        ours = gatedrnn.GRU(10, 20, layers, bidirectional=bidir)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("variant", sorted(FORMULAS))
def test_parameter_names_and_bias_false(variant):
    layer = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=True, variant=variant, bias=variant == "gru3")
    for name in dict(layer.named_parameters()):
        assert name.split("_l")[0] in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), name
        assert name.endswith(("_l0", "_l1", "_l0_reverse", "_l1_reverse")), name
    if variant != "gru3":
        assert not any(n.startswith("bias") for n, _ in layer.named_parameters())
    if variant == "mingru":
        assert not any(n.startswith("weight_hh") for n, _ in layer.named_parameters())


@pytest.mark.parametrize("variant", sorted(FORMULAS))
def test_state_dict_round_trip_and_pickle(variant):
    a = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=True, variant=variant, reset_after=False)
    b = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=True, variant=variant, reset_after=False)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(b(x)[0], a(x)[0], rtol=0, atol=0)
    c = pickle.loads(pickle.dumps(a))
    torch.testing.assert_close(c(x)[0], a(x)[0], rtol=0, atol=0)
    assert repr(c) == repr(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    d = gatedrnn.GRU(3, 4, num_layers=2, bidirectional=True, variant=variant, reset_after=False)
    d.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(d(x)[0], a(x)[0], rtol=0, atol=0)


def test_to_float64_and_back():
    layer = gatedrnn.GRU(3, 4, variant="mgu")
    x = torch.randn(5, 2, 3)
    y32, _ = layer(x)
    layer.to(torch.float64)
    y64, h64 = layer(x.double())
    assert y64.dtype == torch.float64 and h64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-6)
    layer.to(torch.float32)  # float32 -> float64 -> float32 is exact: the same numbers as before
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    torch.testing.assert_close(layer(x)[0], y32, rtol=0, atol=0)


def test_repr_shows_variant():
    assert "variant='gru2'" in repr(gatedrnn.GRU(3, 4, variant="gru2", reset_after=False))
    assert "reset_after=False" in repr(gatedrnn.GRU(3, 4, variant="gru2", reset_after=False))
    assert "variant='mingru'" in repr(gatedrnn.GRUCell(3, 4, variant="mingru"))


def test_wrong_state_dict_is_refused():
    a = gatedrnn.GRU(3, 4, variant="gru1")
    with pytest.raises(RuntimeError, match="weight_hh_l0"):
        gatedrnn.GRU(3, 4, variant="gru3").load_state_dict(a.state_dict())
