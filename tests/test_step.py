"""The fused engine's step path against the reference engine: GRUCell's step and short GRU calls.

A cell's step and a layer call of a few steps run as one compiled call each way (the one-call
step kernels), and a call like one already checked runs what that call cached. Everything is
compared with the reference engine (plain autograd over the equations) with the same parameters:
outputs and the gradients of the inputs, the initial state and every parameter, with random
upstream gradients, over several consecutive steps with one backward through all of them.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call

import gatedrnn
from gatedrnn import GRU, GRUCell
from gatedrnn._engines import _step
from gatedrnn._specs import SPECS

VARIANTS = sorted(SPECS)
TOL = 1e-10  # float64


def _cells(
    variant: str, reset_after: bool, bias: bool = True, dtype: torch.dtype = torch.float64, m: int = 5, **options
):
    torch.manual_seed(3)
    kw = dict(bias=bias, variant=variant, reset_after=reset_after, dtype=dtype, **options)
    ref = GRUCell(m, 4, engine="reference", **kw)
    with torch.no_grad():
        for p in ref.parameters():  # biases far from 0, so that every bias gradient matters
            p.uniform_(-0.8, 0.8)
    fused = GRUCell(m, 4, engine="fused", **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _unroll(cell: GRUCell, xs: torch.Tensor, h0: torch.Tensor | None, gys: list[torch.Tensor], batch_first: bool):
    """Step the cell over ``xs`` (``[T, B, m]``, or ``[B, T, m]`` read as ``xs[:, t]``), one
    backward through every step; the states and the gradients of xs, h0 and every parameter."""
    xs = xs.detach().clone().requires_grad_(True)
    h0 = h0.detach().clone().requires_grad_(True) if h0 is not None else None
    h, outs = h0, []
    for t in range(len(gys)):
        h = cell(xs[:, t] if batch_first else xs[t], h)
        outs.append(h)
    loss = sum((o * g).sum() for o, g in zip(outs, gys, strict=True))
    grads = torch.autograd.grad(loss, [xs, *([h0] if h0 is not None else []), *cell.parameters()])
    return [o.detach() for o in outs], grads


def _assert_all_close(a, b, tol: float = TOL) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_unroll_matches_reference(variant: str, reset_after: bool) -> None:
    ref, fused = _cells(variant, reset_after)
    xs, h0 = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    gys = [torch.randn(3, 4, dtype=torch.float64) for _ in range(4)]
    want = _unroll(ref, xs, h0, gys, False)
    for _ in range(2):  # the first calls are checked, the later ones run what those cached
        got = _unroll(fused, xs, h0, gys, False)
        _assert_all_close(got[0] + list(got[1]), want[0] + list(want[1]))
    assert fused.last_engine == "fused" and len(fused._plans) == 1  # every step alike: one cached call
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(fused(xs[0], h0), ref(xs[0], h0), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_zoneout_matches_reference(variant: str, reset_after: bool) -> None:
    """Zoneout on the fused step (the reference's carry on its output): an unroll in training with
    the same masks (the same seed: each step draws one mask of the state's shape), states and every
    gradient; eval; unbatched; never cached. ``engine="auto"`` picks the fused step for it."""
    ref, fused = _cells(variant, reset_after, zoneout=0.4)
    xs, h0 = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    gys = [torch.randn(3, 4, dtype=torch.float64) for _ in range(4)]
    torch.manual_seed(11)
    want = _unroll(ref, xs, h0, gys, False)
    torch.manual_seed(11)
    got = _unroll(fused, xs, h0, gys, False)
    _assert_all_close(got[0] + list(got[1]), want[0] + list(want[1]))
    assert fused.last_engine == "fused" and len(fused._plans) == 0
    # the masks differ between calls (a fresh mask every step): two calls from one state differ
    with torch.no_grad():
        a, b = fused(xs[0], h0), fused(xs[0], h0)
    assert not torch.equal(a, b)
    fused.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(xs[0], h0), ref(xs[0], h0), atol=TOL, rtol=TOL)
        torch.testing.assert_close(fused(xs[0, 0], h0[0]), ref(xs[0, 0], h0[0]), atol=TOL, rtol=TOL)
        torch.testing.assert_close(fused(xs[0]), ref(xs[0]), atol=TOL, rtol=TOL)
    auto = GRUCell(5, 4, zoneout=0.4, variant=variant, reset_after=reset_after)
    auto(torch.randn(2, 5))
    assert auto.last_engine == "fused"


@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru0", False), ("mgu", True), ("mingru", True)])
def test_cell_without_bias_unbatched_and_zero_state(variant: str, reset_after: bool) -> None:
    ref, fused = _cells(variant, reset_after, bias=False)
    gys = [torch.randn(4, dtype=torch.float64) for _ in range(3)]
    xs = torch.randn(3, 5, dtype=torch.float64)  # unbatched: [m] per step
    want = _unroll(ref, xs, None, gys, False)
    for _ in range(2):
        got = _unroll(fused, xs, None, gys, False)
        _assert_all_close(got[0] + list(got[1]), want[0] + list(want[1]))
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(fused(xs[0]), ref(xs[0]), atol=TOL, rtol=TOL)
            torch.testing.assert_close(fused(xs[0], xs[1, :4]), ref(xs[0], xs[1, :4]), atol=TOL, rtol=TOL)


def test_cell_batch_first_slices_and_float32() -> None:
    """A decoder reading ``x[:, t]`` of a batch-first tensor (not contiguous); float32 against the
    float32 reference (the float32 activations are rational approximations)."""
    for dtype, tol in ((torch.float64, TOL), (torch.float32, 2e-5)):
        ref, fused = _cells("gru0", True, dtype=dtype)
        xs, h0 = torch.randn(3, 4, 5, dtype=dtype), torch.randn(3, 4, dtype=dtype)
        gys = [torch.randn(3, 4, dtype=dtype) for _ in range(4)]
        want = _unroll(ref, xs, h0, gys, True)
        for _ in range(2):
            got = _unroll(fused, xs, h0, gys, True)
            _assert_all_close(got[0] + list(got[1]), want[0] + list(want[1]), tol)
        with torch.no_grad():
            for _ in range(2):
                torch.testing.assert_close(fused(xs[:, 1], h0), ref(xs[:, 1], h0), atol=tol, rtol=tol)


def test_cell_backward_takes_expanded_and_missing_gradients() -> None:
    """``h.sum().backward()`` hands the backward an expanded (stride 0) gradient, which it copies
    before the kernel reads it by address; a frozen cell still gives the input's gradient."""
    ref, fused = _cells("gru0", True)
    x = torch.randn(3, 5, dtype=torch.float64)
    for _ in range(2):
        grads = []
        for cell in (ref, fused):
            xi = x.clone().requires_grad_(True)
            cell(xi, cell(xi)).sum().backward()
            grads.append([xi.grad, *(p.grad for p in cell.parameters())])
            cell.zero_grad(set_to_none=True)
        _assert_all_close(grads[1], grads[0])
    for cell in (ref, fused):
        cell.requires_grad_(False)
    xi = x.clone().requires_grad_(True)
    want = torch.autograd.grad(ref(xi).sum(), xi)
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        _assert_all_close(torch.autograd.grad(fused(xi).sum(), xi), want)


def test_cell_unroll_is_one_node_a_step() -> None:
    """A Python loop of cell calls records one autograd node per step (and the input's slice),
    not the dozens of small operations of the reference step."""

    def nodes(cell: GRUCell) -> int:
        xs = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
        h = None
        for t in range(6):
            h = cell(xs[t], h)
        seen, todo = set(), [h.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen or type(fn).__name__ == "AccumulateGrad":
                continue
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
        return len(seen)

    ref, fused = _cells("gru0", True)
    assert nodes(fused) == nodes(fused) == 12  # 6 steps, 6 slices xs[t]
    assert nodes(ref) > 6 * 10


def test_cached_call_reads_parameters_as_they_are() -> None:
    """What a cached call keeps is where the parameters are, never their values: a copy into
    ``.data`` (which does not bump the version counter: a target network updated in place), a new
    parameter, a new data type, a frozen parameter, and the engine changed all take effect."""
    ref, fused = _cells("gru0", True)
    x, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)

    def check() -> None:
        ref.load_state_dict(fused.state_dict())
        with torch.no_grad():
            for _ in range(2):
                torch.testing.assert_close(fused(x, h), ref(x, h), atol=TOL, rtol=TOL)
        xi = x.clone().requires_grad_(True)
        xr = x.clone().requires_grad_(True)
        for _ in range(2):
            got = torch.autograd.grad(
                fused(xi, h).square().sum(), [xi, *(p for p in fused.parameters() if p.requires_grad)]
            )
            want = torch.autograd.grad(
                ref(xr, h).square().sum(), [xr, *(p for p in ref.parameters() if p.requires_grad)]
            )
            _assert_all_close(got, want)

    check()
    version = fused.weight_hh._version
    with torch.no_grad():
        fused.weight_hh.data.copy_(torch.randn_like(fused.weight_hh))
    assert fused.weight_hh._version == version  # invisible to a version-counter check
    check()
    fused.load_state_dict({k: v * 0.5 for k, v in fused.state_dict().items()})
    check()
    fused.weight_ih = nn.Parameter(torch.randn_like(fused.weight_ih))
    check()
    fused.bias_hh.requires_grad_(False)
    ref.bias_hh.requires_grad_(False)
    check()
    fused.float()
    ref.float()
    x, h = x.float(), h.float()
    with torch.no_grad():
        torch.testing.assert_close(fused(x, h), ref(x, h), atol=2e-5, rtol=2e-5)
    fused.engine = "reference"
    with torch.no_grad():
        fused(x, h)
    assert fused.last_engine == "reference"


def test_cell_under_functional_call_and_gradgradcheck() -> None:
    """Parameters swapped in per call (torch.func.functional_call), inputs changed in place between
    calls (gradcheck perturbs them), and second derivatives (the reference differentiates the
    step again, see _second_order)."""
    _, fused = _cells("mgu", False)
    names = [n for n, _ in fused.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in fused.parameters()]
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h, *ps):
        return functional_call(fused, dict(zip(names, ps, strict=True)), (x, h))

    assert torch.autograd.gradcheck(f, (x, h, *params))
    assert torch.autograd.gradgradcheck(f, (x, h, *params))
    assert fused.last_engine == "fused"


def test_cell_dispatch_is_explicit() -> None:
    x = torch.randn(2, 5)
    assert GRUCell(5, 4)(x).shape == (2, 4)
    with pytest.raises(
        ValueError, match=r"engine: a cell runs 'auto' or one of \['reference', 'fused'\], got 'triton'"
    ):
        GRUCell(5, 4, engine="triton")
    # the fused step runs no layer norm: "auto" picks the reference step for it, "fused" refuses
    auto = GRUCell(5, 4, layer_norm=True, zoneout=0.1)
    auto(x)
    assert auto.last_engine == "reference"
    with pytest.raises(RuntimeError, match=r"engine='fused' cannot run here: it does not run layer_norm"):
        GRUCell(5, 4, layer_norm=True, zoneout=0.1, engine="fused")(x)
    # under a torch.func transform "auto" runs the reference step, and "fused" names what to use
    cell = GRUCell(5, 4, dtype=torch.float64)
    xd = torch.randn(2, 5, dtype=torch.float64)
    cell(xd)
    g = torch.func.grad(lambda x: cell(x).sum())(xd)
    assert cell.last_engine == "reference"
    torch.testing.assert_close(g, torch.autograd.grad(cell(xd.requires_grad_()).sum(), xd)[0], atol=TOL, rtol=TOL)
    cell.engine = "fused"
    with pytest.raises(RuntimeError, match=r"engine='fused' cannot run here: a torch.func transform"):
        torch.func.grad(lambda x: cell(x).sum())(xd)
    # bfloat16: "auto" is the reference step
    half = GRUCell(5, 4, dtype=torch.bfloat16)
    half(x.bfloat16())
    assert half.last_engine == "reference"
    half.engine = "fused"
    with pytest.raises(RuntimeError, match=r"engine='fused' cannot run here: a cell's step runs float32"):
        half(x.bfloat16())
    # float32 under CPU autocast: "auto" leaves the step to torch's operations, which autocast casts
    plain = GRUCell(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, theirs = plain(x), torch.nn.GRUCell(5, 4)(x)
    assert plain.last_engine == "reference" and out.dtype == theirs.dtype


def test_cell_empty_batch_pickle_and_copy() -> None:
    ref, fused = _cells("gru1", True)
    assert fused(torch.randn(0, 5, dtype=torch.float64)).shape == (0, 4)
    # an empty batch's backward: zero gradients for every parameter, as torch.nn.GRUCell's
    x0 = torch.randn(0, 5, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(fused(x0, torch.randn(0, 4, dtype=torch.float64)).sum(), [x0, *fused.parameters()])
    assert grads[0].shape == (0, 5) and all(
        g.shape == p.shape and not g.any() for g, p in zip(grads[1:], fused.parameters(), strict=True)
    )
    x = torch.randn(2, 5, dtype=torch.float64)
    with torch.no_grad():
        fused(x)
        fused(x)
        for other in (pickle.loads(pickle.dumps(fused)), copy.deepcopy(fused)):
            assert other._plans == {}
            torch.testing.assert_close(other(x), ref(x), atol=TOL, rtol=TOL)


def _layers(variant: str, reset_after: bool, **kw):
    torch.manual_seed(5)
    ref = GRU(5, 4, variant=variant, reset_after=reset_after, engine="reference", dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.8, 0.8)
    fused = GRU(5, 4, variant=variant, reset_after=reset_after, engine="fused", dtype=torch.float64, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _layer_grads(mod: GRU, x: torch.Tensor, h0: torch.Tensor | None, lengths=None):
    x = x.detach().clone().requires_grad_(True)
    h0 = h0.detach().clone().requires_grad_(True) if h0 is not None else None
    y, hn = mod(x, h0) if lengths is None else mod(x, h0, lengths=lengths)
    torch.manual_seed(11)
    loss = (y * torch.randn_like(y)).sum() + (hn * torch.randn_like(hn)).sum()
    grads = torch.autograd.grad(loss, [x, *([h0] if h0 is not None else []), *mod.parameters()])
    return [y.detach(), hn.detach(), *grads]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reset_after", [True, False])
def test_short_layer_calls_match_reference(variant: str, reset_after: bool) -> None:
    """One-step and short calls of a one-layer GRU: time-major, batch-first (a transposed input
    when T and B are both above 1), unbatched; with and without h0; cached after the first."""
    for batch_first, shape, h_shape in (
        (False, (1, 3, 5), (1, 3, 4)),
        (False, (4, 3, 5), (1, 3, 4)),
        (True, (3, 1, 5), (1, 3, 4)),
        (True, (3, 4, 5), (1, 3, 4)),
        (False, (3, 5), (1, 4)),
    ):
        ref, fused = _layers(variant, reset_after, batch_first=batch_first)
        x, h0 = torch.randn(*shape, dtype=torch.float64), torch.randn(*h_shape, dtype=torch.float64)
        for h in (h0, None):
            want = _layer_grads(ref, x, h)
            for _ in range(2):
                _assert_all_close(_layer_grads(fused, x, h), want)
            with torch.no_grad():
                for _ in range(2):
                    got = fused(x, h)
                    _assert_all_close(got, ref(x, h))
                    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
            assert fused.last_engine == "fused"
        assert len(fused._plans) == 4  # with and without h0, with and without gradients


def test_short_calls_through_the_driver() -> None:
    """Stacked, bidirectional, with lengths: every layer and direction a short call of the fused
    engine (the layer's own cache is for one layer, one direction)."""
    for steps in (1, 4):
        ref, fused = _layers("gru0", False, num_layers=2, bidirectional=True)
        x, h0 = torch.randn(steps, 3, 5, dtype=torch.float64), torch.randn(4, 3, 4, dtype=torch.float64)
        lengths = torch.tensor([steps, 1, max(steps - 1, 1)])
        _assert_all_close(_layer_grads(fused, x, h0, lengths), _layer_grads(ref, x, h0, lengths))
        assert fused._plans == {}


def test_short_form_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls of at most SHORT_MAX_STEPS steps run the step kernels; longer ones the long form."""
    eng = gatedrnn._engines.get_engine("fused")
    spec = SPECS["gru0"]
    assert eng.short(spec, 1, 1, 32) and eng.short(spec, _step.SHORT_MAX_STEPS, 3, 64)
    assert not eng.short(spec, _step.SHORT_MAX_STEPS + 1, 3, 64)
    calls, layer_of = [], _step.layer
    monkeypatch.setattr(_step, "layer", lambda *a: calls.append(a[2].shape[0]) or layer_of(*a))
    layer = GRU(5, 4, num_layers=2, engine="fused")
    layer(torch.randn(3, 2, 5))
    assert calls == [3, 3]
    layer(torch.randn(_step.SHORT_MAX_STEPS + 1, 2, 5))
    assert calls == [3, 3]


def test_short_call_under_checkpointing() -> None:
    """Non-reentrant activation checkpointing unpacks what a node saved once; the step's backward
    does too."""
    ref, fused = _layers("gru0", True, num_layers=2)
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    grads = []
    for mod in (ref, fused):
        xi = x.clone().requires_grad_(True)
        y = torch.utils.checkpoint.checkpoint(lambda t, m=mod: m(t)[0], xi, use_reentrant=False)
        grads.append(torch.autograd.grad(y.square().sum(), [xi, *mod.parameters()]))
    _assert_all_close(grads[1], grads[0])


def test_step_benchmark_prints_its_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/step.py (the harness of ``gatedrnn bench --stepping``) runs against the layers and
    prints one row per size, grad mode and loop, with a positive time and ratio in every cell."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"
    spec = importlib.util.spec_from_file_location("bench_step", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert (
            bench.main(["--threads", "1", "--sizes", "1x8,2x16", "--repeats", "1", "--rollout", "3", "--unroll", "2"])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith("CPU: ")
    rows = [ln.split("|")[1:-1] for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| B ")]
    rows = [r for r in rows if r[0].strip() != "loop"]
    assert len(rows) == 2 * 2 + 2  # two sizes without and with gradients, two loops
    for r in rows:
        assert all(float(c) > 0 for c in (r[2:] if len(r) == 7 else r[1:]))
