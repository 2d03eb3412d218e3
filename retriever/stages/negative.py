"""Negative prompt: the components least like the image (a search with the negated image vector)."""

from __future__ import annotations

import numpy as np

from retriever.index import TextIndex
from retriever.profile import NegativeConfig


class NegativePrompt:
    def __init__(self, indexes: dict[str, TextIndex], config: NegativeConfig) -> None:
        self.indexes = indexes
        self.config = config

    def __call__(self, image_vectors: np.ndarray) -> list[str]:
        """One comma-separated negative prompt per image vector, least similar component first."""
        found: list[list[tuple[float, str]]] = [[] for _ in range(len(image_vectors))]
        for index in self.indexes.values():
            for kind in self.config.kinds:
                if kind not in index.record.kinds:
                    continue
                for i, hits in enumerate(index.search(-image_vectors, self.config.count, kind=kind, rescore=1)):
                    found[i] += [(h.score, h.text) for h in hits]  # score against -v: higher is less like the image
        return [", ".join(dict.fromkeys(t for _, t in sorted(f, key=lambda x: -x[0]))) if f else ""
                for f in [f[: self.config.count * len(self.indexes)] for f in found]]
