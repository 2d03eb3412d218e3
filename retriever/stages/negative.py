"""Negative prompts.

* **The useful one** (``negative_prompt`` in every answer): the quality negatives people paste into a generator
  (``negative.quality``, the shipped ``data/negative_quality.txt``: lowres, blurry, watermark, text, deformed ...),
  then what the image most clearly is not: the mediums the medium head finds least likely ("anime, 3D render"
  for a photograph), at most ``negative.not_mediums`` of them.
* **The least similar components** (``mode=negative``, CLIP Interrogator's negative mode): a search with the
  negated image vector.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from retriever.errors import ProfileError
from retriever.index import TextIndex
from retriever.profile import NegativeConfig


class NegativePrompt:
    def __init__(self, indexes: dict[str, TextIndex], config: NegativeConfig) -> None:
        self.indexes = indexes
        self.config = config
        self.quality = quality_terms(config.quality)[: config.quality_terms] if config.quality else ()

    def __call__(self, image_vectors: np.ndarray) -> list[str]:
        """One comma-separated list per image vector of the components least like it, least similar first."""
        found: list[list[tuple[float, str]]] = [[] for _ in range(len(image_vectors))]
        for index in self.indexes.values():
            for kind in self.config.kinds:
                if kind not in index.record.kinds:
                    continue
                for i, hits in enumerate(index.search(-image_vectors, self.config.count, kind=kind, rescore=1)):
                    found[i] += [(h.score, h.text) for h in hits]  # score against -v: higher is less like the image
        return [", ".join(dict.fromkeys(t for _, t in sorted(f, key=lambda x: -x[0]))) if f else ""
                for f in [f[: self.config.count * len(self.indexes)] for f in found]]

    def useful(self, mediums: Sequence[dict[str, float] | None]) -> list[str]:
        """Per image: the quality negatives, then the mediums it most clearly is not (``mediums``: the medium
        head's probabilities, or None where there is none)."""
        out = []
        for probs in mediums:
            unlike = [] if not probs else [m for m in sorted(probs, key=probs.__getitem__)
                                           if m != max(probs, key=probs.__getitem__)][: self.config.not_mediums]
            out.append(", ".join(dict.fromkeys([*self.quality, *unlike])))
        return out


@lru_cache(maxsize=4)
def quality_terms(location: str) -> tuple[str, ...]:
    """The lines of a quality-negatives file (``pkg:<package>/<file>`` or a path), without blanks and # comments."""
    from retriever.paths import local_file

    try:
        lines = local_file(location).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"negative.quality {location} cannot be read ({exc})") from None
    terms = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not terms:
        raise ProfileError(f"negative.quality {location} holds no terms")
    return terms
