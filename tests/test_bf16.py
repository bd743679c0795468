"""bfloat16 in the fused engine: bfloat16 layers and torch.autocast("cpu", dtype=torch.bfloat16).

The products run in bfloat16 with float32 accumulation, the elementwise work and the state in
float32. Against the reference equations in float64: the error of every output and gradient must be
no larger than torch's own bfloat16 error on the same inputs (torch.nn.GRU for gru0, the reference
engine in bfloat16 for the variants torch lacks), measured in the test itself. Under autocast the
outputs have torch.nn.GRU's dtypes.
"""

from __future__ import annotations

import functools

import pytest
import torch

from gatedrnn import GRU, InputError

BF16 = torch.bfloat16


def _rel(a: torch.Tensor, want: torch.Tensor) -> float:
    """The error's norm relative to the reference's (a root-mean-square measure: the largest error
    of a few dozen values is decided by single roundings of the bfloat16 outputs)."""
    return ((a.double() - want).norm() / want.norm()).item()


def _call(layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor, gh: torch.Tensor, autocast: bool):
    """Outputs and the gradients of the input and every parameter (float64 copies), with ``layer``'s dtype."""
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        y, hn = layer(x)
    ((y.double() * gy).sum() + (hn.double() * gh).sum()).backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return [y, hn], [g.double() for g in grads]


def _errors(layer, x64, ref64, gy, gh, dtype, autocast):  # type: ignore[no-untyped-def]
    """Relative errors of outputs and gradients of ``layer`` (weights copied from ``ref64``,
    run with inputs in ``dtype``) against ``ref64`` in float64."""
    layer.load_state_dict(ref64.state_dict())
    outs, grads = _call(layer, x64.to(dtype), gy, gh, autocast)
    want_outs, want_grads = _call(ref64, x64, gy, gh, False)
    return (
        [_rel(a, b) for a, b in zip(outs, want_outs, strict=True)],
        [_rel(a, b) for a, b in zip(grads, want_grads, strict=True)],
        outs,
    )


CASES = [("gru0", True), ("gru0", False), ("mgu", True), ("gru3", False), ("mingru", True)]


@pytest.mark.parametrize(("variant", "reset_after"), CASES)
@pytest.mark.parametrize("batch", [5, 2], ids=["blas", "row-loops"])
@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-layer", "autocast"])
def test_bf16_within_torchs_own_bf16_error(variant: str, reset_after: bool, batch: int, autocast: bool) -> None:
    torch.manual_seed(3)
    steps, inp, hid = 40, 6, 16
    ref64 = GRU(inp, hid, variant=variant, reset_after=reset_after, engine="reference", dtype=torch.float64)
    x64 = torch.randn(steps, batch, inp, dtype=torch.float64)
    gy = torch.randn(steps, batch, hid, dtype=torch.float64)
    gh = torch.randn(1, batch, hid, dtype=torch.float64)
    dtype = torch.float32 if autocast else BF16
    fused = GRU(inp, hid, variant=variant, reset_after=reset_after, engine="fused", dtype=dtype)
    out_err, grad_err, outs = _errors(fused, x64, ref64, gy, gh, dtype, autocast)
    assert fused.last_engine == "fused"
    # torch's own bfloat16 (the bar): torch.nn.GRU for gru0 (reset after), the reference engine otherwise
    if variant == "gru0" and reset_after:
        bar: torch.nn.Module = torch.nn.GRU(inp, hid, dtype=dtype)
    else:
        bar = GRU(inp, hid, variant=variant, reset_after=reset_after, engine="reference", dtype=dtype)
    bar_out, bar_grad, bar_outs = _errors(bar, x64, ref64, gy, gh, dtype, autocast)
    assert [o.dtype for o in outs] == [o.dtype for o in bar_outs]  # autocast: torch.nn.GRU's output dtypes
    names = ["y", "h_n"] + ["x"] + [n for n, _ in fused.named_parameters()]
    for name, err, limit in zip(names, out_err + grad_err, bar_out + bar_grad, strict=True):
        # (1 + 1e-2): where both end in the same bfloat16 product (the input projection and dx under
        # autocast, minGRU throughout) the two errors tie, within 1% from input to input
        assert err <= limit * (1 + 1e-2), f"{name}: relative error {err:.2e} above torch's bfloat16 {limit:.2e}"


@pytest.mark.parametrize("with_h0", [False, True])
def test_autocast_output_dtypes_are_torchs(with_h0: bool) -> None:
    """Under autocast a float32 layer's outputs have the dtypes torch.nn.GRU's have; a bfloat16 layer's too."""
    for dtype in (torch.float32, BF16):
        torch.manual_seed(0)
        ours, theirs = GRU(4, 5, dtype=dtype), torch.nn.GRU(4, 5, dtype=dtype)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(3, 2, 4, dtype=dtype)
        h0 = torch.randn(1, 2, 5, dtype=dtype) if with_h0 else None
        with torch.autocast("cpu", dtype=BF16):
            got, want = ours(x, h0), theirs(x, h0)
        assert ours.last_engine == "fused"
        assert [t.dtype for t in got] == [t.dtype for t in want]


def test_float16_is_refused_naming_bfloat16() -> None:
    layer = GRU(4, 5, engine="fused", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="bfloat16"):
        layer(torch.randn(3, 2, 4, dtype=torch.float16))
    layer = GRU(4, 5, engine="fused")
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(RuntimeError, match="bfloat16"):
        layer(torch.randn(3, 2, 4))
    auto = GRU(4, 5)
    with torch.autocast("cpu", dtype=torch.float16):
        auto(torch.randn(3, 2, 4))
    assert auto.last_engine == "reference"  # engine="auto" leaves float16 autocast to torch's operations


@pytest.mark.parametrize("path", ["fold", "split", "stack"])
@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-layer", "autocast"])
def test_bf16_paths_within_the_reference_engines_bf16_error(
    path: str, autocast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other paths in bfloat16 mode: dx and dW_ih folded into the loop (3 inputs), the batch rows
    split between 2 threads, and two bidirectional layers with lengths; against the reference
    equations in float64, no worse than the reference engine in bfloat16 (autocast: float32 under
    autocast) on the same inputs."""
    from gatedrnn._engines import _threads

    torch.manual_seed(5)
    steps, batch, hid = 30, 6, 16
    inp = 3 if path == "fold" else 6
    kw = {"num_layers": 2, "bidirectional": True} if path == "stack" else {}
    lengths = torch.tensor([30, 12, 25, 1, 30, 7]) if path == "stack" else None
    threads = torch.get_num_threads()
    if path == "split":
        monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 1)
        monkeypatch.setattr(_threads, "SPLIT_MIN_FLOPS", 0)
        torch.set_num_threads(2)
    try:
        ref64 = GRU(inp, hid, engine="reference", dtype=torch.float64, **kw)
        dirs = 2 if path == "stack" else 1
        layers = kw.get("num_layers", 1)
        x64 = torch.randn(steps, batch, inp, dtype=torch.float64)
        gy = torch.randn(steps, batch, hid * dirs, dtype=torch.float64)
        gh = torch.randn(layers * dirs, batch, hid, dtype=torch.float64)
        if lengths is not None:  # outputs past a sequence's end are 0: no gradient there
            gy = gy * (torch.arange(steps)[:, None] < lengths[None, :])[..., None]
        dtype = torch.float32 if autocast else BF16
        errs = {}
        for engine in ("fused", "reference"):
            layer = GRU(inp, hid, engine=engine, dtype=dtype, **kw)
            layer.load_state_dict(ref64.state_dict())
            if lengths is not None:
                call = functools.partial(layer, lengths=lengths)
                want_call = functools.partial(ref64, lengths=lengths)
            else:
                call, want_call = layer, ref64
            outs, grads = _call(_Call(call, layer), x64.to(dtype), gy, gh, autocast)
            want_outs, want_grads = _call(_Call(want_call, ref64), x64, gy, gh, False)
            errs[engine] = [_rel(a, b) for a, b in zip(outs + grads, want_outs + want_grads, strict=True)]
            if engine == "fused":
                assert layer.last_engine == "fused"
    finally:
        torch.set_num_threads(threads)
    for i, (err, limit) in enumerate(zip(errs["fused"], errs["reference"], strict=True)):
        assert err <= limit * (1 + 1e-2), f"quantity {i}: relative error {err:.2e} above the reference's {limit:.2e}"


class _Call(torch.nn.Module):
    """A layer called with fixed keyword arguments, with the layer's parameters (for :func:`_call`)."""

    def __init__(self, call, layer: torch.nn.Module) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.call, self.layer = call, layer

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.call(x)


@pytest.mark.parametrize(
    ("x_dtype", "h_dtype"),
    [(BF16, None), (BF16, BF16), (BF16, torch.float32), (torch.float32, BF16)],
    ids=["x-bf16", "both-bf16", "x-bf16-h-f32", "x-f32-h-bf16"],
)
def test_autocast_bfloat16_inputs_into_a_float32_layer(x_dtype: torch.dtype, h_dtype: torch.dtype | None) -> None:
    """Under autocast torch.nn.GRU takes bfloat16 inputs into float32 parameters (its outputs in
    h0's dtype, else the input's): ours takes them too, with torch's output dtypes, values within
    bfloat16 rounding of torch's, and gradients for the input, h0 and the float32 parameters."""
    torch.manual_seed(0)
    ours, theirs = GRU(6, 8), torch.nn.GRU(6, 8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(7, 3, 6).to(x_dtype).requires_grad_()
    h0 = torch.randn(1, 3, 8).to(h_dtype).requires_grad_() if h_dtype is not None else None
    with torch.autocast("cpu", dtype=BF16):
        got, want = ours(x, h0), theirs(x, h0)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), atol=3e-2, rtol=3e-2)
    (got[0].float().sum() + got[1].float().sum()).backward()
    assert x.grad is not None and x.grad.dtype == x_dtype
    assert h0 is None or (h0.grad is not None and h0.grad.dtype == h_dtype)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())
    with pytest.raises(InputError, match=r"input: expected dtype torch\.float32"):
        ours(x.detach().to(BF16))  # outside autocast it stays refused, as in torch.nn.GRU
