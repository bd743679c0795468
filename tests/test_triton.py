"""The triton engine against the reference engine: outputs and every gradient.

Without a GPU the kernels run in Triton's interpreter on CPU tensors at tiny sizes: the
``interpret`` fixture sets ``TRITON_INTERPRET=1`` for one test only (the engine reads the mode at
call time and loads an interpreted copy of its kernels), so the order tests run in does not
matter and no other test sees the interpreter. With a GPU the ``cuda`` tests run the compiled
kernels at real sizes; without one they skip.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import subprocess
import sys
import zlib

import pytest
import torch

from gatedrnn import GRU
from gatedrnn._engines import get_engine, resolve
from gatedrnn._options import Extras
from gatedrnn._reference import run_layer
from gatedrnn._specs import SPECS, param_shapes

pytest.importorskip("triton", reason="triton is not installed")

tri = importlib.import_module("gatedrnn._engines._triton")

CASES = [(v, ra) for v in SPECS for ra in (True, False) if not (v == "mingru" and not ra)]
CASE_IDS = [f"{v}-{'after' if ra else 'before'}" for v, ra in CASES]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter on, for this test only."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter off (real GPU kernels)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _params(variant: str, reset_after: bool, i: int, h: int, dtype, device="cpu", bias=True, layer_norm=False):
    shapes = param_shapes(variant, i, h, bias, reset_after, layer_norm)
    scale = 1.5 / math.sqrt(max(h, i))  # pre-activations of order 1 at every size
    out = {}
    for k, s in shapes.items():
        v = torch.randn(*s, dtype=dtype, device=device)
        if k.startswith("ln_weight"):  # gains around 1, shifts around 0
            v = 1.0 + 0.5 * v
        elif k.startswith("ln_bias"):
            v = 0.5 * v
        else:
            v = v * scale
        out[k] = v.requires_grad_()
    return out


def _layer_args(spec, reset_after, x, h0, p, lengths):
    return (spec, reset_after, x, h0, p["weight_ih"], p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"), lengths)


# the options an engine call sees (input dropout and DropConnect act before it, in the driver);
# "zoneout" is training's mask, "zoneout_eval" the probability
OPTIONS = ("layer_norm", "recurrent_dropout", "zoneout", "resets")
# resets [T=5, B=3] for lengths [5, 2, 4]: mid-sequence (sequence 0, twice), at t = 0 (sequence 2:
# h0 gets no gradient there), and past the length of sequence 1 (nothing happens there)
_RESETS = [[0, 0, 1], [1, 0, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0]]


def _masks(options: tuple[str, ...], t: int, b: int, h: int, device="cpu") -> dict:
    """The options' per-call inputs in float64, passed explicitly (the driver draws them in
    ``draw_masks``, tested with the layers)."""
    m: dict = {}
    if "recurrent_dropout" in options:
        m["h_mask"] = (torch.rand(b, h, device=device) > 0.3).double() / 0.7
    if "zoneout" in options:
        m["zoneout"] = (torch.rand(t, b, h, device=device) < 0.4).double()
    if "zoneout_eval" in options:
        m["zoneout"] = 0.3
    if "resets" in options:
        fixed = (t, b) == (5, 3)
        m["resets"] = torch.tensor(_RESETS, device=device) != 0 if fixed else torch.rand(t, b, device=device) < 0.3
    return m


def _extras(p: dict, masks: dict, dtype) -> Extras:
    """The engine call's options: the layer norms' gains and shifts from ``p``, ``masks`` in ``dtype``."""
    ln_ih = (p["ln_weight_ih"], p["ln_bias_ih"]) if "ln_weight_ih" in p else None
    ln_hh = (p["ln_weight_hh"], p["ln_bias_hh"]) if "ln_weight_hh" in p else None
    cast = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in masks.items()}
    return Extras(ln_ih, ln_hh, cast.get("h_mask"), cast.get("zoneout"), cast.get("resets"))


def _compare(
    variant: str,
    reset_after: bool,
    t: int,
    b: int,
    i: int,
    h: int,
    *,
    lengths: list[int] | None,
    dtype=torch.float64,
    device="cpu",
    bias=True,
    tol=1e-10,
    seed: int = 0,
    options: tuple[str, ...] = (),
    **run_kw,
) -> None:
    """Outputs and gradients (x, h0, every weight, the layer norms' gains and shifts; random
    upstream gradients) of the triton engine in ``dtype`` against the reference engine in float64
    on the same values, with ``options`` (names in :data:`OPTIONS`, or ``"zoneout_eval"``)."""
    torch.manual_seed(zlib.crc32(repr((variant, reset_after, t, b, h, str(dtype), seed, options)).encode()))
    spec = SPECS[variant]
    p64 = _params(variant, reset_after, i, h, torch.float64, device, bias, "layer_norm" in options)
    x64 = torch.randn(t, b, i, dtype=torch.float64, device=device, requires_grad=True)
    h064 = torch.randn(b, h, dtype=torch.float64, device=device, requires_grad=True)
    lens = torch.tensor(lengths, device=device) if lengths is not None else None
    # the engine's inputs: the same values in `dtype` (rounded), the reference sees those values
    p = {k: v.detach().to(dtype).requires_grad_() for k, v in p64.items()}
    x = x64.detach().to(dtype).requires_grad_()
    h0 = h064.detach().to(dtype).requires_grad_()
    masks = _masks(options, t, b, h, device)
    with torch.no_grad():
        for k in p64:
            p64[k].copy_(p[k])
        x64.copy_(x)
        h064.copy_(h0)
        for k, v in masks.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                masks[k] = v.to(dtype).double()
    extras = _extras(p, masks, dtype)
    y, hn = tri.run(*_layer_args(spec, reset_after, x, h0, p, lens), extras, **run_kw)
    y_ref, hn_ref = run_layer(*_layer_args(spec, reset_after, x64, h064, p64, lens), _extras(p64, masks, torch.float64))
    assert y.dtype == dtype and hn.dtype == dtype
    assert y.shape == y_ref.shape and hn.shape == hn_ref.shape
    gy = torch.randn_like(y_ref)
    gh = torch.randn_like(hn_ref)
    names = ["x", "h0", *p]
    got = torch.autograd.grad((y.double() * gy).sum() + (hn.double() * gh).sum(), [x, h0, *p.values()])
    ref = torch.autograd.grad((y_ref * gy).sum() + (hn_ref * gh).sum(), [x64, h064, *p64.values()])

    def close(name: str, a: torch.Tensor, r: torch.Tensor) -> None:
        err = (a.double() - r).abs().max().item()
        scale = max(1.0, r.abs().max().item())
        assert err <= tol * scale, f"{variant} reset_after={reset_after} {options} {name}: max error {err:.3g}"

    close("y", y, y_ref)
    close("h_n", hn, hn_ref)
    if lens is not None:  # outputs past a length are exactly zero
        for j, n_j in enumerate(lengths):
            assert bool((y[n_j:, j] == 0).all())
    for name, a, r in zip(names, got, ref, strict=True):
        close("grad " + name, a, r)


# ------------------------------------------------------------------ interpreter (CPU), float64


@pytest.mark.parametrize("path", ["persistent", "step"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize(("variant", "reset_after"), CASES, ids=CASE_IDS)
def test_every_variant_matches_reference(interpret, variant, reset_after, use_lengths, path):
    lengths = [5, 2, 4] if use_lengths else None
    _compare(variant, reset_after, 5, 3, 4, 6, lengths=lengths, path=path)


@pytest.mark.parametrize("path", ["persistent", "step"])
@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru0", False), ("mgu", False)])
def test_several_tiles(interpret, monkeypatch, variant, reset_after, path):
    """B and H over one tile: several batch programs, hidden tiles and reduction chunks."""
    monkeypatch.setattr(tri, "_step_tiles", lambda batch, hidden, wide=False: (16, 16, 16))
    lengths = [3, 1, 2] * 6
    _compare(variant, reset_after, 3, 18, 3, 20, lengths=lengths, path=path)


def test_mingru_tiles_hidden(interpret):
    """minGRU has no recurrent weights: the persistent kernel also tiles H (here 2 tiles of 64)."""
    _compare("mingru", True, 3, 2, 3, 70, lengths=[3, 2])


@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru2", False), ("mgu", True)])
def test_no_bias(interpret, variant, reset_after):
    _compare(variant, reset_after, 4, 2, 3, 5, lengths=None, bias=False)
    _compare(variant, reset_after, 4, 2, 3, 5, lengths=None, bias=False, path="step")


@pytest.mark.parametrize("path", ["persistent", "step"])
def test_single_step(interpret, path):
    """T = 1 (the backward's pointer arithmetic starts at the last step)."""
    _compare("gru0", True, 1, 2, 3, 4, lengths=None, path=path)
    _compare("mgu", False, 1, 2, 3, 4, lengths=[1, 1], path=path)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)], ids=str
)
@pytest.mark.parametrize("path", ["persistent", "step"])
def test_low_precision(interpret, dtype, tol, path):
    """float32 / float16 / bfloat16 inputs (float32 accumulation) against float64 on the same values."""
    _compare("gru0", True, 4, 3, 5, 8, lengths=[4, 1, 3], dtype=dtype, tol=tol, path=path)
    _compare("mgu", False, 4, 3, 5, 8, lengths=None, dtype=dtype, tol=tol, path=path)


# ------------------------------------------------------------------ the options, interpreter


def _paths(variant: str) -> tuple[str, ...]:
    return ("persistent",) if variant == "mingru" else ("persistent", "step")  # minGRU: always persistent


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize(("variant", "reset_after"), CASES, ids=CASE_IDS)
def test_option_matches_reference(interpret, variant, reset_after, option):
    """Each option alone, with lengths, on both paths, float64: outputs, h_n and every gradient
    (the layer norms' gains and shifts included) against the reference engine."""
    for path in _paths(variant):
        _compare(variant, reset_after, 5, 3, 4, 4, lengths=[5, 2, 4], options=(option,), path=path)


@pytest.mark.parametrize(
    ("variant", "reset_after"), [("gru0", True), ("gru0", False), ("mgu", False), ("gru3", False), ("mingru", True)]
)
def test_all_options_together(interpret, variant, reset_after):
    """Every option at once, full length (dW_hh reads h̃ after the resets, through the layer norm)."""
    for path in _paths(variant):
        _compare(variant, reset_after, 5, 3, 4, 4, lengths=None, options=OPTIONS, path=path)


@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("mgu", False), ("mingru", True)])
def test_zoneout_eval(interpret, variant, reset_after):
    """Zoneout in eval: the constant p (read by the kernels in the work dtype, exactly)."""
    for path in _paths(variant):
        _compare(variant, reset_after, 5, 3, 4, 4, lengths=[5, 2, 4], options=("zoneout_eval",), path=path)


@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru0", False), ("gru3", False)])
def test_options_several_tiles(interpret, monkeypatch, variant, reset_after):
    """The step path over two hidden tiles and two reduction chunks: the layer norm's row
    statistics and backward sums span programs and chunks."""
    monkeypatch.setattr(tri, "_step_tiles", lambda batch, hidden, wide=False: (16, 16, 16))
    _compare(variant, reset_after, 3, 3, 3, 20, lengths=[3, 1, 2], options=OPTIONS, path="step")


@pytest.mark.parametrize("path", ["persistent", "step"])
def test_options_float32(interpret, path):
    """float32 inputs with every option against float64 on the same values."""
    _compare("gru0", True, 4, 3, 5, 8, lengths=[4, 1, 3], dtype=torch.float32, tol=2e-5, options=OPTIONS, path=path)
    _compare("mgu", False, 4, 3, 5, 8, lengths=None, dtype=torch.float32, tol=2e-5, options=OPTIONS, path=path)


@pytest.mark.parametrize(
    ("option", "variant", "reset_after"),
    [
        ("layer_norm", "gru0", False),
        ("recurrent_dropout", "mgu", True),
        ("zoneout", "gru1", False),
        ("resets", "gru2", True),
    ],
)
def test_option_second_order(interpret, option, variant, reset_after):
    """gradgradcheck with each option: the Triton backward's gradients (the layer norms' gains
    and shifts among the inputs) differentiated by the reference equations with the same masks."""
    torch.manual_seed(4)
    spec = SPECS[variant]
    p = _params(variant, reset_after, 2, 3, torch.float64, layer_norm=option == "layer_norm")
    x = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 1])
    masks = _masks((option,), 2, 2, 3)
    if option == "resets":
        masks["resets"] = torch.tensor([[False, True], [True, False]])
    names = list(p)

    def f(x, h0, *ps):
        q = dict(zip(names, ps, strict=True))
        return tri.run(*_layer_args(spec, reset_after, x, h0, q, lengths), _extras(q, masks, torch.float64))

    assert torch.autograd.gradgradcheck(f, (x, h0, *p.values()), eps=1e-6, atol=1e-6, fast_mode=True)


def test_options_through_gru_layer(interpret):
    """Every option through ``GRU`` (bidirectional, lengths, resets), in training (the same masks:
    torch's generator seeded alike) and in eval: engine 'triton' vs 'reference'."""
    torch.manual_seed(3)
    m = GRU(
        3, 4, bidirectional=True, variant="gru0", reset_after=False, dtype=torch.float64,
        layer_norm=True, recurrent_dropout=0.3, input_dropout=0.2, zoneout=0.3, weight_drop=0.25,
    )  # fmt: skip
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 2])
    resets = torch.tensor(_RESETS) != 0
    for training in (True, False):
        m.train(training)
        results = []
        for engine in ("triton", "reference"):
            m.engine = engine
            torch.manual_seed(11)
            y, hn = m(x, lengths=lengths, resets=resets)
            assert m.last_engine == engine
            gy = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
            grads = torch.autograd.grad((y * gy).sum() + hn.square().sum(), [x, *m.parameters()])
            results.append((y, hn, grads))
        (y1, hn1, g1), (y2, hn2, g2) = results
        torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
        torch.testing.assert_close(hn1, hn2, rtol=0, atol=1e-12)
        assert len(g1) == 1 + 2 * 7  # weights, biases and four layer-norm vectors per direction
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_runs_every_option(interpret):
    """The engine runs every option an engine call can carry (no refusal)."""
    x = torch.zeros(2, 1, 3)
    ones = torch.ones(3)
    extras = Extras(
        (ones, ones), (ones, ones), torch.ones(1, 1), torch.zeros(2, 1, 1), torch.zeros(2, 1, dtype=torch.bool)
    )
    assert set(extras.names()) == {"layer_norm", "recurrent_dropout", "zoneout", "resets"}
    assert get_engine("triton").unavailable(SPECS["gru0"], x, extras) is None


def test_through_gru_layer(interpret):
    """Two bidirectional layers with lengths through ``GRU``: engine 'triton' vs 'reference'."""
    torch.manual_seed(3)
    m = GRU(4, 5, num_layers=2, bidirectional=True, variant="gru1", reset_after=False, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 2])
    results = []
    for engine in ("triton", "reference"):
        m.engine = engine
        y, hn = m(x, h0, lengths=lengths)
        assert m.last_engine == engine
        gy = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        gh = torch.randn_like(hn, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((y * gy).sum() + (hn * gh).sum(), [x, h0, *m.parameters()])
        results.append((y, hn, grads))
    (y1, hn1, g1), (y2, hn2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(hn1, hn2, rtol=0, atol=1e-12)
    assert len(g1) == len(g2) == 2 + 2 * 2 * 3  # weight_ih, weight_hh, bias_ih per layer and direction
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", False), ("mingru", True)])
def test_second_order(interpret, variant, reset_after):
    """gradgradcheck: the Triton backward's gradients, differentiated by the reference equations
    (a backward through the step kernels' outputs alone would miss most of the second derivative)."""
    torch.manual_seed(4)
    m = GRU(2, 3, variant=variant, reset_after=reset_after, dtype=torch.float64, engine="triton")
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def f(x, h0, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x, h0), {"lengths": lengths})

    assert torch.autograd.gradgradcheck(f, (x, h0, *m.parameters()), eps=1e-6, atol=1e-6, fast_mode=True)


def test_checkpointed_layers(interpret):
    """Non-reentrant activation checkpointing refuses a second unpack of what a Function saved; the
    backward unpacks once: the reference's gradients."""
    from torch.utils.checkpoint import checkpoint

    grads = []
    for engine in ("reference", "triton"):
        torch.manual_seed(4)
        first = GRU(3, 4, variant="gru0", dtype=torch.float64, engine=engine)
        second = GRU(4, 4, variant="gru0", reset_after=False, dtype=torch.float64, engine=engine)
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        h1 = checkpoint(lambda t, m=first: m(t)[0], x, use_reentrant=False)
        h2 = checkpoint(lambda t, m=second: m(t)[0], h1, use_reentrant=False)
        grads.append(torch.autograd.grad((h2 * h2).sum() + h1.sum(), [x, *first.parameters(), *second.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_batched_backward(interpret):
    """``is_grads_batched=True`` (autograd vmaps the backward): the reference's gradients."""
    results = []
    for engine in ("reference", "triton"):
        torch.manual_seed(4)
        m = GRU(3, 4, variant="gru1", dtype=torch.float64, engine=engine)
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        y, h = m(x)
        vs = torch.randn(3, *y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        wh = torch.randn(3, *h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        results.append(torch.autograd.grad([y, h], [x, *m.parameters()], [vs, wh], is_grads_batched=True))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # see test_compile.py
def test_under_torch_compile(interpret):
    """torch.compile runs the engine eagerly between compiled graphs (opaque to Dynamo): the
    eager numbers, outputs and every gradient."""
    torch.manual_seed(4)
    m = GRU(3, 4, num_layers=2, bidirectional=True, variant="gru1", engine="triton")
    x = torch.randn(5, 2, 3, requires_grad=True)
    gy, gh = torch.randn(5, 2, 8), torch.randn(4, 2, 4)
    results = []
    for fn in (m, torch.compile(m, backend="aot_eager")):
        y, hn = fn(x)
        results.append([y, hn, *torch.autograd.grad([y, hn], [x, *m.parameters()], [gy, gh])])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch._dynamo.reset()
    gc.collect()  # compiling's fake tensors in reference cycles go now, not in a later test


def test_packed_dropout_batch_first(interpret):
    """PackedSequence input, batch_first, inter-layer dropout in training mode (same RNG draws)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(4)
    m = GRU(3, 4, num_layers=2, batch_first=True, dropout=0.4, variant="mgu", dtype=torch.float64).train()
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for engine in ("triton", "reference"):
        m.engine = engine
        torch.manual_seed(11)
        packed = pack_padded_sequence(x, [5, 2, 4], batch_first=True, enforce_sorted=False)
        y, hn = m(packed)
        gy = torch.randn_like(y.data, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((y.data * gy).sum() + hn.square().sum(), [x, *m.parameters()])
        results.append((y.data, hn, grads))
    (y1, hn1, g1), (y2, hn2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    torch.testing.assert_close(hn1, hn2, rtol=0, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_graph_bookkeeping(interpret, monkeypatch):
    """The CUDA-graph path's static buffers, with an eager stand-in for the graph: every call
    copies its inputs in, replays the captured loop on the static buffers and copies the outputs
    back, so repeated calls with new values (same shapes) still match the reference."""
    captured = []

    class _Eager:
        def __init__(self, fn):
            self.fn = fn
            captured.append(self)

        def replay(self):
            self.fn()

    monkeypatch.setattr(tri, "_graphs_possible", lambda device: True)
    monkeypatch.setattr(tri, "_capture", lambda fn, device: _Eager(fn))
    monkeypatch.setattr(tri, "_GRAPHS", {})
    for variant, reset_after in [("gru0", True), ("mgu", False)]:
        for seed in range(2):  # new values, same shapes: the second call replays the first's graph
            _compare(variant, reset_after, 4, 3, 4, 6, lengths=[4, 2, 3], path="step", graphs=True, seed=seed)
    assert len(captured) == 4  # forward + backward per configuration, reused on the second call
    assert len(tri._GRAPHS) == 4


def test_available_under_interpreter(interpret):
    x = torch.zeros(2, 1, 3)
    assert get_engine("triton").unavailable(SPECS["gru0"], x) is None
    details = get_engine("triton").details()
    assert details["interpreter"] is True
    assert details["triton"]


# ------------------------------------------------------------------ errors, lazy import


def test_cpu_without_interpreter_raises(compiled):
    x = torch.zeros(2, 1, 3)
    why = get_engine("triton").unavailable(SPECS["gru0"], x)
    assert why is not None and "CUDA" in why and "TRITON_INTERPRET" in why and "cpu" in why
    with pytest.raises(RuntimeError, match="engine='triton' cannot run here"):
        resolve("triton", SPECS["gru0"], x)
    m = GRU(3, 4, engine="triton")
    with pytest.raises(RuntimeError, match="CUDA"):
        m(x)
    assert get_engine("triton").details()["interpreter"] is False


def test_unsupported_dtype(interpret):
    x = torch.zeros(2, 1, 3, dtype=torch.int32)
    why = get_engine("triton").unavailable(SPECS["gru0"], x)
    assert why is not None and "int32" in why


def test_bad_path_argument(interpret):
    p = _params("gru0", True, 3, 4, torch.float64)
    x = torch.zeros(2, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="path: expected"):
        tri.run(*_layer_args(SPECS["gru0"], True, x, torch.zeros(1, 4, dtype=torch.float64), p, None), path="fast")


def test_import_gatedrnn_does_not_import_triton():
    code = "import sys, gatedrnn; assert 'triton' not in sys.modules, 'triton imported'"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ------------------------------------------------------------------ GPU compilation without a GPU

_STORAGE_PTRS = {"gx_ptr", "nx_ptr", "w_ptr", "bhn_ptr", "dy_ptr", "lnw_ptr", "lnb_ptr", "hm_ptr", "zo_ptr"}
_TT = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
# kernel, phase (None: persistent), stage (rnn_step_fwd), variant, reset_after, dtype, options on:
# the engine's configurations
_COMPILE_CASES = [
    ("rnn_persistent_fwd", None, 0, "gru0", True, torch.float32, False),
    ("rnn_persistent_bwd", None, 0, "gru0", True, torch.float32, False),
    ("rnn_step_fwd", 0, 0, "gru0", True, torch.float32, False),
    ("rnn_step_bwd", 0, 0, "gru0", True, torch.float32, False),
    ("rnn_persistent_fwd", None, 0, "mgu", False, torch.bfloat16, False),
    ("rnn_persistent_bwd", None, 0, "mgu", False, torch.bfloat16, False),
    ("rnn_step_fwd", 1, 0, "gru2", False, torch.float16, False),
    ("rnn_step_fwd", 2, 0, "gru2", False, torch.float16, False),
    ("rnn_step_bwd", 1, 0, "gru2", False, torch.float16, False),
    ("rnn_step_bwd", 2, 0, "gru2", False, torch.float16, False),
    ("rnn_persistent_bwd", None, 0, "mingru", True, torch.float64, False),
    # the options (layer norm of the recurrent products, recurrent dropout, zoneout, resets)
    ("rnn_persistent_fwd", None, 0, "gru0", True, torch.float32, True),
    ("rnn_persistent_bwd", None, 0, "gru0", False, torch.float32, True),
    ("rnn_step_fwd", 0, 1, "gru0", True, torch.float32, True),
    ("rnn_step_fwd", 0, 2, "gru0", True, torch.float32, True),
    ("rnn_step_bwd", 0, 0, "gru0", True, torch.float32, True),
    ("rnn_step_fwd", 1, 2, "gru1", False, torch.bfloat16, True),
    ("rnn_step_fwd", 2, 2, "gru1", False, torch.bfloat16, True),
    ("rnn_step_bwd", 1, 0, "gru1", False, torch.bfloat16, True),
    ("rnn_step_bwd", 2, 0, "gru1", False, torch.bfloat16, True),
    ("rnn_persistent_bwd", None, 0, "mgu", True, torch.float64, True),
]


def _compile_kernel(
    kernel: str,
    phase: int | None,
    stage: int,
    variant: str,
    reset_after: bool,
    dtype: torch.dtype,
    options: bool,
    arch: int,
):
    """Compile one kernel configuration exactly as the engine launches it (flags, tiles, warps,
    stages), through Triton's NVIDIA pipeline for ``sm_<arch>``; no GPU needed. ``options``: with
    every option the kernels run (a zoneout mask, the heavier form)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(tri._kernels(), kernel)
    spec = SPECS[variant]
    has_u = spec.candidate_reads_h  # minGRU: no products for the layer norm and mask to act on
    cfg = tri._Config(
        spec, reset_after, phase is None, False, options and has_u, options and has_u, 1 if options else 0, options
    )
    acc = tri._acc(dtype)
    consts = {
        **tri._flags(cfg),
        "HAS_LEN": True,
        **tri._option_flags(cfg),
        "ACC": tri._tl_dtype(dtype),
        "PREC": tri._precision(dtype),
        "DOT": tri._dot_dtype(torch.empty(1, dtype=dtype), acc),
    }
    if kernel.endswith("fwd"):
        consts.update(HAS_GX=True, HAS_BHN=True)
    if phase is None:
        consts.update(BB=tri._PERSISTENT_BB, BH=tri._persistent_max_h(dtype, cfg.ln_hh))
    else:
        bb, bj, bk = tri._step_tiles(64, 256, cfg.ln_hh and dtype == torch.float64)
        consts.update(PHASE=phase, BB=bb, BJ=bj, BK=bk)
        if kernel == "rnn_step_fwd":
            del consts["LN_HH"]
            consts["STAGE"] = stage
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "len_ptr":
            sig[name] = "*i64"
        elif name == "rs_ptr":
            sig[name] = "*u8"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (_TT[dtype] if name in _STORAGE_PTRS else _TT[acc])
        else:
            sig[name] = "i32"
    options = tri._launch_options(consts["BH"] if phase is None else None, cfg.ln_hh)
    return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=options)


def _all_configs():
    """Every (kernel, phase, stage, variant, reset_after, dtype, options) the engine can launch."""
    for variant, reset_after in CASES:
        spec = SPECS[variant]
        flags = spec.wiring(reset_after).constexprs()
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for options in (False, True):
                yield ("rnn_persistent_fwd", None, 0, variant, reset_after, dtype, options)
                yield ("rnn_persistent_bwd", None, 0, variant, reset_after, dtype, options)
                if not spec.candidate_reads_h:
                    continue  # minGRU always runs the persistent kernels
                for phase, stage in tri._fwd_launches(flags, options):
                    yield ("rnn_step_fwd", phase, stage, variant, reset_after, dtype, options)
                for phase in tri._bwd_phases(flags):
                    yield ("rnn_step_bwd", phase, 0, variant, reset_after, dtype, options)


@pytest.mark.parametrize(
    ("kernel", "phase", "stage", "variant", "reset_after", "dtype", "options"), _COMPILE_CASES, ids=str
)
def test_kernels_compile_for_sm90(compiled, kernel, phase, stage, variant, reset_after, dtype, options):
    """The compiled (not interpreted) kernels go through Triton's whole NVIDIA pipeline to a cubin
    for sm_90 with the engine's flags and tiles: catches what the interpreter lets through (dot
    sizes, layouts, types), and bounds the shared memory (99 KiB: every NVIDIA GPU since sm_80).
    The full matrix, with registers and spills: ``python tests/test_triton.py 90``."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this triton has no NVIDIA backend")
    compiled_kernel = _compile_kernel(kernel, phase, stage, variant, reset_after, dtype, options, 90)
    assert compiled_kernel.asm["cubin"]
    assert compiled_kernel.metadata.shared <= 99 * 1024


def _matrix(arch: int) -> None:
    """Compile every configuration for sm_<arch>; print shared memory, registers and spills
    (ptxas -v on Triton's PTX)."""
    import re
    import tempfile

    from triton import knobs

    ptxas = knobs.nvidia.ptxas.path
    newer = ptxas + "-blackwell"  # triton 3.9 bundles a newer ptxas for its newest PTX versions
    ptxas = newer if os.path.exists(newer) else ptxas
    print(
        "| kernel | phase | stage | variant | reset_after | dtype | options | shared KiB | registers | spill bytes |"
        f"  (sm_{arch})"
    )
    worst = {"shared": 0, "regs": 0, "spill": 0}
    for kernel, phase, stage, variant, reset_after, dtype, options in _all_configs():
        ck = _compile_kernel(kernel, phase, stage, variant, reset_after, dtype, options, arch)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ck.asm["ptx"])
        target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([ptxas, f"-arch={target}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
        os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", out.stderr + out.stdout)
        spill = re.search(r"(\d+) bytes spill stores", out.stderr + out.stdout)
        r, sp = int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1
        sh = ck.metadata.shared
        worst = {"shared": max(worst["shared"], sh), "regs": max(worst["regs"], r), "spill": max(worst["spill"], sp)}
        print(
            f"| {kernel} | {phase} | {stage} | {variant} | {reset_after} | {str(dtype)[6:]} | {options} "
            f"| {sh / 1024:.0f} | {r} | {sp} |"
        )
    print(
        f"max shared {worst['shared'] / 1024:.0f} KiB, max registers {worst['regs']}, max spill {worst['spill']} bytes"
    )


# ------------------------------------------------------------------ GPU (compiled kernels)


@needs_cuda
@pytest.mark.parametrize(("path", "hidden"), [("persistent", 30), ("step", 200)], ids=["persistent", "step"])
@pytest.mark.parametrize(("variant", "reset_after"), CASES, ids=CASE_IDS)
def test_cuda_float64_matches_reference(compiled, variant, reset_after, path, hidden):
    _compare(variant, reset_after, 20, 37, 24, hidden, lengths=None, device="cuda", tol=1e-9, path=path)
    lengths = torch.randint(1, 21, (37,)).tolist()
    _compare(variant, reset_after, 20, 37, 24, hidden, lengths=lengths, device="cuda", tol=1e-9, path=path)


_HALF_CASES = [("gru0", True), ("gru1", False), ("mgu", False), ("gru3", True), ("mingru", True)]


@needs_cuda
@pytest.mark.parametrize("hidden", [64, 256], ids=["persistent", "step"])
@pytest.mark.parametrize(("variant", "reset_after"), CASES, ids=CASE_IDS)
def test_cuda_float32(compiled, variant, reset_after, hidden):
    """The default path (persistent for H=64, step for H=256) in float32, against float64."""
    lengths = torch.randint(1, 33, (64,)).tolist()
    _compare(variant, reset_after, 32, 64, 48, hidden, lengths=lengths, device="cuda", dtype=torch.float32, tol=1e-4)


@needs_cuda
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 3e-2), (torch.bfloat16, 1e-1)], ids=str)
@pytest.mark.parametrize("hidden", [64, 256], ids=["persistent", "step"])
@pytest.mark.parametrize(("variant", "reset_after"), _HALF_CASES)
def test_cuda_half(compiled, variant, reset_after, hidden, dtype, tol):
    """float16 / bfloat16 (tensor-core dots, float32 accumulation) against float64 on the same values."""
    lengths = torch.randint(1, 33, (64,)).tolist()
    _compare(variant, reset_after, 32, 64, 48, hidden, lengths=lengths, device="cuda", dtype=dtype, tol=tol)


@needs_cuda
@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("mgu", False)])
def test_cuda_graphs_match(compiled, variant, reset_after):
    """The step loop replayed from a CUDA graph gives the same numbers as plain launches, twice."""
    for seed in range(2):  # new values, same shapes: the second call replays the cached graph
        _compare(
            variant, reset_after, 16, 8, 12, 160, lengths=[16, 3] * 4, device="cuda", tol=1e-9, graphs=True, seed=seed
        )


@needs_cuda
@pytest.mark.parametrize(("path", "hidden"), [("persistent", 16), ("step", 200)], ids=["persistent", "step"])
@pytest.mark.parametrize(("variant", "reset_after"), CASES, ids=CASE_IDS)
def test_cuda_options_match_reference(compiled, variant, reset_after, path, hidden):
    """Every option at once at real sizes, float64, both paths (16: the persistent limit with
    the layer norm in float64)."""
    lengths = torch.randint(1, 21, (37,)).tolist()
    _compare(
        variant, reset_after, 20, 37, 24, hidden, lengths=lengths, device="cuda", tol=1e-9, path=path, options=OPTIONS
    )


@needs_cuda
@pytest.mark.parametrize("hidden", [32, 256], ids=["persistent", "step"])
@pytest.mark.parametrize(("variant", "reset_after"), [("gru0", True), ("gru0", False), ("mgu", False), ("gru3", False)])
def test_cuda_options_float32(compiled, variant, reset_after, hidden):
    """Every option on the default path (persistent for H=32 with the layer norm, step for H=256)
    in float32, against float64."""
    lengths = torch.randint(1, 33, (64,)).tolist()
    _compare(
        variant, reset_after, 32, 64, 48, hidden, lengths=lengths, device="cuda", dtype=torch.float32, tol=1e-4,
        options=OPTIONS,
    )  # fmt: skip


@needs_cuda
def test_cuda_auto_is_triton_and_matches_cudnn(compiled):
    torch.manual_seed(0)
    ref = torch.nn.GRU(32, 96, num_layers=2, bidirectional=True).cuda()
    m = GRU(32, 96, num_layers=2, bidirectional=True).cuda()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(40, 16, 32, device="cuda")
    with torch.backends.cudnn.flags(allow_tf32=False):
        y_ref, h_ref = ref(x)
    y, h = m(x)
    assert m.last_engine == "triton"
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    _matrix(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
