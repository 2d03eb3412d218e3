"""Regress: map images straight into the metric's 384-d MiniLM space.

* ``bridge``: the lite bridge already lands in MiniLM space; its image embedding is the prediction.
* ``head``: one or more heads trained by ``unprompt train-regressor`` (``retriever.heads``), each over the
  features of its own image space (the retrieval space unless named), averaged with their weights. A head
  fine-tuned by ``train-regressor --finetune`` reads the features of its own tower, saved beside it. A head
  whose recorded model ids or dimensions do not match is refused; a head file that is missing is skipped with
  a warning (the final embedding then comes from retrieval and assembly alone) unless the profile requires it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from retriever.encoders.base import ImageEncoder, l2_normalize
from retriever.errors import MissingWeightsError, UnpromptWarning
from retriever.paths import resolve_home_path
from retriever.profile import RegressConfig

if TYPE_CHECKING:  # heads are torch modules: torch loads only for a profile that has one
    import torch

SpaceFor = Callable[[object], ImageEncoder]  # a space spec -> the (cached) space


class Regressor(Protocol):
    def predict(self, images: Sequence[Image.Image], retrieval_features: np.ndarray) -> np.ndarray: ...


class BridgeRegressor:
    """Identity: the bridge's image embedding is already in the metric space."""

    def predict(self, images: Sequence[Image.Image], retrieval_features: np.ndarray) -> np.ndarray:
        return l2_normalize(retrieval_features)


class HeadRegressor:
    """One head over one image space's features."""

    def __init__(self, path: str | Path, feature_model_id: str, feature_dim: int, target_model_id: str,
                 target_dim: int, device: torch.device | None = None) -> None:
        from retriever.device import pick_device
        from retriever.heads.model import check_head, load_head_file

        self.device = device or pick_device()
        self.head, self.meta = load_head_file(path)
        self.head.to(self.device)
        check_head(path, self.meta, {"feature_model_id": feature_model_id, "in_dim": feature_dim,
                                     "target_model_id": target_model_id, "out_dim": target_dim})

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        import torch

        from retriever.device import inference, to_device

        with inference(self.device):
            x = to_device(torch.from_numpy(np.asarray(features, np.float32)), self.device)
            return l2_normalize(self.head(x).float().cpu().numpy())


@dataclass
class _Member:
    head: HeadRegressor
    space: ImageEncoder | None  # None: the retrieval space's features
    weight: float


class HeadEnsemble:
    """The weighted mean of several heads' unit predictions, renormalised."""

    def __init__(self, members: list[_Member]) -> None:
        self.members = members

    def predict(self, images: Sequence[Image.Image], retrieval_features: np.ndarray) -> np.ndarray:
        total = np.zeros((len(retrieval_features), self.members[0].head.meta["out_dim"]), np.float32)
        for m in self.members:
            features = retrieval_features if m.space is None else m.space.encode_images(images)
            total += m.weight * m.head.predict_features(features)
        return l2_normalize(total)


def load_regressor(config: RegressConfig, retrieval: ImageEncoder, target_model_id: str, target_dim: int,
                   space_for: SpaceFor, profile_name: str) -> HeadEnsemble | None:
    """The profile's heads; None (with a warning) when none can be found and the profile does not require one."""
    from retriever.heads.towers import finetuned_space_for

    members, missing = [], []
    for ref in config.heads:
        path = resolve_home_path(ref.path)
        space = None if ref.space == "retrieval" else space_for(ref.space)
        try:
            if space is None:  # a fine-tuned head reads its own tower's features (saved beside it)
                space = finetuned_space_for(path)
            features = space or retrieval
            head = HeadRegressor(path, features.model_id, features.dim, target_model_id, target_dim)
        except MissingWeightsError as exc:
            if config.require_head:
                raise
            missing.append(str(exc))
            continue
        members.append(_Member(head, space, ref.weight))
    for message in missing:
        remedy = ("the final embedding comes from the other heads" if members
                  else "the final embedding comes from retrieval and assembly alone")
        warnings.warn(f"profile {profile_name}: {message}; {remedy} (set regress.require_head = true to refuse "
                      "to start instead)", UnpromptWarning, stacklevel=2)
    return HeadEnsemble(members) if members else None
