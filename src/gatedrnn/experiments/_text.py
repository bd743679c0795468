"""Tokenisation and the vocabulary of the text tasks (private; see ``data``)."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

__all__ = ["Vocab", "tokenize"]

_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-case, replace HTML line breaks (``<br />``, ``<br>``) by spaces, then split into words
    (letters/digits/underscore, inner apostrophes kept: ``don't``) and single punctuation marks."""
    return _TOKEN.findall(_BR.sub(" ", text).lower())


class Vocab:
    """Token <-> id table. Id 0 is padding (``"<pad>"``), id 1 unknown (``"<unk>"``)."""

    PAD = 0
    UNK = 1
    SPECIALS = ("<pad>", "<unk>")

    def __init__(self, itos: Sequence[str]) -> None:
        itos = list(itos)
        if tuple(itos[:2]) != self.SPECIALS:
            raise ValueError(f"itos: expected to start with {list(self.SPECIALS)}, got {itos[:2]}")
        if len(set(itos)) != len(itos):
            raise ValueError("itos: expected unique tokens, got duplicates")
        self.itos = itos
        self.stoi = {tok: i for i, tok in enumerate(itos)}

    @classmethod
    def build(cls, texts: Iterable[list[str]], max_size: int, min_freq: int = 1) -> Vocab:
        """The ``max_size - 2`` most frequent tokens with count >= ``min_freq``, after PAD and UNK.

        ``max_size`` counts the two special ids, so ``len(vocab) <= max_size`` (an embedding of
        ``max_size`` rows fits). Ties are broken deterministically: frequency descending, then token.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 2:
            raise ValueError(f"max_size: expected an int >= 2 (PAD and UNK included), got {max_size!r}")
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq: expected an int >= 1, got {min_freq!r}")
        counts: collections.Counter[str] = collections.Counter()
        for tokens in texts:
            if isinstance(tokens, str):
                raise TypeError("texts: expected an iterable of token lists (see tokenize), got a str inside")
            counts.update(tokens)
        for special in cls.SPECIALS:
            counts.pop(special, None)
        ranked = sorted((item for item in counts.items() if item[1] >= min_freq), key=lambda kv: (-kv[1], kv[0]))
        return cls([*cls.SPECIALS, *(tok for tok, _ in ranked[: max_size - 2])])

    def encode(self, tokens: list[str], max_len: int | None = None) -> list[int]:
        """Ids of ``tokens`` (unknown -> UNK). With ``max_len``, only the first ``max_len`` tokens
        are kept (truncation, never padding); without it nothing is cut."""
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"max_len: expected None or an int >= 1, got {max_len!r}")
        if isinstance(tokens, str):
            raise TypeError("tokens: expected a list of tokens (see tokenize), got a str")
        if max_len is not None:
            tokens = tokens[:max_len]
        get, unk = self.stoi.get, self.UNK
        return [get(tok, unk) for tok in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids``; an id outside ``0..len(self)-1`` raises (a negative one would wrap)."""
        out = []
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids: expected ids in 0..{len(self.itos) - 1}, got {i!r}")
            out.append(self.itos[i])
        return out

    def to_list(self) -> list[str]:
        """The id -> token list (save it with a checkpoint; ``Vocab(lst)`` restores the same ids)."""
        return list(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"
