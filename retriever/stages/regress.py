"""Regress: map image features straight into the metric's 384-d MiniLM space.

* ``bridge``: the lite bridge already lands in MiniLM space; its image embedding is the prediction.
* ``head``: a head trained by ``unprompt train-regressor`` (``retriever.heads``) over the retrieval
  space's image features, refused when its recorded model ids or dimensions do not match the profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from retriever.encoders.base import l2_normalize
from retriever.heads.model import check_head, load_head_file


class Regressor(Protocol):
    def predict(self, image_features: np.ndarray) -> np.ndarray: ...


class BridgeRegressor:
    """Identity: the bridge's image embedding is already in the metric space."""

    def predict(self, image_features: np.ndarray) -> np.ndarray:
        return l2_normalize(image_features)


class HeadRegressor:
    def __init__(self, path: str | Path, feature_model_id: str, feature_dim: int, target_model_id: str, target_dim: int) -> None:
        self.head, self.meta = load_head_file(path)
        check_head(path, self.meta, {"feature_model_id": feature_model_id, "in_dim": feature_dim,
                                     "target_model_id": target_model_id, "out_dim": target_dim})

    @torch.inference_mode()
    def predict(self, image_features: np.ndarray) -> np.ndarray:
        return l2_normalize(self.head(torch.from_numpy(np.asarray(image_features, np.float32))).numpy())
