"""``torch.nn.GRU`` / ``torch.nn.GRUCell`` ⇄ gatedrnn, exact or refused.

``torch.nn.GRU`` is the classic GRU (``gru0``) with the reset applied after the recurrent matmul
(``reset_after=True``) and gate order ``r, z, n``: exactly gatedrnn's ``gru0`` parameter layout, so
the conversion copies tensors. Going the other way, a variant converts only if ``torch.nn.GRU``
computes the same function:

* ``gru0`` with ``reset_after=True``: a copy.
* ``gru1`` / ``gru2`` / ``gru3`` with ``reset_after=True``: the gates' missing inputs become zero
  blocks (``W_r = W_z = 0`` for gru1/gru2, plus ``b_r = b_z = 0`` for gru2, ``U_r = U_z = 0`` for
  gru3); ``b_hr = b_hz = 0``.
* ``mgu`` with ``reset_after=True``: ``r = f = σ(p)`` and ``z = 1 - f = σ(-p)``, so the ``z`` block
  is the negated ``f`` block (equal in exact arithmetic; float32 rounding of ``σ(-p)`` versus
  ``1 - σ(p)`` differs by about one ulp).
* refused: any variant with ``reset_after=False`` (``torch.nn.GRU`` has no such form), ``mingru``
  (linear candidate, no recurrent weights), and every option of :mod:`gatedrnn._options`
  (``layer_norm``, ``recurrent_dropout``, ``input_dropout``, ``zoneout``, ``weight_drop``):
  ``torch.nn.GRU`` has none of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._layers import GRU, GRUCell
from .._specs import SPECS, split

__all__ = ["from_torch", "to_torch"]


def _check_torchable(model: GRU | GRUCell) -> None:
    options = model.options.non_default()
    if options:
        listed = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(
            f"model: torch.nn.GRU has no {' and no '.join(options)}, so it cannot compute this layer ({listed}); "
            "expected a layer with every option off. gatedrnn.save and gatedrnn.export_onnx keep them"
        )
    spec = model.spec
    why = spec.torch_expressible(model.reset_after)
    if why is None:
        return
    hint = (
        " Export to ONNX (gatedrnn.export_onnx) or Keras (reset_after=False exists there) instead"
        if spec.torch_expressible(True) is None
        else ""
    )
    able = [name for name, s in SPECS.items() if s.torch_expressible(True) is None]
    raise ValueError(
        f"model: variant {spec.name!r} with reset_after={model.reset_after} cannot be expressed exactly by "
        f"torch.nn.GRU: {why}; expected reset_after=True and a variant in {', '.join(able)}.{hint}"
    )


def _torch_blocks(
    model: GRU | GRUCell, w_ih: Tensor, w_hh: Tensor | None, b_ih: Tensor | None, b_hh: Tensor | None
) -> dict[str, Tensor]:
    """One layer-direction's parameters in ``torch.nn.GRU``'s layout (r, z, n blocks)."""
    spec = model.spec
    h = model.hidden_size
    gh = spec.num_gates * h
    zeros = w_ih.new_zeros
    blocks = split(spec, w_ih, w_hh, b_ih, b_hh, h)
    assert blocks.w_n is not None and blocks.u_n is not None
    # the gates' blocks per source, as (r, z): absent sources become zeros
    wg = blocks.w_g if blocks.w_g is not None else zeros((gh, w_ih.shape[1]))
    ug = blocks.u_g if blocks.u_g is not None else zeros((gh, h))
    bg = blocks.b_g if blocks.b_g is not None else zeros(gh)
    if spec.coupled:  # MGU: r = σ(p), z = 1 - σ(p) = σ(-p)
        wg, ug, bg = torch.cat([wg, -wg]), torch.cat([ug, -ug]), torch.cat([bg, -bg])
    out = {"weight_ih": torch.cat([wg, blocks.w_n]), "weight_hh": torch.cat([ug, blocks.u_n])}
    if b_ih is not None:
        assert blocks.b_n is not None and blocks.b_hn is not None
        b_hg = blocks.b_hg if blocks.b_hg is not None else zeros(2 * h)
        out["bias_ih"] = torch.cat([bg, blocks.b_n])
        out["bias_hh"] = torch.cat([b_hg, blocks.b_hn])
    return out


def to_torch(model: GRU | GRUCell) -> nn.GRU | nn.GRUCell:
    """A ``torch.nn.GRU`` (or ``torch.nn.GRUCell``) computing exactly what ``model`` computes.

    Args:
        model: a :class:`gatedrnn.GRU` or :class:`gatedrnn.GRUCell` of variant ``gru0``, ``gru1``,
            ``gru2``, ``gru3`` or ``mgu`` with ``reset_after=True`` (see the module docstring for
            how the variants embed). Same device and dtype; the new module is in ``model``'s
            training mode.

    Raises:
        ValueError: ``mingru``, ``reset_after=False`` or an option that is on (no exact
            ``torch.nn.GRU`` equivalent).
    """
    if not isinstance(model, (GRU, GRUCell)):
        raise TypeError(f"model: expected a gatedrnn.GRU or gatedrnn.GRUCell, got {type(model).__name__}")
    _check_torchable(model)
    ref = model.weight_ih if isinstance(model, GRUCell) else model._reference_param()
    factory: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype}
    with torch.no_grad():
        if isinstance(model, GRUCell):
            cell = nn.GRUCell(model.input_size, model.hidden_size, bias=model.bias, **factory)
            blocks = _torch_blocks(model, model.weight_ih, model.weight_hh, model.bias_ih, model.bias_hh)
            for name, value in blocks.items():
                getattr(cell, name).copy_(value)
            cell.train(model.training)
            return cell
        out = nn.GRU(
            model.input_size,
            model.hidden_size,
            num_layers=model.num_layers,
            bias=model.bias,
            batch_first=model.batch_first,
            dropout=model.dropout,
            bidirectional=model.bidirectional,
            **factory,
        )
        for k, layer in enumerate(model.layer_weights()):
            for d, w in enumerate(layer):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                for name, value in _torch_blocks(model, w.w_ih, w.w_hh, w.b_ih, w.b_hh).items():
                    getattr(out, name + suffix).copy_(value)
        out.train(model.training)
        return out


def from_torch(module: nn.GRU | nn.GRUCell, *, engine: str = "auto") -> GRU | GRUCell:
    """A gatedrnn ``gru0`` layer (``reset_after=True``) with ``module``'s configuration and weights.

    Args:
        module: a ``torch.nn.GRU`` or ``torch.nn.GRUCell`` (the parameters are copied, not shared).
        engine: the engine of the new :class:`gatedrnn.GRU` (ignored for a cell).

    Raises:
        TypeError: ``module`` is not a ``torch.nn.GRU`` / ``torch.nn.GRUCell`` (e.g. an LSTM).
        ValueError: a ``torch.nn.GRU`` with ``proj_size`` (none exists today; kept for safety).
    """
    if isinstance(module, nn.GRUCell):
        ref = module.weight_ih
        cell = GRUCell(
            module.input_size,
            module.hidden_size,
            bias=module.bias,
            variant="gru0",
            reset_after=True,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            for name, p in cell.named_parameters():
                p.copy_(getattr(module, name))
        cell.train(module.training)
        return cell
    if not isinstance(module, nn.GRU) or getattr(module, "mode", "GRU") != "GRU":
        raise TypeError(f"module: expected a torch.nn.GRU or torch.nn.GRUCell, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module: expected proj_size=0 (gatedrnn has no projections), got {module.proj_size}")
    ref = module.weight_ih_l0
    out = GRU(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        dropout=float(module.dropout),
        bidirectional=module.bidirectional,
        variant="gru0",
        reset_after=True,
        engine=engine,
        device=ref.device,
        dtype=ref.dtype,
    )
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.copy_(getattr(module, name))
    out.train(module.training)
    return out
