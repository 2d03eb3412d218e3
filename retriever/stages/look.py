"""Colour and lighting words from the image's own pixels, in the words prompts use for them.

On the image brought to 64 px, in HSV: how bright (mean value) and how contrasty (spread of value) it is, how
colourful (mean saturation), and which hues hold the colourful pixels. The words are a small fixed vocabulary
("dark", "vibrant colors", "blue and orange tones", "warm light", "dramatic lighting", ...); which of them a
prompt gets is decided by thresholds in ``LookConfig`` (profile data, chosen on the dev halves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from retriever.stage_configs import LookConfig

# hue bins (degrees, upper bounds) and their names; red wraps around 360
HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "teal"), (255, "blue"), (290, "purple"),
        (335, "pink"), (361, "red"))
WARM = {"red", "orange", "yellow", "pink"}


@dataclass(frozen=True)
class Look:
    brightness: float  # mean HSV value, 0..1
    contrast: float  # standard deviation of HSV value, 0..1
    saturation: float  # mean HSV saturation, 0..1
    hues: tuple[tuple[str, float], ...]  # hue names by their share of the colourful pixels, largest first


def look(image: Image.Image) -> Look:
    im = image.convert("RGB")
    im.thumbnail((64, 64))
    hsv = np.asarray(im.convert("HSV"), dtype=np.float32) / 255
    h, s, v = hsv[..., 0].ravel() * 360, hsv[..., 1].ravel(), hsv[..., 2].ravel()
    colourful = (s > 0.3) & (v > 0.2)
    shares: dict[str, float] = {}
    if colourful.any():
        edges = np.array([e for e, _ in HUES])
        names = [HUES[i][1] for i in np.searchsorted(edges, h[colourful], side="right").clip(0, len(HUES) - 1)]
        for name in names:
            shares[name] = shares.get(name, 0.0) + 1.0 / len(names)
    hues = tuple(sorted(shares.items(), key=lambda kv: -kv[1]))
    return Look(float(v.mean()), float(v.std()), float(s.mean()), hues)


def look_words(lk: Look, cfg: LookConfig) -> list[str]:
    """Colour words then lighting words, each at most once; empty when nothing is clear."""
    words = []
    if lk.saturation < cfg.grey_saturation:
        words.append("black and white")
    else:
        main = [name for name, share in lk.hues if share >= cfg.hue_share][:2]
        if main:
            words.append(f"{' and '.join(main)} tones" if len(main) == 2 else f"{main[0]} tones")
        if lk.saturation >= cfg.vibrant_saturation:
            words.append("vibrant colors")
        elif lk.saturation < cfg.muted_saturation:
            words.append("muted colors")
    warm = sum(share for name, share in lk.hues if name in WARM)
    if lk.brightness < cfg.dark_brightness:
        words.append("dark" if lk.saturation < cfg.vibrant_saturation else "neon lights")
    elif lk.brightness > cfg.bright_brightness:
        words.append("bright")
    if lk.contrast >= cfg.dramatic_contrast:
        words.append("dramatic lighting")
    elif lk.contrast < cfg.soft_contrast:
        words.append("soft light")
    if lk.saturation >= cfg.grey_saturation and lk.hues:
        if warm >= cfg.warm_share:
            words.append("warm light")
        elif warm <= 1 - cfg.warm_share:
            words.append("cold light")
    return words
