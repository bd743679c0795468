"""Property test: any variant/stack/direction/layout with random lengths equals per-sequence runs,
and the reverse direction equals a forward layer run on each sequence reversed."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import gatedrnn

# float64, the same maths in another batch layout: only summation order may differ
EXACT = {"rtol": 1e-12, "atol": 1e-13}

configs = st.fixed_dictionaries(
    {
        "variant": st.sampled_from(sorted(gatedrnn.SPECS)),
        "reset_after": st.booleans(),
        "num_layers": st.integers(1, 3),
        "bidirectional": st.booleans(),
        "batch_first": st.booleans(),
        "lengths": st.lists(st.integers(1, 6), min_size=1, max_size=4),
        "extra_steps": st.integers(0, 2),  # padding past the longest sequence (lengths= allows it)
        "seed": st.integers(0, 2**16),
    }
)


@given(configs)
def test_lengths_equal_per_sequence_runs(cfg):
    torch.manual_seed(cfg["seed"])
    layer = gatedrnn.GRU(
        2,
        3,
        num_layers=cfg["num_layers"],
        bidirectional=cfg["bidirectional"],
        batch_first=cfg["batch_first"],
        variant=cfg["variant"],
        reset_after=cfg["reset_after"],
        dtype=torch.float64,
    )
    lengths = cfg["lengths"]
    steps, batch = max(lengths) + cfg["extra_steps"], len(lengths)
    x = torch.randn(batch, steps, 2, dtype=torch.float64)
    inp = x if cfg["batch_first"] else x.transpose(0, 1)
    y, hn = layer(inp, lengths=lengths)
    y = y if cfg["batch_first"] else y.transpose(0, 1)
    for b, n in enumerate(lengths):
        yb, hb = layer(x[b, :n])  # unbatched, exact length
        torch.testing.assert_close(y[b, :n], yb, **EXACT)
        torch.testing.assert_close(hn[:, b], hb, **EXACT)
        assert (y[b, n:] == 0).all()


@given(configs)
def test_reverse_direction_is_forward_on_reversed_sequence(cfg):
    torch.manual_seed(cfg["seed"])
    kw = {"variant": cfg["variant"], "reset_after": cfg["reset_after"], "dtype": torch.float64}
    bi = gatedrnn.GRU(2, 3, bidirectional=True, **kw)
    fwd = gatedrnn.GRU(2, 3, **kw)
    fwd.load_state_dict({k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if "_reverse" in k})
    n = max(cfg["lengths"])
    x = torch.randn(n, 2, dtype=torch.float64)
    y, hn = bi(x)
    yr, hr = fwd(x.flip(0))
    torch.testing.assert_close(y[:, 3:], yr.flip(0), **EXACT)
    torch.testing.assert_close(hn[1], hr[0], **EXACT)
