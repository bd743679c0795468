"""The options every variant takes: layer normalisation, dropout masks, zoneout, DropConnect and
state resets. Their equations, written once; every engine computes exactly these, and the tests
write them out by hand.

Notation as in :mod:`gatedrnn._specs` (``G`` gates, ``H`` units; ``W x`` the input-side
pre-activations of every block that reads ``x``, ``U h`` the recurrent ones), ``⊙`` elementwise.

``layer_norm`` (Ba, Kiros & Hinton 2016, arXiv:1607.06450; the form of haste's ``LayerNormGRU``,
with a shift beside each gain). With ``LN(a; γ, β) = γ ⊙ (a - mean(a)) / sqrt(var(a) + ε) + β``
over a group of pre-activations (``var`` biased, ``ε = 1e-5`` as ``torch.nn.LayerNorm``):

.. math::

    a^x_t = LN(W x_t;\\ γ_{ih}, β_{ih})            \\text{over every block of } W x
    a^h_t = LN(U h_{t-1};\\ γ_{hh}, β_{hh})         \\text{over every block of } U h \\text{ (reset-after)}

and the biases are added after it, as the variant has them: gru0 reset-after reads
``r, z = σ(a^x_{r,z} + b_{r,z} + a^h_{r,z})``, ``n = tanh(a^x_n + b_in + r ⊙ (a^h_n + b_hn))``.
In the reset-before form the candidate's product ``U_n (r ⊙ h)`` needs ``r``, which needs the
gates' normalised product, so there are two groups with the same parameters split where the
blocks split: ``a^h_g = LN(U_g h; γ_hh[:GH], β_hh[:GH])`` and
``a^h_n = LN(U_n (r ⊙ h); γ_hh[GH:], β_hh[GH:])``, and ``n = tanh(a^x_n + b_n + a^h_n)``. A variant
whose gates do not read ``x`` (gru1-3) normalises the candidate's ``W_n x`` alone; gru3's gates read
neither, so ``U h`` is the candidate's block alone (one group of H in both forms); minGRU has no
``U``: ``a^x`` only. Parameters per layer and direction: ``ln_weight_ih``/``ln_bias_ih``
(``γ_ih, β_ih``, ``[ih_blocks·H]``) and ``ln_weight_hh``/``ln_bias_hh`` (``[hh_blocks·H]``), gains
initialised to 1 and shifts to 0.

``recurrent_dropout`` p (variational dropout, Gal & Ghahramani 2016, arXiv:1512.05287; where Keras'
``recurrent_dropout`` applies it, but one mask for every block where Keras draws one per gate
block): ``h̃ = h_{t-1} ⊙ m_h``, ``m_h ∈ {0, 1/(1-p)}^{[B, H]}`` with keep
probability ``1 - p``, one mask per sequence, layer and direction, the same at every step. ``h̃``
replaces ``h_{t-1}`` in the recurrent products (``U h̃``, ``U_n (r ⊙ h̃)``), not in the update
``z ⊙ h_{t-1}``. Training only.

``input_dropout`` p (the same paper; Keras' ``dropout``): ``x̃ = x ⊙ m_x``, ``m_x [B, I]`` likewise,
one per sequence, layer and direction. Training only. (``dropout`` stays ``torch.nn.GRU``'s:
between layers, a fresh mask per element.)

``zoneout`` p (Krueger et al. 2017, arXiv:1606.01305), with ``h'_t`` the variant's new state:

.. math::

    h_t = ζ_t ⊙ h_{t-1} + (1 - ζ_t) ⊙ h'_t,\\quad ζ_t ∼ \\mathrm{Bernoulli}(p)^{[B, H]} \\text{ fresh at every step (training)}
    h_t = p\\, h_{t-1} + (1 - p)\\, h'_t  \\text{ (eval: the expectation)}

``weight_drop`` p (DropConnect, Wan et al. 2013, on the recurrent weights as in Merity et al.
2018's AWD-LSTM, arXiv:1708.02182): ``Ũ = U ⊙ M``, ``M ∈ {0, 1/(1-p)}^{[hh_blocks·H, H]}``, one mask
per forward call, layer and direction; training only; the parameter itself is never modified.

``resets`` (a forward argument, ``[T, B]`` bool): where ``resets[t, b]``, ``h_{t-1}`` of sequence
``b`` is 0 before step ``t`` (its products, update and zoneout all read 0), so no gradient crosses
it: the same as running each segment separately from a zero state (the first from ``h0``). The
reverse direction of a bidirectional layer restarts at the end of each segment, its own start.
Past a sequence's length nothing happens, resets included.

Every random mask is drawn in :func:`gatedrnn._functional.draw_masks` from torch's default
generator, so ``torch.manual_seed`` fixes them and every engine sees the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor

__all__ = ["LN_EPS", "PROBABILITIES", "Extras", "Options"]

LN_EPS = 1e-5  # torch.nn.LayerNorm's default

# the options that are probabilities, with the paper each comes from (for errors and docs)
PROBABILITIES = {
    "recurrent_dropout": "Gal & Ghahramani 2016",
    "input_dropout": "Gal & Ghahramani 2016",
    "zoneout": "Krueger et al. 2017",
    "weight_drop": "Merity et al. 2018",
}


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Options:
    """A layer's options (equations in this module's docstring). All off by default."""

    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    input_dropout: float = 0.0
    zoneout: float = 0.0
    weight_drop: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"layer_norm: expected True or False, got {self.layer_norm!r}")
        for name in PROBABILITIES:
            object.__setattr__(self, name, _check_probability(name, getattr(self, name)))

    def non_default(self) -> dict[str, bool | float]:
        """The options that are on, by name (for ``repr``, files and refusals)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class Extras:
    """What one engine call (one layer, one direction) needs beyond the plain layer's inputs:
    made by the driver, masks already drawn. Empty (all None) for a plain layer.

    Attributes:
        ln_ih: ``(γ_ih, β_ih)``, each ``[ih_blocks·H]``: layer norm of ``W x``.
        ln_hh: ``(γ_hh, β_hh)``, each ``[hh_blocks·H]``: layer norm of ``U h`` (None for minGRU).
        h_mask: ``[B, H]`` recurrent-dropout mask, scaled (values 0 and ``1/(1-p)``).
        zoneout: ``[T, B, H]`` ζ (0/1, 1 keeps ``h_{t-1}``) in training, or the float p (eval).
        resets: ``[T, B]`` bool in this direction's own time order.

    The input-dropout and DropConnect masks are applied by the driver to ``x`` and ``U`` before
    the call (plain tensor products outside the recurrence).
    """

    ln_ih: tuple[Tensor, Tensor] | None = None
    ln_hh: tuple[Tensor, Tensor] | None = None
    h_mask: Tensor | None = None
    zoneout: Tensor | float | None = None
    resets: Tensor | None = None

    def names(self) -> list[str]:
        """The options this call uses, by their layer argument names (for engines' refusals)."""
        out = []
        if self.ln_ih is not None or self.ln_hh is not None:
            out.append("layer_norm")
        if self.h_mask is not None:
            out.append("recurrent_dropout")
        if self.zoneout is not None:
            out.append("zoneout")
        if self.resets is not None:
            out.append("resets")
        return out


NONE = Extras()
