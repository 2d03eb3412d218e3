"""The small interfaces the pipeline talks to. Every encoder returns L2-normalised float32 rows."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class TextEncoder(Protocol):
    model_id: str
    dim: int

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Protocol):
    model_id: str
    dim: int

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class Space(TextEncoder, ImageEncoder, Protocol):
    """A joint space: images and texts embed to comparable unit vectors.

    ``text_model_id`` names the text tower; an index built with it can be searched from this space.
    """

    text_model_id: str


def split_rows(rows: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Consecutive slices of ``rows`` of the given sizes: one encoder call's output, back to its owners."""
    return np.split(rows, np.cumsum(sizes, dtype=np.int64)[:-1])


SAFE_PEAK = (1e-17, 1e17)  # a float32 row whose largest |value| lies outside: its squared norm over- or underflows


def rescale_extreme(x: np.ndarray) -> np.ndarray:
    """Rows whose largest magnitude lies outside SAFE_PEAK divided by it (the same directions), so that their
    norm neither overflows (1e308 -> inf -> NaN) nor underflows; every other row is returned unchanged, bit for bit."""
    peak = np.max(np.abs(x), axis=-1, keepdims=True, initial=0)
    extreme = (peak > SAFE_PEAK[1]) | ((peak > 0) & (peak < SAFE_PEAK[0]))
    return np.where(extreme, x / np.where(extreme, peak, 1), x) if extreme.any() else x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = rescale_extreme(np.asarray(x, dtype=np.float32))
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
