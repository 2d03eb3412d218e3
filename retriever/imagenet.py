"""The 1000 ImageNet-1k class names, in the classifier's output order."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    text = (resources.files("retriever") / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 1000, f"expected 1000 ImageNet classes, found {len(names)}"
    return names


@lru_cache(maxsize=1)
def imagenet_hypernyms() -> tuple[tuple[str, ...], ...]:
    """Per class, in the same order: its WordNet 3.0 synset then every parent up to "entity", each as its first
    lemma (derived by data/derive_hypernyms.py from WordNet 3.0; license in data/WORDNET_LICENSE)."""
    text = (resources.files("retriever") / "data" / "imagenet_hypernyms.txt").read_text(encoding="utf-8")
    chains = tuple(tuple(line.split("|")) for line in text.splitlines() if line.strip())
    assert len(chains) == 1000, f"expected 1000 hypernym chains, found {len(chains)}"
    return chains
