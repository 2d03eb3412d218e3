"""Train a regressor head: image features -> the metric's 384-d MiniLM space.

Two sources of training pairs:

* ``pairs``: a CSV/parquet/JSONL of (image, prompt). Image features are computed once with the
  profile's retrieval space and cached under $UNPROMPT_HOME/cache/features; the targets are
  the MiniLM embeddings of the prompts.
* ``prompts``: prompts alone. The head learns CLIP *text* embedding -> MiniLM embedding and is
  then applied to CLIP *image* embeddings, which CLIP puts in the same space (how the 7th
  place of the Kaggle competition initialised its head).

Training minimises 1 - cosine with Adam, keeps a validation split, and stops early when the
validation cosine stops improving.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retriever.encoders.base import l2_normalize
from retriever.heads.config import TrainConfig
from retriever.files import atomic_write
from retriever.heads.model import make_head, save_head


@dataclass
class TrainResult:
    head: nn.Module
    train_cosine: float
    val_cosine: float
    epochs: int
    n_train: int
    n_val: int


def _mean_cosine(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cosine_similarity(head(x), y).mean()) if len(x) else float("nan")


def train_head(features: np.ndarray, targets: np.ndarray, config: TrainConfig | None = None,
               progress: bool = False) -> TrainResult:
    cfg = config or TrainConfig()
    if len(features) != len(targets):
        raise ValueError(f"{len(features)} feature rows but {len(targets)} targets")
    if len(features) < 2:
        raise ValueError("need at least 2 training pairs")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(l2_normalize(features))
    y = torch.from_numpy(l2_normalize(targets))
    order = torch.randperm(len(x), generator=gen)
    n_val = max(1, int(round(len(x) * cfg.val_fraction))) if cfg.val_fraction > 0 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    head = make_head(x.shape[1], y.shape[1], cfg.hidden)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_val, stale, epoch = None, -math.inf, 0, 0
    bar = tqdm(range(cfg.epochs), desc="train", disable=not progress)
    for epoch in bar:
        head.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(perm), cfg.batch_size):
            b = perm[start : start + cfg.batch_size]
            loss = 1 - nn.functional.cosine_similarity(head(x[b]), y[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        val = _mean_cosine(head, x[val_idx], y[val_idx]) if n_val else _mean_cosine(head, x[train_idx], y[train_idx])
        bar.set_postfix(val_cosine=f"{val:.4f}")
        if val > best_val + 1e-5:
            best_val, stale = val, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    assert best_state is not None
    head.load_state_dict(best_state)
    head.eval()
    return TrainResult(head, _mean_cosine(head, x[train_idx], y[train_idx]), best_val, epoch + 1,
                       len(train_idx), n_val)


def cached_image_features(space, paths: Sequence[str | Path], batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Image features in the retrieval space, computed once per (model, file content) and cached."""
    from retriever.images import admit_image, read_image_file
    from retriever.paths import home

    cache_dir = home() / "cache" / "features" / hashlib.sha256(space.model_id.encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    blobs = [read_image_file(p) for p in paths]  # a missing or oversized file stops training before any work
    keys = [hashlib.sha256(b).hexdigest()[:24] for b in blobs]
    out = np.zeros((len(paths), space.dim), dtype=np.float32)
    todo = []
    for i, k in enumerate(keys):
        try:
            out[i] = np.load(cache_dir / f"{k}.npy")
        except (OSError, ValueError):  # not cached yet, or a damaged cache file: compute again
            todo.append(i)
    for start in tqdm(range(0, len(todo), batch_size), desc="image features", disable=not progress or not todo):
        chunk = todo[start : start + batch_size]
        vectors = space.encode_images([admit_image(blobs[i], name=str(paths[i])) for i in chunk])
        for i, v in zip(chunk, vectors):
            out[i] = v
            with atomic_write(cache_dir / f"{keys[i]}.npy", fsync=False) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, v)
    return out


def train_regressor(profile, config: TrainConfig, out: str | Path | None = None, pairs: str | Path | None = None,
                    prompts: str | Path | None = None, image_column: str = "image",
                    prompt_column: str = "prompt") -> tuple[Path, dict]:
    """Train the profile's head from (image, prompt) pairs or from prompts alone, save it, return (path, meta)."""
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.errors import UnpromptError
    from retriever.evaluation.tables import read_pairs, read_prompts
    from retriever.files import check_output_file
    from retriever.paths import resolve_home_path

    path = Path(out) if out else resolve_home_path(profile.regress.head or f"heads/{profile.name}.pt")
    if out:
        check_output_file(path, "--out")
    if prompts and profile.retrieve.space.kind != "open_clip":
        raise UnpromptError("--prompts (text-only initialisation) needs a CLIP retrieval space")
    texts = read_prompts(prompts, prompt_column) if prompts else None
    image_paths, pair_texts = read_pairs(pairs, image_column, prompt_column) if pairs else ([], [])
    space = create_space(profile.retrieve.space)
    metric = sentence_encoder(profile.metric_model)
    if pairs:
        texts, features, mode = pair_texts, cached_image_features(space, image_paths), "pairs"
    else:
        features, mode = space.encode_text(texts), "prompts"
    targets = metric.encode_text(texts)
    result = train_head(features, targets, config, progress=True)
    meta = {
        "feature_model_id": space.model_id, "in_dim": int(features.shape[1]),
        "target_model_id": metric.model_id, "out_dim": int(targets.shape[1]), "hidden": config.hidden,
        "mode": mode, "profile": profile.name,
        "metrics": {"train_cosine": result.train_cosine, "val_cosine": result.val_cosine,
                    "epochs": result.epochs, "n_train": result.n_train, "n_val": result.n_val},
    }
    save_head(path, result.head, meta)
    return path, meta
