"""The lite models in ONNX Runtime: the same inputs and outputs as their torch classes, without importing torch.

``OnnxBertMean`` stands in for ``minilm._BertMean`` (tokenised batch -> unit vectors) and ``OnnxClassifier``
for ``efficientnet.EfficientNetLiteClassifier`` (images -> ImageNet probabilities and pooled features). Their
files come from ``retriever.encoders.onnx_export`` (``unprompt setup``); which runtime runs is decided in
``retriever.encoders.runtime``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from retriever.encoders.onnx_files import Exported
from retriever.errors import MissingWeightsError, UnpromptWarning

if TYPE_CHECKING:
    from retriever.encoders.minilm import BertTokens


def _session_or_none(export: Exported, fallback: bool):
    """The model's session; where it cannot load and ``fallback`` is set, None (with a warning: torch runs it)."""
    from retriever.encoders.runtime import ort_session

    try:
        return ort_session(export.path)
    except MissingWeightsError as exc:
        if not fallback:
            raise
        warnings.warn(f"{exc}; running it in torch meanwhile", UnpromptWarning, stacklevel=3)
        return None


class OnnxBertMean:
    """A BERT -> mean pooling -> normalise folder's exported graph: tokenised batch -> (n, dim) unit vectors."""

    runtime = "onnx"
    on_cpu = True

    def __init__(self, tokens: BertTokens, session, dim: int) -> None:
        self.tokens, self.session, self.dim = tokens, session, dim

    @classmethod
    def load(cls, folder: Path, export: Exported, fallback: bool) -> OnnxBertMean | None:
        from retriever.encoders.minilm import BertTokens

        session = _session_or_none(export, fallback)
        return None if session is None else cls(BertTokens(folder), session, int(export.record["dim"]))

    def embed(self, encodings: Sequence) -> np.ndarray:
        ids, types, mask = self.tokens.arrays(encodings)
        (vectors,) = self.session.run(None, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)


class OnnxClassifier:
    """image -> ImageNet-1k probabilities and the pooled penultimate features, one image a run (on the CPU these
    depthwise convolutions run fastest one at a time, as in torch)."""

    runtime = "onnx"

    def __init__(self, name: str, session, image_size: int) -> None:
        self.session, self.size = session, image_size
        self.model_id = f"efficientnet:{name}"

    @classmethod
    def load(cls, name: str, export: Exported, fallback: bool) -> OnnxClassifier | None:
        session = _session_or_none(export, fallback)
        return None if session is None else cls(name, session, int(export.record["image_size"]))

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.predict(images)[0]

    def predict(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        from retriever.encoders.efficientnet import preprocess

        if len(images) == 0:
            return tuple(np.zeros((0, out.shape[1]), np.float32) for out in self.session.get_outputs())
        probs, feats = [], []
        for image in images:
            p, f = self.session.run(None, {"pixels": preprocess(image, self.size)[None]})
            probs.append(p)
            feats.append(f)
        return np.concatenate(probs).astype(np.float32), np.concatenate(feats).astype(np.float32)
