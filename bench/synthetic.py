"""Synthetic prompt-like texts: deterministic combinations of subjects, settings, styles and flavours."""

from __future__ import annotations

import numpy as np

SUBJECTS = ["a cat", "an old man", "a castle", "a red car", "a dragon", "a lighthouse", "a robot", "a forest",
            "a city street", "a girl with a hat", "a ship", "a mountain lake", "a bowl of fruit", "an astronaut",
            "a wolf", "a cottage", "a samurai", "a spaceship", "a flower field", "a cup of coffee"]
SETTINGS = ["at night", "in the rain", "at sunset", "in winter", "under the sea", "on mars", "in a library",
            "in the desert", "in a neon city", "in a misty forest", "on a beach", "in a cathedral"]
STYLES = ["oil painting", "digital art", "watercolor", "photograph", "3d render", "pencil sketch", "anime",
          "concept art", "ukiyo-e", "pixel art", "cinematic still", "studio portrait"]
FLAVOURS = ["highly detailed", "trending on artstation", "8k", "sharp focus", "volumetric lighting", "octane render",
            "by greg rutkowski", "unreal engine", "soft light", "intricate", "award winning", "dramatic lighting",
            "bokeh", "matte painting", "golden hour", "by alphonse mucha", "hyperrealistic", "muted colors"]


def synthetic_prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, len(SUBJECTS), n)
    t = rng.integers(0, len(SETTINGS), n)
    st = rng.integers(0, len(STYLES), n)
    f = rng.integers(0, len(FLAVOURS), (n, 3))
    return [
        f"{SUBJECTS[s[i]]} {SETTINGS[t[i]]}, {STYLES[st[i]]}, {FLAVOURS[f[i, 0]]}, {FLAVOURS[f[i, 1]]}, "
        f"{FLAVOURS[f[i, 2]]}, #{i}"
        for i in range(n)
    ]
