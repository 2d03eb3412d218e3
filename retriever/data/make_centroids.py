"""Make centroids.npz: the prompt pool lite's final embedding shrinks toward (retriever/stages/shrink.py).

    .venv/bin/python retriever/data/make_centroids.py

The pool (chosen by bench/lite_blend_cv.py, pool "prior+dev"): the prior's prompts (prior_prompts.txt) and the
prompts of data_manifests/devset/dev.csv, both written for this project (Apache-2.0). Each prompt's metric-space
embedding (all-MiniLM-L6-v2, unit length) and the medium it names (train_medium_head.py's label()) are stored;
no text is. The held-out halves and ../shared/sd-dev are never read. The script ships beside the data it made;
nothing imports it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SOURCES = ["retriever/data/prior_prompts.txt", "data_manifests/devset/dev.csv"]


def main(out: Path = HERE / "centroids.npz") -> None:
    from retriever.evaluation.metric import metric_embed
    from retriever.evaluation.tables import read_pairs
    from retriever.profile import METRIC_MODEL
    from retriever.stages.prior import prior_texts

    spec = importlib.util.spec_from_file_location("train_medium_head", HERE / "train_medium_head.py")
    train = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(train)  # type: ignore[union-attr]
    texts = prior_texts(str(REPO / SOURCES[0]), "lite") + read_pairs(REPO / SOURCES[1])[1]
    mediums = [train.label(t) for t in texts]
    np.savez(out, embeddings=metric_embed(texts).astype(np.float32), mediums=np.array(mediums),
             model=np.array(METRIC_MODEL))
    provenance = {"weights": out.name, "sources": {s: train.sha256(REPO / s) for s in SOURCES}, "prompts": len(texts),
                  "mediums": {m: mediums.count(m) for m in sorted(set(mediums))}, "model": METRIC_MODEL,
                  "chosen_by": "bench/lite_blend_cv.py (bench/results/lite-blend-cv.json)",
                  "script": "retriever/data/make_centroids.py"}
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
