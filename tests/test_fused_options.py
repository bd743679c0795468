"""The fused engine's options against the reference engine.

Layer norm, recurrent dropout, zoneout (training masks and eval expectation), DropConnect and
resets, for every variant and reset form: outputs, h_n and the gradients of the input, h0 and every
parameter (the layer norms' gains and shifts among them), random upstream gradients. Both engines
get the same masks: the driver draws them from torch's generator, seeded before each call. The
equations themselves are the reference's (tested against hand-written ones elsewhere); here the
engines must agree, on every path of the compiled loops.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gatedrnn import GRU
from gatedrnn._engines import get_engine
from gatedrnn._options import Extras
from gatedrnn._specs import SPECS

VARIANTS = sorted(SPECS)
# minGRU has no reset gate (reset_after has no effect): one reset form for it
WIRINGS = [(v, ra) for v in VARIANTS for ra in (True, False) if not (v == "mingru" and not ra)]
WIRING_IDS = [f"{v}-{'after' if ra else 'before'}" for v, ra in WIRINGS]
TOL = {torch.float64: 1e-10, torch.float32: 5e-5}

# option name: (module keyword arguments, training mode, resets in the forward)
OPTIONS: dict[str, tuple[dict[str, Any], bool, bool]] = {
    "layer_norm": ({"layer_norm": True}, True, False),
    "recurrent_dropout": ({"recurrent_dropout": 0.4}, True, False),
    "zoneout": ({"zoneout": 0.3}, True, False),
    "zoneout-eval": ({"zoneout": 0.3}, False, False),
    "resets": ({}, True, True),
}
ALL = {"layer_norm": True, "recurrent_dropout": 0.4, "zoneout": 0.3, "weight_drop": 0.3, "input_dropout": 0.2}

STEPS, BATCH, INPUTS, HIDDEN = 9, 4, 5, 6


def _pair(variant: str, reset_after: bool, dtype: torch.dtype, layers: int = 1, bidir: bool = False, **kw: Any):
    same = {"num_layers": layers, "bidirectional": bidir, "variant": variant, "reset_after": reset_after, **kw}
    mods = [GRU(INPUTS, HIDDEN, engine=engine, dtype=dtype, **same) for engine in ("reference", "fused")]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in mods[0].parameters():  # gains, shifts and biases far from 1 and 0: every term matters
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) * 1.6 - 0.8)
    mods[1].load_state_dict(mods[0].state_dict())
    return mods


def _resets(seed: int = 5) -> torch.Tensor:
    resets = torch.rand(STEPS, BATCH, generator=torch.Generator().manual_seed(seed)) < 0.3
    resets[0, 0] = True  # at the first step: no gradient reaches h0 of that row
    resets[2, 1] = True  # inside row 1's length (4), and past it (no effect there)
    resets[6, 1] = True
    return resets


def _run(mod: GRU, x, h0, lengths, resets, gy, gh, train: bool):  # type: ignore[no-untyped-def]
    """Outputs, h_n and the gradients of (x, h0, *parameters), then the outputs again without
    gradients (the inference path: nothing saved), each call from the same seed (same masks)."""
    mod.train(train)
    x = x.detach().clone().requires_grad_(True)
    h0 = h0.detach().clone().requires_grad_(True)
    torch.manual_seed(1234)
    y, hn = mod(x, h0, lengths=lengths, resets=resets)
    grads = torch.autograd.grad((y * gy).sum() + (hn * gh).sum(), [x, h0, *mod.parameters()])
    with torch.no_grad():
        torch.manual_seed(1234)
        y_ng, hn_ng = mod(x, h0, lengths=lengths, resets=resets)
    return y.detach(), hn.detach(), grads, y_ng, hn_ng


def _check(
    variant: str,
    reset_after: bool,
    dtype: torch.dtype,
    kw: dict[str, Any],
    train: bool,
    use_resets: bool,
    layers: int = 1,
    bidir: bool = False,
    lengths: torch.Tensor | None = None,
) -> None:
    ref, fused = _pair(variant, reset_after, dtype, layers, bidir, **kw)
    dirs = 2 if bidir else 1
    g = torch.Generator().manual_seed(layers * 10 + bidir)
    x = torch.randn(STEPS, BATCH, INPUTS, generator=g, dtype=dtype)
    h0 = torch.randn(layers * dirs, BATCH, HIDDEN, generator=g, dtype=dtype)
    gy = torch.randn(STEPS, BATCH, HIDDEN * dirs, generator=g, dtype=dtype)
    gh = torch.randn(layers * dirs, BATCH, HIDDEN, generator=g, dtype=dtype)
    resets = _resets() if use_resets else None
    want = _run(ref, x, h0, lengths, resets, gy, gh, train)
    got = _run(fused, x, h0, lengths, resets, gy, gh, train)
    assert fused.last_engine == "fused"
    tol = TOL[dtype]
    where = f"{variant} reset_after={reset_after} {dtype} {kw} train={train} resets={use_resets} lengths={lengths}"
    names = ["y", "h_n"]
    for name, a, b in zip(names, got[:2], want[:2], strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n} {where}: {m}")
    for name, a, b in zip(["y (no grad)", "h_n (no grad)"], got[3:], want[:2], strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n} {where}: {m}")
    names = ["x", "h0"] + [n for n, _ in ref.named_parameters()]
    assert len(got[2]) == len(want[2]) == len(names)
    for name, a, b in zip(names, got[2], want[2], strict=True):
        torch.testing.assert_close(a, b, atol=tol * 5, rtol=tol * 5, msg=lambda m, n=name: f"d{n} {where}: {m}")


LENGTHS = torch.tensor([9, 4, 7, 1])


@pytest.mark.parametrize(("variant", "reset_after"), WIRINGS, ids=WIRING_IDS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_option_matches_reference(option: str, variant: str, reset_after: bool) -> None:
    kw, train, use_resets = OPTIONS[option]
    for lengths in (LENGTHS, None):
        _check(variant, reset_after, torch.float64, kw, train, use_resets, lengths=lengths)


def _use_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled loops' paths (as in test_fused): per-step products as the kernels' row loops
    both ways ("loops") or backward only ("bwd-loops"), BLAS ("blas", with pooled saved buffers
    that hold stale numbers), or the batch rows split between 3 threads ("split": 1, 1, 2 rows)."""
    from gatedrnn._engines import _fused, _kernels, _pool, _threads

    monkeypatch.setattr(_kernels, "SMALL_MAX_BATCH", 10**6 if path in ("loops", "bwd-loops") else 0)
    monkeypatch.setattr(_fused, "SMALL_MIN_STEPS", 10**6 if path == "bwd-loops" else 0)
    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 0 if path in ("blas", "split") else 1 << 62)
    if path == "split":
        monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 1)
        monkeypatch.setattr(_threads, "SPLIT_MIN_FLOPS", 0)
        torch.set_num_threads(3)  # (restored by the restore_threads fixture)
        assert _threads.row_ranges(BATCH, False, 1) == [(0, 1), (1, 2), (2, 4)]
    else:
        monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 10**6)


@pytest.fixture
def restore_threads():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("variant", "reset_after"), WIRINGS, ids=WIRING_IDS)
@pytest.mark.parametrize("path", ["loops", "bwd-loops", "blas", "split"])
def test_all_options_on_every_path(
    path: str, variant: str, reset_after: bool, monkeypatch: pytest.MonkeyPatch, restore_threads: None
) -> None:
    """Every option at once (with DropConnect and input dropout, which the driver applies), with
    resets and lengths, on each path of the loops; on the row loops also in eval (zoneout's
    expectation; test_option_matches_reference runs it on BLAS)."""
    _use_path(path, monkeypatch)
    _check(variant, reset_after, torch.float64, ALL, True, True, lengths=LENGTHS)
    if path == "loops":
        _check(variant, reset_after, torch.float64, ALL, False, True, lengths=LENGTHS)


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_all_options_stacked_bidirectional(reset_after: bool) -> None:
    """Two layers, both directions (the reverse direction's resets at the end of each segment)."""
    _check("gru0", reset_after, torch.float64, ALL, True, True, layers=2, bidir=True, lengths=LENGTHS)
    _check("gru0", reset_after, torch.float64, ALL, True, True, layers=2, bidir=True)


@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru0", False), ("mingru", True)])
@pytest.mark.parametrize("path", ["loops", "blas"])
def test_all_options_float32(path: str, variant: str, reset_after: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_path(path, monkeypatch)
    _check(variant, reset_after, torch.float32, ALL, True, True, lengths=LENGTHS)


@pytest.mark.parametrize("option", ["layer_norm", "recurrent_dropout", "zoneout", "resets"])
def test_second_order_matches_reference(option: str) -> None:
    """Gradients of gradients (create_graph=True): the fused backward's gradients carry the
    reference's derivative, which must see the same options (the gains and shifts as inputs)."""
    kw, train, use_resets = OPTIONS[option]
    dtype = torch.float64
    out = []
    for mod in _pair("gru0", False, dtype, **kw):
        mod.train(train)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(STEPS, BATCH, INPUTS, generator=g, dtype=dtype, requires_grad=True)
        h0 = torch.randn(1, BATCH, HIDDEN, generator=g, dtype=dtype, requires_grad=True)
        gy = torch.randn(STEPS, BATCH, HIDDEN, generator=g, dtype=dtype)
        params = [x, h0, *mod.parameters()]
        torch.manual_seed(1234)
        y, hn = mod(x, h0, lengths=LENGTHS, resets=_resets() if use_resets else None)
        firsts = torch.autograd.grad((y * gy).sum() + hn.sum(), params, create_graph=True)
        vs = [torch.randn(f.shape, generator=g, dtype=dtype) for f in firsts]
        penalty = sum((f * v).sum() for f, v in zip(firsts, vs, strict=True))
        out.append((firsts, torch.autograd.grad(penalty, params)))
    names = ["x", "h0", *(n for n, _ in mod.named_parameters())]
    (f_ref, s_ref), (f_fused, s_fused) = out
    for name, a, b in zip(names, f_fused, f_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"d{n}: {m}")
    for name, a, b in zip(names, s_fused, s_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"d2 {n}: {m}")


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_gradcheck_all_options(reset_after: bool) -> None:
    """The hand-written backward against finite differences (not against the reference), every
    option's tensor fixed: gains and shifts, the recurrent mask, zoneout's ζ, resets, lengths."""
    spec, engine = SPECS["gru0"], get_engine("fused")
    dtype = torch.float64
    gru = GRU(3, 4, variant="gru0", reset_after=reset_after, layer_norm=True, dtype=dtype)
    w = gru.layer_weights()[0][0]
    steps, batch = 5, 3
    g = torch.Generator().manual_seed(4)
    h_mask = (torch.rand(batch, 4, generator=g) > 0.3).to(dtype) / 0.7
    zeta = (torch.rand(steps, batch, 4, generator=g) < 0.3).to(dtype)
    resets = torch.zeros(steps, batch, dtype=torch.bool)
    resets[2, 0] = resets[0, 1] = True
    lengths = torch.tensor([5, 2, 4])
    b_hh = w.b_hh  # None in the reset-before form
    ins = [t.detach().clone().requires_grad_(True) for t in (w.w_ih, w.w_hh, w.b_ih, *w.ln_ih, *w.ln_hh)]
    x = torch.randn(steps, batch, 3, generator=g, dtype=dtype, requires_grad=True)
    h0 = torch.randn(batch, 4, generator=g, dtype=dtype, requires_grad=True)

    def fn(x, h0, w_ih, w_hh, b_ih, g_ih, s_ih, g_hh, s_hh):  # type: ignore[no-untyped-def]
        extras = Extras((g_ih, s_ih), (g_hh, s_hh), h_mask, zeta, resets)
        return engine.layer(spec, reset_after, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, extras)

    assert torch.autograd.gradcheck(fn, (x, h0, *ins), eps=1e-6, atol=1e-7)


def test_fused_runs_every_option() -> None:
    x = torch.zeros(2, 1, 3)
    extras = Extras((x[0, 0], x[0, 0]), (x[0, 0], x[0, 0]), torch.ones(1, 3), 0.5, torch.zeros(2, 1, dtype=torch.bool))
    for spec in SPECS.values():
        assert get_engine("fused").unavailable(spec, x, extras) is None


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_all_options_bfloat16_within_the_references_own_error(reset_after: bool) -> None:
    """bfloat16 (bfloat16 products, float32 elementwise work and state) with every option, masks
    passed explicitly: the error of the outputs and of every gradient (gains and shifts too)
    against the reference in float64 is at most twice the reference's own in bfloat16."""
    spec, fused, ref = SPECS["gru0"], get_engine("fused"), get_engine("reference")
    steps, batch, inp, hid = 20, 5, 6, 16
    g = torch.Generator().manual_seed(5)
    w = GRU(inp, hid, reset_after=reset_after, layer_norm=True, dtype=torch.float64).layer_weights()[0][0]
    params = [t.detach().clone() for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh, *w.ln_ih, *w.ln_hh) if t is not None]
    params[-4:] = [t + torch.rand(t.shape, generator=g, dtype=torch.float64) - 0.5 for t in params[-4:]]
    x = torch.randn(steps, batch, inp, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, hid, generator=g, dtype=torch.float64)
    gy = torch.randn(steps, batch, hid, generator=g, dtype=torch.float64)
    h_mask = (torch.rand(batch, hid, generator=g) < 0.5).double() * 2.0
    zeta = (torch.rand(steps, batch, hid, generator=g) < 0.3).double()
    resets = torch.rand(steps, batch, generator=g) < 0.2
    lengths = torch.tensor([20, 13, 20, 7, 1])

    def run(engine, dtype):  # type: ignore[no-untyped-def]
        ins = [t.to(dtype).requires_grad_(True) for t in (x, h0, *params)]
        w_ih, w_hh, b_ih, *rest = ins[2:]
        b_hh = rest.pop(0) if reset_after else None
        extras = Extras(tuple(rest[:2]), tuple(rest[2:]), h_mask.to(dtype), zeta.to(dtype), resets)
        y, hn = engine.layer(spec, reset_after, ins[0], ins[1], w_ih, w_hh, b_ih, b_hh, lengths, extras)
        grads = torch.autograd.grad((y.double() * gy).sum() + hn.double().sum(), ins)
        return [y.double(), hn.double(), *(t.double() for t in grads)]

    want = run(ref, torch.float64)
    got, base = run(fused, torch.bfloat16), run(ref, torch.bfloat16)
    for k, (a, b, w64) in enumerate(zip(got, base, want, strict=True)):
        err, err_base = ((a - w64).norm() / w64.norm()).item(), ((b - w64).norm() / w64.norm()).item()
        assert err <= 2 * err_base, f"output/gradient {k}: fused bfloat16 error {err:.3g} > 2 x {err_base:.3g}"
