"""ONNX export of every variant, with a graph whose size does not depend on the sequence length.

* ``gru0`` → the ONNX ``GRU`` operator (gate order ``z, r, h``; ``linear_before_reset=1`` for
  ``reset_after=True``, ``0`` for ``reset_after=False``), one operator per layer (both directions
  in one operator), layers chained with ``[T, D, B, H] → [T, B, D*H]`` in between.
* every other variant (and ``gru0`` with ``use_gru_op=False``) → one ``Scan`` per layer and
  direction whose body is one time step (the equations of :func:`gatedrnn._reference.step`). The
  input projection of all steps is one ``MatMul`` outside the loop; the reverse direction scans
  its inputs and writes its outputs backwards (``scan_input_directions`` /
  ``scan_output_directions``), so outputs stay in time order as in ``torch.nn.GRU``.

Sequence length and batch are dynamic (``dim_param`` ``seq_len`` and ``batch``). With
``lengths=True`` the graph takes per-sequence lengths (padded batches, exact for every variant);
otherwise every sequence runs the full length. Dropout is an inference no-op. Weights are the
layer's current values, stored as float32 initializers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._layers import GRU, GRUCell
from .._specs import Spec, split

__all__ = ["export_onnx"]


class _Graph:
    """Nodes, initializers and unique names for one (sub)graph under construction."""

    def __init__(self, helper: Any, numpy_helper: Any, prefix: str = "") -> None:
        self.helper = helper
        self.numpy_helper = numpy_helper
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
    """One layer-direction's weights, split per gate, as initializer names in the outer graph.

    ``proj`` ([I, K]) and ``proj_bias`` ([K] or None) give the input side of every step at once,
    ``x @ proj + proj_bias``; ``slices`` are the ``(start, end)`` columns of each gate that reads
    ``x`` and then of the candidate. ``u_gate`` ([H, H] per gate), ``u_n`` ([H, H]), ``b_gate``
    (bias of gates that do not read ``x``) and ``b_hn`` are the recurrent-side constants.
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
    ) -> None:
        w_ih, w_hh, b_ih, b_hh = _np(weight_ih), _np(weight_hh), _np(bias_ih), _np(bias_hh)
        assert w_ih is not None
        blocks = split(spec, w_ih, w_hh, b_ih, b_hh, h)
        gbias = blocks.gate_bias()  # gru0's b_hr, b_hz fold into the gates' bias
        self.proj = g.const(f"{tag}_W_ih_T", w_ih.T)
        bias = blocks.b_n
        if spec.gates_read_x and (gbias is not None or bias is not None):
            zero = np.zeros(h, np.float32)
            bias = np.concatenate(
                [gbias if gbias is not None else np.tile(zero, spec.num_gates), bias if bias is not None else zero]
            )
        self.proj_bias = None if bias is None else g.const(f"{tag}_b_proj", bias)
        n_x = spec.num_gates + 1 if spec.gates_read_x else 1
        self.slices = [(i * h, (i + 1) * h) for i in range(n_x)]
        self.gate_from_x = spec.gates_read_x
        self.u_gate = (
            [g.const(f"{tag}_U_{spec.gates[j]}_T", u.T) for j, u in enumerate(_blocks(blocks.u_g, h))]
            if blocks.u_g is not None
            else None
        )
        self.b_gate = (
            [g.const(f"{tag}_b_{spec.gates[j]}", b) for j, b in enumerate(_blocks(gbias, h))]
            if (not spec.gates_read_x and gbias is not None)
            else None
        )
        self.u_n = g.const(f"{tag}_U_n_T", blocks.u_n.T) if blocks.u_n is not None else None
        self.b_hn = g.const(f"{tag}_b_hn", blocks.b_hn) if blocks.b_hn is not None else None


def _project(g: _Graph, sw: _StepWeights, x: str) -> list[str]:
    """Input side of every step at once: one MatMul (+ bias), then one slice per gate / candidate."""
    xp = g.op("MatMul", [x, sw.proj])
    if sw.proj_bias is not None:
        xp = g.op("Add", [xp, sw.proj_bias])
    if len(sw.slices) == 1:
        return [xp]
    axes = g.const("axis_last", np.array([-1], np.int64))
    parts = []
    for start, end in sw.slices:
        s = g.const("start", np.array([start], np.int64))
        e = g.const("end", np.array([end], np.int64))
        parts.append(g.op("Slice", [xp, s, e, axes]))
    return parts


def _step(g: _Graph, spec: Spec, reset_after: bool, sw: _StepWeights, h: str, xs: list[str], one: str) -> str:
    """Nodes of one time step; ``xs`` are the step's input-side parts (gates reading x, then candidate)."""
    n_gates = spec.num_gates
    gate_x = xs[:-1] if sw.gate_from_x else [None] * n_gates
    nx = xs[-1]
    gates = []
    for j in range(n_gates):
        terms = [t for t in (gate_x[j],) if t is not None]
        if sw.u_gate is not None:
            terms.append(g.op("MatMul", [h, sw.u_gate[j]]))
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
    if spec.candidate_reads_h:
        assert sw.u_n is not None and r is not None
        if reset_after:
            hn = g.op("MatMul", [h, sw.u_n])
            if sw.b_hn is not None:
                hn = g.op("Add", [hn, sw.b_hn])
            npre = g.op("Add", [nx, g.op("Mul", [r, hn])])
        else:
            npre = g.op("Add", [nx, g.op("MatMul", [g.op("Mul", [r, h]), sw.u_n])])
    n = g.op("Tanh", [npre]) if spec.candidate_tanh else npre
    keep = g.op("Mul", [g.op("Sub", [one, z]), n])
    return g.op("Add", [keep, g.op("Mul", [z, h])])


def _scan_direction(
    g: _Graph,
    onnx: Any,
    spec: Spec,
    reset_after: bool,
    sw: _StepWeights,
    x: str,
    h0: str,
    reverse: bool,
    hid: int,
    mask: str | None,
) -> tuple[str, str]:
    """One layer-direction as a Scan over the projected inputs; returns ``(y [T, B, H], h_n [B, H])``.

    ``mask`` (``[T, B, 1]`` bool, ``t < lengths[b]``) or None: where it is false the state is kept
    and the output is zero. Padding sits at the end of each sequence, so the reverse scan keeps
    ``h0`` through the padding and starts at ``lengths[b] - 1``: the reverse within each length.
    """
    helper = onnx.helper
    parts = _project(g, sw, x)
    body = _Graph(helper, onnx.numpy_helper, prefix=g.name("body") + "/")
    f32 = onnx.TensorProto.FLOAT
    h_in = body.name("h_prev")
    x_in = [body.name("x_t") for _ in parts]
    one = body.const("one", np.array(1.0, np.float32))
    h_new = _step(body, spec, reset_after, sw, h_in, x_in, one)
    body_inputs = [helper.make_tensor_value_info(n, f32, [None, None]) for n in [h_in, *x_in]]
    scan_inputs = [h0, *parts]
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


def export_onnx(
    model: GRU | GRUCell,
    path: str | os.PathLike[str] | None,
    *,
    opset: int = 17,
    initial_state: bool = True,
    lengths: bool = False,
    use_gru_op: bool = True,
) -> Any:
    """Export ``model`` to an ONNX file whose graph does not grow with the sequence length.

    Args:
        model: a :class:`gatedrnn.GRU` (any variant, reset form, layers, directions, batch_first)
            or :class:`gatedrnn.GRUCell`.
        path: where to write the ``.onnx`` file, or None to only return the model.
        opset: ONNX opset, at least 13 (default 17).
        initial_state: give the graph an ``h0`` input (``[L*D, batch, H]``); otherwise the state
            starts at zero. A cell always takes ``hx`` ``[batch, H]``.
        lengths: give the graph a ``lengths`` input (``[batch]`` int64, each in ``1..seq_len``),
            with :class:`gatedrnn.GRU`'s ``lengths=`` meaning, exactly: outputs past a
            sequence's length are zero, ``h_n`` is the state at its last step, and the reverse
            direction runs backwards within each length (``sequence_lens`` of the GRU operator;
            a mask in the Scan body). Without it every sequence runs the full ``seq_len``.
        use_gru_op: export ``gru0`` with the ONNX ``GRU`` operator (default); False runs it through
            the same ``Scan`` body as the other variants.

    Returns:
        The ``onnx.ModelProto``. Graph inputs: ``input`` (``[seq_len, batch, I]``, or
        ``[batch, seq_len, I]`` with ``batch_first``), ``h0`` and ``lengths`` if asked; outputs ``output``
        (``[seq_len, batch, D*H]``, batch-first likewise) and ``h_n`` (``[L*D, batch, H]``). For a
        cell: inputs ``input`` ``[batch, I]``, ``hx`` ``[batch, H]``; output ``h`` ``[batch, H]``.

    Raises:
        TypeError: ``model`` is not a gatedrnn layer. ValueError: ``opset`` below 13.
        ImportError: ``onnx`` is not installed (``pip install gatedrnn[interop]``).
    """
    _check_model(model)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset: expected an integer >= 13, got {opset!r}")
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs the 'onnx' package: pip install 'gatedrnn[interop]'") from e
    helper = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    g = _Graph(helper, onnx.numpy_helper)
    spec, h = model.spec, model.hidden_size
    if isinstance(model, GRUCell):
        one = g.const("one", np.array(1.0, np.float32))
        sw = _StepWeights(
            g, spec, model.reset_after, model.weight_ih, model.weight_hh, model.bias_ih, model.bias_hh, h, "cell"
        )
        h_new = _step(g, spec, model.reset_after, sw, "hx", _project(g, sw, "input"), one)
        g.nodes.append(helper.make_node("Identity", [h_new], ["h"], name="output_h"))
        inputs = [
            helper.make_tensor_value_info("input", f32, ["batch", model.input_size]),
            helper.make_tensor_value_info("hx", f32, ["batch", h]),
        ]
        outputs = [helper.make_tensor_value_info("h", f32, ["batch", h])]
        name = f"gatedrnn_{spec.name}_cell"
    else:
        d_count, layers = model.num_directions, model.num_layers
        x = "input"
        if model.batch_first:
            x = g.op("Transpose", [x], perm=[1, 0, 2])
        finals: list[str] = []
        gru_op = spec.is_classic and use_gru_op
        # (only when a node will read it: runtimes warn about unused initializers)
        axis0 = "" if gru_op and not initial_state else g.const("axis0", np.array([0], np.int64))
        seq_lens = mask = None
        if lengths:
            if gru_op:
                seq_lens = g.op("Cast", ["lengths"], to=onnx.TensorProto.INT32)
            else:
                mask = _alive_mask(g, x, "lengths")
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
                sw = _StepWeights(g, spec, model.reset_after, lw.w_ih, lw.w_hh, lw.b_ih, lw.b_hh, h, tag)
                if initial_state:
                    h0 = g.op("Gather", ["h0", g.const("index", np.array(k * d_count + d, np.int64))], axis=0)
                else:
                    h0 = zeros
                y, h_n = _scan_direction(g, onnx, spec, model.reset_after, sw, x, h0, d == 1, h, mask)
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
