"""The medium decision: photo, painting, illustration, anime, 3D render or digital art, made from the image itself,
never from the flavour prior. A photograph then gets no component that names an art medium (``art_terms.txt``).

With a medium head (``describe.medium_head``, the lite profile's ``data/medium_head.npz``): a softmax head over
the classifier's penultimate features, trained on the package's own dev photos and diagrams
(``data/train_medium_head.py``, provenance in ``data/medium_head.json``); mostly flat images (diagrams, clip art)
stay illustrations whatever it says. Without one, the pixel rules below decide. Neither tells a generated image
from a photograph: on the held-out SD dev half most renders are still called photos (README, "Generated images").

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
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from retriever.errors import ProfileError

if TYPE_CHECKING:
    from retriever.profile import DescribeConfig

MEDIUMS = ("photo", "painting", "illustration", "3D render", "anime", "digital art")


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
    spread = _spread_3x3(rgb)
    lap = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    busy = lap[spread > 2]
    return PixelStats(float(sat.mean()), float((spread <= 2).mean()), float(np.median(busy)) if busy.size else 0.0)


def _spread_3x3(rgb: np.ndarray) -> np.ndarray:
    """Per pixel of the interior, the largest max - min over any channel in its 3x3 neighbourhood (separable:
    three rows, then three columns; a fifth of the time of reducing sliding windows, the same numbers)."""
    hi = np.maximum(np.maximum(rgb[:-2], rgb[1:-1]), rgb[2:])
    lo = np.minimum(np.minimum(rgb[:-2], rgb[1:-1]), rgb[2:])
    hi = np.maximum(np.maximum(hi[:, :-2], hi[:, 1:-1]), hi[:, 2:])
    lo = np.minimum(np.minimum(lo[:, :-2], lo[:, 1:-1]), lo[:, 2:])
    return (hi - lo).max(axis=-1)


class MediumHead:
    """Penultimate classifier features -> probabilities over mediums (a standardised linear softmax layer)."""

    def __init__(self, classes: Sequence[str], mean: np.ndarray, scale: np.ndarray, w: np.ndarray, b: np.ndarray,
                 where: str = "") -> None:
        unknown = [c for c in classes if c not in MEDIUMS]
        if unknown or w.shape != (len(classes), len(mean)) or b.shape != (len(classes),) or scale.shape != mean.shape:
            raise ProfileError(f"medium head {where}: not a medium head (classes {list(classes)}, weights "
                               f"{w.shape}); re-create it with retriever/data/train_medium_head.py")
        self.classes = tuple(classes)
        self.mean, self.scale, self.w, self.b = mean, scale, w, b

    @classmethod
    def load(cls, location: str) -> "MediumHead":
        from retriever.paths import local_file

        try:
            with np.load(local_file(location), allow_pickle=False) as f:
                return cls([str(c) for c in f["classes"]], f["mean"], f["scale"], f["w"], f["b"], location)
        except (OSError, ValueError, KeyError) as exc:
            raise ProfileError(f"describe.medium_head {location} cannot be read ({exc})") from None

    def predict(self, features: np.ndarray) -> np.ndarray:
        logits = ((np.asarray(features, np.float32) - self.mean) / self.scale) @ self.w.T + self.b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def decide_medium(stats: PixelStats, graphic: float, cfg: "DescribeConfig",
                  head: dict[str, float] | None = None) -> str:
    """One of MEDIUMS. ``graphic``: the classifier's probability on graphic-design classes (comic book, web
    site, book jacket, ...); ``head``: the medium head's probabilities, which decide when given. Without a head,
    anything not clearly made is a photo."""
    if stats.flat >= cfg.illustration_flat:
        return "illustration"
    if head:
        return max(head, key=head.__getitem__)
    if graphic >= cfg.graphic_mass:
        return "painting" if stats.noise >= cfg.painting_noise else "illustration"
    if stats.noise <= cfg.render_noise and stats.saturation >= cfg.render_saturation:
        return "3D render"  # colourful and smooth everywhere: made by a renderer, not a sensor
    return "photo"


def medium_phrase(medium: str, stats: PixelStats, cfg: "DescribeConfig") -> str:
    if medium == "photo" and stats.saturation < cfg.grey_saturation:
        return "a black and white photo"
    return cfg.medium_phrases.get(medium, medium)


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

