"""Shrink (lite): the final embedding pulled toward a centroid of prompts, more the less sure the subject is.

The centroid is built per image from a pool of prompts (``centroids``: their metric-space embeddings and the
medium each names, made by retriever/data/make_centroids.py from the package's own prompts): the pool's mean,
the medium head's mixture of per-medium means, and the pool's prompts nearest the image's own answer
(normalize(prompt + regressor)), in the proportions of the setting the image's medium decision selects
(``photo`` or ``other``). Every knob was chosen by leave-one-prompt-out cross-validation on the dev halves
(bench/lite_blend_cv.py, bench/results/lite-blend-cv.json).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from retriever.encoders.base import l2_normalize
from retriever.errors import ProfileError
from retriever.stage_configs import ShrinkConfig, ShrinkSetting
from retriever.stages.blend import blend

if TYPE_CHECKING:
    from retriever.stages.describe import Description


class Shrink:
    def __init__(self, config: ShrinkConfig, pool: np.ndarray, mediums: list[str], text_weight: float) -> None:
        self.config, self.text_weight = config, text_weight
        self.pool = l2_normalize(np.asarray(pool, np.float32))
        self.mean = l2_normalize(self.pool.mean(axis=0))
        labels = np.array(mediums)
        self.by_medium = {m: l2_normalize(self.pool[labels == m].mean(axis=0)) for m in sorted(set(mediums))}

    @classmethod
    def load(cls, config: ShrinkConfig, metric_model: str, text_weight: float, profile_name: str) -> "Shrink | None":
        if not config.centroids:
            return None
        from retriever.paths import local_file

        try:
            with np.load(local_file(config.centroids), allow_pickle=False) as f:
                pool, mediums, model = f["embeddings"], [str(m) for m in f["mediums"]], str(f["model"])
        except (OSError, ValueError, KeyError) as exc:
            raise ProfileError(f"profile {profile_name}: shrink.centroids {config.centroids} cannot be read ({exc}); "
                               "re-create it with retriever/data/make_centroids.py") from None
        if model != metric_model or pool.ndim != 2 or len(pool) != len(mediums) or not len(pool):
            raise ProfileError(f"profile {profile_name}: shrink.centroids {config.centroids} holds {pool.shape} "
                               f"embeddings of {model!r}, not the metric model {metric_model!r}'s")
        return cls(config, pool, mediums, text_weight)

    def setting(self, medium: str) -> ShrinkSetting:
        chosen = self.config.photo if medium == "photo" else self.config.other
        assert chosen is not None  # ShrinkConfig requires both with centroids
        return chosen

    def centroid(self, s: ShrinkSetting, query: np.ndarray, mediums: dict[str, float] | None) -> np.ndarray:
        out = (1 - s.medium_centroid - s.neighbours) * self.mean
        if s.medium_centroid:
            mix = sum(p * self.by_medium.get(m, self.mean) for m, p in mediums.items()) if mediums else self.mean
            out = out + s.medium_centroid * mix
        if s.neighbours:
            z = self.pool @ query / s.temperature
            w = np.exp(z - z.max())
            out = out + s.neighbours * l2_normalize((w / w.sum()) @ self.pool)
        return l2_normalize(out)

    def for_description(self, prompt: np.ndarray, regressor: np.ndarray | None,
                        description: "Description | None") -> np.ndarray:
        """``final`` for a described image (the pipeline's ``FinalEmbedding``): its medium decision, the medium
        head's probabilities and the subject's confidence (an image without description: unsure, not a photo)."""
        if description is None:
            return self.final(prompt, regressor, "other", None, 0.0)
        return self.final(prompt, regressor, description.medium, description.mediums, description.confidence)

    def final(self, prompt: np.ndarray, regressor: np.ndarray | None, medium: str,
              mediums: dict[str, float] | None, confidence: float) -> np.ndarray:
        """The image's final embedding from its prompt and regressor embeddings and its description."""
        s = self.setting(medium)
        own = l2_normalize(prompt) if regressor is None else l2_normalize(l2_normalize(prompt) + l2_normalize(regressor))
        weight = s.base + s.extra * (1.0 - confidence)
        return blend(prompt, regressor, self.text_weight, s.regressor_weight, self.centroid(s, own, mediums), weight)
