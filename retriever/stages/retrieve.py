"""Retrieve: top-k texts of each kind from each index, for image vectors in the retrieval space."""

from __future__ import annotations

import numpy as np

from retriever.index import TextIndex
from retriever.stages.candidates import Candidate, Candidates


class Retriever:
    def __init__(self, indexes: dict[str, TextIndex], k: int) -> None:
        self.indexes = indexes
        self.k = k

    def retrieve(self, image_vectors: np.ndarray) -> list[Candidates]:
        out: list[Candidates] = [{} for _ in range(len(image_vectors))]
        for name, index in self.indexes.items():
            for kind in index.kinds:
                for i, hits in enumerate(index.search(image_vectors, self.k, kind=kind)):
                    out[i].setdefault(kind, []).extend(
                        Candidate(h.text, h.kind, h.source, name, h.row, h.score) for h in hits
                    )
        for cands in out:
            for kind in cands:
                cands[kind].sort(key=lambda c: -c.retrieval_score)
        return out
