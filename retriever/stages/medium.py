"""The medium decision: photo, painting, illustration or 3D render, made from the image's own pixels and the
classifier's graphic-design classes, never from the flavour prior. A photograph then gets no component that
names an art medium (``art_terms.txt``).

Pixel statistics (on the image brought to 256 px): how grey it is, how much of it is perfectly flat (drawn
artwork and diagrams: most of it; photographs, even dark ones, under a quarter), and how much fine noise it
carries where it is not flat (photographs: sensor and texture noise; renders: smooth). Thresholds are profile
data (``[describe]``), chosen on the dev half of data_manifests/devset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from retriever.profile import DescribeConfig

MEDIUMS = ("photo", "painting", "illustration", "3D render")


@dataclass(frozen=True)
class PixelStats:
    saturation: float  # mean HSV saturation, 0..1 (a grey image: about 0)
    flat: float  # share of pixels whose 3x3 neighbourhood is one colour
    noise: float  # median absolute Laplacian where the image is not flat (0..255 scale)


def pixel_stats(image: Image.Image) -> PixelStats:
    im = image.convert("RGB")
    im.thumbnail((256, 256))
    rgb = np.asarray(im, dtype=np.int16)
    sat = np.asarray(im.convert("HSV"), dtype=np.float32)[..., 1] / 255
    grey = rgb.mean(axis=2)
    if min(grey.shape) < 3:
        return PixelStats(float(sat.mean()), 1.0, 0.0)
    windows = np.lib.stride_tricks.sliding_window_view(rgb, (3, 3), axis=(0, 1))
    spread = (windows.max(axis=(-1, -2)) - windows.min(axis=(-1, -2))).max(axis=-1)
    lap = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    busy = lap[spread > 2]
    return PixelStats(float(sat.mean()), float((spread <= 2).mean()), float(np.median(busy)) if busy.size else 0.0)


def decide_medium(stats: PixelStats, graphic: float, cfg: "DescribeConfig") -> str:
    """One of MEDIUMS. ``graphic``: the classifier's probability on graphic-design classes (comic book, web
    site, book jacket, ...). Anything not clearly made is a photo."""
    if stats.flat >= cfg.illustration_flat:
        return "illustration"
    if graphic >= cfg.graphic_mass:
        return "painting" if stats.noise >= cfg.painting_noise else "illustration"
    if stats.noise <= cfg.render_noise and stats.saturation >= cfg.render_saturation:
        return "3D render"  # colourful and smooth everywhere: made by a renderer, not a sensor
    return "photo"


def medium_phrase(medium: str, stats: PixelStats, cfg: "DescribeConfig") -> str:
    if medium == "photo":
        return "a black and white photo" if stats.saturation < cfg.grey_saturation else "a photo"
    return {"painting": "a painting", "illustration": "an illustration", "3D render": "a 3D render"}[medium]


@lru_cache(maxsize=1)
def art_terms() -> tuple[str, ...]:
    text = (resources.files("retriever") / "data" / "art_terms.txt").read_text(encoding="utf-8")
    return tuple(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@lru_cache(maxsize=1)
def _art_pattern() -> re.Pattern:
    return re.compile(r"\b(" + "|".join(re.escape(t) for t in art_terms()) + r")\b")


def names_art_medium(text: str) -> bool:
    """True when the text contains an art-medium term as whole words ("illustration", "octane render", ...)."""
    return _art_pattern().search(text.lower()) is not None

