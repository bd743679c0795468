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


def _params(variant: str, reset_after: bool, i: int, h: int, dtype, device="cpu", bias=True):
    shapes = param_shapes(variant, i, h, bias, reset_after)
    scale = 1.5 / math.sqrt(max(h, i))  # pre-activations of order 1 at every size
    return {k: (torch.randn(*s, dtype=dtype, device=device) * scale).requires_grad_() for k, s in shapes.items()}


def _layer_args(spec, reset_after, x, h0, p, lengths):
    return (spec, reset_after, x, h0, p["weight_ih"], p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"), lengths)


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
    **run_kw,
) -> None:
    """Outputs and gradients (x, h0, every weight; random upstream gradients) of the triton
    engine in ``dtype`` against the reference engine in float64 on the same values."""
    torch.manual_seed(zlib.crc32(repr((variant, reset_after, t, b, h, str(dtype), seed)).encode()))
    spec = SPECS[variant]
    p64 = _params(variant, reset_after, i, h, torch.float64, device, bias)
    x64 = torch.randn(t, b, i, dtype=torch.float64, device=device, requires_grad=True)
    h064 = torch.randn(b, h, dtype=torch.float64, device=device, requires_grad=True)
    lens = torch.tensor(lengths, device=device) if lengths is not None else None
    # the engine's inputs: the same values in `dtype` (rounded), the reference sees those values
    p = {k: v.detach().to(dtype).requires_grad_() for k, v in p64.items()}
    x = x64.detach().to(dtype).requires_grad_()
    h0 = h064.detach().to(dtype).requires_grad_()
    with torch.no_grad():
        for k in p64:
            p64[k].copy_(p[k])
        x64.copy_(x)
        h064.copy_(h0)
    y, hn = tri.run(*_layer_args(spec, reset_after, x, h0, p, lens), **run_kw)
    y_ref, hn_ref = run_layer(*_layer_args(spec, reset_after, x64, h064, p64, lens))
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
        assert err <= tol * scale, f"{variant} reset_after={reset_after} {name}: max error {err:.3g}"

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
    monkeypatch.setattr(tri, "_step_tiles", lambda batch, hidden: (16, 16, 16))
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

_STORAGE_PTRS = {"gx_ptr", "nx_ptr", "w_ptr", "bhn_ptr", "dy_ptr"}
_TT = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
# kernel, phase (None: persistent), variant, reset_after, dtype: the engine's configurations
_COMPILE_CASES = [
    ("rnn_persistent_fwd", None, "gru0", True, torch.float32),
    ("rnn_persistent_bwd", None, "gru0", True, torch.float32),
    ("rnn_step_fwd", 0, "gru0", True, torch.float32),
    ("rnn_step_bwd", 0, "gru0", True, torch.float32),
    ("rnn_persistent_fwd", None, "mgu", False, torch.bfloat16),
    ("rnn_persistent_bwd", None, "mgu", False, torch.bfloat16),
    ("rnn_step_fwd", 1, "gru2", False, torch.float16),
    ("rnn_step_fwd", 2, "gru2", False, torch.float16),
    ("rnn_step_bwd", 1, "gru2", False, torch.float16),
    ("rnn_step_bwd", 2, "gru2", False, torch.float16),
    ("rnn_persistent_bwd", None, "mingru", True, torch.float64),
]


def _compile_kernel(kernel: str, phase: int | None, variant: str, reset_after: bool, dtype: torch.dtype, arch: int):
    """Compile one kernel configuration exactly as the engine launches it (flags, tiles, warps,
    stages), through Triton's NVIDIA pipeline for ``sm_<arch>``; no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(tri._kernels(), kernel)
    cfg = tri._Config(SPECS[variant], reset_after, phase is None, False)
    acc = tri._acc(dtype)
    consts = {
        **tri._flags(cfg),
        "HAS_LEN": True,
        "ACC": tri._tl_dtype(dtype),
        "PREC": tri._precision(dtype),
        "DOT": tri._dot_dtype(torch.empty(1, dtype=dtype), acc),
    }
    if kernel.endswith("fwd"):
        consts.update(HAS_GX=True, HAS_BHN=True)
    if phase is None:
        consts.update(BB=tri._PERSISTENT_BB, BH=tri.PERSISTENT_MAX_H // (2 if dtype == torch.float64 else 1))
    else:
        bb, bj, bk = tri._step_tiles(64, 256)
        consts.update(PHASE=phase, BB=bb, BJ=bj, BK=bk)
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "len_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (_TT[dtype] if name in _STORAGE_PTRS else _TT[acc])
        else:
            sig[name] = "i32"
    options = tri._launch_options(consts["BH"] if phase is None else None)
    return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=options)


def _all_configs():
    """Every (kernel, phase, variant, reset_after, dtype) the engine can launch."""
    for variant, reset_after in CASES:
        spec = SPECS[variant]
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            yield ("rnn_persistent_fwd", None, variant, reset_after, dtype)
            yield ("rnn_persistent_bwd", None, variant, reset_after, dtype)
            if not spec.candidate_reads_h:
                continue  # minGRU always runs the persistent kernels
            phases = ((0, 0),) if reset_after else ((1, 1), (2, 2) if spec.gates_read_h else (2, None))
            for fwd, bwd in phases:
                yield ("rnn_step_fwd", fwd, variant, reset_after, dtype)
                if bwd is not None:
                    yield ("rnn_step_bwd", bwd, variant, reset_after, dtype)


@pytest.mark.parametrize(("kernel", "phase", "variant", "reset_after", "dtype"), _COMPILE_CASES, ids=str)
def test_kernels_compile_for_sm90(compiled, kernel, phase, variant, reset_after, dtype):
    """The compiled (not interpreted) kernels go through Triton's whole NVIDIA pipeline to a cubin
    for sm_90 with the engine's flags and tiles: catches what the interpreter lets through (dot
    sizes, layouts, types), and bounds the shared memory (99 KiB: every NVIDIA GPU since sm_80).
    The full matrix, with registers and spills: ``python tests/test_triton.py 90``."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this triton has no NVIDIA backend")
    compiled_kernel = _compile_kernel(kernel, phase, variant, reset_after, dtype, 90)
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
    print(f"| kernel | phase | variant | reset_after | dtype | shared KiB | registers | spill bytes |  (sm_{arch})")
    worst = {"shared": 0, "regs": 0, "spill": 0}
    for kernel, phase, variant, reset_after, dtype in _all_configs():
        ck = _compile_kernel(kernel, phase, variant, reset_after, dtype, arch)
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
        print(f"| {kernel} | {phase} | {variant} | {reset_after} | {str(dtype)[6:]} | {sh / 1024:.0f} | {r} | {sp} |")
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
