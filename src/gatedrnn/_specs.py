"""The GRU family: one table entry per variant, the equations written once.

Every variant is described by a :class:`Spec`: which of ``x``, ``h(t-1)`` and a bias feed the
gates, whether the candidate reads ``h(t-1)``, and whether one gate plays both reset and update.
The reference step (:mod:`gatedrnn._reference`) and every fused engine read these switches; no
variant has a class of its own.

Conventions (PyTorch's, used by every variant):

.. math::

    h_t = (1 - z_t) \\odot n_t + z_t \\odot h_{t-1}

Dey & Salem (2017) and minGRU (Feng et al. 2024) write
:math:`h_t = (1 - z_t) \\odot h_{t-1} + z_t \\odot \\tilde h_t`; it is the same family with
:math:`z \\leftrightarrow 1 - z` (a sign flip of the gate's weights and bias).

Reset form (every variant with a reset gate):

* ``reset_after=True`` (PyTorch, cuDNN, Keras default):
  :math:`n_t = \\tanh(W_n x_t + b_{in} + r_t \\odot (U_n h_{t-1} + b_{hn}))`
* ``reset_after=False`` (Cho et al. v3, Keras ``reset_after=False``, ONNX default):
  :math:`n_t = \\tanh(W_n x_t + U_n (r_t \\odot h_{t-1}) + b_n)`

Parameter layout, per layer and direction (PyTorch names, blocks of ``H`` rows in this order):

* ``weight_ih``: one block per gate that reads ``x``, then the candidate block.
* ``weight_hh``: one block per gate that reads ``h``, then the candidate block (if it reads ``h``).
* ``bias_ih``: one block per gate that has a bias, then the candidate bias (``b_n`` or ``b_in``).
* ``bias_hh`` (``reset_after=True`` only): ``b_hn``; for ``gru0`` also ``b_hr, b_hz`` before it,
  exactly as ``torch.nn.GRU`` stores them.

Gate order inside a block group is PyTorch's: ``r, z`` then the candidate ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SPECS", "Spec", "check_int", "count_parameters", "get_spec", "param_shapes"]


@dataclass(frozen=True)
class Spec:
    """The wiring of one variant of the family.

    Attributes:
        name: registry key (``gru0`` ... ``mingru``).
        title: human name.
        paper: where the equations come from.
        gates: gate names in storage order: ``("r", "z")`` for the GRUs, ``("f",)`` for MGU
            (one gate acting as reset and as ``1 - z``), ``("z",)`` for minGRU.
        gates_read_x: the gates get ``W x``.
        gates_read_h: the gates get ``U h(t-1)``.
        gates_have_bias: the gates get a bias ``b``.
        candidate_reads_h: the candidate gets ``U_n h(t-1)`` (False: minGRU).
        candidate_tanh: the candidate goes through ``tanh`` (False: minGRU's linear candidate).
        torch_hh_bias: with ``reset_after=True`` keep PyTorch's redundant ``b_hr, b_hz`` in
            ``bias_hh`` (gru0 only, so that ``torch.nn.GRU`` state dicts load as they are).
        equations: the math, for docs and ``repr``.
    """

    name: str
    title: str
    paper: str
    gates: tuple[str, ...]
    gates_read_x: bool
    gates_read_h: bool
    gates_have_bias: bool
    candidate_reads_h: bool
    candidate_tanh: bool
    torch_hh_bias: bool
    equations: str

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def coupled(self) -> bool:
        """One gate ``f`` serves as reset ``r = f`` and update ``z = 1 - f`` (MGU)."""
        return self.gates == ("f",)

    @property
    def has_reset(self) -> bool:
        """A reset gate multiplies the recurrent part of the candidate (reset_after matters)."""
        return self.candidate_reads_h

    def ih_blocks(self) -> int:
        return (self.num_gates if self.gates_read_x else 0) + 1

    def hh_blocks(self) -> int:
        return (self.num_gates if self.gates_read_h else 0) + (1 if self.candidate_reads_h else 0)

    def bias_ih_blocks(self) -> int:
        return (self.num_gates if self.gates_have_bias else 0) + 1

    def bias_hh_blocks(self, reset_after: bool) -> int:
        if not (reset_after and self.has_reset):
            return 0
        return self.num_gates + 1 if self.torch_hh_bias else 1


_GRU_EQ = """\
r_t = σ({gr}),  z_t = σ({gz})
n_t = tanh(W_n x_t + b_in + r_t ⊙ (U_n h_(t-1) + b_hn))   [reset_after=True]
n_t = tanh(W_n x_t + U_n (r_t ⊙ h_(t-1)) + b_n)           [reset_after=False]
h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_(t-1)"""

SPECS: dict[str, Spec] = {
    "gru0": Spec(
        name="gru0",
        title="GRU (classic)",
        paper="Cho et al. 2014, arXiv:1406.1078",
        gates=("r", "z"),
        gates_read_x=True,
        gates_read_h=True,
        gates_have_bias=True,
        candidate_reads_h=True,
        candidate_tanh=True,
        torch_hh_bias=True,
        equations=_GRU_EQ.format(gr="W_r x_t + U_r h_(t-1) + b_r", gz="W_z x_t + U_z h_(t-1) + b_z"),
    ),
    "gru1": Spec(
        name="gru1",
        title="GRU1 (gates from h and bias)",
        paper="Dey & Salem 2017, arXiv:1701.05923",
        gates=("r", "z"),
        gates_read_x=False,
        gates_read_h=True,
        gates_have_bias=True,
        candidate_reads_h=True,
        candidate_tanh=True,
        torch_hh_bias=False,
        equations=_GRU_EQ.format(gr="U_r h_(t-1) + b_r", gz="U_z h_(t-1) + b_z"),
    ),
    "gru2": Spec(
        name="gru2",
        title="GRU2 (gates from h only)",
        paper="Dey & Salem 2017, arXiv:1701.05923",
        gates=("r", "z"),
        gates_read_x=False,
        gates_read_h=True,
        gates_have_bias=False,
        candidate_reads_h=True,
        candidate_tanh=True,
        torch_hh_bias=False,
        equations=_GRU_EQ.format(gr="U_r h_(t-1)", gz="U_z h_(t-1)"),
    ),
    "gru3": Spec(
        name="gru3",
        title="GRU3 (gates from bias only)",
        paper="Dey & Salem 2017, arXiv:1701.05923",
        gates=("r", "z"),
        gates_read_x=False,
        gates_read_h=False,
        gates_have_bias=True,
        candidate_reads_h=True,
        candidate_tanh=True,
        torch_hh_bias=False,
        equations=_GRU_EQ.format(gr="b_r", gz="b_z"),
    ),
    "mgu": Spec(
        name="mgu",
        title="MGU (minimal gated unit)",
        paper="Zhou et al. 2016, arXiv:1603.09420",
        gates=("f",),
        gates_read_x=True,
        gates_read_h=True,
        gates_have_bias=True,
        candidate_reads_h=True,
        candidate_tanh=True,
        torch_hh_bias=False,
        equations="""\
f_t = σ(W_f x_t + U_f h_(t-1) + b_f)          (r_t = f_t, z_t = 1 - f_t)
n_t = tanh(W_n x_t + b_in + f_t ⊙ (U_n h_(t-1) + b_hn))   [reset_after=True]
n_t = tanh(W_n x_t + U_n (f_t ⊙ h_(t-1)) + b_n)           [reset_after=False]
h_t = f_t ⊙ n_t + (1 - f_t) ⊙ h_(t-1)""",
    ),
    "mingru": Spec(
        name="mingru",
        title="minGRU",
        paper="Feng et al. 2024, arXiv:2410.01201",
        gates=("z",),
        gates_read_x=True,
        gates_read_h=False,
        gates_have_bias=True,
        candidate_reads_h=False,
        candidate_tanh=False,
        torch_hh_bias=False,
        equations="""\
z_t = σ(W_z x_t + b_z),  n_t = W_n x_t + b_n        (no recurrent weights; reset_after unused)
h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_(t-1)""",
    ),
}


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an integer >= ``minimum`` (not a bool); a clear error naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def get_spec(variant: str) -> Spec:
    """The spec of ``variant``; a clear error for an unknown name."""
    if not isinstance(variant, str) or variant not in SPECS:
        raise ValueError(f"variant: expected one of {sorted(SPECS)}, got {variant!r}")
    return SPECS[variant]


def param_shapes(
    variant: str | Spec, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True
) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer-direction's parameters, keyed by base name (``weight_ih`` ...)."""
    spec = variant if isinstance(variant, Spec) else get_spec(variant)
    h = hidden_size
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (spec.ih_blocks() * h, input_size)}
    if spec.hh_blocks():
        shapes["weight_hh"] = (spec.hh_blocks() * h, h)
    if bias:
        shapes["bias_ih"] = (spec.bias_ih_blocks() * h,)
        if spec.bias_hh_blocks(reset_after):
            shapes["bias_hh"] = (spec.bias_hh_blocks(reset_after) * h,)
    return shapes


def count_parameters(
    variant: str, input_size: int, hidden_size: int, reset_after: bool = True, bias: bool = True
) -> int:
    """Parameters of a one-layer, one-direction layer of ``variant``.

    With ``reset_after=False`` and a bias these are Dey & Salem's counts (m inputs, n units):
    gru0 3(n²+nm+n), gru1 3n²+nm+3n, gru2 3n²+nm+n, gru3 n²+nm+3n; MGU 2(n²+nm+n);
    minGRU 2(nm+n). With ``reset_after=True`` gru0 has ``torch.nn.GRU``'s 3(n²+nm)+6n and the
    other variants with a reset gate one more vector of n (``b_hn``).
    """
    check_int("input_size", input_size, 1)
    check_int("hidden_size", hidden_size, 1)
    return sum(math.prod(shape) for shape in param_shapes(variant, input_size, hidden_size, bias, reset_after).values())
