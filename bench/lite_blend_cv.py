"""Choose lite's final-blend knobs by leave-one-prompt-out cross-validation on the DEV halves only.

Reads the dump of bench/lite_blend_dump.py (stage embeddings, confidences, classifier features and true-prompt
embeddings of data_manifests/devset/dev.csv and sd-dev-dev.csv; never the held-out halves) and searches

    final = normalize(p + wr * r + (base + extra * u) * c)

p: the assembled prompt, r: the bridge regressor, both unit length; u: an uncertainty (1 - the subject's
confidence, 1 - the medium head's top probability, or their mean); c: the centroid shrunk to, unit length:
normalize((1 - a - b) * g + a * sum_m P(m) * mean_m + b * n), g the mean of a pool of prompts, mean_m the mean
of the pool's prompts whose medium (retriever/data/train_medium_head.py's label()) is m, P the medium head's
probabilities, n the pool's prompts weighted by softmax(cos(prompt, normalize(p + r)) / temperature): the
prompts nearest the image's own answer. Every image's score is out of fold: the medium head is refitted without the
image's prompt (all 4 images of an SD prompt leave together), and the pool with the package's own dev prompts
(devset/dev.csv, written for this project) leaves the image's prompt out. Pools: the prior prompts, plus
bench/centroid_prompts.txt (prompts written at length, as SD prompts are shared: "long"), plus the
dev prompts ("dev"). The objective, one setting for
photos and renders alike: the smaller of the two tables' margins (mean final cosine - mean cosine of the
leave-one-prompt-out mean of that table's true prompts). A nested estimate (the choice made without each
prompt, scored on it) says how much of the chosen margin is selection luck.

Writes numbers only (no prompt, no per-image row):

    .venv/bin/python bench/lite_blend_cv.py ../i21-cache/dev.npz --json bench/results/lite-blend-cv.json \
        > bench/results/lite-blend-cv.txt
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from retriever.evaluation.metric import metric_embed
from retriever.evaluation.tables import read_pairs
from retriever.stages.prior import prior_texts

REPO = Path(__file__).resolve().parents[1]
DEV_TABLES = ("data_manifests/devset/dev.csv", "data_manifests/devset/sd-dev-dev.csv")
GRID = {
    "regressor_weight": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
    "base": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
    "extra": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
    "uncertainty": ["subject", "medium", "mean"],
    "medium_centroid": [0.0, 0.25, 0.5, 0.75, 1.0],
    "neighbours": [0.0, 0.25, 0.5, 0.75],
    "temperature": [0.05, 0.1],
    "pool": ["prior", "prior+dev", "prior+long", "prior+long+dev"],
}


def _trainer():
    spec = importlib.util.spec_from_file_location("train_medium_head", REPO / "retriever/data/train_medium_head.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def loo_means(truth: np.ndarray, group: np.ndarray) -> np.ndarray:
    out = np.empty_like(truth)
    for i, g in enumerate(group):
        out[i] = truth[group != g].mean(axis=0)
    return out


def out_of_fold_mediums(train, x, labels, group, classes, penalty: float) -> np.ndarray:
    y = np.array([classes.index(lab) for lab in labels])
    probs = np.zeros((len(y), len(classes)), np.float32)
    for g in np.unique(group):
        tr, te = group != g, group == g
        mean, scale = train.standardise(x[tr])
        w, b = train.fit((x[tr] - mean) / scale, y[tr], len(classes), penalty)
        logits = ((x[te] - mean) / scale) @ w.T + b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[te] = e / e.sum(axis=1, keepdims=True)
    return probs


def _pareto(x: np.ndarray) -> np.ndarray:
    """Rows of x (n, 2) that no other row beats in both columns."""
    keep, best = [], -np.inf
    for i in np.argsort(-x[:, 0], kind="stable"):
        if x[i, 1] > best:
            keep.append(i)
            best = x[i, 1]
    return np.array(keep)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump")
    ap.add_argument("--json", help="write the search and the choice here")
    args = ap.parse_args(argv)
    d = np.load(args.dump, allow_pickle=False)
    tables = [str(t) for t in d["tables"]]
    keep = np.isin(d["table"], [tables.index(t) for t in DEV_TABLES])
    truths: list[str] = []
    for t in tables:
        truths += read_pairs(REPO / t)[1]
    truths = [truths[i] for i in d["truth_index"][keep]]
    table = np.array([DEV_TABLES.index(tables[i]) for i in d["table"][keep]])
    p, r = unit(d["prompt"][keep]), unit(d["regressor"][keep])
    truth, conf, x = d["truth"][d["truth_index"][keep]], d["confidence"][keep], d["features"][keep]
    keys = {t: k for k, t in enumerate(dict.fromkeys(truths))}
    group = np.array([keys[t] for t in truths])
    train = _trainer()
    head = json.loads((REPO / "retriever/data/medium_head.json").read_text())
    classes = sorted(head["labels"])
    probs = out_of_fold_mediums(train, x, [train.label(t) for t in truths], group, classes, head["penalty"])

    prior = prior_texts("pkg:retriever/data/prior_prompts.txt", "lite")
    own = read_pairs(REPO / DEV_TABLES[0])[1]  # the package's own dev prompts (written for this project)
    long = prior_texts(str(REPO / "bench/centroid_prompts.txt"), "lite")
    prior_emb, own_emb, long_emb = metric_embed(prior), metric_embed(own), metric_embed(long)
    prior_lab, own_lab = [train.label(t) for t in prior], [train.label(t) for t in own]
    long_lab = [train.label(t) for t in long]

    query = unit(p + r)

    def centroids(pool: str, a: float, b: float, tau: float) -> np.ndarray:
        out = np.empty_like(p)
        for i in range(len(p)):
            emb, lab = prior_emb, prior_lab
            if "long" in pool:
                emb, lab = np.concatenate([emb, long_emb]), lab + long_lab
            if pool.endswith("+dev"):  # the image's own prompt never joins its centroid
                mask = [t != truths[i] for t in own]
                emb = np.concatenate([emb, own_emb[mask]])
                lab = lab + [la for la, m in zip(own_lab, mask) if m]
            lab_arr = np.array(lab)
            g = unit(emb.mean(axis=0))
            z = emb @ query[i] / tau  # the pool's prompts nearest the image's own answer, softmax-weighted
            wts = np.exp(z - z.max())
            near = unit((wts / wts.sum()) @ emb)
            mix = sum(probs[i, k] * (unit(emb[lab_arr == c].mean(axis=0)) if (lab_arr == c).any() else g)
                      for k, c in enumerate(classes))
            out[i] = unit((1 - a - b) * g + a * mix + b * near)
        return out

    loo = loo_means(truth, group)  # per table: a table's LOO mean uses that table's prompts only
    for t in range(len(DEV_TABLES)):
        m = table == t
        loo[m] = loo_means(truth[m], group[m])
    loo_cos = np.sum(unit(loo) * truth, axis=1)
    unc = {"subject": 1 - conf, "medium": 1 - probs.max(axis=1), "mean": (2 - conf - probs.max(axis=1)) / 2}
    pt, rt, pr = np.sum(p * truth, 1), np.sum(r * truth, 1), np.sum(p * r, 1)
    names = list(GRID)
    settings, scores = [], []
    cache = {}
    for combo in itertools.product(*GRID.values()):
        s = dict(zip(names, combo))
        if s["medium_centroid"] + s["neighbours"] > 1 or (not s["neighbours"] and s["temperature"] != 0.1):
            continue
        key = (s["pool"], s["medium_centroid"], s["neighbours"], s["temperature"])
        if key not in cache:
            c = centroids(*key)
            cache[key] = (np.sum(c * truth, 1), np.sum(p * c, 1), np.sum(r * c, 1))
        ct, pc, rc = cache[key]
        wr, wp = s["regressor_weight"], s["base"] + s["extra"] * unc[s["uncertainty"]]
        num = pt + wr * rt + wp * ct
        den = np.sqrt(1 + wr ** 2 + wp ** 2 + 2 * wr * pr + 2 * wp * pc + 2 * wr * wp * rc)
        settings.append(s)
        scores.append(num / den)
    scores = np.array(scores)  # (settings, images): out-of-fold cosine of each image's final embedding

    current = next(i for i, s in enumerate(settings) if s == {
        "regressor_weight": 1.0, "base": 0.5, "extra": 2.0, "uncertainty": "subject", "medium_centroid": 0.0,
        "neighbours": 0.0, "temperature": 0.1, "pool": "prior"})
    # one setting for the images the medium decision calls photos, one for the rest (the head's top class here,
    # out of fold): each table's margin is the sum over its images of its decision's setting's scores
    photo = probs.argmax(axis=1) == classes.index("photo")
    loo_t = np.array([loo_cos[table == t].mean() for t in range(len(DEV_TABLES))])

    def choose(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
        n = np.array([(mask & (table == t)).sum() for t in range(len(DEV_TABLES))])
        parts = [np.stack([scores[:, mask & (table == t) & sel].sum(axis=1) for t in range(len(DEV_TABLES))], 1) / n
                 for sel in (photo, ~photo)]
        fronts = [_pareto(x) for x in parts]
        loo_m = np.array([loo_cos[mask & (table == t)].mean() for t in range(len(DEV_TABLES))])
        total = parts[0][fronts[0]][:, None, :] + parts[1][fronts[1]][None, :, :] - loo_m
        i, j = np.unravel_index(np.argmax(total.min(axis=2)), total.shape[:2])
        return int(fronts[0][i]), int(fronts[1][j]), total[i, j]

    def margins_of(rows: np.ndarray) -> list[float]:
        return [float(rows[table == t].mean() - loo_t[t]) for t in range(len(DEV_TABLES))]

    i_photo, i_other, _ = choose(np.ones(len(p), bool))
    single = int(np.argmax(np.stack([scores[:, table == t].mean(axis=1) - loo_t[t]
                                     for t in range(len(DEV_TABLES))], 1).min(axis=1)))
    nested = np.empty(len(p))
    for g in np.unique(group):  # the whole choice made without prompt g, scored on g's images
        a, b, _ = choose(group != g)
        te = group == g
        nested[te] = np.where(photo[te], scores[a, te], scores[b, te])
    rows = {"current": scores[current], "one setting": scores[single],
            "per decision": np.where(photo, scores[i_photo], scores[i_other]), "per decision, nested": nested}
    print(f"{len(settings)} settings, {len(p)} dev images ({int(photo.sum())} decided photo, out of fold), "
          f"{len(keys)} prompts; objective: min over the two tables of (out-of-fold mean final cosine - mean "
          "cosine of the LOO-prompt mean)")
    print(f"LOO-prompt mean cosine: dev.csv {loo_t[0]:.4f}, sd-dev-dev {loo_t[1]:.4f}")
    print(f"{'margin over the LOO-prompt mean':<34}{'dev.csv':>10}{'sd-dev-dev':>12}")
    for name, v in rows.items():
        m = margins_of(v)
        print(f"{name:<34}{m[0]:>10.4f}{m[1]:>12.4f}")
    for name, i in (("current", current), ("one setting", single), ("photo decisions", i_photo),
                    ("other decisions", i_other)):
        print(f"{name:<18}{json.dumps(settings[i])}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "script": "bench/lite_blend_cv.py", "dump": "bench/lite_blend_dump.py over " + ", ".join(DEV_TABLES),
            "never_read": ["data_manifests/devset/heldout.csv", "data_manifests/devset/sd-dev-heldout.csv"],
            "images": len(p), "prompts": len(keys), "photo_decisions_out_of_fold": int(photo.sum()),
            "grid": GRID, "settings_searched": len(settings),
            "objective": "min over the two dev tables of (out-of-fold mean final cosine - LOO-prompt mean cosine); "
                         "one setting for photo decisions and one for the rest, from the Pareto fronts",
            "chosen": {"photo": settings[i_photo], "other": settings[i_other]},
            "margins": {name: dict(zip(DEV_TABLES, margins_of(v))) for name, v in rows.items()},
            "one_setting": settings[single], "current": settings[current],
        }, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
