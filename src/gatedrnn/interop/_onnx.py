"""ONNX export of every variant, with a graph whose size does not depend on the sequence length.

* ``gru0`` → the ONNX ``GRU`` operator (gate order ``z, r, h``; ``linear_before_reset=1`` for
  ``reset_after=True``, ``0`` for ``reset_after=False``), one operator per layer (both directions
  in one operator), layers chained with ``[T, D, B, H] → [T, B, D*H]`` in between.
* every other variant (and ``gru0`` with ``use_gru_op=False``, or with an option the operator
  lacks: ``layer_norm``, ``zoneout``, resets) → one ``Scan`` per layer and direction whose body
  is one time step (the equations of :func:`gatedrnn._reference.step` and
  :func:`gatedrnn._reference.carry`). The input projection of all steps is one ``MatMul`` (and
  its layer norm) outside the loop; the reverse direction scans its inputs and writes its outputs
  backwards (``scan_input_directions`` / ``scan_output_directions``), so outputs stay in time
  order as in ``torch.nn.GRU``.

The graph computes the layer in eval mode (:mod:`gatedrnn._options`): ``layer_norm`` as
``LayerNormalization`` (opset >= 17; written out as ``ReduceMean``, ``Sub``, ``Div``, ``Sqrt``
below), ``zoneout`` as its expectation ``p h(t-1) + (1 - p) h'(t)``, and the random options
(``dropout``, ``input_dropout``, ``recurrent_dropout``, ``weight_drop``) as the identity.

Sequence length and batch are dynamic (``dim_param`` ``seq_len`` and ``batch``). With
``lengths=True`` the graph takes per-sequence lengths (padded batches, exact for every variant);
otherwise every sequence runs the full length. With ``resets=True`` it takes the forward's
``resets`` (episode boundaries). Weights are the layer's current values, stored as float32
initializers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._layers import GRU, GRUCell
from .._options import LN_EPS
from .._specs import Spec, split

__all__ = ["export_onnx"]


class _Graph:
    """Nodes, initializers and unique names for one (sub)graph under construction."""

    def __init__(self, helper: Any, numpy_helper: Any, opset: int, prefix: str = "") -> None:
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def name(self, base: str) -> str:
        self._count += 1
        return f"{self.prefix}{base}_{self._count}"

    def const(self, base: str, value: np.ndarray) -> str:
        """An initializer; ``value`` keeps its dtype (float32 weights, int64 shapes)."""
        name = self.name(base)
        value = np.array(value, copy=True, order="C")  # (np.ascontiguousarray would make a scalar 1-D)
        self.inits.append(self.numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to("cpu", torch.float32).numpy().copy()


def _blocks(a: np.ndarray, h: int) -> list[np.ndarray]:
    return [a[i * h : (i + 1) * h] for i in range(a.shape[0] // h)]


class _StepWeights:
    """One layer-direction's weights as initializer names in the outer graph.

    ``proj`` ([I, K]) and ``proj_bias`` ([K] or None) give the input side of every step at once,
    ``LN(x @ proj; ln_ih) + proj_bias``; ``parts`` is the number of H-wide blocks it splits into
    (each gate that reads ``x``, then the candidate). The recurrent side: ``u_h`` ([H, k*H] or
    None), the one product of ``h(t-1)`` a step needs before the gates (every block of ``U`` in
    the reset-after form, the gates' blocks in the reset-before form), normalised with ``ln_h``
    and split into ``h_parts`` blocks, the last of which is the candidate's when ``cand_in_u_h``;
    ``u_rh`` ([H, H] or None) and ``ln_rh``: the reset-before candidate's ``U_n (r ⊙ h)``.
    ``b_gate`` (bias of gates that do not read ``x``) and ``b_hn`` are added after the norms.
    Each ``ln_*`` is ``(gain, shift)`` or None (:mod:`gatedrnn._options`).
    """

    def __init__(
        self,
        g: _Graph,
        spec: Spec,
        reset_after: bool,
        weight_ih: Tensor,
        weight_hh: Tensor | None,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        h: int,
        tag: str,
        ln_ih: tuple[Tensor, Tensor] | None = None,
        ln_hh: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        w_ih, w_hh, b_ih, b_hh = _np(weight_ih), _np(weight_hh), _np(bias_ih), _np(bias_hh)
        assert w_ih is not None
        blocks = split(spec, w_ih, w_hh, b_ih, b_hh, h)
        gbias = blocks.gate_bias()  # gru0's b_hr, b_hz fold into the gates' bias

        def norm(
            name: str, ln: tuple[Tensor, Tensor] | None, start: int = 0, stop: int | None = None
        ) -> tuple[str, str] | None:
            """The layer norm's gain and shift ``[start:stop]`` as initializers, or None."""
            if ln is None:
                return None
            gain, shift = (v.detach().to("cpu", torch.float32).numpy()[start:stop] for v in ln)
            return g.const(f"{tag}_ln_gain_{name}", gain), g.const(f"{tag}_ln_shift_{name}", shift)

        self.proj = g.const(f"{tag}_W_ih_T", w_ih.T)
        self.ln_ih = norm("ih", ln_ih)
        bias = blocks.b_n
        if spec.gates_read_x and (gbias is not None or bias is not None):
            zero = np.zeros(h, np.float32)
            bias = np.concatenate(
                [gbias if gbias is not None else np.tile(zero, spec.num_gates), bias if bias is not None else zero]
            )
        self.proj_bias = None if bias is None else g.const(f"{tag}_b_proj", bias)
        self.parts = spec.num_gates + 1 if spec.gates_read_x else 1
        self.gate_from_x = spec.gates_read_x
        self.gate_from_h = blocks.u_g is not None
        gh = spec.num_gates * h
        # reset-after: one product and one normalised group for every block of U (as the reference)
        self.cand_in_u_h = bool(reset_after and spec.has_reset)
        u_h = w_hh if self.cand_in_u_h else blocks.u_g
        self.u_h = g.const(f"{tag}_U_T", u_h.T) if u_h is not None else None
        self.ln_h = norm("hh", ln_hh, 0, None if self.cand_in_u_h else gh) if u_h is not None else None
        self.h_parts = (spec.num_gates if self.gate_from_h else 0) + (1 if self.cand_in_u_h else 0)
        reset_before = blocks.u_n is not None and not self.cand_in_u_h
        self.u_rh = g.const(f"{tag}_U_n_T", blocks.u_n.T) if reset_before else None
        self.ln_rh = norm("hh_n", ln_hh, -h) if reset_before else None
        self.b_gate = (
            [g.const(f"{tag}_b_{spec.gates[j]}", b) for j, b in enumerate(_blocks(gbias, h))]
            if (not spec.gates_read_x and gbias is not None)
            else None
        )
        self.b_hn = g.const(f"{tag}_b_hn", blocks.b_hn) if blocks.b_hn is not None else None


def _layer_norm(g: _Graph, a: str, ln: tuple[str, str] | None) -> str:
    """``LN(a; gain, shift)`` over the last axis (:mod:`gatedrnn._options`), or ``a`` unchanged
    when ``ln`` is None: the ``LayerNormalization`` operator from opset 17, written out before."""
    if ln is None:
        return a
    gain, shift = ln
    if g.opset >= 17:
        return g.op("LayerNormalization", [a, gain, shift], axis=-1, epsilon=LN_EPS)
    mean = g.op("ReduceMean", [a], axes=[-1], keepdims=1)
    d = g.op("Sub", [a, mean])
    var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=[-1], keepdims=1)  # biased, as torch
    std = g.op("Sqrt", [g.op("Add", [var, g.const("eps", np.array(LN_EPS, np.float32))])])
    return g.op("Add", [g.op("Mul", [g.op("Div", [d, std]), gain]), shift])


def _split(g: _Graph, a: str, parts: int, h: int) -> list[str]:
    """``a`` cut into ``parts`` blocks of ``h`` along the last axis."""
    if parts == 1:
        return [a]
    return g.op("Split", [a, g.const("split", np.full(parts, h, np.int64))], n_out=parts, axis=-1)


def _project(g: _Graph, sw: _StepWeights, x: str, h: int) -> list[str]:
    """Input side of every step at once: one MatMul (its layer norm, + bias), then one part per
    gate that reads x and one for the candidate."""
    xp = _layer_norm(g, g.op("MatMul", [x, sw.proj]), sw.ln_ih)
    if sw.proj_bias is not None:
        xp = g.op("Add", [xp, sw.proj_bias])
    return _split(g, xp, sw.parts, h)


def _step(g: _Graph, spec: Spec, sw: _StepWeights, h: str, xs: list[str], one: str, hid: int) -> str:
    """Nodes of one time step (:func:`gatedrnn._reference.step`); ``xs`` are the step's
    input-side parts (gates reading x, then candidate), ``h`` is h(t-1) ``[B, H]``."""
    n_gates = spec.num_gates
    gate_x = xs[:-1] if sw.gate_from_x else [None] * n_gates
    nx = xs[-1]
    gate_h: list[str | None] = [None] * n_gates
    hn = None
    if sw.u_h is not None:
        ah = _split(g, _layer_norm(g, g.op("MatMul", [h, sw.u_h]), sw.ln_h), sw.h_parts, hid)
        if sw.cand_in_u_h:
            hn = ah.pop()
            if sw.b_hn is not None:
                hn = g.op("Add", [hn, sw.b_hn])
        if sw.gate_from_h:
            gate_h = list(ah)
    gates = []
    for j in range(n_gates):
        terms = [t for t in (gate_x[j], gate_h[j]) if t is not None]
        if sw.b_gate is not None:
            terms.append(sw.b_gate[j])
        pre = terms[0]
        for t in terms[1:]:
            pre = g.op("Add", [pre, t])
        gates.append(g.op("Sigmoid", [pre]))
    if spec.coupled:  # MGU: r = f, z = 1 - f
        r, z = gates[0], g.op("Sub", [one, gates[0]])
    elif n_gates == 2:
        r, z = gates
    else:
        r, z = None, gates[0]
    npre = nx
    if hn is not None:
        assert r is not None
        npre = g.op("Add", [nx, g.op("Mul", [r, hn])])
    elif sw.u_rh is not None:
        assert r is not None
        npre = g.op("Add", [nx, _layer_norm(g, g.op("MatMul", [g.op("Mul", [r, h]), sw.u_rh]), sw.ln_rh)])
    n = g.op("Tanh", [npre]) if spec.candidate_tanh else npre
    keep = g.op("Mul", [g.op("Sub", [one, z]), n])
    return g.op("Add", [keep, g.op("Mul", [z, h])])


def _carry(g: _Graph, h_prev: str, h_new: str, zoneout: float) -> str:
    """:func:`gatedrnn._reference.carry` in eval: zoneout's expectation ``p h(t-1) + (1 - p) h'(t)``."""
    if not zoneout:
        return h_new
    keep = g.op("Mul", [h_prev, g.const("zoneout", np.array(zoneout, np.float32))])
    return g.op("Add", [keep, g.op("Mul", [h_new, g.const("zoneout_1m", np.array(1.0 - zoneout, np.float32))])])


def _scan_direction(
    g: _Graph,
    onnx: Any,
    spec: Spec,
    sw: _StepWeights,
    x: str,
    h0: str,
    reverse: bool,
    hid: int,
    mask: str | None,
    resets: str | None,
    zoneout: float,
) -> tuple[str, str]:
    """One layer-direction as a Scan over the projected inputs; returns ``(y [T, B, H], h_n [B, H])``.

    ``mask`` (``[T, B, 1]`` bool, ``t < lengths[b]``) or None: where it is false the state is kept
    and the output is zero. Padding sits at the end of each sequence, so the reverse scan keeps
    ``h0`` through the padding and starts at ``lengths[b] - 1``: the reverse within each length.
    ``resets`` (``[T, B, 1]`` bool, this direction's, in forward time) or None: where true the
    state is zero before the step. ``zoneout``: its probability (0: off).
    """
    helper = onnx.helper
    parts = _project(g, sw, x, hid)
    body = _Graph(helper, onnx.numpy_helper, g.opset, prefix=g.name("body") + "/")
    f32 = onnx.TensorProto.FLOAT
    h_in = body.name("h_prev")
    x_in = [body.name("x_t") for _ in parts]
    one = body.const("one", np.array(1.0, np.float32))
    body_inputs = [helper.make_tensor_value_info(n, f32, [None, None]) for n in [h_in, *x_in]]
    scan_inputs = [h0, *parts]
    h_prev = h_in
    if resets is not None:
        r_in = body.name("reset_t")
        body_inputs.append(helper.make_tensor_value_info(r_in, onnx.TensorProto.BOOL, [None, 1]))
        scan_inputs.append(resets)
        h_prev = body.op("Where", [r_in, body.const("zero", np.array(0.0, np.float32)), h_in])
    h_new = _carry(body, h_prev, _step(body, spec, sw, h_prev, x_in, one, hid), zoneout)
    if mask is None:
        y_t = body.op("Identity", [h_new])
    else:
        m_in = body.name("alive_t")
        body_inputs.append(helper.make_tensor_value_info(m_in, onnx.TensorProto.BOOL, [None, 1]))
        scan_inputs.append(mask)
        y_t = body.op("Where", [m_in, h_new, body.const("zero", np.array(0.0, np.float32))])
        h_new = body.op("Where", [m_in, h_new, h_in])
    graph = helper.make_graph(
        body.nodes,
        body.prefix + "step",
        body_inputs,
        [helper.make_tensor_value_info(n, f32, [None, hid]) for n in (h_new, y_t)],
        initializer=body.inits,
    )
    direction = 1 if reverse else 0
    n_scan = len(scan_inputs) - 1
    h_n, y = g.op(
        "Scan",
        scan_inputs,
        n_out=2,
        body=graph,
        num_scan_inputs=n_scan,
        scan_input_directions=[direction] * n_scan,
        scan_output_directions=[direction],
    )
    return y, h_n


def _reverse_resets(g: _Graph, onnx: Any, resets: str, mask: str | None) -> str:
    """The reverse direction's resets (:func:`gatedrnn._functional.reverse_resets`), ``[T, B, 1]``
    bool in forward time: a segment that starts at ``t`` ends at ``t - 1``, where the reverse
    direction starts it afresh, so ``rev[t] = resets[t + 1]`` within each length, else false."""
    if mask is not None:
        resets = g.op("And", [resets, mask])
    rest = g.op(
        "Slice",
        [
            resets,
            g.const("one_i", np.array([1], np.int64)),
            g.const("end", np.array([np.iinfo(np.int64).max], np.int64)),
            g.const("axis0", np.array([0], np.int64)),
        ],
    )
    one = g.const("one_i", np.array([1], np.int64))
    batch_1 = g.op("Slice", [g.op("Shape", [resets]), one, g.const("three_i", np.array([3], np.int64))])  # [B, 1]
    row = g.op("Concat", [one, batch_1], axis=0)
    false = g.op("ConstantOfShape", [row], value=g.helper.make_tensor("false", onnx.TensorProto.BOOL, [1], [False]))
    return g.op("Concat", [rest, false], axis=0)


def _alive_mask(g: _Graph, x: str, lengths: str) -> str:
    """``[T, B, 1]`` bool: ``t < lengths[b]``."""
    steps = g.op("Gather", [g.op("Shape", [x]), g.const("zero_i", np.array(0, np.int64))], axis=0)
    t = g.op("Range", [g.const("zero_i", np.array(0, np.int64)), steps, g.const("one_i", np.array(1, np.int64))])
    t = g.op("Unsqueeze", [t, g.const("axis1", np.array([1], np.int64))])
    alive = g.op("Less", [t, lengths])
    return g.op("Unsqueeze", [alive, g.const("axis2", np.array([2], np.int64))])


def _to_onnx_gate_order(a: np.ndarray, h: int) -> np.ndarray:
    """Rows ``r, z, n`` (ours) → ``z, r, h`` (ONNX), along axis 0."""
    r, z, n = _blocks(a, h)
    return np.concatenate([z, r, n])


def _gru_op_layer(
    g: _Graph, model: GRU, weights: list[Any], x: str, h0: str | None, seq_lens: str | None
) -> tuple[str, str]:
    """One gru0 layer (both directions) as the ONNX GRU operator; returns ``(y [T, B, D*H], h_n [D, B, H])``."""
    h = model.hidden_size
    w = np.stack([_to_onnx_gate_order(_np(lw.w_ih), h) for lw in weights])
    r = np.stack([_to_onnx_gate_order(_np(lw.w_hh), h) for lw in weights])
    inputs = [x, g.const("W", w), g.const("R", r)]
    if model.bias:
        bs = []
        for lw in weights:
            wb = _to_onnx_gate_order(_np(lw.b_ih), h)
            rb = _to_onnx_gate_order(_np(lw.b_hh), h) if lw.b_hh is not None else np.zeros_like(wb)
            bs.append(np.concatenate([wb, rb]))
        inputs.append(g.const("B", np.stack(bs)))
    else:
        inputs.append("")
    inputs.append(seq_lens or "")
    inputs.append(h0 if h0 is not None else "")
    while inputs and inputs[-1] == "":
        inputs.pop()
    y, y_h = g.op(
        "GRU",
        inputs,
        n_out=2,
        hidden_size=h,
        direction="bidirectional" if model.bidirectional else "forward",
        linear_before_reset=1 if model.reset_after else 0,
    )
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])  # [T, D, B, H] -> [T, B, D, H]
    y = g.op("Reshape", [y, g.const("shape_TB_DH", np.array([0, 0, -1], np.int64))])
    return y, y_h


def _check_model(model: Any) -> None:
    if not isinstance(model, (GRU, GRUCell)):
        raise TypeError(f"model: expected a gatedrnn.GRU or gatedrnn.GRUCell, got {type(model).__name__}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")


def _uses_gru_op(model: GRU, use_gru_op: bool | None, resets: bool) -> bool:
    """Whether ``model`` is exported as the ONNX GRU operator: gru0 without the options the
    operator lacks (``use_gru_op=None``), or as asked (True refuses what the operator cannot do)."""
    if use_gru_op is not None and not isinstance(use_gru_op, bool):
        raise ValueError(f"use_gru_op: expected None, True or False, got {use_gru_op!r}")
    lacks = [
        name for name, on in (("layer_norm", model.layer_norm), ("zoneout", model.zoneout), ("resets", resets)) if on
    ]
    if use_gru_op is None:
        return model.spec.is_classic and not lacks
    if use_gru_op and not model.spec.is_classic:
        raise ValueError(
            f"use_gru_op: the ONNX GRU operator computes the classic GRU (gru0) only, got variant {model.variant!r}; "
            "expected use_gru_op=None or False (the Scan body)"
        )
    if use_gru_op and lacks:
        raise ValueError(
            f"use_gru_op: the ONNX GRU operator has no {' and no '.join(lacks)}; expected use_gru_op=None or "
            "False (the Scan body) for this model"
        )
    return use_gru_op


def export_onnx(
    model: GRU | GRUCell,
    path: str | os.PathLike[str] | None,
    *,
    opset: int = 17,
    initial_state: bool = True,
    lengths: bool = False,
    resets: bool = False,
    use_gru_op: bool | None = None,
) -> Any:
    """Export ``model`` to an ONNX file whose graph does not grow with the sequence length.

    The graph computes ``model`` in eval mode (``model.eval()``), whatever its mode now: the
    dropouts (``dropout``, ``input_dropout``, ``recurrent_dropout``, ``weight_drop``) are the
    identity, ``zoneout`` is its expectation, ``layer_norm`` is exported.

    Args:
        model: a :class:`gatedrnn.GRU` (any variant, reset form, layers, directions, batch_first,
            options) or :class:`gatedrnn.GRUCell`.
        path: where to write the ``.onnx`` file, or None to only return the model.
        opset: ONNX opset, at least 13 (default 17; layer norm is the ``LayerNormalization``
            operator from 17 on, written out below).
        initial_state: give the graph an ``h0`` input (``[L*D, batch, H]``); otherwise the state
            starts at zero. A cell always takes ``hx`` ``[batch, H]``.
        lengths: give the graph a ``lengths`` input (``[batch]`` int64, each in ``1..seq_len``),
            with :class:`gatedrnn.GRU`'s ``lengths=`` meaning, exactly: outputs past a
            sequence's length are zero, ``h_n`` is the state at its last step, and the reverse
            direction runs backwards within each length (``sequence_lens`` of the GRU operator;
            a mask in the Scan body). Without it every sequence runs the full ``seq_len``.
        resets: give the graph a ``resets`` input (bool ``[seq_len, batch]``, ``[batch, seq_len]``
            with ``batch_first``) with :class:`gatedrnn.GRU`'s ``resets=`` meaning: where true,
            the state is zero before that step (the reverse direction restarts at the end of each
            segment). Without it the graph has no resets (an ONNX graph input cannot be left out).
            Not for a cell (it has no ``resets``).
        use_gru_op: None (default): ``gru0`` becomes the ONNX ``GRU`` operator where it computes
            the model (no ``layer_norm``, ``zoneout`` or ``resets``), every other case the ``Scan``
            body. True: the operator, refused where it cannot; False: the ``Scan`` body.

    Returns:
        The ``onnx.ModelProto``. Graph inputs: ``input`` (``[seq_len, batch, I]``, or
        ``[batch, seq_len, I]`` with ``batch_first``), then ``h0``, ``lengths`` and ``resets`` if
        asked; outputs ``output`` (``[seq_len, batch, D*H]``, batch-first likewise) and ``h_n``
        (``[L*D, batch, H]``). For a cell: inputs ``input`` ``[batch, I]``, ``hx`` ``[batch, H]``;
        output ``h`` ``[batch, H]``.

    Raises:
        TypeError: ``model`` is not a gatedrnn layer. ValueError: ``opset`` below 13, ``resets``
        for a cell, ``use_gru_op=True`` where the GRU operator cannot compute the model.
        ImportError: ``onnx`` is not installed (``pip install gatedrnn[interop]``).
    """
    _check_model(model)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset: expected an integer >= 13, got {opset!r}")
    for name, value in (("initial_state", initial_state), ("lengths", lengths), ("resets", resets)):
        _check_flag(name, value)
    if resets and isinstance(model, GRUCell):
        raise ValueError("resets: a GRUCell runs one step and has no resets; expected resets=False")
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs the 'onnx' package: pip install 'gatedrnn[interop]'") from e
    helper = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    g = _Graph(helper, onnx.numpy_helper, opset)
    spec, h = model.spec, model.hidden_size
    zoneout = model.options.zoneout
    if isinstance(model, GRUCell):
        one = g.const("one", np.array(1.0, np.float32))
        ln_ih = (model.ln_weight_ih, model.ln_bias_ih) if model.layer_norm else None
        ln_hh = (model.ln_weight_hh, model.ln_bias_hh) if model.layer_norm and model.weight_hh is not None else None
        sw = _StepWeights(
            g,
            spec,
            model.reset_after,
            model.weight_ih,
            model.weight_hh,
            model.bias_ih,
            model.bias_hh,
            h,
            "cell",
            ln_ih,
            ln_hh,
        )
        h_new = _carry(g, "hx", _step(g, spec, sw, "hx", _project(g, sw, "input", h), one, h), zoneout)
        g.nodes.append(helper.make_node("Identity", [h_new], ["h"], name="output_h"))
        inputs = [
            helper.make_tensor_value_info("input", f32, ["batch", model.input_size]),
            helper.make_tensor_value_info("hx", f32, ["batch", h]),
        ]
        outputs = [helper.make_tensor_value_info("h", f32, ["batch", h])]
        name = f"gatedrnn_{spec.name}_cell"
    else:
        gru_op = _uses_gru_op(model, use_gru_op, resets)
        d_count, layers = model.num_directions, model.num_layers
        x = "input"
        if model.batch_first:
            x = g.op("Transpose", [x], perm=[1, 0, 2])
        finals: list[str] = []
        # (only when a node will read it: runtimes warn about unused initializers)
        axis0 = "" if gru_op and not initial_state else g.const("axis0", np.array([0], np.int64))
        seq_lens = mask = None
        if lengths:
            if gru_op:
                seq_lens = g.op("Cast", ["lengths"], to=onnx.TensorProto.INT32)
            else:
                mask = _alive_mask(g, x, "lengths")
        dir_resets: list[str | None] = [None, None]
        if resets:
            r = g.op("Transpose", ["resets"], perm=[1, 0]) if model.batch_first else "resets"
            dir_resets[0] = g.op("Unsqueeze", [r, g.const("axis2", np.array([2], np.int64))])  # [T, B, 1]
            if d_count == 2:
                dir_resets[1] = _reverse_resets(g, onnx, dir_resets[0], mask)
        for k, weights in enumerate(model.layer_weights()):
            if gru_op:
                h0 = None
                if initial_state:
                    s = g.const("start", np.array([k * d_count], np.int64))
                    e = g.const("end", np.array([(k + 1) * d_count], np.int64))
                    h0 = g.op("Slice", ["h0", s, e, axis0])
                x, y_h = _gru_op_layer(g, model, weights, x, h0, seq_lens)
                finals.append(y_h)
                continue
            if not initial_state:
                batch = g.op(
                    "Slice",
                    [
                        g.op("Shape", [x]),
                        g.const("one_i", np.array([1], np.int64)),
                        g.const("two_i", np.array([2], np.int64)),
                        axis0,
                    ],
                )
                zshape = g.op("Concat", [batch, g.const("H", np.array([h], np.int64))], axis=0)
                zeros = g.op("ConstantOfShape", [zshape], value=helper.make_tensor("zero", f32, [1], [0.0]))
            outs = []
            for d, lw in enumerate(weights):
                tag = f"l{k}{'_reverse' if d else ''}"
                sw = _StepWeights(
                    g, spec, model.reset_after, lw.w_ih, lw.w_hh, lw.b_ih, lw.b_hh, h, tag, lw.ln_ih, lw.ln_hh
                )
                if initial_state:
                    h0 = g.op("Gather", ["h0", g.const("index", np.array(k * d_count + d, np.int64))], axis=0)
                else:
                    h0 = zeros
                y, h_n = _scan_direction(g, onnx, spec, sw, x, h0, d == 1, h, mask, dir_resets[d], zoneout)
                outs.append(y)
                finals.append(g.op("Unsqueeze", [h_n, axis0]))
            x = outs[0] if d_count == 1 else g.op("Concat", outs, axis=-1)
        if model.batch_first:
            x = g.op("Transpose", [x], perm=[1, 0, 2])
        g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output_y"))
        hn = finals[0] if len(finals) == 1 else g.op("Concat", finals, axis=0)
        g.nodes.append(helper.make_node("Identity", [hn], ["h_n"], name="output_h_n"))
        seq = ["batch", "seq_len"] if model.batch_first else ["seq_len", "batch"]
        inputs = [helper.make_tensor_value_info("input", f32, [*seq, model.input_size])]
        if initial_state:
            inputs.append(helper.make_tensor_value_info("h0", f32, [layers * d_count, "batch", h]))
        if lengths:
            inputs.append(helper.make_tensor_value_info("lengths", onnx.TensorProto.INT64, ["batch"]))
        if resets:
            inputs.append(helper.make_tensor_value_info("resets", onnx.TensorProto.BOOL, seq))
        outputs = [
            helper.make_tensor_value_info("output", f32, [*seq, d_count * h]),
            helper.make_tensor_value_info("h_n", f32, [layers * d_count, "batch", h]),
        ]
        name = f"gatedrnn_{spec.name}"
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="gatedrnn", doc_string=repr(model))
    # the oldest IR version that carries this opset: loadable by older runtimes too
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
