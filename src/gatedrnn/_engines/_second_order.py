"""Second-order gradients for the engines whose backward is hand-written (fused, triton, scan).

An engine's backward computes the first-order gradients with its own kernels, which have no
derivative of their own. When those gradients are differentiated again (``create_graph=True``
then a second backward: gradient penalties, Hessian-vector products, MAML), :func:`first_order`
supplies the second derivative by recomputing the layer with its reference equations under
autograd and differentiating that twice:

.. math::

    \\frac{\\partial}{\\partial \\theta} \\Big\\langle v, \\frac{\\partial L}{\\partial \\theta} \\Big\\rangle
    \\quad\\text{with}\\quad
    \\frac{\\partial L}{\\partial \\theta} = \\mathrm{vjp}_{\\text{reference}}(\\theta;\\, \\partial L / \\partial y).

Nothing changes without ``create_graph``: the first-order gradients are the engine's (same
speed, no graph). With it they are still the engine's numbers, and only a backward through them
runs the reference (at its speed, which is the price of a second derivative here). Because the
recomputation starts from aliases of the saved inputs, third and higher orders work too.

The same holds for a backward that autograd runs under vmap (``is_grads_batched=True``, and
``torch.autograd.functional.jacobian``/``hessian`` with ``vectorize=True``): the incoming
gradients are then batched tensors, which the kernels cannot read, so the first-order gradients
come from the reference's vector-Jacobian product, batched by vmap like any torch operation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["first_order"]

Grads = tuple[Tensor | None, ...]


def first_order(
    engine: Callable[[], Grads],
    reference: Callable[..., Sequence[Tensor]],
    grad_outputs: Sequence[Tensor],
    inputs: Sequence[Tensor | None],
) -> Grads:
    """The gradients a custom Function's backward returns, differentiable under ``create_graph``.

    Call it from ``backward``:

    Args:
        engine: computes the first-order gradients with the engine's kernels, one per entry of
            ``inputs`` (None where not needed). It is always called with grad mode off (directly
            in a plain backward, else from a Function's forward), so it records no graph and
            needs no ``torch.no_grad`` or detaching of its own.
        reference: ``reference(*inputs)`` gives the forward's outputs by differentiable torch
            operations (the same maths as the engine's forward).
        grad_outputs: the backward's incoming gradients, one per output of ``reference``.
        inputs: the forward's differentiable inputs as saved (not detached copies: a graph built
            on them connects the second derivative to whatever produced them); None if absent.

    Returns:
        ``engine()``'s gradients; under ``create_graph=True`` they carry a graph whose backward
        is the reference's second derivative.
    """
    if _batched(grad_outputs):  # a vmapped backward: the kernels cannot read batched tensors
        return _reference_vjp(reference, grad_outputs, inputs)
    if not torch.is_grad_enabled():  # a plain backward: the engine alone
        return engine()
    return _Twice.apply(engine, reference, len(grad_outputs), *grad_outputs, *inputs)  # type: ignore[no-any-return]


def _batched(tensors: Sequence[Tensor | None]) -> bool:
    """Whether these incoming gradients are batched by the vmap that ``is_grads_batched=True``
    puts around a backward (autograd's own, legacy batched tensors)."""
    if torch.compiler.is_compiling():  # Dynamo traces the scan's backward, and cannot trace the check
        return False
    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return check is not None and any(t is not None and check(t) for t in tensors)


def _reference_vjp(
    reference: Callable[..., Sequence[Tensor]], grad_outputs: Sequence[Tensor], inputs: Sequence[Tensor | None]
) -> Grads:
    """The first-order gradients as the reference's vector-Jacobian product (torch operations,
    which vmap batches), with ``create_graph`` when grad mode is on."""
    higher = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = _leaves(inputs)
        outs = reference(*leaves)
        wrt = [i for i, t in enumerate(leaves) if t is not None]
        got = torch.autograd.grad(
            outs, [leaves[i] for i in wrt], grad_outputs, allow_unused=True, materialize_grads=True, create_graph=higher
        )
    out: list[Tensor | None] = [None] * len(leaves)
    for i, g in zip(wrt, got, strict=True):
        out[i] = g
    return tuple(out)


def _leaves(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Local aliases of saved tensors to differentiate the reference at (call with grad mode on):
    a view of those that carry a gradient (autograd.grad stops at it, and a graph built on it still
    reaches what made the tensor), a detached leaf of the others."""
    return [t if t is None else t.view_as(t) if t.requires_grad else t.detach().requires_grad_() for t in tensors]


class _Twice(torch.autograd.Function):
    """Forward: the engine's first-order gradients. Backward: their derivative by the reference."""

    @staticmethod
    def forward(ctx, engine, reference, n_out, *tensors):  # type: ignore[override]
        ctx.reference, ctx.n_out = reference, n_out
        ctx.save_for_backward(*tensors)
        return tuple(engine())

    @staticmethod
    def backward(ctx, *upstream):  # type: ignore[override]
        tensors = ctx.saved_tensors
        n_out: int = ctx.n_out
        need = ctx.needs_input_grad[3:]
        higher = torch.is_grad_enabled()  # create_graph again: a third order is coming
        with torch.enable_grad():
            # Local aliases: autograd.grad below then stops at them, so this returns only this
            # node's part (never a second pass through the graphs that made the inputs), and the
            # graph it builds under create_graph still reaches those (third order and beyond).
            # Tensors that carry no gradient enter as detached leaves.
            leaves = _leaves(tensors)
            gys, ins = leaves[:n_out], leaves[n_out:]
            outs = ctx.reference(*ins)
            # the first-order gradients again, by the reference, as functions of the inputs and gys
            wrt = [i for i, (t, u) in enumerate(zip(ins, upstream, strict=True)) if t is not None and u is not None]
            firsts = torch.autograd.grad(
                outs, [ins[i] for i in wrt], gys, create_graph=True, allow_unused=True, materialize_grads=True
            )
            # then the vector-Jacobian product of those with the incoming gradients
            targets = [i for i, t in enumerate(leaves) if need[i] and t is not None]
            pairs = [(f, upstream[i]) for f, i in zip(firsts, wrt, strict=True) if f.requires_grad]
            second: Sequence[Tensor | None] = [None] * len(targets)
            if pairs and targets:
                second = torch.autograd.grad(
                    [f for f, _ in pairs],
                    [leaves[i] for i in targets],
                    [u for _, u in pairs],
                    allow_unused=True,
                    create_graph=higher,
                )
        out: list[Tensor | None] = [None] * len(leaves)
        for i, g in zip(targets, second, strict=True):
            out[i] = g
        return (None, None, None, *out)
