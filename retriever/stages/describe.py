"""Describe (lite): what the classifier is sure of, in words a person would accept.

* **Subject, by confidence.** When the top ImageNet class has at least ``confident`` probability, it is named
  ("a tabby"). Otherwise probability is summed up the WordNet hierarchy (``imagenet_hypernyms``) and the most
  specific parent holding at least ``parent_mass`` is named instead ("a cat", "a dog", "a vehicle"); generic
  parents ("object", "artifact", ...) never are, and then the prompt names no subject. The confidence
  (the named node's probability) later shrinks the final embedding toward the prior.
* **Scene hint** when no subject is sure: the most probable scene class (under ``scene_parents``: buildings,
  shops, shores, mountains ...) or, when its parent holds more, that parent ("a shop", "a shore"), if it holds
  ``scene_mass``; it takes the subject's slot, with confidence 0.
* **Medium** from the image (``stages.medium``: the medium head when the profile names one): the one medium
  candidate the templates may use.
* **Look and style**: colour and lighting words from the pixels (``stages.look``) and the ``style_terms``
  most-used style components of the prior that name no art medium ("highly detailed, sharp focus, ..."), as one
  ``style`` candidate: the way prompts are written when the subject is unsure, and never a bare "a photo".
* **Cleaner candidates.** Components that are not real words (spelling lookalikes such as "espoo" next to
  "espresso": every word must be a whole word of the metric model's vocabulary or of the most-used flavours),
  near-duplicates of the subject, and, for a photo, any art-medium component, artist or movement are dropped.
  With no subject named, the retrieved components (nouns near the wrong classes) are dropped too: only the
  prior's style components may join the chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from retriever.imagenet import imagenet_classes, imagenet_hypernyms
from retriever.errors import ProfileError
from retriever.profile import DescribeConfig, Profile
from retriever.stages.candidates import Candidate, Candidates
from retriever.stages.look import look, look_words
from retriever.stages.medium import MediumHead, decide_medium, medium_phrase, names_art_medium, pixel_stats

WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Description:
    medium: str  # one of stages.medium.MEDIUMS
    medium_text: str  # "a photo", "a black and white photo", "an illustration", ...
    subject: str | None  # "a tabby", "a cat", a scene hint ("a shore"), or None when nothing is sure enough
    confidence: float  # probability of the named subject (0 when none, or only a scene hint)
    look: tuple[str, ...] = ()  # colour and lighting words ("blue and orange tones", "dramatic lighting")
    mediums: dict[str, float] | None = None  # the medium head's probabilities, when there is one


def with_article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


class Describer:
    def __init__(self, config: DescribeConfig, known_word: Callable[[str], bool]) -> None:
        self.config = config
        self.known_word = known_word
        classes, chains = imagenet_classes(), imagenet_hypernyms()
        self.leaf_names = classes
        parents = sorted({p for chain in chains for p in chain[1:]} - set(config.generic))
        self.parent_names = parents
        index = {p: j for j, p in enumerate(parents)}
        self.member = np.zeros((len(classes), len(parents)), np.float32)  # class i lies under parent j
        self.depth = np.zeros(len(parents), np.int32)
        for i, chain in enumerate(chains):
            for d, p in enumerate(reversed(chain[1:])):
                if p in index:
                    self.member[i, index[p]] = 1
                    self.depth[index[p]] = d
        unknown = [c for c in config.graphic_classes if c not in classes]
        if unknown:
            raise ProfileError(f"describe.graphic_classes: not ImageNet-1k class names: {', '.join(unknown)} "
                               "(see retriever/data/imagenet_classes.txt)")
        self.graphic = [classes.index(c) for c in config.graphic_classes]
        self.scenes = np.array([i for i, chain in enumerate(chains) if set(config.scene_parents) & set(chain[1:])])
        self.scene_parent = [next((index[p] for p in chain[1:] if p in index), None) for chain in chains]
        self.head = MediumHead.load(config.medium_head) if config.medium_head else None

    @classmethod
    def for_profile(cls, profile: Profile, space: object, indexes: dict, metric) -> "Describer":
        """The profile's describer: it reads the bridge classifier's probabilities, and knows real words from the
        metric model's vocabulary plus the words of the indexes' most-used flavours."""
        if not hasattr(space, "classifier"):
            raise ProfileError(f"profile {profile.name}: describe.enabled needs a bridge (classifier) retrieval space")
        jargon = {word for index in indexes.values()
                  for row in index.first_rows("flavour", profile.describe.jargon_flavours)
                  for word in WORD.findall(index.text(row).lower())}
        vocabulary = metric.vocabulary()
        return cls(profile.describe, lambda word: word in vocabulary or word in jargon)

    def describe(self, probabilities: np.ndarray, images: Sequence[Image.Image],
                 features: np.ndarray | None = None) -> list[Description]:
        """``features``: the classifier's penultimate features, which the medium head (if any) reads."""
        if self.head is not None and features is None:
            raise ProfileError("describe.medium_head needs the classifier's features (a classifier with predict())")
        heads = self.head.predict(features) if self.head is not None else [None] * len(images)
        out = []
        for p, image, h in zip(probabilities, images, heads):
            stats = pixel_stats(image)
            mediums = None if h is None else {c: float(v) for c, v in zip(self.head.classes, h)}
            medium = decide_medium(stats, float(p[self.graphic].sum()), self.config, mediums)
            subject, confidence = self._subject(p)
            if subject is None:
                subject = self._scene(p)
            out.append(Description(medium, medium_phrase(medium, stats, self.config), subject, confidence,
                                   tuple(look_words(look(image), self.config.look)), mediums))
        return out

    def _scene(self, p: np.ndarray) -> str | None:
        """The most probable scene class, or its first non-generic parent when the parent's mass is larger."""
        if not len(self.scenes) or not self.config.scene_mass:
            return None
        top = int(self.scenes[np.argmax(p[self.scenes])])
        name, mass = self.leaf_names[top], float(p[top])
        parent = self.scene_parent[top]
        if parent is not None:
            parent_mass = float(p @ self.member[:, parent])
            if parent_mass > 2 * mass:
                name, mass = self.parent_names[parent], parent_mass
        return with_article(name) if mass >= self.config.scene_mass else None

    def _subject(self, p: np.ndarray) -> tuple[str | None, float]:
        top = int(np.argmax(p))
        if p[top] >= self.config.confident:
            return with_article(self.leaf_names[top]), float(p[top])
        mass = p @ self.member
        sure = np.flatnonzero(mass >= self.config.parent_mass)
        if not len(sure):
            return None, 0.0
        best = sure[np.argmax(self.depth[sure] + mass[sure])]  # the most specific sure parent
        return with_article(self.parent_names[best]), float(mass[best])

    def apply(self, d: Description, candidates: Candidates, style: Sequence[Candidate]) -> tuple[Candidates,
                                                                                                   list[Candidate]]:
        """The image's candidates with the description's medium and subject, and its chain pool cleaned."""
        out: Candidates = {"medium": [Candidate(d.medium_text, "medium", "describe", "", -1, 1.0, 1.0)]}
        if d.subject:
            out["subject"] = [Candidate(d.subject, "subject", "describe", "", -1, 1.0, 1.0)]
        style = [c for c in style if self.keep(c.text, d)]
        tail = list(d.look) + _distinct([c.text for c in style if not names_art_medium(c.text)])[: self.config.style_terms]
        if tail:
            out["style"] = [Candidate(", ".join(tail), "style", "describe", "", -1, 1.0, 1.0)]
        for kind, cands in candidates.items():
            if kind in ("medium", "subject", "caption", "style") or not d.confidence:  # unsure: only the prior's style
                continue
            if d.medium == "photo" and kind in self.config.photo_drop_kinds:
                continue
            kept = [c for c in cands if self.keep(c.text, d)]
            if kept:
                out[kind] = kept
        return out, [c for c in style if c.text not in tail]

    def keep(self, text: str, d: Description) -> bool:
        if d.medium == "photo" and names_art_medium(text):
            return False
        words = WORD.findall(text.lower())
        if not all(self.known_word(w) for w in words if len(w) > 2):
            return False
        subject = [w for w in WORD.findall((d.subject or "").lower()) if len(w) > 2]
        return not any(w == s or SequenceMatcher(None, w, s).ratio() >= 0.75 for w in words for s in subject)


def _distinct(texts: Sequence[str]) -> list[str]:
    """Texts in order, without the ones that differ from an earlier one only in spaces ("8 k" after "8k")."""
    seen, out = set(), []
    for t in texts:
        key = t.replace(" ", "").lower()
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out
