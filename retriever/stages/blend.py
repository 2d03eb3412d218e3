"""Blend: the final embedding is the normalised weighted sum of the stage embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from retriever.encoders.base import l2_normalize

if TYPE_CHECKING:
    from retriever.stages.describe import Description


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


class FinalEmbedding(Protocol):
    """How a profile makes an image's final embedding from its prompt's and regressor's (and its description,
    where the profile describes images): ``PriorBlend``, or lite's ``stages.shrink.Shrink.for_description``."""

    def __call__(self, prompt: np.ndarray, regressor: np.ndarray | None,
                 description: "Description | None") -> np.ndarray: ...


class PriorBlend:
    """The profile's ``[blend]``: prompt and regressor, plus the prior at ``prior.blend_weight``, more of it the
    less sure the described subject is (``describe.uncertainty_prior_weight``)."""

    def __init__(self, text_weight: float, regressor_weight: float, prior: np.ndarray | None, base: float,
                 uncertainty: float) -> None:
        self.text_weight, self.regressor_weight, self.prior = text_weight, regressor_weight, prior
        self.base, self.uncertainty = base, uncertainty

    def __call__(self, prompt: np.ndarray, regressor: np.ndarray | None,
                 description: "Description | None" = None) -> np.ndarray:
        weight = self.base + (self.uncertainty * (1 - description.confidence) if description is not None else 0.0)
        return blend(prompt, regressor, self.text_weight, self.regressor_weight, self.prior, weight)
