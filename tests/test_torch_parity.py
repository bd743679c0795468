"""gru0 (reset after) against torch.nn.GRU / GRUCell with copied weights: outputs and every gradient."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn

I, H, T, B = 3, 5, 6, 4


def _pair(num_layers: int, bidirectional: bool, batch_first: bool, bias: bool, dtype: torch.dtype, engine: str):
    ref = torch.nn.GRU(I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, dtype=dtype)
    ours = gatedrnn.GRU(
        I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, dtype=dtype, engine=engine
    )
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _run(model, x, h0, mode: str, lengths, batch_first: bool):
    """Forward, then backward with a random upstream gradient on output and h_n."""
    x = x.detach().clone().requires_grad_(True)
    h0 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    inp = x
    if mode == "packed":
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, hn = model(inp, h0)
    y = out.data if mode == "packed" else out
    g = torch.Generator().manual_seed(7)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gh = torch.randn(hn.shape, generator=g, dtype=hn.dtype)
    (y * gy).sum().backward(retain_graph=True)
    (hn * gh).sum().backward()
    grads = {"input": x.grad, **{n: p.grad for n, p in model.named_parameters()}}
    if h0 is not None:
        grads["h0"] = h0.grad
    return y.detach(), hn.detach(), grads


def _inputs(mode: str, batch_first: bool, num_dirs_layers: int, with_h0: bool, dtype: torch.dtype):
    g = torch.Generator().manual_seed(3)
    if mode == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=dtype)
        h0 = torch.randn(num_dirs_layers, H, generator=g, dtype=dtype) if with_h0 else None
    else:
        shape = (B, T, I) if batch_first else (T, B, I)
        x = torch.randn(shape, generator=g, dtype=dtype)
        h0 = torch.randn(num_dirs_layers, B, H, generator=g, dtype=dtype) if with_h0 else None
    return x, h0


CASES = list(
    itertools.product(
        [1, 2, 3], [False, True], [False, True], [True, False], [False, True], ["padded", "packed", "unbatched"]
    )
)


@pytest.mark.parametrize(("num_layers", "bidirectional", "batch_first", "bias", "with_h0", "mode"), CASES)
def test_gru0_matches_torch_float64(num_layers, bidirectional, batch_first, bias, with_h0, mode, engine):
    ref, ours = _pair(num_layers, bidirectional, batch_first, bias, torch.float64, engine)
    x, h0 = _inputs(mode, batch_first, num_layers * (2 if bidirectional else 1), with_h0, torch.float64)
    lengths = torch.tensor([6, 2, 5, 1]) if mode == "packed" else None
    y_ref, hn_ref, g_ref = _run(ref, x, h0, mode, lengths, batch_first)
    y, hn, g = _run(ours, x, h0, mode, lengths, batch_first)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hn, hn_ref, rtol=1e-10, atol=1e-12)
    assert set(g) == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru0_float32_error_within_torch_error(bidirectional, engine):
    """float32 error against a float64 reference is no worse than torch.nn.GRU's own (x2), for the
    outputs and every gradient under one shared upstream gradient."""
    steps, hidden = 60, 32
    ref64 = torch.nn.GRU(8, hidden, 2, bidirectional=bidirectional, dtype=torch.float64)
    ref32 = torch.nn.GRU(8, hidden, 2, bidirectional=bidirectional)
    ours = gatedrnn.GRU(8, hidden, 2, bidirectional=bidirectional, engine=engine)
    ref32.load_state_dict(ref64.state_dict())
    ours.load_state_dict(ref64.state_dict())
    x64 = torch.randn(steps, 8, 8, dtype=torch.float64)

    def run(model, x):
        x = x.detach().clone().requires_grad_(True)
        y, hn = model(x)
        g = torch.Generator().manual_seed(1)
        # the same upstream gradient for every run: drawn in float64, then cast (float32 and float64
        # draws from one seed are different numbers, which made the gradient comparison meaningless)
        (y * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)).sum().backward()
        grads = [x.grad] + [p.grad for p in model.parameters()]
        return [y.detach(), hn.detach(), *grads]

    exact = run(ref64, x64)
    names = ["output", "h_n", "input grad", *(f"{n} grad" for n, _ in ours.named_parameters())]
    for name, got, native, want in zip(names, run(ours, x64.float()), run(ref32, x64.float()), exact, strict=True):
        d_ours, d_torch = got.double() - want, native.double() - want
        # the whole tensor (2-norm of the error, no slack): stable, and tight for every tensor
        n_ours, n_torch = d_ours.norm().item(), d_torch.norm().item()
        assert n_ours <= 2 * n_torch, f"{name}: error norm ours {n_ours:.3g} vs torch.nn.GRU {n_torch:.3g}"
        # the worst element (noisier: a small absolute allowance)
        e_ours, e_torch = d_ours.abs().max().item(), d_torch.abs().max().item()
        assert e_ours <= 2 * e_torch + 1e-6, f"{name}: max error ours {e_ours:.3g} vs torch.nn.GRU {e_torch:.3g}"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
def test_gru_cell_matches_torch(bias, unbatched):
    ref = torch.nn.GRUCell(I, H, bias=bias, dtype=torch.float64)
    ours = gatedrnn.GRUCell(I, H, bias=bias, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict(), strict=True)
    shape = (I,) if unbatched else (B, I)
    x = torch.randn(shape, dtype=torch.float64)
    h = torch.randn((H,) if unbatched else (B, H), dtype=torch.float64)
    outs = []
    for model in (ref, ours):
        xx, hh = x.clone().requires_grad_(True), h.clone().requires_grad_(True)
        out = model(xx, hh)
        out.backward(torch.ones_like(out) * 0.3 + out.detach())
        outs.append([out.detach(), xx.grad, hh.grad, *[p.grad for p in model.parameters()]])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_state_dict_keys_identical_to_torch():
    ref = torch.nn.GRU(I, H, 3, bidirectional=True)
    ours = gatedrnn.GRU(I, H, 3, bidirectional=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape


def test_init_distribution_like_torch():
    ours = gatedrnn.GRU(I, 64, variant="gru1")
    bound = 1 / 8
    for p in ours.parameters():
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.8 * bound  # uniform over the whole interval, not a narrower one


def test_dropout_between_layers_like_torch():
    """Inter-layer dropout: same mask stream as torch.nn.GRU given the same seed (training mode)."""
    ref, ours = _pair(2, False, False, True, torch.float64, "reference")
    ref.dropout = ours.dropout = 0.5
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(11)
    y_ref, _ = ref(x)
    torch.manual_seed(11)
    y, _ = ours(x)
    # torch's native GRU draws its dropout mask the same way (F.dropout on the layer output)
    torch.testing.assert_close(y, y_ref)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


def test_single_layer_dropout_warns_like_torch():
    """torch.nn.GRU warns when dropout is set on a single layer, where it has no effect."""
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        torch.nn.GRU(I, H, 1, dropout=0.5)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        gatedrnn.GRU(I, H, 1, dropout=0.5)


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_backward_like_torch(batch_first, with_h0, engine):
    """A batch of no sequences: same shapes, same requires_grad, and a backward that gives the
    same (zero) gradients as torch.nn.GRU's."""
    ref, ours = _pair(2, True, batch_first, True, torch.float64, engine)
    x = torch.randn((0, T, I) if batch_first else (T, 0, I), dtype=torch.float64)
    h0 = torch.randn(4, 0, H, dtype=torch.float64) if with_h0 else None
    results = []
    for model in (ref, ours):
        xx = x.clone().requires_grad_(True)
        hh = None if h0 is None else h0.clone().requires_grad_(True)
        y, hn = model(xx, hh)
        assert (y.requires_grad, hn.requires_grad) == (True, True)
        (y.sum() + hn.sum()).backward()
        grads = [xx.grad] + ([] if hh is None else [hh.grad]) + [p.grad for p in model.parameters()]
        results.append([y.detach(), hn.detach(), *grads])
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dropout_one_like_torch(engine):
    """dropout=1.0 (accepted as by torch.nn.GRU): every inter-layer activation is zero in training,
    nothing is dropped in eval; outputs and every gradient as torch's."""
    ref, ours = _pair(3, True, False, True, torch.float64, engine)
    ref.dropout = ours.dropout = 1.0
    assert gatedrnn.GRU(I, H, 3, dropout=1.0).dropout == 1.0
    x = torch.randn(T, B, I, dtype=torch.float64)
    for training in (True, False):
        ref.train(training)
        ours.train(training)
        y_ref, hn_ref, g_ref = _run(ref, x, None, "padded", None, False)
        y, hn, g = _run(ours, x, None, "padded", None, False)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hn, hn_ref, rtol=1e-10, atol=1e-12)
        for name in g_ref:
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
        zero = (g_ref["weight_ih_l1"] == 0).all() and (g_ref["weight_ih_l2"] == 0).all()
        assert bool(zero) == training  # the dropped activations are the next layer's input


@pytest.mark.parametrize("value", [True, False, 0, 1, 2, 0.0, 1.0, None, "yes", torch.tensor(True)])
@pytest.mark.parametrize("flag", ["bias", "batch_first"])
def test_bool_flags_like_torch(flag, value):
    """Non-bool ``bias`` / ``batch_first``: torch.nn.GRU raises TypeError (with its message) and so
    does gatedrnn.GRU; torch.nn.GRUCell takes any truthy value for ``bias``, and so does GRUCell."""
    try:
        ref = torch.nn.GRU(I, H, **{flag: value})
    except TypeError as e:
        with pytest.raises(TypeError) as ours:
            gatedrnn.GRU(I, H, **{flag: value})
        assert str(ours.value) == str(e)
    else:
        assert list(gatedrnn.GRU(I, H, **{flag: value}).state_dict()) == list(ref.state_dict())
    if flag == "bias":
        ref_cell = torch.nn.GRUCell(I, H, bias=value)
        assert list(gatedrnn.GRUCell(I, H, bias=value).state_dict()) == list(ref_cell.state_dict())
