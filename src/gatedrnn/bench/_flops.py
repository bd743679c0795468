"""How many floating-point operations each candidate's matrix products do: what the tables hold
the times against."""

from __future__ import annotations

__all__ = ["SGEMM_SIDE", "candidate_flops", "matmul_flops"]

# The host's large-product rate: one square float32 product of this side, timed with the candidates.
SGEMM_SIDE = 1024


def matmul_flops(variant: str, size: tuple[int, int, int, int], backward: bool) -> int:
    """Floating-point operations (2 per multiply-add) of the matrix products one call of the variant
    does: what the GEMM-only floor runs. Forward: the input projection over all steps and, where the
    candidate reads h, the recurrent product at every step. The backward does each twice more
    (input gradient and weight gradient of each product), so forward+backward is 3x the forward."""
    from .._specs import get_spec

    spec = get_spec(variant)
    batch, steps, inp, hid = size
    rows = steps * batch
    ihw = spec.ih_blocks() * hid
    hhw = spec.hh_blocks() * hid if spec.candidate_reads_h else 0
    forward = 2 * rows * inp * ihw + 2 * rows * hid * hhw
    return 3 * forward if backward else forward


def candidate_flops(name: str, size: tuple[int, int, int, int], backward: bool) -> int | None:
    """:func:`matmul_flops` of a benchmark candidate by its name (``torch.nn.GRU``, ``torch.nn.LSTM``,
    ``python cell``, ``<engine>:<variant>``, ``floor:<variant>``); None for one that is no recurrent
    layer (the large product itself)."""
    if name in ("torch.nn.GRU", "python cell"):
        return matmul_flops("gru0", size, backward)
    if name == "torch.nn.LSTM":
        batch, steps, inp, hid = size
        forward = 2 * steps * batch * (inp + hid) * 4 * hid  # four blocks of x and of h
        return 3 * forward if backward else forward
    kind, _, variant = name.partition(":")
    if kind in ("fused", "triton", "floor") and variant:
        return matmul_flops(variant, size, backward)
    return None
