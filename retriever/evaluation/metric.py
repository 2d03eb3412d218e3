"""Kaggle "Stable Diffusion - Image to Prompts": mean cosine of all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from retriever.encoders.base import l2_normalize

EMBED_DIM = 384
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 0


def metric_embed(prompts: Sequence[str]) -> np.ndarray:
    """The official embeddings: sentence-transformers/all-MiniLM-L6-v2, normalised (offline from its package)."""
    from retriever.encoders.minilm import sentence_encoder

    return sentence_encoder().encode_text([str(p) for p in prompts])


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


@dataclass(frozen=True)
class Score:
    mean: float
    n: int
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict:
        return {"mean": self.mean, "n": self.n, "ci95": [self.ci_low, self.ci_high]}

    def __str__(self) -> str:
        return f"{self.mean:.6f} (n={self.n}, 95% CI {self.ci_low:.4f} to {self.ci_high:.4f})"


def summarise(cosines: np.ndarray, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> Score:
    """Mean with a percentile bootstrap 95% confidence interval over images."""
    c = np.asarray(cosines, dtype=np.float64)
    if len(c) == 0:
        raise ValueError("nothing to score")
    rng = np.random.default_rng(seed)
    if len(c) > 1 and bootstrap > 0:
        step = max(1, (1 << 22) // len(c))  # resamples at a time: about 32 MB of indices, whatever n
        means = np.concatenate([c[rng.integers(0, len(c), size=(min(step, bootstrap - i), len(c)))].mean(axis=1)
                                for i in range(0, bootstrap, step)])
        lo, hi = np.percentile(means, [2.5, 97.5])
    else:
        lo = hi = c.mean()
    return Score(float(c.mean()), len(c), float(lo), float(hi))
