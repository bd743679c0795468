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
from typing import Any, Generic, NamedTuple, TypeVar

__all__ = [
    "SPECS",
    "Blocks",
    "Spec",
    "Wiring",
    "check_int",
    "count_parameters",
    "get_spec",
    "join_bias",
    "param_shapes",
    "split",
]

_GATES = {("r", "z"): "two gates r, z", ("f",): "MGU's coupled gate f", ("z",): "minGRU's update gate z"}


class Wiring(NamedTuple):
    """A variant's wiring in one reset form: the switches every compiled kernel is specialised on,
    numba's (closure constants) and Triton's (``tl.constexpr`` of the same names in capitals, see
    :meth:`constexprs`). Made by :meth:`Spec.wiring`."""

    gates: int  # 2: r, z; 1: MGU's f (coupled) or minGRU's z
    coupled: bool  # one gate f: r = f, z = 1 - f
    gates_read_x: bool  # the gates' pre-activation has W x (else a constant: their bias, or 0)
    gates_read_h: bool  # ... and U h(t-1)
    cand_reads_h: bool  # the candidate has U_n h(t-1) (False: no recurrent product at all)
    cand_tanh: bool  # the candidate goes through tanh
    reset_after: bool  # r multiplies U_n h + b_hn (False: U_n (r h), a second product; or no reset)

    @property
    def gates_const(self) -> bool:
        """The gates read neither x nor h: the same activations at every step and row (GRU3)."""
        return not (self.gates_read_x or self.gates_read_h)

    @property
    def reset_before(self) -> bool:
        """Two dependent products a step: ``U_g h`` for the gates, then ``U_n (r h)``."""
        return self.cand_reads_h and not self.reset_after

    def constexprs(self) -> dict[str, int | bool]:
        """The switches as Triton keyword arguments: ``GATES``, ``COUPLED``, ..., ``RESET_AFTER``."""
        return {k.upper(): v for k, v in self._asdict().items()}


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

    def __post_init__(self) -> None:
        """Refuse wirings the equations (and so the engines) do not define."""

        def bad(why: str) -> ValueError:
            return ValueError(f"Spec {self.name!r}: {why}")

        if self.gates not in _GATES:
            raise bad(f"gates: expected one of {list(_GATES)} ({', '.join(_GATES.values())}), got {self.gates!r}")
        if not (self.gates_read_x or self.gates_read_h or self.gates_have_bias):
            raise bad("the gates read none of x, h(t-1) and a bias: they would be a constant 0.5")
        if self.gates == ("z",) and self.candidate_reads_h:
            raise bad("one update gate z and a candidate that reads h(t-1): there is no reset gate for it")
        if self.gates == ("f",) and not self.candidate_reads_h:
            raise bad("a coupled gate f is the reset gate of a candidate that reads h(t-1)")
        if self.gates_read_h and not self.candidate_reads_h:
            raise bad("gates that read h(t-1) with a candidate that does not: no recurrent product is defined")
        if not self.candidate_tanh and self.candidate_reads_h:
            raise bad("a linear candidate (candidate_tanh=False) is defined only without h(t-1) (minGRU)")
        if self.torch_hh_bias and not (self.gates_read_x and self.gates_have_bias and self.candidate_reads_h):
            raise bad("torch_hh_bias (torch.nn.GRU's b_hr, b_hz) needs gates that read x and have a bias")

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

    @property
    def gates_need_bias(self) -> bool:
        """The gates read neither x nor h: without a bias they are a constant 0.5 (GRU3)."""
        return not (self.gates_read_x or self.gates_read_h)

    @property
    def is_classic(self) -> bool:
        """The classic GRU (Cho et al.): what ``torch.nn.GRU``, Keras' ``GRU`` and ONNX's ``GRU``
        operator compute, in their layouts."""
        return self.torch_hh_bias

    def torch_expressible(self, reset_after: bool) -> str | None:
        """None if ``torch.nn.GRU`` computes this variant exactly (zero blocks for the gates'
        missing inputs, MGU's ``z`` block as the negated ``f`` block), else why not."""
        if not (self.candidate_reads_h and self.candidate_tanh):
            return "its candidate is linear, without tanh, and it has no recurrent weights"
        if not reset_after:
            return "torch.nn.GRU only has the reset_after=True form (reset applied after the recurrent matmul)"
        return None

    def wiring(self, reset_after: bool) -> Wiring:
        """The kernels' switches for this variant in the given reset form."""
        return Wiring(
            gates=self.num_gates,
            coupled=self.coupled,
            gates_read_x=self.gates_read_x,
            gates_read_h=self.gates_read_h,
            cand_reads_h=self.candidate_reads_h,
            cand_tanh=self.candidate_tanh,
            reset_after=bool(reset_after and self.has_reset),
        )

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
    variant: str | Spec,
    input_size: int,
    hidden_size: int,
    bias: bool = True,
    reset_after: bool = True,
    layer_norm: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer-direction's parameters, keyed by base name (``weight_ih`` ...); with
    ``layer_norm`` also its gains and shifts (:mod:`gatedrnn._options`)."""
    spec = variant if isinstance(variant, Spec) else get_spec(variant)
    h = hidden_size
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (spec.ih_blocks() * h, input_size)}
    if spec.hh_blocks():
        shapes["weight_hh"] = (spec.hh_blocks() * h, h)
    if bias:
        shapes["bias_ih"] = (spec.bias_ih_blocks() * h,)
        if spec.bias_hh_blocks(reset_after):
            shapes["bias_hh"] = (spec.bias_hh_blocks(reset_after) * h,)
    if layer_norm:
        shapes["ln_weight_ih"] = shapes["ln_bias_ih"] = (spec.ih_blocks() * h,)
        if spec.hh_blocks():
            shapes["ln_weight_hh"] = shapes["ln_bias_hh"] = (spec.hh_blocks() * h,)
    return shapes


def count_parameters(
    variant: str,
    input_size: int,
    hidden_size: int,
    reset_after: bool = True,
    bias: bool = True,
    layer_norm: bool = False,
) -> int:
    """Parameters of a one-layer, one-direction layer of ``variant``.

    With ``reset_after=False`` and a bias these are Dey & Salem's counts (m inputs, n units):
    gru0 3(n²+nm+n), gru1 3n²+nm+3n, gru2 3n²+nm+n, gru3 n²+nm+3n; MGU 2(n²+nm+n);
    minGRU 2(nm+n). With ``reset_after=True`` gru0 has ``torch.nn.GRU``'s 3(n²+nm)+6n and the
    other variants with a reset gate one more vector of n (``b_hn``). ``layer_norm`` adds a gain
    and a shift per pre-activation: 2(ih_blocks + hh_blocks)·n (gru0: 12n).
    """
    check_int("input_size", input_size, 1)
    check_int("hidden_size", hidden_size, 1)
    shapes = param_shapes(variant, input_size, hidden_size, bias, reset_after, layer_norm)
    return sum(math.prod(shape) for shape in shapes.values())


# ------------------------------------------------------------------------------------- the layout
A = TypeVar("A")  # torch.Tensor or numpy.ndarray: the layout only slices and concatenates


@dataclass(frozen=True)
class Blocks(Generic[A]):
    """One layer-direction's parameters split into the blocks the equations name (None: absent).

    Shapes with ``G`` gates, ``H`` units, ``I`` inputs. The same split serves gradients (the
    blocks of ``d weight_ih`` ...) and every engine and converter (:func:`split`, :func:`join_bias`).
    """

    w_g: A | None  # [G*H, I]  W_g: the gates' input weights (gates_read_x)
    w_n: A | None  # [H, I]  W_n
    u_g: A | None  # [G*H, H]  U_g (gates_read_h)
    u_n: A | None  # [H, H]  U_n (candidate_reads_h)
    b_g: A | None  # [G*H]  the gates' bias b_g (gates_have_bias and bias)
    b_n: A | None  # [H]  b_in (reset-after) or b_n
    b_hg: A | None  # [G*H]  torch.nn.GRU's b_hr, b_hz (gru0, reset-after): added to b_g
    b_hn: A | None  # [H]  b_hn inside the reset product (reset-after)

    def gate_bias(self) -> A | None:
        """The gates' constant pre-activation ``b_g (+ b_hg)``, or None."""
        if self.b_hg is None:
            return self.b_g
        return self.b_hg if self.b_g is None else self.b_g + self.b_hg


def split(spec: Spec, w_ih: A | None, w_hh: A | None, b_ih: A | None, b_hh: A | None, hidden: int) -> Blocks[A]:
    """The blocks of one layer-direction's ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``
    (layouts in this module's docstring; ``bias_hh`` exists in the reset-after form only; pass None
    for what the caller does not need): views, nothing copied."""
    gh = spec.num_gates * hidden
    return Blocks(
        w_g=w_ih[:gh] if (spec.gates_read_x and w_ih is not None) else None,
        w_n=w_ih[-hidden:] if w_ih is not None else None,
        u_g=w_hh[:gh] if (spec.gates_read_h and w_hh is not None) else None,
        u_n=w_hh[-hidden:] if (spec.candidate_reads_h and w_hh is not None) else None,
        b_g=b_ih[:gh] if (spec.gates_have_bias and b_ih is not None) else None,
        b_n=b_ih[-hidden:] if b_ih is not None else None,
        b_hg=b_hh[:gh] if (spec.torch_hh_bias and b_hh is not None) else None,
        b_hn=b_hh[-hidden:] if b_hh is not None else None,
    )


def join_bias(spec: Spec, b_g: A | None, b_n: A, b_hn: A | None, cat: Any) -> tuple[A, A | None]:
    """``(bias_ih, bias_hh)`` from their blocks, the inverse of :func:`split` (e.g. the bias
    gradients from the sums of the pre-activation gradients). ``b_g`` is the gates' block of
    ``bias_ih`` and, for gru0, of ``bias_hh`` (their gradients are equal); ``b_hn`` None: no
    ``bias_hh`` (reset-before form). ``cat``: ``torch.cat`` or ``numpy.concatenate``."""
    b_ih = cat([b_g, b_n]) if spec.gates_have_bias else b_n
    if b_hn is None:
        return b_ih, None
    return b_ih, cat([b_g, b_hn]) if spec.torch_hh_bias else b_hn
