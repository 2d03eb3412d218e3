"""Take up a committed rebuild in a running interrogator: the new build is loaded beside the old one (memory-
mapped where FAISS allows), checked (sizes and SHA-256 against its record, the profile's model, canary
searches that must find their own rows) and warmed (a whole interrogation of a canary image). Only then does
the caller swap one reference; until then, and for every request already holding the old interrogator, the
old build serves. Nothing here mutates the interrogator that is serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from retriever.encoders import text_tower
from retriever.errors import IndexIntegrityError, UnpromptError
from retriever.index import TextIndex
from retriever.index_files import read_record
from retriever.paths import index_dir
from retriever.pipeline import Interrogator, load_index

CANARIES = 8  # rows searched for themselves in each new build


@dataclass
class Reload:
    """What a reload found: the interrogator to swap in (None when nothing changed or a build was refused)."""

    interrogator: Interrogator | None = None
    loaded: dict[str, str] = field(default_factory=dict)  # index -> new build id
    unchanged: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # index -> why
    tried: dict[str, str] = field(default_factory=dict)  # index -> the committed build id that was tried
    skipped: list[str] = field(default_factory=list)  # committed builds refused before, not tried again


def committed_builds(interrogator: Interrogator) -> dict[str, str]:
    """Each of the profile's indexes -> the build id its directory has committed now ("" when unreadable)."""
    out = {}
    for name in interrogator.indexes:
        try:
            out[name] = read_record(index_dir(name)).build_id
        except IndexIntegrityError:
            out[name] = ""
    return out


def canary_check(index: TextIndex, encode_text: Callable[[list[str]], np.ndarray], n: int = CANARIES) -> None:
    """Search the texts of ``n`` rows spread over the build: each must come back among its own top hits with a
    finite score (a build whose vectors and texts disagree, or whose FAISS file is damaged, fails here)."""
    rows = np.unique(np.linspace(0, len(index) - 1, num=min(n, len(index))).astype(np.int64))
    texts = [index.text(int(r)) for r in rows]
    hits = index.search(encode_text(texts), 10)
    lost = [t for t, found in zip(texts, hits)
            if not any(h.text == t and np.isfinite(h.score) for h in found)]
    if len(lost) > len(rows) // 4:  # an approximate index may miss the odd row, never many
        raise IndexIntegrityError(f"index {index.directory}: canary searches lost {len(lost)} of {len(rows)} rows "
                                  f"(e.g. {lost[0][:60]!r}): vectors and texts disagree; rebuild the index")


def canary_image() -> Image.Image:
    """A fixed, busy 64x64 image: enough for every stage to produce a prompt."""
    x = np.linspace(0, 255, 64, dtype=np.float32)
    rgb = np.stack([np.add.outer(x, x) / 2, np.outer(x, x[::-1]) / 255, np.add.outer(x[::-1], x) / 2], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def prepare_reload(current: Interrogator, checksums: bool = True,
                   warm: Callable[[Interrogator], None] | None = None, skip: dict[str, str] | None = None) -> Reload:
    """Load and check every index whose committed build differs from the one serving, and build the
    interrogator that would serve them. ``warm`` runs the canary interrogation (the service passes one that
    runs on its model thread); ``skip``: index -> build id already refused (not tried again until it changes).
    A refused build leaves the result without an interrogator: all or nothing, so answers never mix a new
    build of one index with a refused one of another."""
    result = Reload()
    fresh: dict[str, TextIndex] = {}
    for name, build_id in committed_builds(current).items():
        if build_id == current.indexes[name].record.build_id:
            result.unchanged.append(name)
            continue
        if skip and skip.get(name) == build_id:
            result.skipped.append(name)
            continue
        result.tried[name] = build_id
        try:
            index = load_index(current.profile, name, current.retrieval_space, checksums)
            canary_check(index, text_tower(current.retrieval_space).encode_text)
        except (UnpromptError, MemoryError, OSError) as exc:
            result.refused[name] = str(exc) or type(exc).__name__
            continue
        fresh[name] = index
        result.loaded[name] = index.record.build_id
    if result.refused:  # all or nothing: the builds that passed wait for the next reload
        result.loaded.clear()
    if result.refused or not fresh:
        return result
    candidate = current.with_indexes({**current.indexes, **fresh})
    try:
        (warm or _warm)(candidate)
    except Exception as exc:  # the whole pipeline on the new builds: any failure refuses them
        for name in fresh:
            result.refused[name] = f"canary interrogation failed: {exc}"
        result.loaded.clear()
        return result
    result.interrogator = candidate
    return result


def _warm(interrogator: Interrogator) -> None:
    interrogator.interrogate_batch([canary_image()])
