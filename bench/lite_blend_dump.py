"""Dump what the lite blend is made of, per image, for the cross-validated blend search (bench/lite_blend_cv.py).

For each image of the given tables: the stage embeddings in the metric space (assembled prompt, template,
retrieval answer, the bridge regressor), the final embedding as served, the describe stage's subject confidence
and medium decision, the medium head's probabilities, the classifier's penultimate features, and the metric
embedding of the true prompt. The dump holds embeddings of unlicensed prompts (../shared/sd-dev), so it is
written outside the repository (default /work/wt/i21-cache, or --out) and never committed.

    .venv/bin/python bench/lite_blend_dump.py data_manifests/devset/dev.csv data_manifests/devset/sd-dev-dev.csv \
        --out ../i21-cache/dev.npz
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from retriever.evaluation.metric import metric_embed
from retriever.evaluation.tables import read_pairs
from retriever.feed import interrogate_files
from retriever.pipeline import Interrogator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", default="lite")
    args = ap.parse_args(argv)
    it = Interrogator.load(args.profile)
    assert it.describer is not None and it.describer.head is not None, "the lite profile's describer and medium head"
    captured: list = []
    features: list = []
    describe = it.describer.describe

    def recording(probabilities, images, feats=None):  # the descriptions and features the pipeline used
        out = describe(probabilities, images, feats)
        captured.extend(out)
        features.extend(np.asarray(feats, np.float32))
        return out

    it.describer.describe = recording  # type: ignore[method-assign]
    rows: dict[str, list] = {k: [] for k in ("table", "truth_index", "prompt", "template", "retrieval", "regressor",
                                             "final", "confidence", "medium", "mediums", "has_subject")}
    truths: list[str] = []
    t0 = time.perf_counter()
    for t, table in enumerate(args.tables):
        paths, prompts = read_pairs(table)
        n0 = len(captured)
        for k, answer in enumerate(interrogate_files(it, paths, batch_size=8, metadata=False)):
            r = answer.result
            if r is None:
                raise SystemExit(f"{answer.path}: {answer.error}")
            for name in ("prompt", "template", "retrieval", "regressor"):
                rows[name].append(r.stage_embeddings[name])
            rows["final"].append(r.embedding)
            rows["table"].append(t)
            rows["truth_index"].append(len(truths) + k)
        truths.extend(prompts)
        for d in captured[n0:]:
            rows["confidence"].append(d.confidence)
            rows["medium"].append(d.medium)
            rows["mediums"].append([d.mediums[c] for c in it.describer.head.classes])
            rows["has_subject"].append(d.subject is not None)
        print(f"{table}: {len(paths)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    groups = {p: g for g, p in enumerate(dict.fromkeys(truths))}
    np.savez(args.out, truth=metric_embed(truths), group=np.array([groups[p] for p in truths]),
             features=np.stack(features), head_classes=np.array(it.describer.head.classes),
             tables=np.array(args.tables), prior=it.prior.metric,
             **{k: np.array(v) for k, v in rows.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
