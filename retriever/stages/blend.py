"""Blend: the final embedding is the normalised weighted sum of the stage embeddings."""

from __future__ import annotations

import numpy as np

from retriever.encoders.base import l2_normalize


def blend(text_embedding: np.ndarray, regressor_embedding: np.ndarray | None, text_weight: float,
          regressor_weight: float) -> np.ndarray:
    """normalize(wt * normalize(text) + wr * normalize(regressor)); the text alone if there is no regressor."""
    text = l2_normalize(text_embedding)
    if regressor_embedding is None or regressor_weight == 0:
        return text
    return l2_normalize(text_weight * text + regressor_weight * l2_normalize(regressor_embedding))
