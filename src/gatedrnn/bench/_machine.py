"""The machine a run measured: CPU model and instruction sets, versions, BLAS, load."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["cpu_isa", "machine"]

# /proc/cpuinfo flag -> the name the tables give the instruction set, oldest first
_ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX"),
)


def cpu_isa(flags: set[str]) -> list[str]:
    """The instruction sets among AVX2, AVX-512, AVX512-BF16 and AMX that ``flags`` (the ``flags``
    field of ``/proc/cpuinfo``) name."""
    return [name for flag, name in _ISA_FLAGS if flag in flags]


def bf16_hardware(isa: list[str]) -> bool:
    """Whether bfloat16 products run in hardware (AVX512-BF16 or AMX); elsewhere they are emulated."""
    return "AVX512-BF16" in isa or "AMX" in isa


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def machine() -> dict[str, Any]:
    import torch

    info = _cpuinfo()
    cpu = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        cpu += f" (family {info['cpu family']}, model {info['model']})"
    isa = cpu_isa(set(info.get("flags", "").split()))
    out: dict[str, Any] = {
        "cpu": cpu,
        "isa": isa,
        "bf16_hardware": bf16_hardware(isa),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import numba

        out["numba"] = numba.__version__
        from .._engines._fused import ENGINE
        from .._engines._kernels import blas

        out["blas"] = blas()[2]
        out["fused_threads"] = ENGINE.details()["threads"]
    except Exception as e:  # pragma: no cover - depends on the install
        out["numba_error"] = str(e)
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    try:
        out["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return out
