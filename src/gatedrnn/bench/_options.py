"""What a benchmark run measures: the sizes, and the options of ``gatedrnn bench``, checked."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["CPU_SIZES", "CUDA_SIZES", "PASSES", "BenchError", "Options"]

# name: (B, T, m, n) = (batch, steps, input size, hidden size)
CPU_SIZES: dict[str, tuple[int, int, int, int]] = {
    "A": (64, 28, 28, 128),
    "B": (32, 784, 1, 128),
    "C": (64, 100, 500, 256),
    "D": (16, 200, 64, 64),
    "E": (1, 1000, 32, 32),
}
CUDA_SIZES: dict[str, tuple[int, int, int, int]] = {
    **CPU_SIZES,
    "F": (64, 512, 512, 512),
    "G": (256, 100, 1024, 1024),
}
PASSES = ("fwd", "fwdbwd")  # inference (no grad), and forward+backward


class BenchError(ValueError):
    """An option or a file the benchmark cannot run with (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Options:
    """One benchmark run. ``None`` in ``sizes``, ``variants`` or ``dtypes`` means every size of the
    device, every variant of :data:`gatedrnn.SPECS`, and the device's default dtypes."""

    device: str = "cpu"
    sizes: list[str] | None = None
    variants: list[str] | None = None
    threads: list[int] = field(default_factory=lambda: [1, 2])
    passes: list[str] = field(default_factory=lambda: list(PASSES))
    repeats: int = 10
    warmup: int = 2
    reset_after: bool = True
    dtypes: list[str] | None = None
    baselines: bool = True
    memory: bool = True
    compile_time: bool = False
    json: str | None = None
    overwrite: bool = False

    def checked(self) -> Options:
        """The options with their defaults filled in; :class:`BenchError` naming the option for a bad one."""
        from .._specs import SPECS

        if self.device not in ("cpu", "cuda"):
            raise BenchError(f"--device: expected cpu or cuda, got {self.device!r}")
        sizes = CPU_SIZES if self.device == "cpu" else CUDA_SIZES
        names = list(sizes) if not self.sizes else list(self.sizes)
        for n in names:
            if n not in sizes:
                raise BenchError(f"--sizes: expected names from {list(sizes)} ({self.device}), got {n!r}")
        variants = list(SPECS) if not self.variants else list(self.variants)
        for v in variants:
            if v not in SPECS:
                raise BenchError(f"--variants: expected names from {list(SPECS)}, got {v!r}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise BenchError(f"--threads: expected thread counts of at least 1, got {self.threads}")
        for p in self.passes:
            if p not in PASSES:
                raise BenchError(f"--passes: expected {' and/or '.join(PASSES)}, got {p!r}")
        if not self.passes:
            raise BenchError(f"--passes: expected {' and/or '.join(PASSES)}, got nothing")
        if self.repeats < 1:
            raise BenchError(f"--repeats: expected at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise BenchError(f"--warmup: expected at least 0, got {self.warmup}")
        dtypes = (
            list(self.dtypes) if self.dtypes else (["float32"] if self.device == "cpu" else ["float32", "bfloat16"])
        )
        return replace(self, sizes=names, variants=variants, dtypes=dtypes)
