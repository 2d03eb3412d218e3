"""Tokenising assembled prompts from remembered pieces.

Assembled prompts are components joined by ", " ("a cat, oil painting, by X"); the chain scores hundreds
of them per image and the same pieces recur. open_clip's ``SimpleTokenizer`` splits text into words
with a regex and byte-pair-encodes each word on its own, so the tokens of "A, B" are the tokens of A,
the comma, then the tokens of B, whenever the characters on both sides of ", " are letters or digits
(a punctuation mark there would merge with the comma into one word). Pieces are tokenised once and
remembered; the result is identical to the tokenizer's own (a test compares them on real prompts).

That holds only where the tokenizer's cleaning (``basic_clean``: ``ftfy.fix_text``, then ``html.unescape`` twice;
whitespace and case) acts on each character alone. An entity does not: in ``tom &amp, jerry`` the piece ends in
``p``, but the cleaned text is ``tom &, jerry``, where ``&,`` is one word. ftfy's repairs (mojibake, quotes,
widths) are not documented as local, though no counterexample was found; on ASCII without ``&`` every step is
local (control characters and terminal escapes are dropped where they stand). So a text with ``&`` or any
non-ASCII character is tokenised whole: exact, at the price of the memo for those texts.
Tokenizers other than ``SimpleTokenizer``, one with a reduction strategy, or one that cleans otherwise (the
``canonicalize`` cleaning drops punctuation) are called as they are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import regex
import torch

SPLIT = regex.compile(r"(?<=[\p{L}\p{N}]), (?=[\p{L}\p{N}])")


class PieceTokenizer:
    def __init__(self, tokenizer: Callable) -> None:
        from retriever._compat import open_clip_tokenizer

        oc_tokenizer = open_clip_tokenizer()
        self.tokenizer = tokenizer
        self.exact = (isinstance(tokenizer, oc_tokenizer.SimpleTokenizer) and tokenizer.reduction_fn is None
                      and tokenizer.clean_fn in (oc_tokenizer._clean_lower, oc_tokenizer._clean_whitespace))
        if self.exact:
            self.sot, self.eot = tokenizer.sot_token_id, tokenizer.eot_token_id
            self.comma = tokenizer.encode(",")
            self.context = tokenizer.context_length
            self.piece = lru_cache(maxsize=200_000)(lambda text: tuple(tokenizer.encode(text)))

    @staticmethod
    def pieces(text: str) -> list[str]:
        """The pieces whose tokens, joined by the comma's, are the text's: one piece where cleaning may cross them."""
        return SPLIT.split(text) if text.isascii() and "&" not in text else [text]

    def ids(self, text: str) -> list[int]:
        """Start token, the text's tokens, end token (not truncated)."""
        ids = [self.sot]
        for j, piece in enumerate(self.pieces(text)):
            if j:
                ids.extend(self.comma)
            ids.extend(self.piece(piece))
        ids.append(self.eot)
        return ids

    def count(self, text: str) -> int:
        """Tokens of the text, start and end tokens included (what the 77-token context counts)."""
        pieces = self.pieces(text)
        return 2 + len(self.comma) * (len(pieces) - 1) + sum(len(self.piece(p)) for p in pieces)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if not self.exact:
            return self.tokenizer(list(texts))
        out = np.zeros((len(texts), self.context), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = self.ids(text)
            if len(ids) > self.context:
                ids = ids[: self.context]
                ids[-1] = self.eot
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)
