"""Train a regressor head: image features -> the metric's 384-d MiniLM space.

The recipe (the Kaggle solutions' own): initialise from prompts alone, then fine-tune on (image, prompt) pairs.

* ``prompts``: the head learns CLIP *text* embedding -> MiniLM embedding; CLIP puts images in the same space,
  so it already applies to image features (how the 7th place initialised its head).
* ``pairs``: a CSV/parquet/JSONL of (image, prompt), e.g. DiffusionDB's images with their prompts. The head
  learns the image features themselves; given both sources it starts from the prompts-only head.

Features and targets are cached as memory-mapped matrices (``retriever.heads.features``) and streamed in row
blocks; training runs on the GPU when there is one. It minimises 1 - cosine with Adam, reports the validation
cosine every epoch, keeps the best epoch and stops early when validation stops improving.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retriever.device import pick_device, to_device
from retriever.heads.config import TrainConfig
from retriever.heads.model import make_head, save_head

BLOCK_BATCHES = 64  # minibatches per contiguous block read from the memory map
MAX_VAL = 50_000


@dataclass
class TrainResult:
    head: nn.Module
    train_cosine: float
    val_cosine: float
    epochs: int
    n_train: int
    n_val: int
    history: list[dict] = field(default_factory=list)


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _split(valid: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, a mask of training rows) over the rows marked valid."""
    rows = np.flatnonzero(valid)
    rng = np.random.default_rng(seed)
    n_val = min(MAX_VAL, max(1, int(round(len(rows) * fraction)))) if fraction > 0 else 0
    val = np.sort(rng.choice(rows, size=n_val, replace=False)) if n_val else rows[:0]
    train = np.asarray(valid, dtype=bool).copy()
    train[val] = False
    return val, train


def _blocks(train: np.ndarray, block: int, gen: torch.Generator) -> Iterator[tuple[int, np.ndarray]]:
    """Contiguous row blocks in a random order; each yields its training rows (relative to the block start)."""
    starts = list(range(0, len(train), block))
    for i in torch.randperm(len(starts), generator=gen).tolist():
        rows = np.flatnonzero(train[starts[i] : starts[i] + block])
        if len(rows):
            yield starts[i], rows


def _cosine(head: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    if not len(x):
        return float("nan")
    with torch.no_grad():
        out = [nn.functional.cosine_similarity(head(to_device(x[s : s + 8192], device)),
                                               to_device(y[s : s + 8192], device)).sum().item()
               for s in range(0, len(x), 8192)]
    return sum(out) / len(x)


def train_head(features: np.ndarray, targets: np.ndarray, config: TrainConfig | None = None,
               progress: bool = False, valid: np.ndarray | None = None, init: nn.Module | None = None,
               device: torch.device | None = None, desc: str = "train") -> TrainResult:
    """Fit a head (or fine-tune ``init``) on rows of ``features`` (in-memory or memory-mapped) -> ``targets``."""
    cfg = config or TrainConfig()
    if len(features) != len(targets):
        raise ValueError(f"{len(features)} feature rows but {len(targets)} targets")
    valid = np.ones(len(features), np.uint8) if valid is None else np.asarray(valid)
    if int(valid.sum()) < 2:
        raise ValueError("need at least 2 training pairs")
    device = device or pick_device()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    val_rows, train_mask = _split(valid, cfg.val_fraction, cfg.seed)
    check_x, check_y = (_unit(features[val_rows]), _unit(targets[val_rows])) if len(val_rows) else (None, None)
    if check_x is None:  # no validation split: judge on (up to MAX_VAL) training rows
        rows = np.flatnonzero(train_mask)[:MAX_VAL]
        check_x, check_y = _unit(features[rows]), _unit(targets[rows])
    head = (init if init is not None else make_head(features.shape[1], targets.shape[1], cfg.hidden)).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_val, stale, history = None, -math.inf, 0, []
    block = cfg.batch_size * BLOCK_BATCHES
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        t0, losses = time.perf_counter(), []
        for start, rows in _blocks(train_mask, block, gen):
            x = _unit(features[start : start + block][rows])
            y = _unit(targets[start : start + block][rows])
            for b in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
                loss = 1 - nn.functional.cosine_similarity(head(to_device(x[b], device)), to_device(y[b], device)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        head.eval()
        val = _cosine(head, check_x, check_y, device)
        improved = val > best_val + 1e-5
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_cosine": val,
                        "seconds": round(time.perf_counter() - t0, 3)})
        if progress:
            tqdm.write(f"{desc} epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, "
                      f"validation cosine {val:.4f}{' (best)' if improved else ''}", file=sys.stderr)
        if improved:
            best_val, stale = val, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    assert best_state is not None
    head.load_state_dict(best_state)
    head = head.eval().cpu()
    train_rows = np.flatnonzero(train_mask)[:MAX_VAL]
    train_cos = _cosine(head, _unit(features[train_rows]), _unit(targets[train_rows]), torch.device("cpu"))
    return TrainResult(head, train_cos, best_val, len(history), int(train_mask.sum()), len(val_rows), history)


def train_regressor(profile, config: TrainConfig, out: str | Path | None = None, pairs: str | Path | None = None,
                    prompts: str | Path | None = None, image_column: str = "image",
                    prompt_column: str = "prompt") -> tuple[Path, dict]:
    """Train the profile's head from prompts, from (image, prompt) pairs, or prompts first and then pairs; save
    the best epoch with its provenance; return (path, meta)."""
    from retriever import __version__
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.errors import UnpromptError
    from retriever.evaluation.tables import read_pairs, read_prompts
    from retriever.files import check_output_file
    from retriever.heads.features import image_features, source_digest, text_matrix
    from retriever.paths import resolve_home_path

    default = profile.regress.heads[0].path if profile.regress.heads else f"heads/{profile.name}.pt"
    path = Path(out) if out else resolve_home_path(default)
    if out:
        check_output_file(path, "--out")
    if prompts and profile.retrieve.space.kind != "open_clip":
        raise UnpromptError("--prompts (text-only initialisation) needs a CLIP retrieval space")
    texts = read_prompts(prompts, prompt_column) if prompts else None
    image_paths, pair_texts = read_pairs(pairs, image_column, prompt_column) if pairs else ([], [])
    space = create_space(profile.retrieve.space)
    metric = sentence_encoder(profile.metric_model)
    sources, stages, head = {}, {}, None
    if prompts:
        digest = source_digest(prompts)
        sources["prompts"] = {"path": str(prompts), "sha256": digest, "rows": len(texts)}
        x = text_matrix(space, texts, digest, "text-features", "prompt features").open()[0]
        y = text_matrix(metric, texts, digest, "targets", "prompt targets").open()[0]
        result = train_head(x, y, config, progress=True, desc="prompts")
        head, stages["prompts"] = result.head, _summary(result)
    if pairs:
        digest = source_digest(pairs)
        sources["pairs"] = {"path": str(pairs), "sha256": digest, "rows": len(image_paths)}
        x, valid = image_features(space, image_paths, digest).open()
        y = text_matrix(metric, pair_texts, digest, "targets", "pair targets").open()[0]
        skipped = int(len(valid) - valid.sum())
        if skipped:
            tqdm.write(f"unprompt: warning: {skipped} of {len(valid)} images could not be read and are left out",
                       file=sys.stderr)
        ft = config if head is None else TrainConfig(**{**asdict(config), "lr": config.lr * config.finetune_lr_scale})
        result = train_head(x, y, ft, progress=True, valid=valid, init=head, desc="pairs")
        head, stages["pairs"] = result.head, _summary(result)
    assert head is not None
    meta = {
        "feature_model_id": space.model_id, "in_dim": space.dim,
        "target_model_id": metric.model_id, "out_dim": metric.dim, "hidden": config.hidden,
        "mode": "+".join(stages),  # prompts, pairs, or prompts+pairs
        "profile": profile.name, "sources": sources, "config": asdict(config), "stages": stages,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "unprompt_version": __version__,
        "metrics": stages[list(stages)[-1]],
    }
    save_head(path, head, meta)
    return path, meta


def _summary(result: TrainResult) -> dict:
    return {"train_cosine": result.train_cosine, "val_cosine": result.val_cosine, "epochs": result.epochs,
            "n_train": result.n_train, "n_val": result.n_val, "history": result.history}
