"""The fused CPU engine against the reference engine, torch.nn.GRU and gradcheck.

Every variant x reset form x dtype runs through the layer features (stacking, bidirectional,
batch_first, packed sequences, lengths, h0, inter-layer dropout); outputs, h_n and every gradient
(random upstream gradients) must match the reference engine (plain autograd over the equations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn import GRU
from gatedrnn._engines import auto_choice, get_engine, resolve
from gatedrnn._specs import SPECS

VARIANTS = sorted(SPECS)
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True)
def _long_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the long form (projection and weight gradients in torch, the pool, the
    row split); calls of a few steps would otherwise run the one-call step kernels, which
    tests/test_step.py checks."""
    from gatedrnn._engines import _step

    monkeypatch.setattr(_step, "SHORT_MAX_STEPS", 0)


TOL = {torch.float64: 1e-10, torch.float32: 2e-5}

# (num_layers, bidirectional, batch_first, use_h0, packing): packing is None, "lengths" or "packed".
CONFIGS = [
    (1, False, False, False, None),
    (2, True, True, True, "lengths"),
    (3, False, False, True, "packed"),
    (1, True, False, False, "packed"),
]


def _pair(variant: str, reset_after: bool, dtype: torch.dtype, layers: int, bidir: bool, batch_first: bool, **kw):
    torch.manual_seed(7)
    ref = GRU(
        5,
        6,
        num_layers=layers,
        bidirectional=bidir,
        batch_first=batch_first,
        variant=variant,
        reset_after=reset_after,
        engine="reference",
        dtype=dtype,
        **kw,
    )
    fused = GRU(
        5,
        6,
        num_layers=layers,
        bidirectional=bidir,
        batch_first=batch_first,
        variant=variant,
        reset_after=reset_after,
        engine="fused",
        dtype=dtype,
        **kw,
    )
    with torch.no_grad():
        for p in ref.parameters():  # biases far from 0 so that every bias gradient matters
            p.uniform_(-0.8, 0.8)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _run(mod: GRU, x: torch.Tensor, h0, lengths, packing, gy: torch.Tensor, gh: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    h0 = h0.detach().clone().requires_grad_(True) if h0 is not None else None
    if packing == "packed":
        inp = pack_padded_sequence(x, lengths, batch_first=mod.batch_first, enforce_sorted=False)
        out, hn = mod(inp, h0)
        y, _ = pad_packed_sequence(out, batch_first=mod.batch_first, total_length=x.shape[1 if mod.batch_first else 0])
    elif packing == "lengths":
        y, hn = mod(x, h0, lengths=lengths)
    else:
        y, hn = mod(x, h0)
    loss = (y * gy).sum() + (hn * gh).sum()
    inputs = [x] + ([h0] if h0 is not None else []) + list(mod.parameters())
    grads = torch.autograd.grad(loss, inputs)
    return y.detach(), hn.detach(), grads


# minGRU has no reset gate (reset_after has no effect): one reset form for it.
WIRINGS = [(v, ra) for v in VARIANTS for ra in (True, False) if not (v == "mingru" and not ra)]


# The per-step products (forward and backward, both reset forms) run as the kernels' own loops
# for small batches (SMALL_MAX_BATCH) and as BLAS otherwise: every wiring runs both ways (the
# limit is forced to 10**6 or 0); "bwd-loops": the forward on BLAS and the backward on loops, as
# for sequences shorter than SMALL_MIN_STEPS (the forward's loops need a transposed copy of W_hh).
# "split": the batch rows split between
# 3 threads (uneven ranges 1, 1, 2 rows) running the loop at once, each with one-thread BLAS.
# "fold": dx and dW_ih produced in the backward loop (FOLD_MAX_INPUT raised above the 5 inputs),
# with the split. The other paths keep them as matrix products after the loop.
# "blas": plain ?gemm calls per step, and MKL for the products over all steps (the other paths
# run those through oneDNN where torch has it, its size limit lifted); "packed": the recurrent weights packed once per call
# (MKL's ?gemm_pack / ?gemm_compute; skipped for a dtype the BLAS has no packed routines for);
# "split" and "fold" run the default (plain unless GATEDRNN_PACK=1).
PATHS = [(v, ra, p) for v, ra in WIRINGS for p in ("loops", "bwd-loops", "blas", "packed", "split", "fold")]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("variant", "reset_after", "path"), PATHS, ids=[f"{v}-{'after' if r else 'before'}-{p}" for v, r, p in PATHS]
)
def test_fused_matches_reference(
    variant: str, reset_after: bool, path: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gatedrnn._engines import _fused, _kernels, _pool, _threads

    monkeypatch.setattr(_kernels, "SMALL_MAX_BATCH", 10**6 if path in ("loops", "bwd-loops") else 0)
    monkeypatch.setattr(_fused, "SMALL_MIN_STEPS", 10**6 if path == "bwd-loops" else 0)
    if path in ("blas", "packed"):
        if path == "packed" and {torch.float32: "s", torch.float64: "d"}[dtype] not in _kernels.packed_blas():
            pytest.skip(f"the BLAS ({_kernels.blas()[2]}) exports no packed products for {dtype}")
        monkeypatch.setattr(_fused, "PACK", path == "packed")
        monkeypatch.setattr(_fused, "ONEDNN", False)  # the products over all steps in MKL too
    else:  # every product over all steps through oneDNN where torch has it, however small
        monkeypatch.setattr(_fused, "ONEDNN_MIN_FLOPS", 0)
    threads = torch.get_num_threads()
    monkeypatch.setattr(_fused, "FOLD_MAX_INPUT", 10**6 if path == "fold" else 0)
    # "blas" and "split" take what they save from the pool (reused buffers hold stale numbers:
    # the backward must not read what the forward skipped, e.g. steps past a sequence's end)
    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 0 if path in ("blas", "split") else 1 << 62)
    if path in ("split", "fold"):
        monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 1)
        monkeypatch.setattr(_threads, "SPLIT_MIN_FLOPS", 0)
        assert _kernels.mkl_local_threads() is not None, "the split needs torch's MKL"
        assert _threads.openmp() is not None, "the split needs torch's GNU OpenMP"
        torch.set_num_threads(3)
        assert _threads.row_ranges(4, False, 1) == [(0, 1), (1, 2), (2, 4)]
    else:
        monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 10**6)
    try:
        _check_against_reference(variant, reset_after, dtype)
    finally:
        torch.set_num_threads(threads)


def _check_against_reference(variant: str, reset_after: bool, dtype: torch.dtype) -> None:
    for layers, bidir, batch_first, use_h0, packing in CONFIGS:
        ref, fused = _pair(variant, reset_after, dtype, layers, bidir, batch_first)
        steps, batch = 9, 4
        g = torch.Generator().manual_seed(layers * 10 + bidir)
        shape = (batch, steps, 5) if batch_first else (steps, batch, 5)
        x = torch.randn(shape, generator=g, dtype=dtype)
        dirs = 2 if bidir else 1
        h0 = torch.randn(layers * dirs, batch, 6, generator=g, dtype=dtype) if use_h0 else None
        lengths = torch.tensor([9, 4, 7, 1]) if packing else None
        yshape = (batch, steps, 6 * dirs) if batch_first else (steps, batch, 6 * dirs)
        gy = torch.randn(yshape, generator=g, dtype=dtype)
        gh = torch.randn(layers * dirs, batch, 6, generator=g, dtype=dtype)
        y0, h0_ref, g0 = _run(ref, x, h0, lengths, packing, gy, gh)
        y1, h1, g1 = _run(fused, x, h0, lengths, packing, gy, gh)
        assert fused.last_engine == "fused"
        with torch.no_grad():  # the inference path (one step's scratch, nothing saved) gives the same
            if packing == "packed":
                inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
                y_ng, h_ng = fused(inp, h0)
                y_ng = pad_packed_sequence(y_ng, batch_first=batch_first, total_length=steps)[0]
            else:
                y_ng, h_ng = fused(x, h0, lengths=lengths) if packing else fused(x, h0)
        tol = TOL[dtype]
        torch.testing.assert_close(y_ng, y0, atol=tol, rtol=tol)
        torch.testing.assert_close(h_ng, h0_ref, atol=tol, rtol=tol)
        where = f"{variant} reset_after={reset_after} {dtype} layers={layers} bidir={bidir} packing={packing}"
        torch.testing.assert_close(y1, y0, atol=tol, rtol=tol, msg=lambda m, w=where: f"y {w}: {m}")
        torch.testing.assert_close(h1, h0_ref, atol=tol, rtol=tol, msg=lambda m, w=where: f"h_n {w}: {m}")
        names = ["x"] + (["h0"] if use_h0 else []) + [n for n, _ in ref.named_parameters()]
        assert len(g0) == len(g1) == len(names)
        for name, a, b in zip(names, g1, g0, strict=True):
            torch.testing.assert_close(
                a, b, atol=tol * 5, rtol=tol * 5, msg=lambda m, n=name, w=where: f"d{n} {w}: {m}"
            )


@pytest.mark.parametrize("variant", ["gru0", "mgu"])
def test_fused_dropout_matches_reference(variant: str) -> None:
    ref, fused = _pair(variant, True, torch.float64, 3, True, False, dropout=0.4)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    gy = torch.randn(6, 3, 12, dtype=torch.float64)
    gh = torch.randn(6, 3, 6, dtype=torch.float64)
    torch.manual_seed(3)
    y0, h0, g0 = _run(ref.train(), x, None, None, None, gy, gh)
    torch.manual_seed(3)
    y1, h1, g1 = _run(fused.train(), x, None, None, None, gy, gh)
    torch.testing.assert_close(y1, y0, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h1, h0, atol=1e-10, rtol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_fused_matches_torch_gru() -> None:
    torch.manual_seed(0)
    ref = torch.nn.GRU(7, 8, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = GRU(7, 8, num_layers=2, bidirectional=True, engine="fused", dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(11, 3, 7, dtype=torch.float64)
    h0 = torch.randn(4, 3, 8, dtype=torch.float64)
    gy, gh = torch.randn(11, 3, 16, dtype=torch.float64), torch.randn(4, 3, 8, dtype=torch.float64)
    outs = []
    for mod in (ref, ours):
        xx, hh = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        y, hn = mod(xx, hh)
        grads = torch.autograd.grad((y * gy).sum() + (hn * gh).sum(), [xx, hh, *mod.parameters()])
        outs.append((y, hn, grads))
    (y0, hn0, g0), (y1, hn1, g1) = outs
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(hn1, hn0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b)


def _max_err(mod: torch.nn.Module, ref64: tuple, x: torch.Tensor, gy: torch.Tensor, gh: torch.Tensor) -> float:
    xx = x.float().clone().requires_grad_(True)
    y, hn = mod(xx)
    grads = torch.autograd.grad((y * gy.float()).sum() + (hn * gh.float()).sum(), [xx, *mod.parameters()])
    y64, hn64, g64 = ref64
    y, hn = y.detach(), hn.detach()
    errs = [float((y.double() - y64).abs().max()), float((hn.double() - hn64).abs().max())]
    errs += [
        float((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(grads, g64, strict=True)
    ]
    return max(errs)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(("steps", "batch"), [(20, 2), (6, 5)], ids=["loops", "blas"])
@pytest.mark.parametrize(
    ("variant", "reset_after"), WIRINGS, ids=[f"{v}-{'after' if r else 'before'}" for v, r in WIRINGS]
)
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_nan_propagates_and_saturation_matches(
    variant: str, reset_after: bool, steps: int, batch: int, dtype: torch.dtype, grad: bool
) -> None:
    """NaN in the input or h0 reaches the outputs exactly where it does with plain torch ops, and
    inputs large enough to saturate every activation give the reference's values.

    (The float32 activations once clamped NaN to a finite value, so a NaN vanished after one
    step: a diverged model would have kept training on finite numbers.)
    """
    ref, fused = _pair(variant, reset_after, dtype, 1, False, False)
    torch.manual_seed(3)
    x = torch.randn(steps, batch, 5, dtype=dtype)
    h0 = torch.randn(1, batch, 6, dtype=dtype) * 0.5
    x[1, 0, 2] = float("nan")  # row 0: NaN from step 1 on
    x[:, 1] *= 1e4  # row 1: every pre-activation far past the clamp of the float32 tanh
    if batch > 2:
        h0[0, 2, 3] = float("nan")  # row 2: NaN state from the start
    for mod in (ref, fused):
        mod.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y_ref, hn_ref = ref(x, h0)
        y_fused, hn_fused = fused(x, h0)
    for got, want in ((y_fused, y_ref), (hn_fused, hn_ref)):
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.isnan(want).any()
        ok = ~torch.isnan(want)
        # minGRU's candidate is linear, so its saturated row holds values near 1e4: the float32
        # sigmoid's floor in saturation (about 1e-7) times those is the scale of its error
        scale = max(1.0, want[ok].abs().max().item())
        torch.testing.assert_close(got[ok], want[ok], rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("steps", "batch"), [(50, 8), (400, 16)], ids=["short", "long-split"])
def test_float32_error_within_twice_torch(variant: str, steps: int, batch: int) -> None:
    """float32 error against a float64 reference: at most 2x that of torch's own float32 path.

    gru0 (reset-after) is compared with ``torch.nn.GRU`` itself; the other variants, which torch
    lacks, with the reference engine in float32 (plain ATen ops, the same arithmetic torch uses).
    The long case sums the bias gradients over 6400 terms and splits the rows over 2 threads.
    """
    torch.manual_seed(1)
    inp, hid = 16, 32
    ref64 = GRU(inp, hid, variant=variant, engine="reference", dtype=torch.float64)
    x = torch.randn(steps, batch, inp, dtype=torch.float64)
    gy = torch.randn(steps, batch, hid, dtype=torch.float64)
    gh = torch.randn(1, batch, hid, dtype=torch.float64)
    xx = x.clone().requires_grad_(True)
    y64, hn64 = ref64(xx)
    g64 = torch.autograd.grad((y64 * gy).sum() + (hn64 * gh).sum(), [xx, *ref64.parameters()])
    ref64_out = (y64.detach(), hn64.detach(), g64)
    if variant == "gru0":
        baseline: torch.nn.Module = torch.nn.GRU(inp, hid)
    else:
        baseline = GRU(inp, hid, variant=variant, engine="reference")
    baseline.load_state_dict({k: v.float() for k, v in ref64.state_dict().items()})
    fused = GRU(inp, hid, variant=variant, engine="fused")
    fused.load_state_dict(baseline.state_dict())
    err_base = _max_err(baseline, ref64_out, x, gy, gh)
    err_fused = _max_err(fused, ref64_out, x, gy, gh)
    assert err_fused <= 2 * err_base, f"{variant}: fused float32 error {err_fused:.3g} > 2 x baseline {err_base:.3g}"


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant: str, reset_after: bool) -> None:
    spec = SPECS[variant]
    engine = get_engine("fused")
    torch.manual_seed(2)
    gru = GRU(3, 4, variant=variant, reset_after=reset_after, dtype=torch.float64)
    w = gru.layer_weights()[0][0]
    params = [p for p in (w.w_ih, w.w_hh, w.b_ih, w.b_hh) if p is not None]
    has = [p is not None for p in (w.w_ih, w.w_hh, w.b_ih, w.b_hh)]
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def fn(x, h0, *ps):
        it = iter(ps)
        args = [next(it) if h else None for h in has]
        y, hn = engine.layer(spec, reset_after, x, h0, *args, lengths)
        return y, hn

    inputs = (x, h0, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_fused_unavailable_raises_and_auto_reports() -> None:
    spec = SPECS["gru0"]
    engine = get_engine("fused")
    assert engine.unavailable(spec, torch.empty(2)) is None
    assert engine.unavailable(spec, torch.empty(2, dtype=torch.bfloat16)) is None
    why = engine.unavailable(spec, torch.empty(2, dtype=torch.float16))
    assert why is not None and "float16" in why and "bfloat16" in why  # names the half type it runs
    why = engine.unavailable(spec, torch.empty(2, device="meta"))
    assert why is not None and "meta" in why
    with pytest.raises(RuntimeError, match=r"engine='fused'.*bfloat16"):
        resolve("fused", spec, torch.empty(2, dtype=torch.float16))
    gru = GRU(3, 4, engine="fused", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="fused"):
        gru(torch.randn(2, 1, 3, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="fused"):
        engine.layer(
            spec, True, torch.randn(2, 1, 3, dtype=torch.float16), torch.zeros(1, 4), None, None, None, None, None
        )
    # auto picks fused on CPU float32/float64/bfloat16 and says so
    assert auto_choice(torch.empty(1)) == "fused"
    assert auto_choice(torch.empty(1, dtype=torch.float64)) == "fused"
    assert auto_choice(torch.empty(1, dtype=torch.bfloat16)) == "fused"
    assert auto_choice(torch.empty(1, dtype=torch.float16)) == "reference"
    gru = GRU(3, 4)
    gru(torch.randn(2, 1, 3))
    assert gru.last_engine == "fused"
    info = gatedrnn.info()
    assert info["auto"]["cpu float32"] == "fused"
    assert info["engines"]["fused"]["available"] is True
    assert info["engines"]["fused"]["blas"]


def test_products_over_all_steps_choose_onednn_by_size_and_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """_mm_nt: oneDNN for float32 products from ONEDNN_MIN_FLOPS up, MKL below, for float64, and
    for a transposed operand of _FRESH_MAX_BYTES or more; the same numbers either way."""
    from gatedrnn._engines import _fused

    if _fused._onednn_linear() is None:
        pytest.skip("this torch has no oneDNN")
    calls = []
    op = _fused._onednn_linear()

    def spy(*args):  # type: ignore[no-untyped-def]
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(_fused, "_onednn_linear", lambda: spy)
    monkeypatch.setattr(_fused, "ONEDNN_MIN_FLOPS", 2 * 40 * 30 * 20)
    a, b = torch.randn(40, 30), torch.randn(20, 30)
    torch.testing.assert_close(_fused._mm_nt(a, b), a @ b.t())
    assert len(calls) == 1
    _fused._mm_nt(a[:39], b)  # below the limit
    _fused._mm_nt(a.double(), b.double())
    assert len(calls) == 1
    monkeypatch.setattr(_fused, "_FRESH_MAX_BYTES", a.nbytes)
    at = a.t().contiguous().t()  # transposed, as large as the limit
    torch.testing.assert_close(_fused._mm_nt(at, b), a @ b.t())
    assert len(calls) == 1
    _fused._mm_nt(a, b)  # contiguous: no copy, so no limit
    assert len(calls) == 2


def test_packed_products_asked_for_without_them_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing forced on where the BLAS has no packed routines (SciPy's, or a dtype MKL packs not)
    is an error naming them, never a silent fall back to plain products."""
    from gatedrnn._engines import _fused, _kernels

    monkeypatch.setattr(_kernels, "SMALL_MAX_BATCH", 0)
    monkeypatch.setattr(_kernels, "packed_blas", lambda: {})
    monkeypatch.setattr(_fused, "PACK", True)
    layer = GRU(5, 6, engine="fused")
    with pytest.raises(RuntimeError, match="sgemm_pack"):
        layer(torch.randn(4, 3, 5))
    monkeypatch.setattr(_fused, "PACK", False)  # plain calls need nothing packed
    layer(torch.randn(4, 3, 5))


def test_fused_rejects_mixed_dtypes() -> None:
    spec = SPECS["gru0"]
    engine = get_engine("fused")
    x = torch.randn(2, 1, 3)
    with pytest.raises(ValueError, match="w_ih"):
        engine.layer(
            spec,
            True,
            x,
            torch.zeros(1, 4),
            torch.zeros(12, 3, dtype=torch.float64),
            torch.zeros(12, 4),
            None,
            None,
            None,
        )


@pytest.mark.parametrize("variant", ["gru0", "mingru"])
def test_fused_output_can_be_modified_in_place(variant: str) -> None:
    """Like torch.nn.GRU's, the outputs are their own tensors: an in-place op on them (ReLU(inplace=True))
    neither raises nor changes the gradients of what came before it."""
    ref, fused = _pair(variant, True, torch.float64, 2, False, False)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    grads = []
    for mod in (ref, fused):
        y, hn = mod(x)
        torch.relu_(y)
        grads.append(torch.autograd.grad((y * y).sum() + hn.sum(), list(mod.parameters())))
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("variant", ["gru0", "gru3", "mingru"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_inference_outputs_are_their_own(variant: str, with_lengths: bool) -> None:
    """Without gradients the states are written straight into the outputs' memory: each call's
    outputs are still fresh tensors (a later call does not overwrite them) and ``h_n`` is not a
    view of them (modifying the outputs in place leaves it alone)."""
    ref, fused = _pair(variant, False, torch.float64, 1, False, False)
    x1, x2 = torch.randn(6, 3, 5, dtype=torch.float64), torch.randn(6, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4]) if with_lengths else None
    with torch.no_grad():
        y1, h1 = fused(x1, lengths=lengths)
        want_y1, want_h1 = ref(x1, lengths=lengths)
        y2, _ = fused(x2, lengths=lengths)
        torch.testing.assert_close(y1, want_y1, atol=1e-12, rtol=1e-12)  # not overwritten by the second call
        assert y2.data_ptr() != y1.data_ptr()
        y1.add_(1.0)
        torch.testing.assert_close(h1, want_h1, atol=1e-12, rtol=1e-12)


def test_scipy_blas_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels also run on SciPy's cython_blas (the fallback where libtorch exports no sgemm_)."""
    from numba.extending import get_cython_function_address

    from gatedrnn._engines import _fused

    addr = {
        torch.float32: get_cython_function_address("scipy.linalg.cython_blas", "sgemm"),
        torch.float64: get_cython_function_address("scipy.linalg.cython_blas", "dgemm"),
    }
    monkeypatch.setattr(_fused, "_blas_fns", lambda dtype, packed: np.array([addr[dtype], 0, 0], np.int64))
    for dtype in DTYPES:
        ref, fused = _pair("gru0", False, dtype, 1, True, False)
        x = torch.randn(7, 3, 5, dtype=dtype)
        gy, gh = torch.randn(7, 3, 12, dtype=dtype), torch.randn(2, 3, 6, dtype=dtype)
        y0, h0, g0 = _run(ref, x, None, None, None, gy, gh)
        y1, h1, g1 = _run(fused, x, None, None, None, gy, gh)
        tol = TOL[dtype]
        torch.testing.assert_close(y1, y0, atol=tol, rtol=tol)
        torch.testing.assert_close(h1, h0, atol=tol, rtol=tol)
        for a, b in zip(g1, g0, strict=True):
            torch.testing.assert_close(a, b, atol=tol * 5, rtol=tol * 5)


def test_split_with_a_smaller_team_runs_every_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside another OpenMP region the team has one thread: it runs every row range itself."""
    from gatedrnn._engines import _threads

    calls = []

    def one_thread_team(body_address, data, threads, flags):
        calls.append(threads)
        _threads._BODY(body_address.value)(data)

    real = _threads.openmp()
    assert real is not None
    monkeypatch.setattr(_threads, "openmp", lambda: (one_thread_team, lambda: 0, lambda: 1, "fake"))
    monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 1)
    monkeypatch.setattr(_threads, "SPLIT_MIN_FLOPS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ref, fused = _pair("gru0", True, torch.float64, 1, False, False)
        x = torch.randn(6, 5, 5, dtype=torch.float64)
        gy, gh = torch.randn(6, 5, 6, dtype=torch.float64), torch.randn(1, 5, 6, dtype=torch.float64)
        y0, h0, g0 = _run(ref, x, None, None, None, gy, gh)
        y1, h1, g1 = _run(fused, x, None, None, None, gy, gh)
    finally:
        torch.set_num_threads(threads)
    assert calls == [3, 3]  # forward and backward each asked for 3 threads
    torch.testing.assert_close(y1, y0, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h1, h0, atol=1e-10, rtol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_split_reraises_a_kernel_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in one thread of the split reaches the caller (not a ctypes traceback on stderr)."""
    from gatedrnn._engines import _fused

    def boom(i: int, b0: int, b1: int) -> None:
        if i == 1:
            raise ValueError("boom in range 1")

    with pytest.raises(ValueError, match="boom in range 1"):
        _fused.run_rows(boom, [(0, 2), (2, 4)], 0)


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_graphs_alive_together_keep_their_own_buffers(pooled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two forward passes before either backward (and a retained graph run twice) give the
    reference's gradients: no buffer of one graph is reused while it is alive."""
    from gatedrnn._engines import _pool

    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 0 if pooled else 1 << 62)
    for reset_after in (True, False):
        ref, fused = _pair("gru0", reset_after, torch.float64, 2, True, False)
        g = torch.Generator().manual_seed(3)
        x1, x2 = (torch.randn(6, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
        grads = []
        for mod in (ref, fused):
            y1, _ = mod(x1)
            y2, _ = mod(x2)
            loss = (y1 * y1).sum() + (y2 * y2 * 0.5).sum()
            first = torch.autograd.grad(loss, list(mod.parameters()), retain_graph=True)
            second = torch.autograd.grad(loss, list(mod.parameters()))
            for a, b in zip(first, second, strict=True):
                torch.testing.assert_close(a, b, atol=0, rtol=0)
            grads.append(first)
        for a, b in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def _saved_size(steps: int, batch: int, hid: int) -> int:
    """Bytes gru0 (reset-after, float64) saves: states [T+1, B, H], gates [T, B, 2H], candidates
    and pre-reset terms [T, B, H] each, every buffer padded to 16 elements."""
    counts = ((steps + 1) * batch * hid, steps * batch * 2 * hid, steps * batch * hid, steps * batch * hid)
    return sum(-(-n // 16) * 16 for n in counts) * 8


@pytest.mark.parametrize("reset_after", [True, False])
def test_constant_gates_are_saved_once(reset_after: bool) -> None:
    """GRU3's gates come from their bias alone: the same at every step and row, so what the
    forward saves holds them once ([2H]), not per step and row ([T, B, 2H] as for GRU1)."""
    steps, batch, hid = 7, 2, 5
    x = torch.randn(steps, batch, 3, dtype=torch.float64)
    pad = lambda n: -(-n // 16) * 16  # noqa: E731 (each carved buffer is padded to 16 elements)
    pre = pad(steps * batch * hid if reset_after else batch * hid)
    fixed = pad((steps + 1) * batch * hid) + pad(steps * batch * hid) + pre
    for variant, gates in (("gru3", pad(2 * hid)), ("gru1", pad(steps * batch * 2 * hid))):
        mod = GRU(3, hid, variant=variant, reset_after=reset_after, engine="fused", dtype=torch.float64)
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, h = mod(x.requires_grad_())
        assert max(sizes) == fixed + gates, variant
        (y.sum() + h.sum()).backward()  # and the backward reads what it saved


def test_saved_pool_lends_and_takes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a forward saves comes from the pool: lent until autograd releases it (after the
    backward, or with the dropped graph), then reused by the next forward that fits it (up to
    twice what it needs); the free arrays are capped by SAVED_POOL_MAX_BYTES."""
    from gatedrnn._engines import _pool

    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 0)
    _pool.clear_saved_pool()
    gru = GRU(3, 5, engine="fused", dtype=torch.float64)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    size = _saved_size(7, 2, 5)
    y, h = gru(x)
    assert _pool.saved_pool_bytes() == (0, size)
    (y.sum() + h.sum()).backward()
    assert _pool.saved_pool_bytes() == (size, 0)  # released by the backward, y still alive
    ptr = _pool._SAVED[0].ctypes.data
    y2, h2 = gru(x)  # reused
    assert _pool.saved_pool_bytes() == (0, size) and _pool._SAVED[0].ctypes.data == ptr
    y3, h3 = gru(x)  # the first is lent: a second array
    assert _pool.saved_pool_bytes() == (0, 2 * size)
    del y2, h2, y3, h3  # graphs dropped without a backward
    assert _pool.saved_pool_bytes() == (2 * size, 0)
    # shorter sequences take a free array up to twice what they need (and their gradients are
    # the reference's); much shorter ones a fresh array
    assert _saved_size(5, 2, 5) < size <= 2 * _saved_size(5, 2, 5) and 2 * _saved_size(1, 2, 5) < size
    ref = GRU(3, 5, engine="reference", dtype=torch.float64)
    ref.load_state_dict(gru.state_dict())
    grads = []
    for mod in (gru, ref):
        ys, hs = mod(x[:5])
        if mod is gru:
            assert len(_pool._SAVED) == 2 and _pool.saved_pool_bytes() == (size, size)
        grads.append(torch.autograd.grad((ys * ys).sum() + hs.sum(), list(mod.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    y1, h1 = gru(x[:1])
    assert len(_pool._SAVED) == 3 and _pool.saved_pool_bytes() == (2 * size, _saved_size(1, 2, 5))
    del y1, h1, ys, hs
    _pool.clear_saved_pool()
    y2, h2 = gru(x)
    y3, h3 = gru(x)
    del y2, h2, y3, h3
    assert _pool.saved_pool_bytes() == (2 * size, 0)
    monkeypatch.setattr(_pool, "SAVED_POOL_MAX_BYTES", size)
    y4, h4 = gru(x)  # takes one; the other one, free, fits under the cap
    assert _pool.saved_pool_bytes() == (size, size)
    monkeypatch.setattr(_pool, "SAVED_POOL_MAX_BYTES", 0)
    y5, h5 = gru(x.repeat(1, 2, 1))  # another size: a fresh array, and the free one is dropped
    assert _pool.saved_pool_bytes() == (0, size + _saved_size(7, 4, 5))
    del y4, h4, y5, h5
    _pool.clear_saved_pool()
    assert _pool.saved_pool_bytes() == (0, 0)


def test_projection_gradient_reuses_the_projection_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step keeps two [T, B, 3H]-sized scratch buffers, not three: the backward writes
    the projection's gradient into the forward's projection scratch (dead once the forward has
    returned), which lowers the step's peak memory."""
    from gatedrnn._engines import _fused, _pool

    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 1 << 62)  # saved state never pooled: not counted
    monkeypatch.setattr(_fused, "FOLD_MAX_INPUT", 0)  # the projection gradient for every step
    steps, batch, inp, hid = 50, 8, 20, 16
    mod = GRU(inp, hid, engine="fused", dtype=torch.float64)
    x = torch.randn(steps, batch, inp, dtype=torch.float64, requires_grad=True)
    gatedrnn.empty_cache()
    y, h = mod(x)
    (y.sum() + h.sum()).backward()
    projection = steps * batch * 3 * hid * 8
    assert 2 * projection <= _pool.cached_bytes() < 2.5 * projection  # projection (+ its gradient), dgh


@pytest.mark.parametrize(("engine", "variant"), [("fused", "gru0"), ("fused", "mingru"), ("scan", "mingru")])
def test_checkpointed_layers_match_reference(engine: str, variant: str) -> None:
    """Under non-reentrant activation checkpointing (which refuses a second unpack of what a
    Function saved) each layer's forward runs again inside the backward, between other layers'
    backward passes (which share the fused engine's scratch): the gradients are the reference's."""
    from torch.utils.checkpoint import checkpoint

    grads = []
    for eng in ("reference", engine):
        torch.manual_seed(0)
        first = GRU(5, 6, variant=variant, engine=eng, dtype=torch.float64)
        second = GRU(6, 6, variant=variant, engine=eng, dtype=torch.float64, reset_after=False)
        x = torch.randn(9, 4, 5, dtype=torch.float64, requires_grad=True)
        h1 = checkpoint(lambda t, m=first: m(t)[0], x, use_reentrant=False)
        h2 = checkpoint(lambda t, m=second: m(t)[0], h1, use_reentrant=False)
        params = [x, *first.parameters(), *second.parameters()]
        grads.append(torch.autograd.grad((h2 * h2).sum() + h1.sum(), params))
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_empty_cache_frees_what_no_call_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """gatedrnn.empty_cache() frees the pool's free arrays and every thread's scratch (a worker
    thread's too); an array a live graph still holds survives it, and that graph's backward still
    gives the reference's gradients."""
    import threading

    from gatedrnn._engines import _pool

    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 0)
    ref, fused = _pair("gru0", True, torch.float64, 1, False, False)
    x = torch.randn(7, 2, 5, dtype=torch.float64)
    y, h = fused(x)
    (y.sum() + h.sum()).backward()  # its saved array is now free, its scratch kept
    here = _pool.cached_bytes()
    assert here > _pool.saved_pool_bytes()[0] > 0
    ran, release = threading.Event(), threading.Event()

    def work() -> None:  # a forward in another thread, which then stays alive
        with torch.no_grad():
            fused(x.repeat(1, 3, 1))
        ran.set()
        release.wait(30)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert ran.wait(30)
        assert _pool.cached_bytes() > here  # the worker's scratch
        assert gatedrnn.info()["engines"]["fused"]["cached_bytes"] == _pool.cached_bytes()
        y, h = fused(x)  # lent: survives empty_cache
        gatedrnn.empty_cache()
        assert _pool.cached_bytes() == 0  # the worker's scratch too
    finally:
        release.set()
        worker.join()
    got = torch.autograd.grad((y * y).sum() + h.sum(), list(fused.parameters()))
    y0, h0 = ref(x)
    want = torch.autograd.grad((y0 * y0).sum() + h0.sum(), list(ref.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    fused(x)  # and the next call allocates afresh
    assert _pool.cached_bytes() > 0


def test_pool_shared_by_threads_training_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads train their own models at once, every saved buffer from the one pool (same
    sizes, so arrays pass between the threads): each ends with the parameters the reference engine
    reaches training alone, and the pool lends nothing once the graphs are gone."""
    import threading

    from gatedrnn._engines import _pool

    monkeypatch.setattr(_pool, "SAVED_POOL_MIN_BYTES", 0)
    _pool.clear_saved_pool()

    def train(mod: GRU, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(mod.parameters(), lr=0.05)
        for _ in range(15):
            x = torch.randn(6, 4, 5, generator=g, dtype=torch.float64)
            y, h = mod(x)
            opt.zero_grad()
            ((y * y).sum() + h.sum()).backward()
            opt.step()

    pairs = [_pair("gru0", ra, torch.float64, 2, True, False) for ra in (True, False)]
    for i, (ref, _) in enumerate(pairs):
        train(ref, i)
    errors: list[BaseException] = []

    def run(mod: GRU, seed: int) -> None:
        try:
            train(mod, seed)
        except BaseException as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(fused, i)) for i, (_, fused) in enumerate(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for ref, fused in pairs:
        for (name, a), b in zip(fused.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m, n=name: f"{n}: {m}")
    assert _pool.saved_pool_bytes()[1] == 0


def test_scratch_grows_and_serves_shorter_batches() -> None:
    """Per-thread scratch only grows: packed batches whose longest sequence changes (9, 4, 9, 2
    steps) run on views of the same buffers, and every batch, trained and without gradients, gives
    the reference's outputs and gradients (a reused buffer holds the longer batch's numbers)."""
    from gatedrnn._engines import _pool

    for reset_after in (True, False):
        ref, fused = _pair("gru0", reset_after, torch.float64, 2, True, False)
        g = torch.Generator().manual_seed(5)
        ptrs = []
        for steps in (9, 4, 9, 2):
            x = torch.randn(steps, 3, 5, dtype=torch.float64, generator=g)
            lengths = torch.tensor([steps, max(steps - 2, 1), 1])
            gy = torch.randn(steps, 3, 12, dtype=torch.float64, generator=g)
            gh = torch.randn(4, 3, 6, dtype=torch.float64, generator=g)
            y0, h0, g0 = _run(ref, x, None, lengths, "packed", gy, gh)
            y1, h1, g1 = _run(fused, x, None, lengths, "packed", gy, gh)
            ptrs.append(_pool._POOL.bufs["dgh"][0].data_ptr())
            torch.testing.assert_close(y1, y0, atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(h1, h0, atol=1e-10, rtol=1e-10)
            for a, b in zip(g1, g0, strict=True):
                torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
            with torch.no_grad():
                torch.testing.assert_close(fused(x, lengths=lengths)[0], y0, atol=1e-10, rtol=1e-10)
        assert len(set(ptrs)) == 1  # the first batch is the longest: no buffer after it


def test_inference_mode_then_training() -> None:
    """A forward under torch.inference_mode, then training steps of the same shapes: the reused
    buffers are never inference tensors (torch refuses writes into those outside inference mode)
    and both give the reference's numbers."""
    for reset_after in (True, False):
        ref, fused = _pair("gru0", reset_after, torch.float64, 2, True, False)
        x = torch.randn(6, 4, 5, dtype=torch.float64)
        with torch.inference_mode():
            y0, h0 = ref(x)
            y1, h1 = fused(x)
        torch.testing.assert_close(y1, y0, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(h1, h0, atol=1e-10, rtol=1e-10)
        grads = []
        for mod in (ref, fused):
            y, hn = mod(x)
            grads.append(torch.autograd.grad((y * y).sum() + hn.sum(), list(mod.parameters())))
        for a, b in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_split_leaves_no_reference_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step with the split leaves no garbage cycle behind: the buffers it saved are
    freed with the graph, not when the garbage collector next runs (else every step allocates,
    and page-faults, afresh)."""
    import gc

    from gatedrnn._engines import _threads

    monkeypatch.setattr(_threads, "SPLIT_MIN_ROWS", 1)
    monkeypatch.setattr(_threads, "SPLIT_MIN_FLOPS", 0)
    gru = GRU(3, 5, engine="fused")
    x = torch.randn(7, 4, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            y, h = gru(x)
            (y.sum() + h.sum()).backward()
            del y, h
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, torch.Tensor | np.ndarray)]
        assert not leaked, f"garbage cycles hold {leaked}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        torch.set_num_threads(threads)


@pytest.mark.parametrize("fold", [False, True], ids=["products", "fold"])
def test_input_and_input_weights_without_gradients(fold: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """x without requires_grad and a frozen W_ih (dx and dW_ih not asked for): the other
    gradients still match the reference, with dx/dW_ih folded into the loop or not."""
    from gatedrnn._engines import _fused

    monkeypatch.setattr(_fused, "FOLD_MAX_INPUT", 10**6 if fold else 0)
    for variant in ("gru0", "gru2"):
        ref, fused = _pair(variant, False, torch.float64, 2, True, False)
        x = torch.randn(6, 4, 5, dtype=torch.float64)
        grads = []
        for mod in (ref, fused):
            mod.weight_ih_l0.requires_grad_(False)
            y, hn = mod(x)
            params = [p for p in mod.parameters() if p.requires_grad]
            grads.append(torch.autograd.grad((y * y).sum() + hn.sum(), params))
        for a, b in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_openmp_prefers_torchs_own_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a second libgomp loaded (numba's OpenMP layer loads the system one), the split uses
    the copy torch loaded: the other is a separate thread pool that would fight torch's."""
    import glob
    import io
    import os

    from gatedrnn._engines import _threads

    torch_gomp = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
    system_gomp = glob.glob("/usr/lib/x86_64-linux-gnu/libgomp.so*") + glob.glob("/lib64/libgomp.so*")
    if not torch_gomp or not system_gomp:
        pytest.skip("needs torch's bundled libgomp and a system libgomp")
    maps = "".join(f"7f00-7f01 r-xp 0 0:0 0 {p}\n" for p in (system_gomp[0], torch_gomp[0]))
    monkeypatch.setattr(_threads, "open", lambda *a, **k: io.StringIO(maps), raising=False)
    found = _threads.openmp.__wrapped__()
    assert found is not None and found[3] == torch_gomp[0]
