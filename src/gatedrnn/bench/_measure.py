"""What a call costs besides time: the kernels' compile time, the memory saved for the backward, and
the peak resident memory one forward+backward adds (each measured in fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

__all__ = ["compile_times", "peak_child", "peak_rss", "saved_bytes"]

_COMPILE_SNIPPET = """
import time, torch
torch.manual_seed(0)
from .. import GRU
variants = {variants!r}
x = torch.randn(5, 2, 3, requires_grad=True)
t0 = time.perf_counter()
for v in variants:
    for ra in (True, False):
        for dt in (torch.float32, torch.float64):
            m = GRU(3, 4, variant=v, reset_after=ra, engine="fused", dtype=dt)
            xx = x.detach().to(dt).requires_grad_(True)
            y, h = m(xx)
            (y.sum() + h.sum()).backward()
            with torch.no_grad():
                m(xx)
print(time.perf_counter() - t0)
"""


def _child_env() -> dict[str, str]:
    """The environment of a measuring subprocess: this one's, with its import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
    return env


def compile_times(variants: list[str]) -> dict[str, Any]:
    """Compile time of the kernels: cold (empty numba cache) and cached, in fresh subprocesses."""
    out: dict[str, Any] = {}
    env = _child_env()
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        for label, vs in (("gru0", ["gru0"]), ("all", variants)):
            code = _COMPILE_SNIPPET.format(variants=vs)
            for phase in ("cold", "cached"):
                r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
                if r.returncode != 0:
                    out[f"{label}_{phase}_error"] = r.stderr.strip().splitlines()[-1:]
                    continue
                out[f"{label}_{phase}_s"] = float(r.stdout.strip().splitlines()[-1])
    out["note"] = (
        "first forward+backward and no-grad forward of every listed variant x both reset forms x "
        "float32/float64 on a tiny input, in a fresh process; cold = empty numba cache "
        "('all' cold excludes gru0, compiled just before), cached = second process on the same cache"
    )
    return out


def saved_bytes(run) -> int:
    import torch

    total = 0
    seen: set[int] = set()

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def peak_child(candidate: str, size: tuple[int, int, int, int], reset_after: bool) -> int:
    """Bytes of resident memory one forward+backward of ``candidate`` (``"torch.nn.GRU"`` or
    ``"fused:<variant>"``) adds at its peak; run in a fresh process (:func:`peak_rss`).

    One forward+backward first (kernels loaded, parameter gradients allocated); then the engine's
    reused buffers are handed back (``empty_cache``, ``malloc_trim``), the kernel's peak-RSS mark is
    reset (``/proc/self/clear_refs``), and the measured call's high-water mark above the resident
    size before it is the answer: what it saves for the backward, its scratch and its temporaries.
    """
    import ctypes
    import gc

    import torch

    from .. import GRU, empty_cache

    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, steps, inp, hid = size
    x = torch.randn(steps, batch, inp, requires_grad=True)
    gy, gh = torch.randn(steps, batch, hid), torch.randn(1, batch, hid)
    if candidate == "torch.nn.GRU":
        mod: torch.nn.Module = torch.nn.GRU(inp, hid)
    else:
        mod = GRU(inp, hid, variant=candidate.split(":", 1)[1], reset_after=reset_after, engine="fused")

    def run() -> None:
        y, hn = mod(x)
        torch.autograd.backward([y, hn], [gy, gh])

    run()
    empty_cache()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) * 1024


def peak_rss(candidates: list[str], size: tuple[int, int, int, int], reset_after: bool) -> dict[str, int | None]:
    """:func:`peak_child` for each candidate, each in a fresh process (a process reuses what it
    freed, so a second candidate in the same one would look smaller). None where it failed (it
    needs Linux's /proc and glibc)."""
    env = _child_env()
    out: dict[str, int | None] = {}
    for c in candidates:
        code = f"from gatedrnn.bench._measure import peak_child; print(peak_child({c!r}, {tuple(size)!r}, {reset_after!r}))"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
        out[c] = int(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else None
    return out
