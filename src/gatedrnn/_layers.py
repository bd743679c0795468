"""``GRU`` and ``GRUCell``: ``torch.nn.GRU``'s contract for every variant of the family."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _reference
from ._engines import (
    _step,
    auto_cell_choice,
    autocast_cpu_dtype,
    check_cell_engine_name,
    check_engine_name,
    get_engine,
    in_compile,
    not_yet,
    plain,
)
from ._engines._step import cell_runner, layer_runner
from ._functional import LayerWeights, bernoulli, rnn
from ._options import Options
from ._specs import check_int, get_spec, param_shapes

__all__ = ["GRU", "GRUCell", "InputError"]


class InputError(RuntimeError, ValueError):
    """Bad input to a layer. A ``RuntimeError`` like ``torch.nn.GRU``'s and a ``ValueError``."""


def _check_config(variant: str, bias: bool, dropout: float, engine: str) -> None:
    spec = get_spec(variant)
    if spec.gates_need_bias and not bias:
        raise ValueError(
            f"bias: variant {variant!r} takes its gates from the bias alone; with bias=False they would be "
            f"a constant 0.5. Expected bias=True for {variant}, got bias=False"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        # 1.0, as in torch.nn.GRU, zeroes every inter-layer activation in training
        raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
    check_engine_name(engine)


def _check_like(name: str, t: Tensor, w: Tensor, owner: str) -> None:
    """``t`` has the dtype and device of the parameter ``w``."""
    if t.dtype != w.dtype:
        raise InputError(f"{name}: expected dtype {w.dtype} (the {owner}'s parameters), got {t.dtype}")
    if t.device != w.device:
        raise InputError(f"{name}: expected device {w.device} (the {owner}'s parameters), got {t.device}")


def _key(x: Tensor, hx: Tensor | None, params: tuple[Tensor | None, ...]) -> tuple[Any, ...]:
    """What a cached call depends on (see :meth:`GRUCell.forward`): the inputs' shapes, data
    types, devices (CPU or not), ``requires_grad`` and contiguity, grad mode, and the parameters'
    addresses and ``requires_grad`` (their shapes and types are the module's; a parameter's new
    data comes at a new address). Raises AttributeError for inputs that are not tensors."""
    w_ih, w_hh, b_ih, b_hh = params
    return (
        x.shape,
        x.dtype,
        x.is_cpu,
        x.requires_grad,
        x.is_contiguous(),
        None if hx is None else (hx.shape, hx.dtype, hx.is_cpu, hx.requires_grad, hx.is_contiguous()),
        torch.is_grad_enabled(),
        None if w_ih is None else (w_ih.data_ptr(), w_ih.requires_grad),
        None if w_hh is None else (w_hh.data_ptr(), w_hh.requires_grad),
        None if b_ih is None else (b_ih.data_ptr(), b_ih.requires_grad),
        None if b_hh is None else (b_hh.data_ptr(), b_hh.requires_grad),
    )


def _unpack(packed: PackedSequence) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """A PackedSequence as a padded ``[T, B, *]`` tensor in the caller's batch order.

    Returns the padded tensor, the lengths (in caller order) and the (time, batch) index of every
    row of ``packed.data``, to pack the output the same way.
    """
    data, batch_sizes = packed.data, packed.batch_sizes
    steps, batch = len(batch_sizes), int(batch_sizes[0])
    t_idx = torch.repeat_interleave(torch.arange(steps), batch_sizes)
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    j_idx = torch.arange(len(t_idx)) - offsets[t_idx]
    if packed.sorted_indices is not None:
        b_idx = packed.sorted_indices.cpu()[j_idx]
    else:
        b_idx = j_idx
    lengths = torch.zeros(batch, dtype=torch.int64).index_add_(0, b_idx, torch.ones_like(b_idx))
    t_idx, b_idx = t_idx.to(data.device), b_idx.to(data.device)
    padded = data.new_zeros((steps, batch, *data.shape[1:]))
    padded = padded.index_put((t_idx, b_idx), data)
    return padded, lengths.to(data.device), (t_idx, b_idx)


def _check_lengths(lengths: Any, steps: int, batch: int, enforce_sorted: bool, device: torch.device) -> Tensor:
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"lengths: expected a 1-D tensor or list of integers, got {lengths!r}") from e
        if lengths.numel() == 0:  # [] becomes float32; an empty batch has no lengths to check
            lengths = lengths.to(torch.int64)
    if lengths.dim() != 1:
        raise InputError(f"lengths: expected a 1-D tensor of {batch} integers, got shape {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise InputError(f"lengths: expected integers, got dtype {lengths.dtype}")
    if lengths.numel() != batch:
        raise InputError(f"lengths: expected one length per sequence ({batch}), got {lengths.numel()}")
    lengths = lengths.to(device=device, dtype=torch.int64)
    if batch:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo <= 0:
            raise InputError(f"lengths: expected every length >= 1, got {lo}")
        if hi > steps:
            raise InputError(f"lengths: expected every length <= the sequence length {steps}, got {hi}")
        if enforce_sorted and bool((lengths[1:] > lengths[:-1]).any()):
            raise InputError(
                f"lengths: expected lengths sorted in decreasing order (enforce_sorted=True), got {lengths.tolist()}"
            )
    return lengths


def _check_resets(resets: Any, x: Tensor, unbatched: bool, batch_first: bool) -> Tensor:
    """``resets`` as a ``[T, B]`` bool tensor on x's device (time-major), or a clear error."""
    steps, batch = x.shape[0], x.shape[1]
    want = (steps,) if unbatched else ((batch, steps) if batch_first else (steps, batch))
    if not isinstance(resets, Tensor):
        raise InputError(f"resets: expected a bool tensor of shape {want} or None, got {type(resets).__name__}")
    if resets.dtype != torch.bool:
        raise InputError(f"resets: expected dtype torch.bool, got {resets.dtype}")
    if tuple(resets.shape) != want:
        order = "(time,)" if unbatched else ("(batch, time)" if batch_first else "(time, batch)")
        raise InputError(f"resets: expected shape {want} {order}, like the input's, got {tuple(resets.shape)}")
    if resets.device != x.device:
        raise InputError(f"resets: expected device {x.device} (the input's), got {resets.device}")
    if unbatched:
        return resets.unsqueeze(1)
    return resets.t() if batch_first else resets


def _unpack_resets(resets: Any, packed: PackedSequence) -> Tensor:
    """The resets of a packed input: a PackedSequence of bools packed like it, as ``[T, B]``."""
    if not isinstance(resets, PackedSequence):
        raise InputError(
            f"resets: for a PackedSequence input expected a PackedSequence of bools packed like it, "
            f"got {type(resets).__name__}"
        )
    same = torch.equal(resets.batch_sizes, packed.batch_sizes) and all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in ((resets.sorted_indices, packed.sorted_indices), (resets.unsorted_indices, packed.unsorted_indices))
    )
    if not same or resets.data.dim() != 1:
        raise InputError(
            "resets: expected a PackedSequence packed like the input (same batch_sizes and sorted_indices) "
            f"holding one bool per step, got data of shape {tuple(resets.data.shape)}"
        )
    if resets.data.dtype != torch.bool:
        raise InputError(f"resets: expected dtype torch.bool, got {resets.data.dtype}")
    if resets.data.device != packed.data.device:
        raise InputError(f"resets: expected device {packed.data.device} (the input's), got {resets.data.device}")
    padded, _, _ = _unpack(resets)
    return padded


class _Family(nn.Module):
    """What :class:`GRU` and :class:`GRUCell` share: torch's initialisation, the spec on unpickling."""

    hidden_size: int
    variant: str
    options: Options

    def reset_parameters(self) -> None:
        """``U(-1/sqrt(H), 1/sqrt(H))`` for every weight and bias, as ``torch.nn.GRU`` / ``GRUCell``;
        layer-norm gains 1 and shifts 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("ln_weight"):
                    p.fill_(1.0)
                elif name.startswith("ln_bias"):
                    p.zero_()
                else:
                    p.uniform_(-bound, bound)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.spec = get_spec(self.variant)
        if "options" not in self.__dict__:  # pickled before the options existed
            self.options = Options()
        self.__dict__.setdefault("engine", "auto")  # a GRUCell pickled before cells had engines
        self.__dict__.setdefault("last_engine", None)
        self.__dict__["_plans"] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_plans", None)  # compiled functions: rebuilt on the next call
        return state

    # What the cached calls (:meth:`_cached`) depend on beyond their key: setting any of these
    # forgets them.
    _PLAN_CONFIG = frozenset({"engine", "options", "batch_first", "reset_after", "spec", "variant", "bias"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._PLAN_CONFIG and "_plans" in self.__dict__:
            self.__dict__["_plans"].clear()
        super().__setattr__(name, value)

    def _cache(self, key: tuple[Any, ...] | None, runner: Any) -> None:
        """Keep ``runner`` for later calls with this key (see :meth:`GRUCell.forward`): a handful
        per module, forgotten all at once past that (parameters replaced again and again, e.g.
        by ``torch.func.functional_call``, each make a key of their own)."""
        if key is None or not plain():
            return
        plans = self.__dict__["_plans"]
        if len(plans) >= 8:
            plans.clear()
        plans[key] = runner

    @property
    def layer_norm(self) -> bool:
        return self.options.layer_norm

    @property
    def zoneout(self) -> float:
        return self.options.zoneout

    def _options_repr(self) -> str:
        return "".join(f", {k}={v!r}" for k, v in self.options.non_default().items())


def _zoneout(h: Tensor, h_new: Tensor, p: float, training: bool) -> Tensor:
    """A cell's zoneout on its step's output (both ``[B, H]``): a fresh mask ζ in training, ``p`` in
    eval (:func:`gatedrnn._reference.carry`)."""
    return _reference.carry(h, h_new, bernoulli(tuple(h.shape), p, h) if training else p)


def _short(input: object, batch_first: bool) -> bool:
    """Whether ``input`` is a tensor of at most ``_step.SHORT_MAX_STEPS`` steps (a call whose plan
    may be cached); anything else goes the checked way."""
    if not isinstance(input, Tensor) or input.dim() == 0:
        return False
    return input.shape[1 if batch_first and input.dim() == 3 else 0] <= _step.SHORT_MAX_STEPS


class GRU(_Family):
    """A stacked, optionally bidirectional recurrent layer of any variant of the GRU family.

    Same signature, parameter names, shapes and forward contract as ``torch.nn.GRU``, plus:

    Args:
        variant: ``gru0`` (classic), ``gru1``, ``gru2``, ``gru3`` (Dey & Salem), ``mgu``,
            ``mingru``; equations in :data:`gatedrnn.SPECS`.
        reset_after: the reset form (True: PyTorch/cuDNN/Keras default; False: Keras
            ``reset_after=False``, ONNX default). Ignored by ``mingru`` (no reset gate).
        engine: ``"auto"``, ``"reference"``, ``"fused"`` (CPU) or ``"triton"`` (CUDA). After a
            forward, :attr:`last_engine` names the engine that ran.
        layer_norm: layer-normalise the input and the recurrent pre-activations (Ba et al. 2016),
            with gains ``ln_weight_ih_l{k}``/``ln_weight_hh_l{k}`` and shifts ``ln_bias_*``.
        recurrent_dropout: variational dropout of ``h(t-1)`` where it enters the recurrent
            products: one mask per sequence, layer and direction, shared by every block (Gal &
            Ghahramani 2016; Keras' ``recurrent_dropout`` draws one per gate block). Training only.
        input_dropout: the same on each layer's input ``x`` (Keras' ``dropout``). ``dropout`` is
            ``torch.nn.GRU``'s, between layers.
        zoneout: each unit keeps ``h(t-1)`` with this probability at each step in training, and
            blends with it in expectation in eval (Krueger et al. 2017).
        weight_drop: DropConnect on ``weight_hh``, one mask per forward call (Merity et al. 2018).
            Training only; the parameter is never modified.

    The options' equations: :mod:`gatedrnn._options`. Every engine runs them with the same masks
    (drawn from torch's generator: ``torch.manual_seed`` fixes them).

    ``forward(input, hx=None, lengths=None, enforce_sorted=False, resets=None)``: ``input`` is
    ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), ``[T, I]`` unbatched, or a
    ``PackedSequence``; ``lengths`` (padded input only) gives each sequence's length: outputs past it
    are zero, ``h_n`` is the state at its last step, and what the input holds past it (even NaN or
    inf) reaches no output and no gradient. ``resets``: a bool tensor shaped like the input's time
    and batch axes (``[T, B]``, ``[B, T]`` with ``batch_first``, ``[T]`` unbatched, or a
    ``PackedSequence`` of bools packed like ``input``): where true, the state is set to zero before
    that step (episode boundaries), and no gradient flows across. Returns ``(output, h_n)`` like
    ``torch.nn.GRU``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        variant: str = "gru0",
        reset_after: bool = True,
        engine: str = "auto",
        layer_norm: bool = False,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        check_int("input_size", input_size, 1)
        check_int("hidden_size", hidden_size, 1)
        check_int("num_layers", num_layers, 1)
        for flag, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):  # torch.nn.GRU's check and message (GRUCell has none)
                raise TypeError(f"{flag} should be of type bool, got: {type(value).__name__}")
        _check_config(variant, bias, dropout, engine)
        self.options = Options(layer_norm, recurrent_dropout, input_dropout, zoneout, weight_drop)
        if dropout > 0 and num_layers == 1:
            warnings.warn(  # torch.nn.GRU's warning, word for word
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=2,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.variant = variant
        self.reset_after = bool(reset_after)
        self.engine = engine
        self.last_engine: str | None = None
        self._plans: dict[tuple[Any, ...], Any] = {}
        self.spec = get_spec(variant)
        factory = {"device": device, "dtype": dtype}
        self._param_names: list[list[dict[str, str]]] = []
        for k in range(num_layers):
            layer_in = input_size if k == 0 else hidden_size * self.num_directions
            dirs = []
            for d in range(self.num_directions):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                names = {}
                shapes = param_shapes(self.spec, layer_in, hidden_size, self.bias, self.reset_after, layer_norm)
                for base, shape in shapes.items():
                    self.register_parameter(base + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names[base] = base + suffix
                dirs.append(names)
            self._param_names.append(dirs)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``torch.nn.GRU``."""

    def layer_weights(self) -> list[list[LayerWeights]]:
        """The parameters as ``[layer][direction]`` groups, for :func:`gatedrnn._functional.rnn`."""
        return [
            [
                LayerWeights(
                    w_ih=getattr(self, names["weight_ih"]),
                    w_hh=getattr(self, names["weight_hh"]) if "weight_hh" in names else None,
                    b_ih=getattr(self, names["bias_ih"]) if "bias_ih" in names else None,
                    b_hh=getattr(self, names["bias_hh"]) if "bias_hh" in names else None,
                    ln_ih=self._ln(names, "ih"),
                    ln_hh=self._ln(names, "hh"),
                )
                for names in layer
            ]
            for layer in self._param_names
        ]

    def _ln(self, names: dict[str, str], side: str) -> tuple[Tensor, Tensor] | None:
        key = f"ln_weight_{side}"
        return (getattr(self, names[key]), getattr(self, names[f"ln_bias_{side}"])) if key in names else None

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, n) for n in names.values()] for layer in self._param_names for names in layer]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        s += f", variant={self.variant!r}"
        if self.spec.has_reset:
            s += f", reset_after={self.reset_after}"
        if self.engine != "auto":
            s += f", engine={self.engine!r}"
        return s + self._options_repr()

    def _reference_param(self) -> Tensor:
        return getattr(self, self._param_names[0][0]["weight_ih"])

    def _lean_params(self) -> tuple[Tensor | None, ...] | None:
        """``(w_ih, w_hh, b_ih, b_hh)`` of a one-layer, one-direction layer (None for those it
        lacks); None for a deeper or bidirectional one (their calls are never cached)."""
        if len(self._param_names) != 1 or len(self._param_names[0]) != 1:
            return None
        names, ps = self._param_names[0][0], self._parameters
        return tuple(ps[names[n]] if n in names else None for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | None = None,
        lengths: Tensor | list[int] | None = None,
        enforce_sorted: bool = False,
        resets: Tensor | PackedSequence | None = None,
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        # A call like one already checked (see GRUCell.forward) runs what that call left. Only a
        # short call (at most SHORT_MAX_STEPS steps) can leave a plan: a longer one skips the key.
        key = None
        if lengths is None and resets is None and _short(input, self.batch_first) and plain():
            try:
                params = self._lean_params()
                if params is not None:
                    key = _key(input, hx, params)
            except (KeyError, AttributeError):
                key = None
            run = self._plans.get(key)
            if run is not None:
                self.__dict__["last_engine"] = "fused"
                return run(input, hx, params)  # type: ignore[no-any-return]
        out_dtype = self._autocast_mixed(input, hx)
        if out_dtype is not None:
            # as torch.nn.GRU under CPU autocast: bfloat16 inputs into float32 parameters run as
            # float32 inputs would (bfloat16 products), the outputs in h0's dtype, else the input's
            x = input.to(torch.float32)
            h = hx.to(torch.float32) if hx is not None else None
            y, h_n = self._forward(x, h, lengths, enforce_sorted, resets, None)
            return y.to(out_dtype), h_n.to(out_dtype)
        return self._forward(input, hx, lengths, enforce_sorted, resets, key)

    def _autocast_mixed(self, input: object, hx: object) -> torch.dtype | None:
        """Under ``torch.autocast("cpu", dtype=torch.bfloat16)``, a float32 layer called with a
        bfloat16 input or ``h0`` (the other float32 or bfloat16): the dtype of the outputs
        ``torch.nn.GRU`` gives there. None otherwise (the call is checked as usual)."""
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, Tensor) or (hx is not None and not isinstance(hx, Tensor)):
            return None
        dtypes = (data.dtype,) if hx is None else (data.dtype, hx.dtype)
        if torch.bfloat16 not in dtypes or not set(dtypes) <= {torch.bfloat16, torch.float32}:
            return None
        if not data.is_cpu or autocast_cpu_dtype() != torch.bfloat16:
            return None
        if self._reference_param().dtype != torch.float32:
            return None
        return dtypes[-1]

    def _forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | None,
        lengths: Tensor | list[int] | None,
        enforce_sorted: bool,
        resets: Tensor | PackedSequence | None,
        key: tuple[Any, ...] | None,
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        w = self._reference_param()
        packed_index = None
        unbatched = False
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise InputError("lengths: a PackedSequence carries its own lengths; expected lengths=None")
            x, seq_lengths, packed_index = _unpack(input)
            batch_first = False
            if resets is not None:
                resets = _unpack_resets(resets, input)
        else:
            if not isinstance(input, Tensor):
                raise InputError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise InputError(
                    f"input: expected a 3-D (batched) or 2-D (unbatched) tensor, got {input.dim()}-D "
                    f"with shape {tuple(input.shape)}"
                )
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            batch_first = self.batch_first and not unbatched
            if batch_first:
                x = x.transpose(0, 1)
            seq_lengths = None
        if x.shape[-1] != self.input_size:
            raise InputError(f"input: expected input.size(-1) == input_size ({self.input_size}), got {x.shape[-1]}")
        _check_like("input", x, w, "layer")
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise InputError("input: expected a sequence length of at least 1, got 0 time steps")
        if lengths is not None:
            seq_lengths = _check_lengths(lengths, steps, batch, enforce_sorted, x.device)
        if resets is not None and packed_index is None:
            resets = _check_resets(resets, x, unbatched, batch_first)

        state_shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            h0 = x.new_zeros(state_shape)
        else:
            if not isinstance(hx, Tensor):
                raise InputError(f"hx: expected a Tensor or None, got {type(hx).__name__}")
            want = state_shape[::2] if unbatched else state_shape
            if unbatched and hx.dim() != 2:
                raise InputError(f"hx: for unbatched input expected a 2-D hx of shape {want}, got {hx.dim()}-D")
            if tuple(hx.shape) != tuple(want):
                raise InputError(f"hx: expected shape {tuple(want)}, got {tuple(hx.shape)}")
            _check_like("hx", hx, w, "layer")
            h0 = hx.unsqueeze(1) if unbatched else hx

        y, h_n, ran = rnn(
            x,
            h0,
            self.layer_weights(),
            self.spec,
            self.reset_after,
            dropout=self.dropout,
            training=self.training,
            # an empty batch has nothing to compute: the reference's torch operations take it and
            # connect the (empty) results to every parameter, as torch.nn.GRU's do
            engine=self.engine if batch else "reference",
            lengths=seq_lengths,
            options=self.options,
            resets=resets,
        )
        # a plain attribute: set past nn.Module.__setattr__'s parameter/buffer/module checks
        object.__setattr__(self, "last_engine", ran)
        if key is not None and batch and ran == "fused" and not self.options.non_default():
            params = self._lean_params()
            if params is not None and get_engine("fused").short(self.spec, steps, batch, self.hidden_size):
                grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, hx, *params))
                self._cache(key, layer_runner(self.spec, self.reset_after, input, hx, params, self.batch_first, grad))
        if packed_index is not None:
            assert isinstance(input, PackedSequence)
            out = PackedSequence(y[packed_index], input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            return out, h_n
        if unbatched:
            return y.squeeze(1), h_n.squeeze(1)
        if batch_first:
            y = y.transpose(0, 1)
        return y, h_n


class GRUCell(_Family):
    """One step of any variant: ``torch.nn.GRUCell``'s contract (``h' = cell(x, h)``).

    Parameters ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` with the layouts of
    :mod:`gatedrnn._specs`; for ``gru0`` with ``reset_after=True`` exactly ``torch.nn.GRUCell``'s.

    The options that make sense for one step: ``layer_norm`` (gains ``ln_weight_ih``,
    ``ln_weight_hh``, shifts ``ln_bias_ih``, ``ln_bias_hh``) and ``zoneout`` (a fresh mask at each
    call in training, the expectation in eval); equations in :mod:`gatedrnn._options`. The
    per-sequence masks (``recurrent_dropout``, ``input_dropout``, ``weight_drop``) need a sequence:
    use :class:`GRU`.

    ``engine``: ``"reference"`` (the reference step, plain torch operations), ``"fused"`` (CPU
    float32/float64: the step as one compiled call, with a hand-written backward; no options yet)
    or ``"auto"`` (``fused`` where it runs the call, else ``reference``). After a call,
    :attr:`last_engine` names the engine that ran.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        variant: str = "gru0",
        reset_after: bool = True,
        engine: str = "auto",
        layer_norm: bool = False,
        zoneout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        check_int("input_size", input_size, 1)
        check_int("hidden_size", hidden_size, 1)
        _check_config(variant, bias, 0.0, "auto")
        check_cell_engine_name(engine)
        self.engine = engine
        self.last_engine: str | None = None
        self._plans: dict[tuple[Any, ...], Any] = {}
        self.options = Options(layer_norm=layer_norm, zoneout=zoneout)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bool(bias)
        self.variant = variant
        self.reset_after = bool(reset_after)
        self.spec = get_spec(variant)
        shapes = param_shapes(self.spec, input_size, hidden_size, self.bias, self.reset_after, layer_norm)
        for base, shape in shapes.items():
            self.register_parameter(base, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        for base in ("weight_hh", "bias_ih", "bias_hh", *(("ln_weight_hh", "ln_bias_hh") if layer_norm else ())):
            if not hasattr(self, base):
                self.register_parameter(base, None)
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        s += f", variant={self.variant!r}"
        if self.spec.has_reset:
            s += f", reset_after={self.reset_after}"
        if self.engine != "auto":
            s += f", engine={self.engine!r}"
        return s + self._options_repr()

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        # A call like one already checked runs what that call left (a compiled step and the
        # parameters' addresses), keyed by everything it depends on: the inputs' shapes, types,
        # devices, layouts and requires_grad, grad mode, and where the parameters are. Never
        # under torch.compile, torch.export, tracing or a torch.func transform (see plain()).
        key = None
        if plain():
            ps = self._parameters
            try:
                params = (ps["weight_ih"], ps["weight_hh"], ps["bias_ih"], ps["bias_hh"])
                key = _key(input, hx, params)
            except (KeyError, AttributeError):  # parametrized, or not tensors: checked below
                key = None
            run = self._plans.get(key)
            if run is not None:
                self.__dict__["last_engine"] = "fused"
                return run(input, hx, params)  # type: ignore[no-any-return]
        return self._forward(input, hx, key)

    def _options_on(self) -> list[str]:
        return [n for n, on in (("layer_norm", self.options.layer_norm), ("zoneout", self.options.zoneout)) if on]

    def _forward(self, input: Tensor, hx: Tensor | None, key: tuple[Any, ...] | None) -> Tensor:
        w = self.weight_ih
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            got = f"{input.dim()}-D" if isinstance(input, Tensor) else type(input).__name__
            raise InputError(f"input: expected a 2-D (batched) or 1-D (unbatched) tensor, got {got}")
        if input.shape[-1] != self.input_size:
            raise InputError(f"input: expected input.size(-1) == input_size ({self.input_size}), got {input.shape[-1]}")
        _check_like("input", input, w, "cell")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            h = x.new_zeros((x.shape[0], self.hidden_size))
        else:
            if not isinstance(hx, Tensor):
                raise InputError(f"hx: expected a Tensor or None, got {type(hx).__name__}")
            want = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
            if tuple(hx.shape) != want:
                raise InputError(f"hx: expected shape {want}, got {tuple(hx.shape)}")
            _check_like("hx", hx, w, "cell")
            h = hx.unsqueeze(0) if unbatched else hx
        options = self._options_on()
        engine = auto_cell_choice(x, options) if self.engine == "auto" else self.engine
        object.__setattr__(self, "last_engine", engine)
        if engine == "fused":
            fused = get_engine("fused")
            why = not_yet(options, fused.cell_options)
            if why is not None:
                raise RuntimeError(f"engine='fused' cannot run here: {why}")
            params = (w, self.weight_hh, self.bias_ih, self.bias_hh)
            out: Tensor = in_compile(fused, fused.cell)(self.spec, self.reset_after, input, hx, *params)
            if options:  # zoneout: the reference's carry on the fused step's output (never cached)
                h_new = _zoneout(h, out.unsqueeze(0) if unbatched else out, self.options.zoneout, self.training)
                return h_new.squeeze(0) if unbatched else h_new
            if key is not None:
                grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, hx, *params))
                self._cache(key, cell_runner(self.spec, self.reset_after, input, hx, params, grad))
            return out
        ln_ih = (self.ln_weight_ih, self.ln_bias_ih) if self.layer_norm else None
        ln_hh = (self.ln_weight_hh, self.ln_bias_hh) if self.layer_norm and self.weight_hh is not None else None
        gx, nx = _reference.project(self.spec, x, w, self.bias_ih, self.bias_hh, self.hidden_size, ln_ih)
        h_new = _reference.step(self.spec, self.reset_after, gx, nx, h, self.weight_hh, self.bias_hh, ln_hh)
        if self.options.zoneout:
            h_new = _zoneout(h, h_new, self.options.zoneout, self.training)
        return h_new.squeeze(0) if unbatched else h_new
