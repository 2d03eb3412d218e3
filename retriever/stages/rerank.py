"""Rerank: score candidates against the image in a second space and drop those under a floor.

Text embeddings of known texts come from the index directory when it holds them in the
rerank space (the index was built with that text tower, or a rerank cache was built
beside it); only texts never seen before are embedded, once, and then remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from retriever.encoders.base import Space, split_rows
from retriever.index import TextIndex
from retriever.stages.candidates import Candidate, Candidates


class TextEmbeddings:
    """Rerank-space embeddings for candidate texts: stored ones first, then a bounded memo."""

    def __init__(self, space: Space, indexes: dict[str, TextIndex], memo_size: int = 100_000) -> None:
        self.space = space
        self.stored = {name: ix for name, ix in indexes.items() if ix.embeddings_for(space.text_model_id)}
        self.memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.memo_size = memo_size
        self.computed = 0  # texts embedded here (for tests and metrics)

    def for_candidates(self, cands: Sequence[Candidate]) -> np.ndarray:
        out = np.zeros((len(cands), self.space.dim), dtype=np.float32)
        missing: list[int] = []
        by_index: dict[str, list[int]] = {}
        for i, c in enumerate(cands):
            (by_index.setdefault(c.index, []) if c.index in self.stored else missing).append(i)
        for name, positions in by_index.items():
            vectors = self.stored[name].embeddings_for(self.space.text_model_id)(
                [cands[p].row for p in positions]
            )
            out[positions] = vectors
        if missing:
            out[missing] = self.for_texts([cands[i].text for i in missing])
        return out

    def for_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.space.dim), np.float32)
        found = {t: self.memo[t] for t in dict.fromkeys(texts) if t in self.memo}
        new = [t for t in dict.fromkeys(texts) if t not in found]
        if new:
            found.update(zip(new, self.space.encode_text(new)))
            self.computed += len(new)
        for t in found:
            self.memo[t] = found[t]
            self.memo.move_to_end(t)
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)
        return np.stack([found[t] for t in texts])


class Reranker:
    def __init__(self, embeddings: TextEmbeddings, floor: float, keep: int) -> None:
        self.embeddings = embeddings
        self.floor = floor
        self.keep = keep

    def rerank(self, image_vector: np.ndarray, candidates: Candidates) -> Candidates:
        return self.rerank_batch(image_vector[None], [candidates])[0]

    def rerank_batch(self, image_vectors: np.ndarray, candidates: Sequence[Candidates]) -> list[Candidates]:
        """Candidates per kind re-scored by cosine with their image, sorted, floored and cut to `keep`. The
        texts of the whole batch that are neither stored nor remembered are embedded in one encoder call."""
        lists = [(i, kind, cs) for i, cands in enumerate(candidates) for kind, cs in cands.items()]
        vectors = self.embeddings.for_candidates([c for _, _, cs in lists for c in cs])
        out: list[Candidates] = [{} for _ in candidates]
        for (i, kind, cs), v in zip(lists, split_rows(vectors, [len(cs) for _, _, cs in lists])):
            scores = v @ image_vectors[i]
            rescored = sorted((c.with_rerank(s) for c, s in zip(cs, scores.tolist())), key=lambda c: -c.score)
            kept = [c for c in rescored if c.score >= self.floor][: self.keep]
            if kept:
                out[i][kind] = kept
        return out
