"""Choose the weights of several heads' average on a validation table (the 4th place averaged four towers).

Each head predicts the table's images through the profile's own loading path (a fine-tuned head with its
tower, a head over frozen features with the retrieval space); the weights are searched on a grid over the
simplex for the best mean cosine of the renormalised weighted average to the prompts' MiniLM embeddings.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from retriever.errors import UnpromptError

MAX_GRID = 5000  # weight combinations tried at most


@dataclass
class EnsembleChoice:
    weights: list[float]
    cosine: float  # of the weighted average, on the table
    single: list[float]  # each head's own cosine
    uniform: float  # the plain average's


def _compositions(n: int, units: int) -> np.ndarray:
    """Every way to split ``units`` into ``n`` non-negative parts (stars and bars), as rows."""
    rows = []
    for bars in itertools.combinations(range(units + n - 1), n - 1):
        edges = (-1, *bars, units + n - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
    return np.asarray(rows, np.float64)


def grid_units(n: int) -> int:
    """The finest grid step 1/units whose combinations stay under MAX_GRID."""
    from math import comb

    units = 20
    while units > 1 and comb(units + n - 1, n - 1) > MAX_GRID:
        units -= 1
    return units


def choose_weights(predictions: Sequence[np.ndarray], targets: np.ndarray) -> EnsembleChoice:
    """Grid search on the simplex; ties go to the more even split (the grid's first best is kept)."""
    if len(predictions) < 2:
        raise UnpromptError("an ensemble needs at least two heads")
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    p = np.stack([x / np.linalg.norm(x, axis=1, keepdims=True) for x in predictions])  # heads x rows x dim
    grid = _compositions(len(p), grid_units(len(p)))
    grid = grid[grid.sum(1) > 0] / grid.sum(1, keepdims=True)
    # cosine(sum_i w_i p_i, t) = (w . (p t)) / |sum_i w_i p_i|, with the Gram matrix of the heads per row
    pt = np.einsum("hrd,rd->rh", p, t)  # rows x heads
    gram = np.einsum("hrd,krd->rhk", p, p)  # rows x heads x heads
    num = pt @ grid.T  # rows x combos
    norm = np.sqrt(np.einsum("ch,rhk,ck->rc", grid, gram, grid).clip(1e-12))
    scores = (num / norm).mean(0)
    order = np.argsort(-np.round(scores, 6) + 1e-9 * np.abs(grid - 1 / len(p)).sum(1), kind="stable")
    best = order[0]
    uniform = np.full(len(p), 1 / len(p))
    u_score = float(((pt @ uniform) / np.sqrt(np.einsum("h,rhk,k->r", uniform, gram, uniform))).mean())
    return EnsembleChoice([round(float(w), 4) for w in grid[best]], float(scores[best]),
                          [float(v) for v in pt.mean(0)], u_score)


def head_predictions(profile, heads: Sequence[str | Path], table: str | Path, image_column: str = "image",
                     prompt_column: str = "prompt", batch_size: int = 32) -> tuple[list[np.ndarray], np.ndarray]:
    """Every head's unit predictions for the table's images, and the prompts' metric embeddings."""
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.evaluation.tables import read_pairs
    from retriever.feed import decoded_batches
    from retriever.profile import HeadRef, RegressConfig
    from retriever.stages.regress import load_regressor

    paths, prompts = read_pairs(table, image_column, prompt_column)
    metric = sentence_encoder(profile.metric_model)
    retrieval = create_space(profile.retrieve.space)
    members = []
    for head in heads:
        config = RegressConfig(kind="head", heads=[HeadRef(path=str(Path(head).expanduser().resolve()))],
                               require_head=True)
        members.append(load_regressor(config, retrieval, metric.model_id, metric.dim, create_space, profile.name))
    out: list[list[np.ndarray]] = [[] for _ in heads]
    keep = []
    for batch in decoded_batches(paths, batch_size):
        good = [d for d in batch if d.image is not None]
        keep += [d.image is not None for d in batch]
        if not good:
            continue
        images = [d.image for d in good]
        features = retrieval.encode_images(images)
        for i, member in enumerate(members):
            out[i].append(member.predict(images, features))
    if not any(keep):
        raise UnpromptError(f"{table}: none of its images could be read")
    texts = [p for p, k in zip(prompts, keep) if k]
    return [np.concatenate(o) for o in out], metric.encode_text(texts)


def regress_section(heads: Sequence[str | Path], weights: Sequence[float], require_head: bool = False) -> str:
    """The [regress] section that averages ``heads`` with ``weights``."""
    import json

    items = ",\n".join(f"  {{ path = {json.dumps(str(h))}, weight = {w} }}" for h, w in zip(heads, weights) if w > 0)
    return (f'[regress]\nkind = "head"\nrequire_head = {"true" if require_head else "false"}\n'
            f"heads = [\n{items},\n]\n")


def with_regress(profile_text: str, section: str) -> str:
    """A profile's text with its [regress] section replaced (comments elsewhere kept)."""
    parts = re.split(r"(?m)^(?=\[[^\[\]]+\]\s*$)", profile_text)
    kept = [p for p in parts if not p.startswith("[regress]")]
    if len(kept) == len(parts):
        raise UnpromptError("the profile has no [regress] section to replace")
    at = [i for i, p in enumerate(parts) if p.startswith("[regress]")][0]
    return "".join(kept[:at] + [section + "\n"] + kept[at:])
