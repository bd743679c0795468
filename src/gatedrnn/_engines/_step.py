"""The fused engine's short calls: a cell's step, and a layer's call of a few steps, as one compiled
call forward and one backward (:func:`gatedrnn._engines._kernels.step_kernels`).

A layer call of the long form (:mod:`gatedrnn._engines._fused`) spends tens of microseconds in
Python around its compiled loop: the projection and the weight gradients as torch products,
buffers from the pool, NumPy views of every tensor. For a few steps that is most of the call.
Here the compiled functions take the tensors' addresses, project the input, run the same loops and
produce the weight and bias gradients themselves; what is left in Python is allocating the outputs
(always fresh tensors) and, when something needs a gradient, one ``torch.autograd.Function`` node
per call, whose backward is the hand-written one: a Python loop of cell calls trains without a
graph of dozens of small nodes per step.

A :class:`Plan` holds what depends only on the sizes, the data type and the variant (kernels,
shapes, the form of the backward's products), never on parameter values. The layers cache, per
module, what runs a call (:func:`cell_runner`, :func:`layer_runner`) under a key of exactly what
it depends on: the tensors' shapes, data types, devices, layouts and ``requires_grad``, grad mode,
and the parameters' addresses (a runner without gradients holds those addresses, never a value
read from the parameters: ``param.data.copy_()`` is seen at the next call).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import _reference
from .._specs import Spec
from ._second_order import first_order

__all__ = ["SHORT_MAX_STEPS", "Plan", "cell", "cell_runner", "layer", "layer_runner", "plan"]

# Layer calls of up to this many steps run the one-call kernels (when the long form would not split
# their rows across threads: FusedEngine.short); longer ones the long form (docs/step.md, "Dispatch").
SHORT_MAX_STEPS = int(os.environ.get("GATEDRNN_SHORT_MAX_STEPS", 15))

Runner = Callable[[Tensor, Tensor | None, Sequence[Tensor | None]], Any]


def _at(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class Plan:
    """A short call's set-up for one size: kernels, sizes, the shapes it returns.

    Attributes:
        forward, backward: the compiled pair of this wiring and data type.
        gemm: the address of the BLAS ``?gemm`` the kernels call.
        steps, batch, inp, hid: ``T``, ``B``, ``m``, ``H``.
        y_shape: the outputs' shape as returned (``[T, B, H]``, or a shape of the same memory
            order: ``[B, 1, H]``, ``[T, H]``), or None for a cell (its output is the last state).
        hn_shape: the last state's shape as returned (``[B, H]``, ``[1, B, H]``, ``[H]`` ...).
        saved: elements of the flat buffer the forward saves for the backward.
        small: the backward's per-step products run as compiled row loops (a few rows).
    """

    __slots__ = (
        "backward",
        "batch",
        "dtype",
        "forward",
        "gemm",
        "hid",
        "hn_shape",
        "inp",
        "reset_after",
        "saved",
        "small",
        "spec",
        "steps",
        "y_shape",
    )

    def __init__(
        self,
        spec: Spec,
        reset_after: bool,
        dtype: torch.dtype,
        steps: int,
        batch: int,
        inp: int,
        hid: int,
        y_shape: tuple[int, ...] | None,
        hn_shape: tuple[int, ...],
    ) -> None:
        from . import _fused, _kernels

        ra = bool(reset_after and spec.has_reset)
        self.forward, self.backward = _kernels.step_kernels(
            spec.wiring(reset_after), dtype == torch.float32, spec.gates_have_bias, bool(spec.torch_hh_bias and ra)
        )
        self.spec, self.reset_after, self.dtype = spec, reset_after, dtype
        self.gemm = int(_fused._blas_fns(dtype, False)[0])
        self.steps, self.batch, self.inp, self.hid = steps, batch, inp, hid
        self.y_shape, self.hn_shape = y_shape, hn_shape
        gconst = not (spec.gates_read_x or spec.gates_read_h)
        self.saved = int(_kernels.saved_size(steps, batch, hid, spec.num_gates * hid, gconst, ra))
        self.small = _fused._small(spec.candidate_reads_h, batch, hid, spec.hh_blocks() * hid)

    def run(
        self,
        x: Tensor,
        h0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor | None,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        lengths: Tensor | None,
        y: Tensor | None,
        hn: Tensor,
        saved: Tensor | None,
    ) -> None:
        """The forward kernel on these tensors (C-contiguous, of the plan's sizes and data type)."""
        self.forward(
            self.gemm,
            self.steps,
            self.batch,
            self.inp,
            self.hid,
            x.data_ptr(),
            _at(h0),
            w_ih.data_ptr(),
            _at(w_hh),
            _at(b_ih),
            _at(b_hh),
            _at(lengths),
            _at(y),
            hn.data_ptr(),
            _at(saved),
            0,
        )


# The Plan of these sizes, made once: it holds nothing but sizes and kernels.
plan = functools.lru_cache(maxsize=256)(Plan)


class _Short(torch.autograd.Function):
    """A short call (or a cell's step) that something needs the gradient of: one node, one compiled
    call each way. Outputs ``(y, h_n)``, or ``h_n`` alone for a cell (``plan.y_shape`` None).
    ``x`` and ``h0`` come as the caller has them (any shape of the plan's memory order)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, p):  # type: ignore[override]
        saved = torch.empty(p.saved, dtype=p.dtype)
        y = None if p.y_shape is None else torch.empty(p.y_shape, dtype=p.dtype)
        hn = torch.empty(p.hn_shape, dtype=p.dtype)
        p.run(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, hn, saved)
        ctx.plan = p
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, saved)
        return hn if y is None else (y, hn)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        saved = ctx.saved_tensors  # unpacked once (non-reentrant checkpointing allows one unpack)
        p: Plan = ctx.plan
        lengths = saved[6]

        def reference(*ins: Tensor | None) -> tuple[Tensor, ...]:
            return _reference_outputs(p, lengths, *ins)  # type: ignore[arg-type]

        out = first_order(lambda: _backward(ctx, saved, grads), reference, grads, saved[:6])
        return (*out, None, None)


def _backward(
    ctx: Any, saved: tuple[Tensor | None, ...], grads: tuple[Tensor | None, ...]
) -> tuple[Tensor | None, ...]:
    """Gradients of ``(x, h0, w_ih, w_hh, b_ih, b_hh)`` by the backward kernel (grad mode is off:
    see :func:`first_order`); each gradient a fresh tensor shaped as its input."""
    p: Plan = ctx.plan
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, flat = saved
    gy, ghn = (None, grads[0]) if p.y_shape is None else grads
    # (kept in variables: the kernel reads them through their addresses)
    gy, ghn = _contiguous(gy), _contiguous(ghn)
    need = ctx.needs_input_grad
    assert x is not None and w_ih is not None and flat is not None
    dx = torch.empty_like(x) if need[0] else None
    dh0 = torch.empty_like(h0) if need[1] and h0 is not None else None
    dw_ih = torch.empty_like(w_ih) if need[2] else None
    dw_hh = torch.empty_like(w_hh) if need[3] and w_hh is not None else None
    db_ih = torch.empty_like(b_ih) if need[4] and b_ih is not None else None
    db_hh = torch.empty_like(b_hh) if need[5] and b_hh is not None else None
    p.backward(
        p.gemm,
        p.steps,
        p.batch,
        p.inp,
        p.hid,
        x.data_ptr(),
        w_ih.data_ptr(),
        _at(w_hh),
        _at(lengths),
        flat.data_ptr(),
        _at(gy),
        _at(ghn),
        _at(dx),
        _at(dh0),
        _at(dw_ih),
        _at(dw_hh),
        _at(db_ih),
        _at(db_hh),
        p.small,
        0,
    )
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


def _reference_outputs(
    p: Plan,
    lengths: Tensor | None,
    x: Tensor,
    h0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
) -> tuple[Tensor, ...]:
    """The plan's outputs by the reference engine, in the plan's shapes (second derivatives)."""
    h = x.new_zeros((p.batch, p.hid)) if h0 is None else h0.reshape(p.batch, p.hid)
    xs = x.reshape(p.steps, p.batch, p.inp)
    y, hn = _reference.run_layer(p.spec, p.reset_after, xs, h, w_ih, w_hh, b_ih, b_hh, lengths)
    if p.y_shape is None:
        return (hn.reshape(p.hn_shape),)
    return y.reshape(p.y_shape), hn.reshape(p.hn_shape)


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _call(
    p: Plan,
    x: Tensor,
    h0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
) -> Any:
    """The plan on these tensors: through :class:`_Short` when something needs a gradient."""
    args = (x.contiguous(), _contiguous(h0), w_ih.contiguous(), _contiguous(w_hh), _contiguous(b_ih), _contiguous(b_hh))
    if _needs_grad(*args):
        return _Short.apply(*args, lengths, p)
    y = None if p.y_shape is None else torch.empty(p.y_shape, dtype=p.dtype)
    hn = torch.empty(p.hn_shape, dtype=p.dtype)
    p.run(*args, lengths, y, hn, None)
    return hn if y is None else (y, hn)


def layer(
    spec: Spec,
    reset_after: bool,
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The fused engine's ``layer`` for a short call (``x`` ``[T, B, m]``, ``h0`` ``[B, H]``, CPU
    float32/float64, checked by the caller; ``lengths`` int64 or None): ``(y [T, B, H], h_n [B, H])``."""
    steps, batch, inp = x.shape
    hid = h0.shape[-1]
    p = plan(spec, reset_after, x.dtype, steps, batch, inp, hid, (steps, batch, hid), (batch, hid))
    return _call(p, x, h0, w_ih, w_hh, b_ih, b_hh, lengths)  # type: ignore[no-any-return]


def cell(
    spec: Spec,
    reset_after: bool,
    x: Tensor,
    h: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
) -> Tensor:
    """One step of a cell (``x`` ``[B, m]`` or ``[m]``, ``h`` of the output's shape or None for
    zeros; CPU float32/float64, checked by the caller): ``h'``, shaped as ``h``."""
    return _call(_cell_plan(spec, reset_after, x, w_ih), x, h, w_ih, w_hh, b_ih, b_hh, None)  # type: ignore[no-any-return]


def _cell_plan(spec: Spec, reset_after: bool, x: Tensor, w_ih: Tensor) -> Plan:
    """The plan of a cell's step on ``x`` (``[B, m]``, or ``[m]`` unbatched)."""
    batch = 1 if x.dim() == 1 else x.shape[0]
    hid = w_ih.shape[0] // spec.ih_blocks()
    return plan(spec, reset_after, x.dtype, 1, batch, x.shape[-1], hid, None, (hid,) if x.dim() == 1 else (batch, hid))


def cell_runner(
    spec: Spec, reset_after: bool, x: Tensor, h: Tensor | None, params: Sequence[Tensor | None], grad: bool
) -> Runner:
    """What a :class:`gatedrnn.GRUCell` call like this one runs while its cache key holds (see the
    module docstring): ``run(x, h, params)`` -> ``h'``, for inputs of the same shapes, data type,
    layout and ``requires_grad``, the same grad mode, and ``params`` (``w_ih, w_hh, b_ih, b_hh``)
    at the same addresses. ``grad``: something needs a gradient."""
    p = _cell_plan(spec, reset_after, x, params[0])  # type: ignore[arg-type]
    copy_x, copy_h = not x.is_contiguous(), h is not None and not h.is_contiguous()
    if grad or copy_x or copy_h:

        def run(x: Tensor, h: Tensor | None, params: Sequence[Tensor | None]) -> Tensor:
            return _call(p, x, h, *params, None)  # type: ignore[no-any-return]

        return run
    # the common case without gradients: one allocation and the kernel's call
    fwd, gemm, batch, inp, hid, out_shape, dtype = p.forward, p.gemm, p.batch, p.inp, p.hid, p.hn_shape, p.dtype
    wih, whh, bih, bhh = (_at(t) for t in params)

    def step(x: Tensor, h: Tensor | None, params: Sequence[Tensor | None]) -> Tensor:
        out = torch.empty(out_shape, dtype=dtype)
        hp = 0 if h is None else h.data_ptr()
        fwd(gemm, 1, batch, inp, hid, x.data_ptr(), hp, wih, whh, bih, bhh, 0, 0, out.data_ptr(), 0, 0)
        return out

    return step


def layer_runner(
    spec: Spec,
    reset_after: bool,
    x: Tensor,
    hx: Tensor | None,
    params: Sequence[Tensor | None],
    batch_first: bool,
    grad: bool,
) -> Runner:
    """What a one-layer, one-direction :class:`gatedrnn.GRU` call like this one (a tensor input of
    ``[T, B, m]``, ``[B, T, m]`` with ``batch_first``, or ``[T, m]``; no lengths, resets or
    options) runs while its cache key holds, as :func:`cell_runner`: ``run(x, hx, params)`` ->
    ``(output, h_n)`` shaped as the layer returns them."""
    unbatched = x.dim() == 2
    if unbatched:
        steps, batch = x.shape[0], 1
    else:
        steps, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    inp = x.shape[-1]
    hid = params[0].shape[0] // spec.ih_blocks()  # type: ignore[union-attr]
    hn_shape = (1, hid) if unbatched else (1, batch, hid)
    # [B, T, m] is [T, B, m]'s memory order when T or B is 1; else the input is transposed
    transpose = batch_first and not unbatched and steps > 1 and batch > 1
    if unbatched:
        y_shape: tuple[int, ...] = (steps, hid)
    elif batch_first and not transpose:
        y_shape = (batch, steps, hid)
    else:
        y_shape = (steps, batch, hid)
    p = plan(spec, reset_after, x.dtype, steps, batch, inp, hid, y_shape, hn_shape)
    if grad or transpose or not x.is_contiguous() or (hx is not None and not hx.is_contiguous()):

        def run(x: Tensor, hx: Tensor | None, params: Sequence[Tensor | None]) -> tuple[Tensor, Tensor]:
            if transpose:
                y, hn = _call(p, x.transpose(0, 1), hx, *params, None)
                return y.transpose(0, 1), hn
            return _call(p, x, hx, *params, None)  # type: ignore[no-any-return]

        return run
    fwd, gemm, dtype = p.forward, p.gemm, p.dtype
    wih, whh, bih, bhh = (_at(t) for t in params)

    def forward(x: Tensor, hx: Tensor | None, params: Sequence[Tensor | None]) -> tuple[Tensor, Tensor]:
        y = torch.empty(y_shape, dtype=dtype)
        hn = torch.empty(hn_shape, dtype=dtype)
        hp = 0 if hx is None else hx.data_ptr()
        fwd(gemm, steps, batch, inp, hid, x.data_ptr(), hp, wih, whh, bih, bhh, 0, y.data_ptr(), hn.data_ptr(), 0, 0)
        return y, hn

    return forward
