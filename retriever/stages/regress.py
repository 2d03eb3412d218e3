"""Regress: map image features straight into the metric's 384-d MiniLM space.

* ``bridge``: the lite bridge already lands in MiniLM space; its image embedding is the prediction.
* ``head``: a head trained by ``unprompt train-regressor`` (linear, or a small MLP) over the
  retrieval space's image features. A head records the feature model, the dimensions and
  the target model, and is refused when they do not match the profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from retriever.encoders.base import l2_normalize
from retriever.errors import HeadMismatchError, MissingWeightsError

HEAD_FORMAT = 1


class Regressor(Protocol):
    def predict(self, image_features: np.ndarray) -> np.ndarray: ...


class BridgeRegressor:
    """Identity: the bridge's image embedding is already in the metric space."""

    def predict(self, image_features: np.ndarray) -> np.ndarray:
        return l2_normalize(image_features)


def make_head(in_dim: int, out_dim: int, hidden: int = 0) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def save_head(path: str | Path, head: nn.Module, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": HEAD_FORMAT, "meta": meta, "state_dict": head.state_dict()}, tmp)
    tmp.replace(path)


def load_head_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"regressor head not found: {path}. Train one with `unprompt train-regressor` "
            "(or set regress.kind = 'none' in the profile)"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        head = make_head(int(meta["in_dim"]), int(meta["out_dim"]), int(meta.get("hidden", 0)))
        head.load_state_dict(blob["state_dict"])
    except Exception as exc:  # unpickling and state-dict errors come in many types
        raise HeadMismatchError(f"regressor head {path} is not a valid head file ({exc.__class__.__name__}: {exc})") from None
    return head.eval(), meta


class HeadRegressor:
    def __init__(self, path: str | Path, feature_model_id: str, feature_dim: int, target_model_id: str, target_dim: int) -> None:
        self.head, self.meta = load_head_file(path)
        expected = {"feature_model_id": feature_model_id, "in_dim": feature_dim,
                    "target_model_id": target_model_id, "out_dim": target_dim}
        wrong = [f"{k} is {self.meta.get(k)!r}, the profile needs {v!r}" for k, v in expected.items() if self.meta.get(k) != v]
        if wrong:
            raise HeadMismatchError(f"regressor head {path} does not fit this profile: " + "; ".join(wrong))

    @torch.inference_mode()
    def predict(self, image_features: np.ndarray) -> np.ndarray:
        return l2_normalize(self.head(torch.from_numpy(np.asarray(image_features, np.float32))).numpy())
