"""Zero-shot bridge: ImageNet probabilities -> sentence-embedding space.

The image embedding is the probability-weighted mean of the text embeddings of
the class phrases, so images land in the same space as the indexed texts.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from retriever.encoders.base import TextEncoder, l2_normalize
from retriever.files import atomic_write
from retriever.imagenet import imagenet_classes
from retriever.paths import home


class Classifier(Protocol):
    model_id: str

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def cached_text_embeddings(text: TextEncoder, texts: Sequence[str], label: str) -> np.ndarray:
    """Embeddings of a fixed list of texts (class phrases, the prior's prompts), computed once and kept on disk
    under $UNPROMPT_HOME/cache, keyed by the model and the texts: a start reads them instead of embedding."""
    key = hashlib.sha256((text.model_id + "\n" + "\n".join(texts)).encode()).hexdigest()[:16]
    path = home() / "cache" / f"{label}-{key}.npy"
    try:
        cached = np.load(path)
        if cached.shape == (len(texts), text.dim) and cached.dtype == np.float32:
            return cached
    except (OSError, ValueError, EOFError):  # not cached yet, or damaged: compute again
        pass
    emb = np.asarray(text.encode_text(list(texts)), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, fsync=False) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, emb)
    return emb


def class_embeddings(text: TextEncoder, phrases: Sequence[str]) -> np.ndarray:
    """Embeddings of the class phrases, cached on disk under $UNPROMPT_HOME/cache."""
    return cached_text_embeddings(text, phrases, "class-embeddings")


def bridge_probabilities(proba: np.ndarray, top_classes: int = 0, temperature: float = 1.0) -> np.ndarray:
    """Sharpen (temperature) and truncate (top_classes) class probabilities, rows summing to 1."""
    p = np.asarray(proba, dtype=np.float64)
    if temperature != 1.0:
        logp = np.log(np.clip(p, 1e-12, None)) / temperature
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
    if 0 < top_classes < p.shape[1]:
        cut = np.partition(p, -top_classes, axis=1)[:, -top_classes][:, None]
        p = np.where(p >= cut, p, 0.0)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


class BridgeSpace:
    def __init__(
        self,
        classifier: Classifier,
        text: TextEncoder,
        class_template: str = "{}",
        top_classes: int = 0,
        temperature: float = 1.0,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.classifier = classifier
        self.text = text
        self.classes = tuple(classes or imagenet_classes())
        self.phrases = [class_template.format(c) for c in self.classes]
        self.class_embeddings = class_embeddings(text, self.phrases)
        self.top_classes = top_classes
        self.temperature = temperature
        self.dim = text.dim
        self.text_model_id = text.model_id
        self.model_id = f"bridge:{classifier.model_id}->{text.model_id}"

    def embed_probabilities(self, proba: np.ndarray) -> np.ndarray:
        p = bridge_probabilities(proba, self.top_classes, self.temperature)
        return l2_normalize(p @ self.class_embeddings)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_probabilities(self.classifier.predict_proba(images))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.text.encode_text(texts)
