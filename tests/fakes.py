"""Small deterministic stand-ins for encoders, for tests that check behaviour, not quality."""

from __future__ import annotations

import hashlib

import numpy as np

from retriever.encoders.base import l2_normalize


class HashTextEncoder:
    """Each distinct text gets a fixed pseudo-random unit vector; counts what it embeds."""

    def __init__(self, dim: int = 16, model_id: str = "hash-text") -> None:
        self.dim = dim
        self.model_id = model_id
        self.text_model_id = model_id
        self.embedded = 0

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return l2_normalize(np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32))

    def encode_text(self, texts):
        self.embedded += len(texts)
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vector(t) for t in texts])
