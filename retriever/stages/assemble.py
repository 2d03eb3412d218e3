"""Assemble: fill prompt templates from the ranked candidates, then grow the best one greedily.

Templates are data (the profile's ``assemble.templates``) with slots named after kinds:
``{subject}`` (a caption or subject), ``{medium}``, ``{movement}``, ``{artist}``, ``{flavour}``.
Each template is filled ``top_n`` times, the r-th time with the r-th best candidate of every slot
(14 templates x top 8 = 112 candidate prompts per image under the kaggle profile). The candidates of
a whole batch of images are scored in one text-encoder call. The greedy chain then appends components
(``, X``) one at a time, keeping the one that raises the similarity with the image most, and stops when
none raises it, after ``max_chain`` additions, or at the CLIP token limit; each step of the chain is one
text-encoder call for the whole batch too. With ``lazy_round`` (lite sets 1) a later step scores a few components
a round, in order of the gain each gave when last scored, and stops once the best gain found is at least every
unscored one's last gain (lazy greedy: a round is one encoder call for the batch).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from retriever._compat import open_clip_tokenizer
from retriever.encoders.clip_words import word_table
from retriever.encoders.base import split_rows
from retriever.profile import AssembleConfig
from retriever.stages.candidates import SUBJECT_KINDS, Candidate, Candidates, best_of_all

EncodeFn = Callable[[Sequence[str]], np.ndarray]


@lru_cache(maxsize=1)
def _clip_tokens():
    from retriever.encoders.clip_tokens import PieceTokenizer

    module = open_clip_tokenizer()  # it builds a default tokenizer at import: that one, not a second
    return PieceTokenizer(getattr(module, "_tokenizer", None) or module.SimpleTokenizer())


def clip_token_count(text: str) -> int:
    """CLIP BPE tokens, start and end tokens included (the 77-token context counts these). From the word
    table (``retriever.encoders.clip_words``) when it knows every word; else from the tokenizer, and the
    text's words are learnt."""
    table = word_table()
    n = table.count(text)
    if n is None:
        tokens = _clip_tokens()
        n = tokens.count(text)
        table.learn([text], tokens.tokenizer.encode)
    return n


def template_slots(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


@dataclass(slots=True)
class ScoredPrompt:
    text: str
    score: float


@dataclass
class AssembledPrompt:
    text: str
    score: float
    embedding: np.ndarray  # in the scoring space
    tried: list[ScoredPrompt] = field(default_factory=list)  # every prompt scored, best first
    template: ScoredPrompt | None = None  # the best filled template, before the chain
    template_embedding: np.ndarray | None = None
    template_count: int = 0  # distinct filled templates scored


def ranked_slots(candidates: Candidates) -> dict[str, list[Candidate]]:
    """Each slot's candidates, best first: ``subject`` ranks captions and subjects together."""
    slots = {kind: cands for kind, cands in candidates.items() if kind not in SUBJECT_KINDS and cands}
    subjects = sorted((c for k in SUBJECT_KINDS for c in candidates.get(k, [])), key=lambda c: -c.score)
    if subjects:
        slots["subject"] = subjects
    return slots


@dataclass
class _Chain:
    """One image's assembly in progress."""

    target: np.ndarray
    text: str
    score: float
    embedding: np.ndarray
    pool: list[Candidate]
    tried: list[ScoredPrompt]
    active: bool = True
    gains: dict[str, float] = field(default_factory=dict)  # component text -> the gain it gave when last scored


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

    def template_options(self, candidates: Candidates) -> list[tuple[str, list[Candidate]]]:
        """(text, components used) for every template x rank that can be filled, distinct texts only."""
        slots = ranked_slots(candidates)
        options: dict[str, list[Candidate]] = {}
        for template in self.config.templates:
            names = template_slots(template)
            for r in range(self.config.top_n):
                if not names or not all(len(slots.get(s, ())) > r for s in names):
                    break
                text = template.format(**{s: slots[s][r].text for s in names})
                options.setdefault(text if self.fits(text) else self._truncate(text), [slots[s][r] for s in names])
        if not options:  # no template can be filled: fall back to the single best candidate of any kind
            best = best_of_all(candidates)
            if best is None:
                raise ValueError("no candidates to assemble a prompt from")
            options = {self._truncate(best.text): [best]}
        return list(options.items())

    def assemble(self, target: np.ndarray, candidates: Candidates, encode: EncodeFn,
                 style: Sequence[Candidate] = ()) -> AssembledPrompt:
        return self.assemble_batch(target[None], [candidates], encode, [style])[0]

    def assemble_batch(self, targets: np.ndarray, candidates: Sequence[Candidates], encode: EncodeFn,
                       styles: Sequence[Sequence[Candidate]] | None = None) -> list[AssembledPrompt]:
        """One prompt per image. ``styles``: per image, extra components (e.g. the most-used flavours) the
        chain may add."""
        styles = styles if styles is not None else [()] * len(candidates)
        options = [self.template_options(c) for c in candidates]
        vectors = encode([t for opts in options for t, _ in opts])
        chains, results = [], []
        for target, cands, opts, style, v in zip(targets, candidates, options, styles,
                                                 split_rows(vectors, [len(o) for o in options])):
            scores = v @ target
            j = int(np.argmax(scores))
            tried = [ScoredPrompt(t, float(s)) for (t, _), s in zip(opts, scores)]
            used = {c.text for c in opts[j][1]}
            chains.append(_Chain(target, opts[j][0], float(scores[j]), v[j], self._pool(cands, style, used), tried))
            results.append(AssembledPrompt("", 0.0, v[j], template=tried[j], template_embedding=v[j],
                                           template_count=len(opts)))
        for _ in range(self.config.max_chain):
            if not self._grow(chains, encode):
                break
        for chain, result in zip(chains, results):
            chain.tried.sort(key=lambda p: -p.score)
            result.text, result.score, result.tried = chain.text, chain.score, chain.tried
            result.embedding = np.asarray(chain.embedding, dtype=np.float32)
        return results

    def _pool(self, candidates: Candidates, style: Sequence[Candidate], used: set[str]) -> list[Candidate]:
        cfg = self.config
        pool = sorted((c for k in cfg.chain_kinds for c in candidates.get(k, []) if c.text not in used),
                      key=lambda c: -c.score)[: cfg.chain_candidates]
        seen = {c.text for c in pool}
        return pool + [c for c in style if c.text not in used and c.text not in seen]

    def _grow(self, chains: list[_Chain], encode: EncodeFn) -> bool:
        """One step of the chain for every active image; False when none is active. Each round of scoring is one
        encoder call for the batch. Without ``lazy_round`` (and at every chain's first step) one round scores
        every component. With it, later steps score ``lazy_round`` components a round, in order of the gain
        each gave at its last scoring, until the best gain found is at least the next one's last gain: lazy
        greedy, the same choice as scoring all of them wherever no component gains more than it did before."""
        steps = []
        for chain in chains:
            if chain.active:
                ext = [(t, c) for c in chain.pool if self.fits(t := f"{chain.text}, {c.text}")]
                chain.active = bool(ext)
                if ext:
                    lazy = bool(self.config.lazy_round and chain.gains)
                    steps.append(_Step(chain, self._order(chain, ext), self.config.lazy_round) if lazy
                                 else _Step(chain, ext, len(ext), lazy=False))
        if not steps:
            return False
        pending = steps  # every step scores at least one round (a gain that was negative may not be now)
        while pending:
            rounds = [(step, step.next_round()) for step in pending]
            vectors = encode([t for _, ext in rounds for t, _ in ext])
            for (step, ext), v in zip(rounds, split_rows(vectors, [len(ext) for _, ext in rounds])):
                step.score(ext, v)
            pending = [step for step in pending if not step.decided(self.config)]
        for step in steps:
            step.apply(self.config)
        return True

    @staticmethod
    def _order(chain: _Chain, ext: list[tuple[str, Candidate]]) -> list[tuple[str, Candidate]]:
        """Largest last gain first; a component never scored first of all."""
        return sorted(ext, key=lambda e: -chain.gains.get(e[1].text, np.inf))


@dataclass
class _Step:
    """One chain's step in progress: the extensions to score, in order, and the best one scored so far."""

    chain: _Chain
    order: list[tuple[str, Candidate]]
    size: int  # extensions scored a round
    lazy: bool = True  # may stop before scoring them all, on the last gains
    done: int = 0
    best: tuple[float, str, Candidate, np.ndarray] | None = None  # score, text, component, embedding

    def next_round(self) -> list[tuple[str, Candidate]]:
        take = self.order[self.done : self.done + self.size]
        self.done += len(take)
        return take

    def score(self, ext: list[tuple[str, Candidate]], vectors: np.ndarray) -> None:
        chain = self.chain
        scores = vectors @ chain.target
        chain.tried.extend(ScoredPrompt(t, float(s)) for (t, _), s in zip(ext, scores))
        for (t, c), s, v in zip(ext, scores, vectors):
            chain.gains[c.text] = float(s) - chain.score
            if self.best is None or s > self.best[0]:
                self.best = (float(s), t, c, v)

    def decided(self, config: AssembleConfig) -> bool:
        if self.done >= len(self.order):
            return True
        if not self.lazy:
            return False
        bound = self.chain.gains.get(self.order[self.done][1].text, np.inf)
        if config.stop_without_gain and bound <= config.min_gain:
            return True  # no component left gained enough last time
        return self.best is not None and self.best[0] - self.chain.score >= bound

    def apply(self, config: AssembleConfig) -> None:
        chain = self.chain
        if self.best is None or (config.stop_without_gain and self.best[0] <= chain.score + config.min_gain):
            chain.active = False
            return
        chain.score, chain.text, component, chain.embedding = self.best
        chain.pool.remove(component)
