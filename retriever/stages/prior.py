"""Prior: what prompts look like, apart from any image.

The mean embedding of a file of prompts (``texts``), or else of the first ``top`` texts of one kind in the
indexes (clip-interrogator's flavours come most-used first), in the rerank space (to pull the assembly target
toward prompt style) and in the metric space (to join the final blend); the first ``style_candidates`` texts
of that kind become style components the greedy chain may add. Both weights 0 switch it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from retriever.encoders.base import l2_normalize
from retriever.encoders.bridge import cached_text_embeddings
from retriever.errors import ProfileError
from retriever.index import TextIndex
from retriever.profile import PriorConfig
from retriever.stages.candidates import Candidate
from retriever.stages.rerank import TextEmbeddings


@dataclass(frozen=True)
class Prior:
    config: PriorConfig
    rerank: np.ndarray | None = None  # unit vector in the rerank space, or None when off
    metric: np.ndarray | None = None  # unit vector in the metric space, or None when off
    style: tuple[Candidate, ...] = ()  # components the greedy chain may add

    @classmethod
    def build(cls, config: PriorConfig, indexes: dict[str, TextIndex], embeddings: TextEmbeddings,
              metric_embed: Callable[[Sequence[str]], np.ndarray] | None, profile_name: str) -> "Prior":
        """``metric_embed`` None: the rerank space is the metric's, so its vectors serve both."""
        if not (config.assemble_weight or config.blend_weight):
            return cls(config)
        cands = [Candidate(index.text(r), config.kind, "", name, r, 0.0)
                 for name, index in indexes.items() for r in index.first_rows(config.kind, config.top)]
        if not cands:
            raise ProfileError(f"profile {profile_name}: prior.kind {config.kind!r} is in none of its indexes")
        if config.texts:  # prompts written as prompts are: their mean is the prior
            texts = prior_texts(config.texts, profile_name)
            rerank = l2_normalize(cached_text_embeddings(embeddings.space, texts, "prior").mean(axis=0))
        else:
            texts = [c.text for c in cands]
            rerank = l2_normalize(embeddings.for_candidates(cands).mean(axis=0))
        metric = rerank if metric_embed is None else l2_normalize(metric_embed(texts).mean(axis=0))
        style = tuple(cands[: config.style_candidates]) if config.assemble_weight else ()
        return cls(config, rerank, metric, style)

    def assembly_targets(self, image_vectors: np.ndarray) -> np.ndarray:
        """Image vectors pulled toward prompt style (unchanged when the prior does not steer assembly)."""
        if self.rerank is None or not self.config.assemble_weight:
            return image_vectors
        return l2_normalize(image_vectors + self.config.assemble_weight * self.rerank)


def prior_texts(location: str, profile_name: str) -> list[str]:
    """The lines of a prompt file (``pkg:<package>/<file>`` or a path), without blank lines and # comments."""
    from retriever.paths import local_file

    try:
        lines = local_file(location).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {profile_name}: prior.texts {location} cannot be read ({exc})") from None
    texts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not texts:
        raise ProfileError(f"profile {profile_name}: prior.texts {location} holds no prompts")
    return texts
