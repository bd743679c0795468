"""The model: an optional embedding, a recurrent core built from a cell name, a linear head.

``"gru0"`` ... ``"mingru"`` build :class:`gatedrnn.GRU` with that variant, ``"lstm"`` builds
``torch.nn.LSTM`` and ``"rnn"`` a tanh ``torch.nn.RNN``: the same wrapper, the same head, so that a
comparison differs only in the cell. Variable-length batches (text) go through the core as
``PackedSequence`` so that padding never enters the recurrence.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .. import GRU, SPECS
from .config import CELLS, Config, parse_cell
from .tasks import TaskData

__all__ = ["SequenceModel", "build_core", "count_params"]


def build_core(
    cell: str,
    input_size: int,
    hidden: int,
    layers: int = 1,
    dropout: float = 0.0,
    reset_after: bool = True,
    engine: str = "auto",
    options: dict[str, bool | float] | None = None,
) -> nn.Module:
    """A batch-first recurrent layer for ``cell`` (see :data:`gatedrnn.experiments.config.CELLS`;
    its name's options, ``+ln`` ..., are in ``options`` already: :meth:`Config.cell_options`).

    ``dropout`` acts between stacked layers, so it is ignored for one layer (as torch would warn).
    """
    dropout = dropout if layers > 1 else 0.0
    cell = parse_cell(cell)[0]
    if cell in SPECS:
        return GRU(
            input_size,
            hidden,
            layers,
            batch_first=True,
            dropout=dropout,
            variant=cell,
            reset_after=reset_after,
            engine=engine,
            **(options or {}),
        )
    if cell == "lstm":
        return nn.LSTM(input_size, hidden, layers, batch_first=True, dropout=dropout)
    if cell == "rnn":
        return nn.RNN(input_size, hidden, layers, nonlinearity="tanh", batch_first=True, dropout=dropout)
    raise ValueError(f"cell: expected one of {list(CELLS)}, got {cell!r}")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SequenceModel(nn.Module):
    """Embedding (token tasks) -> recurrent core -> linear head.

    ``forward(x, lengths=None)``: ``x`` is ``[B, T, I]`` floats or ``[B, T]`` token ids;
    ``lengths`` ``[B]`` marks variable-length sequences (packed through the core). Returns
    ``[B, out]`` (seq-to-one: the head reads the last layer's state after each sequence's last
    step) or ``[B, T, out]`` (seq-to-seq).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden: int,
        output_size: int,
        *,
        layers: int = 1,
        seq2seq: bool = False,
        tokens: bool = False,
        embed_dim: int = 64,
        dropout: float = 0.0,
        reset_after: bool = True,
        engine: str = "auto",
        options: dict[str, bool | float] | None = None,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.seq2seq = seq2seq
        self.embedding = nn.Embedding(input_size, embed_dim, padding_idx=0) if tokens else None
        core_in = embed_dim if tokens else input_size
        self.core = build_core(cell, core_in, hidden, layers, dropout, reset_after, engine, options)
        self.head = nn.Linear(hidden, output_size)

    def states(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The core's outputs ``[B, T, H]`` (zero past each length) and last-layer final state ``[B, H]``."""
        if self.embedding is not None:
            x = self.embedding(x)
        if lengths is None:
            y, state = self.core(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            y_packed, state = self.core(packed)
            y, _ = pad_packed_sequence(y_packed, batch_first=True, total_length=x.shape[1])
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n)
        return y, h_n[-1]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        y, last = self.states(x, lengths)
        return self.head(y if self.seq2seq else last)


def model_for(cell: str, cfg: Config, data: TaskData, seq2seq: bool) -> SequenceModel:
    """The model of ``cell`` for a task's data under config ``cfg`` (not yet cast to its dtype)."""
    return SequenceModel(
        cell,
        data.input_size,
        cfg.hidden,
        data.output_size,
        layers=cfg.layers,
        seq2seq=seq2seq,
        tokens=data.tokens,
        embed_dim=cfg.embed_dim,
        dropout=cfg.dropout,
        reset_after=cfg.reset_after,
        engine=cfg.engine,
        options=cfg.cell_options(cell),
    )


def default_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]
