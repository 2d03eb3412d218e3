"""Assemble: fill prompt templates from the best candidates, then grow the best one greedily.

Templates are data (the profile's ``assemble.templates``) with slots named after kinds:
``{subject}`` (the best caption or subject), ``{medium}``, ``{movement}``, ``{artist}``,
``{flavour}``. The greedy chain then appends components (``, X``) one at a time, keeping
the one that raises the similarity with the image most, and stops when none raises it,
after ``max_chain`` additions, or when the CLIP token limit would be passed.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from retriever._compat import ensure_torchvision_importable
from retriever.profile import AssembleConfig
from retriever.stages.candidates import SUBJECT_KINDS, Candidate, Candidates, best_of_all, best_subject

EncodeFn = Callable[[Sequence[str]], np.ndarray]


@lru_cache(maxsize=1)
def _clip_bpe():
    ensure_torchvision_importable()
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_token_count(text: str) -> int:
    """CLIP BPE tokens, start and end tokens included (the 77-token context counts these)."""
    return len(_clip_bpe().encode(text)) + 2


def template_slots(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


@dataclass(frozen=True)
class ScoredPrompt:
    text: str
    score: float


@dataclass
class AssembledPrompt:
    text: str
    score: float
    embedding: np.ndarray  # in the scoring space
    tried: list[ScoredPrompt] = field(default_factory=list)


def slot_fill(candidates: Candidates) -> dict[str, Candidate]:
    fill: dict[str, Candidate] = {}
    subject = best_subject(candidates)
    if subject is not None:
        fill["subject"] = subject
    for kind, cands in candidates.items():
        if kind not in SUBJECT_KINDS and cands:
            fill[kind] = cands[0]
    return fill


class Assembler:
    def __init__(self, config: AssembleConfig, token_count: Callable[[str], int] = clip_token_count) -> None:
        self.config = config
        self.token_count = token_count

    def fits(self, text: str) -> bool:
        return self.token_count(text) <= self.config.max_tokens

    def _truncate(self, text: str) -> str:
        words = text.split(" ")
        while len(words) > 1 and not self.fits(" ".join(words)):
            words.pop()
        return " ".join(words)

    def assemble(self, image_vector: np.ndarray, candidates: Candidates, encode: EncodeFn,
                 style: Sequence[Candidate] = ()) -> AssembledPrompt:
        """``style``: extra components (e.g. the most-used flavours) the greedy chain may also add."""
        cfg = self.config
        fill = slot_fill(candidates)
        options: list[tuple[str, list[Candidate]]] = []
        for template in cfg.templates:
            slots = template_slots(template)
            if slots and all(s in fill for s in slots):
                text = template.format(**{s: fill[s].text for s in slots})
                options.append((text if self.fits(text) else self._truncate(text), [fill[s] for s in slots]))
        if not options:  # no template can be filled: fall back to the single best candidate of any kind
            best = best_of_all(candidates)
            if best is None:
                raise ValueError("no candidates to assemble a prompt from")
            options = [(self._truncate(best.text), [best])]
        options = list({text: used for text, used in options}.items())
        vectors = encode([t for t, _ in options])
        scores = vectors @ image_vector
        tried = [ScoredPrompt(t, float(s)) for (t, _), s in zip(options, scores)]
        j = int(np.argmax(scores))
        text, used = options[j]
        score, embedding = float(scores[j]), vectors[j]
        used_texts = {c.text for c in used}
        pool = sorted(
            (c for k in cfg.chain_kinds for c in candidates.get(k, []) if c.text not in used_texts),
            key=lambda c: -c.score,
        )[: cfg.chain_candidates]
        pool += [c for c in style if c.text not in used_texts and all(c.text != p.text for p in pool)]
        for _ in range(cfg.max_chain):
            extensions = [(f"{text}, {c.text}", c) for c in pool]
            extensions = [(t, c) for t, c in extensions if self.fits(t)]
            if not extensions:
                break
            vectors = encode([t for t, _ in extensions])
            scores = vectors @ image_vector
            tried.extend(ScoredPrompt(t, float(s)) for (t, _), s in zip(extensions, scores))
            j = int(np.argmax(scores))
            if scores[j] <= score + cfg.min_gain:
                break
            text, score, embedding = extensions[j][0], float(scores[j]), vectors[j]
            pool.remove(extensions[j][1])
        tried.sort(key=lambda p: -p.score)
        return AssembledPrompt(text, score, np.asarray(embedding, dtype=np.float32), tried)
