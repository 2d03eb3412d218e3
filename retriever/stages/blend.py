"""Blend: the final embedding is the normalised weighted sum of the stage embeddings."""

from __future__ import annotations

import numpy as np

from retriever.encoders.base import l2_normalize


def blend(text_embedding: np.ndarray, regressor_embedding: np.ndarray | None, text_weight: float,
          regressor_weight: float, prior: np.ndarray | None = None, prior_weight: float = 0.0) -> np.ndarray:
    """normalize(wt * normalize(text) + wr * normalize(regressor) + wp * normalize(prior)).

    A missing regressor or prior (None) contributes nothing; with neither, the result is the text's direction.
    """
    out = text_weight * l2_normalize(text_embedding)
    if regressor_embedding is not None and regressor_weight:
        out = out + regressor_weight * l2_normalize(regressor_embedding)
    if prior is not None and prior_weight:
        out = out + prior_weight * l2_normalize(prior)
    if not np.any(out):
        return l2_normalize(text_embedding)
    return l2_normalize(out)
