"""Every bad input raises an error that names the argument, what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"variant": "gru9"}, r"variant: expected one of \[.*'gru0'.*\], got 'gru9'"),
        ({"variant": "gru3", "bias": False}, r"bias: .*gru3.*got bias=False"),
        ({"hidden_size": 0}, r"hidden_size: expected an integer >= 1, got 0"),
        ({"hidden_size": 2.5}, r"hidden_size: expected an integer >= 1, got 2.5"),
        ({"input_size": -1}, r"input_size: expected an integer >= 1, got -1"),
        ({"num_layers": 0}, r"num_layers: expected an integer >= 1, got 0"),
        ({"dropout": 1.5}, r"dropout: expected a number in \[0, 1\], got 1.5"),
        ({"dropout": -0.1}, r"dropout: expected a number in \[0, 1\], got -0.1"),
        ({"dropout": True}, r"dropout: expected a number in \[0, 1\], got True"),
        ({"dropout": "0.5"}, r"dropout: expected a number in \[0, 1\], got '0.5'"),
        ({"engine": "cudnn"}, r"engine: expected 'auto' or one of \[.*'reference'.*\], got 'cudnn'"),
    ],
)
def test_constructor_errors(kwargs, pattern):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        gatedrnn.GRU(**args)


def test_cell_constructor_errors():
    with pytest.raises(ValueError, match="variant: expected"):
        gatedrnn.GRUCell(3, 4, variant="lstm")
    with pytest.raises(ValueError, match=r"bias: .*gru3"):
        gatedrnn.GRUCell(3, 4, variant="gru3", bias=False)


@pytest.fixture
def layer():
    return gatedrnn.GRU(3, 4, num_layers=2)


@pytest.mark.parametrize(
    ("x", "hx", "kwargs", "pattern"),
    [
        (torch.randn(2, 3, 4, 3), None, {}, r"input: expected a 3-D \(batched\) or 2-D \(unbatched\).*got 4-D"),
        (torch.randn(3), None, {}, r"input: expected a 3-D .* got 1-D"),
        (torch.randn(5, 2, 7), None, {}, r"input: expected input.size\(-1\) == input_size \(3\), got 7"),
        (
            torch.randn(5, 2, 3, dtype=torch.float64),
            None,
            {},
            r"input: expected dtype torch.float32 .*got torch.float64",
        ),
        (torch.randn(0, 2, 3), None, {}, r"input: expected a sequence length of at least 1, got 0"),
        (torch.randn(5, 2, 3), torch.randn(1, 2, 4), {}, r"hx: expected shape \(2, 2, 4\), got \(1, 2, 4\)"),
        (
            torch.randn(5, 2, 3),
            torch.randn(2, 2, 4).double(),
            {},
            r"hx: expected dtype torch.float32.*got torch.float64",
        ),
        (torch.randn(5, 3), torch.randn(2, 1, 4), {}, r"hx: for unbatched input expected a 2-D hx"),
        (torch.randn(5, 2, 3), None, {"lengths": [5, 0]}, r"lengths: expected every length >= 1, got 0"),
        (
            torch.randn(5, 2, 3),
            None,
            {"lengths": [6, 2]},
            r"lengths: expected every length <= the sequence length 5, got 6",
        ),
        (torch.randn(5, 2, 3), None, {"lengths": [2.0, 3.0]}, r"lengths: expected integers, got dtype torch.float32"),
        (
            torch.randn(5, 2, 3),
            None,
            {"lengths": [[2, 3]]},
            r"lengths: expected a 1-D tensor of 2 integers, got shape \(1, 2\)",
        ),
        (torch.randn(5, 2, 3), None, {"lengths": [2, 3, 4]}, r"lengths: expected one length per sequence \(2\), got 3"),
        (
            torch.randn(5, 2, 3),
            None,
            {"lengths": [2, 5], "enforce_sorted": True},
            r"lengths: expected lengths sorted in decreasing order \(enforce_sorted=True\), got \[2, 5\]",
        ),
        ("not a tensor", None, {}, r"input: expected a Tensor or PackedSequence, got str"),
    ],
)
def test_forward_errors(layer, x, hx, kwargs, pattern):
    with pytest.raises(gatedrnn.InputError, match=pattern) as info:
        layer(x, hx, **kwargs)
    # drop-in: torch.nn.GRU raises RuntimeError for these; ours is also a ValueError
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_packed_with_lengths_refused(layer):
    packed = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))
    with pytest.raises(gatedrnn.InputError, match="lengths: a PackedSequence carries its own lengths"):
        layer(packed, lengths=[4, 2])


def test_packed_wrong_feature_size(layer):
    packed = pack_padded_sequence(torch.randn(4, 2, 5), torch.tensor([4, 2]))
    with pytest.raises(gatedrnn.InputError, match=r"input: expected input.size\(-1\) == input_size \(3\), got 5"):
        layer(packed)


def test_unknown_engine_at_call_and_unavailable_engine():
    layer = gatedrnn.GRU(3, 4, engine="triton")  # CPU tensors, no interpreter: cannot run here
    with pytest.raises(RuntimeError, match="engine='triton' cannot run here"):
        layer(torch.randn(2, 1, 3))
    layer.engine = "cudnn"  # set after construction: refused at the call, naming the argument
    with pytest.raises(ValueError, match=r"engine: expected 'auto' or one of \[.*'reference'.*\], got 'cudnn'"):
        layer(torch.randn(2, 1, 3))


def test_empty_batch_returns_empty(layer):
    y, hn = layer(torch.randn(5, 0, 3))
    assert y.shape == (5, 0, 4) and hn.shape == (2, 0, 4)
    y, hn = layer(torch.randn(5, 0, 3), lengths=[])  # no sequences, no lengths (an empty list is float)
    assert y.shape == (5, 0, 4) and hn.shape == (2, 0, 4)
    bf = gatedrnn.GRU(3, 4, batch_first=True, bidirectional=True)
    y, hn = bf(torch.randn(0, 5, 3))
    assert y.shape == (0, 5, 8) and hn.shape == (2, 0, 4)


def test_cell_forward_errors():
    cell = gatedrnn.GRUCell(3, 4)
    with pytest.raises(
        gatedrnn.InputError, match=r"input: expected a 2-D \(batched\) or 1-D \(unbatched\) tensor, got 3-D"
    ):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(gatedrnn.InputError, match=r"input: expected input.size\(-1\) == input_size \(3\), got 2"):
        cell(torch.randn(2, 2))
    with pytest.raises(gatedrnn.InputError, match=r"hx: expected shape \(2, 4\), got \(3, 4\)"):
        cell(torch.randn(2, 3), torch.randn(3, 4))


def test_cell_hx_and_device_errors():
    cell = gatedrnn.GRUCell(3, 4)
    with pytest.raises(gatedrnn.InputError, match=r"hx: expected a Tensor or None, got list"):
        cell(torch.randn(2, 3), [[0.0] * 4] * 2)
    with pytest.raises(
        gatedrnn.InputError, match=r"input: expected a 2-D \(batched\) or 1-D \(unbatched\) tensor, got list"
    ):
        cell([1.0, 2.0, 3.0])
    with pytest.raises(gatedrnn.InputError, match=r"input: expected device cpu .*got meta"):
        cell(torch.empty(2, 3, device="meta"))
    with pytest.raises(gatedrnn.InputError, match=r"hx: expected device cpu .*got meta"):
        cell(torch.randn(2, 3), torch.empty(2, 4, device="meta"))


def test_device_mismatch(layer):
    with pytest.raises(gatedrnn.InputError, match=r"input: expected device cpu .*got meta"):
        layer(torch.empty(5, 2, 3, device="meta"))
    with pytest.raises(gatedrnn.InputError, match=r"hx: expected device cpu .*got meta"):
        layer(torch.randn(5, 2, 3), torch.empty(2, 2, 4, device="meta"))


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("gru1", 0, 4), r"input_size: expected an integer >= 1, got 0"),
        (("gru1", 3, -3), r"hidden_size: expected an integer >= 1, got -3"),
        (("gru0", 2.5, 3), r"input_size: expected an integer >= 1, got 2.5"),
        (("lstm", 3, 4), r"variant: expected one of \[.*'gru0'.*\], got 'lstm'"),
    ],
)
def test_count_parameters_errors(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        gatedrnn.count_parameters(*args)
