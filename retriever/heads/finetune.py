"""Fine-tune an image tower and its head on (image, prompt) pairs: the Kaggle winners' regressor recipe.

* Loss 1 - cosine against the prompt's MiniLM embedding (the metric's space).
* LP-FT: ``lp_epochs`` with the tower frozen (only the head trains, from the prompts-only head when given),
  then ``epochs`` training everything.
* Layer-wise learning-rate decay: one AdamW parameter group per tower depth (and decay / no-decay), the
  level below training at ``layer_decay`` times the rate of the level above; the head at the full rate.
* An EMA of the weights (``torch.optim.swa_utils.AveragedModel`` with its EMA averaging function); the EMA
  is what is validated and saved.
* Augmentations from torchvision.transforms.v2: random resized crop at the training resolution, RandAugment
  without posterize, solarize or equalize (and without its colour ops when ``colour_augment`` is off),
  random erasing.
* BatchNorm (the EfficientNet towers): FT keeps the pretrained running statistics (``batchnorm="frozen"``,
  eval mode; the affine weights train), as is usual when a batch per process is small.
* CUDA: autocast in bf16 (or fp16 with a gradient scaler) and gradient checkpointing; the CPU runs fp32.
* Resumable after kill -9: every ``checkpoint_every`` steps and at every epoch's end the run folder's
  ``checkpoint.pt`` is replaced atomically with the model, optimizer, EMA, scheduler, scaler, the position
  in the epoch and the RNG states. Each epoch's order and each sample's augmentation come from seeds
  (seed, epoch, step, row), so a resumed run sees exactly the batches the uninterrupted one would have.
* Validation every epoch on held-out *prompts* (every image of a prompt is on one side); the best EMA is
  written as a head file (``retriever.heads.model``) with its tower beside it (``<head>.tower.pt``).
* Data parallel with torch DDP under ``torchrun``: the global batch is split across the processes
  (gradients averaged by DDP), NCCL on GPUs, gloo on CPUs; rank 0 writes the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retriever.device import training_autocast, training_device, training_dtype
from retriever.errors import UnpromptError
from retriever.files import atomic_write
from retriever.heads.config import FT_LR, FinetuneConfig
from retriever.heads.model import make_head, save_head
from retriever.heads.towers import Tower, TowerSpec, build_tower, eval_transform, save_tower, tower_file

CHECKPOINT = "checkpoint.pt"
DROPPED_OPS = ("Posterize", "Solarize", "Equalize")  # the 3rd place's RandAugment leaves these out
COLOUR_OPS = ("Brightness", "Color", "Contrast", "AutoContrast")  # left out when colour_augment is off


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Pairs:
    paths: list[Path]
    prompts: list[str]
    targets: np.ndarray  # rows x 384, unit MiniLM embeddings of the prompts
    digest: str = ""  # the source table's hash (a resumed run must read the same pairs)


def split_by_prompt(prompts: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): ``fraction`` of the distinct prompts, chosen by a seeded hash, are
    held out with every image they have."""
    unique = sorted(set(prompts), key=lambda p: hashlib.sha256(f"{seed}\n{p}".encode()).hexdigest())
    n_val = min(len(unique) - 1, max(1, round(len(unique) * fraction))) if fraction > 0 else 0
    held = set(unique[:n_val])
    rows = np.arange(len(prompts))
    is_val = np.array([p in held for p in prompts], dtype=bool)
    return rows[~is_val], rows[is_val]


class SafeRandAugment:
    """torchvision v2 RandAugment with posterize, solarize and equalize removed from its op space (and its
    colour ops unless ``colour``)."""

    def __new__(cls, num_ops: int, magnitude: int, colour: bool = True):
        from torchvision.transforms import v2

        dropped = DROPPED_OPS + (() if colour else COLOUR_OPS)
        space = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items() if k not in dropped}
        klass = type("SafeRandAugment", (v2.RandAugment,), {"_AUGMENTATION_SPACE": space})
        return klass(num_ops=num_ops, magnitude=magnitude)


def train_transform(spec: TowerSpec, cfg: FinetuneConfig):
    from torchvision.transforms import v2

    if not cfg.augment:
        return eval_transform(spec)
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(spec.resolution, scale=(cfg.crop_scale, 1.0), antialias=True),
        SafeRandAugment(cfg.randaug_ops, cfg.randaug_magnitude, cfg.colour_augment),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
        v2.RandomErasing(p=cfg.erase_p),
    ])


def sample_seed(seed: int, epoch: int, step: int, row: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}:{step}:{row}".encode(), digest_size=8).digest(), "little") >> 1


class PairImages(Dataset):
    """Items are (row, seed): the seed fixes that sample's augmentation (None: the validation transform)."""

    def __init__(self, pairs: Pairs, train_tf, eval_tf, resolution: int) -> None:
        self.pairs, self.train_tf, self.eval_tf, self.resolution = pairs, train_tf, eval_tf, resolution

    def __len__(self) -> int:
        return len(self.pairs.paths)

    def __getitem__(self, item: tuple[int, int | None]):
        from retriever.images import load_image

        row, seed = item
        y = torch.from_numpy(np.array(self.pairs.targets[row], np.float32))  # a copy: the targets are memory-mapped read-only
        try:
            image = load_image(self.pairs.paths[row])
        except (UnpromptError, OSError, MemoryError):
            return torch.zeros(3, self.resolution, self.resolution), y, False
        if seed is None:
            return self.eval_tf(image), y, True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.train_tf(image), y, True


def _collate(items):
    xs, ys, ok = zip(*items)
    return torch.stack(xs), torch.stack(ys), torch.tensor(ok, dtype=torch.float32)


def epoch_batches(train_rows: np.ndarray, cfg: FinetuneConfig, epoch: int, start_step: int, rank: int,
                  world: int) -> list[list[tuple[int, int]]]:
    """This process's share of each global batch of the epoch from ``start_step`` on (the last partial
    batch is dropped so that every process takes equal steps)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = train_rows[torch.randperm(len(train_rows), generator=gen).numpy()]
    per = cfg.batch_size // world
    out = []
    for step in range(start_step, len(train_rows) // cfg.batch_size):
        rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size][rank * per : (rank + 1) * per]
        out.append([(int(r), sample_seed(cfg.seed, epoch, step, int(r))) for r in rows])
    return out


# --------------------------------------------------------------------------------------------- model


class TowerHead(nn.Module):
    """tower -> unit features -> head (the head reads unit features, as heads over frozen features do)."""

    def __init__(self, tower: Tower, head: nn.Module) -> None:
        super().__init__()
        self.tower, self.head = tower, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.tower(x).float()
        return self.head(f / f.norm(dim=1, keepdim=True).clamp_min(1e-12))


def cosine_loss(pred: torch.Tensor, target: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cosine over the batch; unreadable images (ok = 0) count zero. Divided by the batch size,
    not the readable count, so that DDP's gradient average equals the single-process global mean."""
    loss = 1 - nn.functional.cosine_similarity(pred.float(), target.float())
    return (loss * ok).sum() / len(ok)


BATCHNORMS = ("frozen", "train")


def set_phase(model: TowerHead, phase: str, batchnorm: str = "frozen") -> None:
    """``lp``: tower frozen (its normalisation statistics too), head trains; ``ft``: everything trains, and with
    ``batchnorm="frozen"`` the tower's BatchNorm layers stay in eval mode: they normalise with the pretrained
    running statistics and do not update them (their affine weights still train). A small batch's statistics
    are a noisy stand-in for the pretrained ones: in train mode the features the head was fitted on shift at
    the first FT step (on the EfficientNet-Lite2 bench the training loss of a converged probe rose tenfold)."""
    if batchnorm not in BATCHNORMS:
        raise UnpromptError(f"batchnorm must be one of {', '.join(BATCHNORMS)}, not {batchnorm!r}")
    frozen = phase == "lp"
    for p in model.tower.parameters():
        p.requires_grad_(not frozen)
    model.train()
    if frozen:
        model.tower.eval()
    elif batchnorm == "frozen":
        for m in model.tower.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def param_groups(model: TowerHead, phase: str, cfg: FinetuneConfig) -> list[dict]:
    """LP: the head alone at ``head_lr``. FT: one group per (tower depth, decay or not), each at
    ``lr * layer_decay ** (levels above it)``; the head is the level above the tower's top."""
    def decays(name: str, p: torch.Tensor) -> bool:
        return p.ndim > 1 and "embedding" not in name

    head = [(f"head.{n}", p) for n, p in model.head.named_parameters()]
    if phase == "lp":
        return [{"params": [p for _, p in head], "lr": cfg.head_lr, "weight_decay": cfg.weight_decay,
                 "depth": model.tower.depths, "lr_scale": 1.0, "names": [n for n, _ in head]}]
    top = model.tower.depths
    groups: dict[tuple[int, bool], dict] = {}
    named = [(f"tower.{n}", model.tower.depth(n), p) for n, p in model.tower.named_parameters()]
    named += [(n, top, p) for n, p in head]
    for name, depth, p in named:
        key = (depth, decays(name, p))
        scale = cfg.layer_decay ** (top - depth)
        group = groups.setdefault(key, {"params": [], "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay
                                        if key[1] else 0.0, "depth": depth, "lr_scale": scale, "names": []})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(model: TowerHead, phase: str, cfg: FinetuneConfig, total_steps: int):
    """AdamW over the phase's groups, and a linear warm-up then cosine decay of every group's rate."""
    groups = param_groups(model, phase, cfg)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    warmup = min(cfg.warmup_steps, max(1, total_steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), groups


def make_ema(model: nn.Module, decay: float):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# --------------------------------------------------------------------------------------- distributed


def dist_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) when run plainly."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _init_distributed(device: torch.device, world: int) -> None:
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)


def _all_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------- the run


@dataclass
class FinetuneResult:
    head_path: Path
    best_val_loss: float
    history: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def _signature(cfg: FinetuneConfig, spec: TowerSpec, pairs: Pairs) -> str:
    blob = json.dumps({"config": {k: v for k, v in asdict(cfg).items() if k not in ("workers", "checkpoint_every")},
                       "tower": [spec.kind, spec.model, spec.resolution, spec.base_model_id],
                       "pairs": pairs.digest or hashlib.sha256("\n".join(pairs.prompts).encode()).hexdigest(),
                       "rows": len(pairs.paths)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def _validate(model: nn.Module, loader_for: Callable[[list], DataLoader], rows: np.ndarray, device: torch.device,
              dtype: torch.dtype, rank: int, world: int) -> float:
    mine = [[(int(r), None) for r in rows[rank::world][s : s + 64]] for s in range(0, len(rows[rank::world]), 64)]
    total, count = 0.0, 0.0
    model.eval()
    with torch.no_grad(), training_autocast(device, dtype):
        for x, y, ok in loader_for(mine):
            loss = 1 - nn.functional.cosine_similarity(model(x.to(device)).float(), y.to(device))
            total += float((loss.cpu() * ok).sum())
            count += float(ok.sum())
    total, count = _all_sum([total, count], world)
    return total / count if count else float("nan")


def finetune(pairs: Pairs, spec: TowerSpec, cfg: FinetuneConfig, out: str | Path, run_dir: str | Path,
             init_head: nn.Module | None = None, meta: dict[str, Any] | None = None, progress: bool = False,
             on_step: Callable[[int, int], None] | None = None) -> FinetuneResult:
    """Train (or resume training) ``spec``'s tower and a head on ``pairs``; save the best EMA as ``out`` and
    ``out``'s tower file. ``on_step(epoch, step)`` is called after every optimizer step."""
    rank, world = dist_env()
    if not cfg.lr:
        cfg = replace(cfg, lr=FT_LR.get(spec.kind, FT_LR["open_clip"]))
    device = training_device()
    _init_distributed(device, world)
    if cfg.batch_size % world:
        raise UnpromptError(f"--batch-size {cfg.batch_size} must divide evenly across {world} processes")
    dtype = training_dtype(device, cfg.precision)
    train_rows, val_rows = split_by_prompt(pairs.prompts, cfg.val_fraction, cfg.seed)
    steps_per_epoch = len(train_rows) // cfg.batch_size
    if steps_per_epoch < 1:
        raise UnpromptError(f"{len(train_rows)} training pairs cannot fill one batch of {cfg.batch_size}: "
                            "lower --batch-size or add pairs")
    if not len(val_rows):
        raise UnpromptError("no validation prompts: raise --val-fraction or add prompts")
    missing = sum(not Path(p).is_file() for p in pairs.paths)
    if missing == len(pairs.paths):
        raise UnpromptError(f"none of the {missing} images of the pairs exist (image paths are relative to the table)")
    if missing and rank == 0:
        print(f"unprompt: warning: {missing} of {len(pairs.paths)} images are missing; they count as unreadable and "
              "are left out of the loss", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    tower = build_tower(spec)
    head = init_head if init_head is not None else make_head(tower.dim, pairs.targets.shape[1], cfg.hidden)
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    if first.in_features != tower.dim:
        raise UnpromptError(f"the initial head reads {first.in_features}-d features; the tower gives {tower.dim}-d")
    model = TowerHead(tower, head).to(device)
    if device.type == "cuda" and cfg.grad_checkpointing:
        tower.set_grad_checkpointing(True)
    ema = make_ema(model, cfg.ema_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)
    workers = cfg.workers if cfg.workers >= 0 else min(8, max(0, (os.cpu_count() or 1) // max(1, world) - 1))
    dataset = PairImages(pairs, train_transform(spec, cfg), eval_transform(spec), spec.resolution)

    def loader_for(batches: list) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                          pin_memory=device.type == "cuda", persistent_workers=False)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, signature = run_dir / CHECKPOINT, _signature(cfg, spec, pairs)
    epoch, step, best, history, resumed = 0, 0, math.inf, [], None
    if ckpt_path.is_file():
        resumed = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if resumed.get("signature") != signature:
            raise UnpromptError(f"{ckpt_path} belongs to another run (other pairs, tower or knobs): give another "
                                "--run-dir, or delete it to start again")
        model.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
        scaler.load_state_dict(resumed["scaler"])
        epoch, step, best, history = resumed["epoch"], resumed["step"], resumed["best"], resumed["history"]
        torch.set_rng_state(resumed["rng"]["torch"])
        np.random.set_state(resumed["rng"]["numpy"])
        random.setstate(resumed["rng"]["python"])
        if progress:
            print(f"resuming {run_dir} at epoch {epoch + 1}, step {step}", file=sys.stderr)
    total = cfg.lp_epochs + cfg.epochs
    phase, opt, sched, wrapped = None, None, None, model
    out = Path(out)
    if not history and (epoch, step) == (0, 0):  # the start (the LP head on the pretrained tower), epoch 0
        val = _validate(model, loader_for, val_rows, device, dtype, rank, world)
        history.append({"epoch": 0, "phase": "start", "train_loss": None, "val_loss": val, "val_cosine": 1 - val,
                        "seconds": 0.0})
        if progress and rank == 0:
            print(f"finetune start: EMA validation loss {val:.4f} (before any step)", file=sys.stderr)
        if math.isfinite(val) and init_head is not None:  # a given head is a model worth keeping: FT must beat it
            best = val
            if rank == 0:
                _save_outputs(out, ema.module, spec, pairs, cfg, history, meta or {})
    while epoch < total:
        if phase != ("lp" if epoch < cfg.lp_epochs else "ft"):
            phase = "lp" if epoch < cfg.lp_epochs else "ft"
            set_phase(model, phase, cfg.batchnorm)
            steps = steps_per_epoch * (cfg.lp_epochs if phase == "lp" else cfg.epochs)
            opt, sched, _ = make_optimizer(model, phase, cfg, steps)
            if resumed is not None and resumed.get("phase") == phase:
                opt.load_state_dict(resumed["optimizer"])
                sched.load_state_dict(resumed["scheduler"])
            if world > 1:
                from torch.nn.parallel import DistributedDataParallel

                wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        set_phase(model, phase, cfg.batchnorm)

        def checkpoint(at_epoch: int, at_step: int) -> None:
            if rank == 0:
                _save_checkpoint(ckpt_path, {
                    "signature": signature, "epoch": at_epoch, "step": at_step, "phase": phase, "best": best,
                    "history": history, "model": model.state_dict(), "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate()}})
            _barrier(world)

        t0, losses = time.perf_counter(), []
        batches = epoch_batches(train_rows, cfg, epoch, step, rank, world)
        from tqdm.auto import tqdm

        for x, y, ok in tqdm(loader_for(batches), total=len(batches), desc=f"epoch {epoch + 1} ({phase})",
                             unit="step", leave=False, disable=not progress or rank != 0):
            torch.manual_seed(sample_seed(cfg.seed, epoch, step, -1))  # dropout and the like, per step
            with training_autocast(device, dtype):
                pred = wrapped(x.to(device, non_blocking=True))
            loss = cosine_loss(pred, y.to(device), ok.to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            ema.update_parameters(model)
            losses.append(loss.item())
            step += 1
            if step < steps_per_epoch and step % cfg.checkpoint_every == 0:
                checkpoint(epoch, step)
            if on_step is not None:
                on_step(epoch, step)
        val = _validate(ema.module, loader_for, val_rows, device, dtype, rank, world)
        train_loss = _all_sum([sum(losses), len(losses)], world)
        improved = val < best - 1e-6
        history.append({"epoch": epoch + 1, "phase": phase, "train_loss": train_loss[0] / max(1, train_loss[1]),
                        "val_loss": val, "val_cosine": 1 - val, "seconds": round(time.perf_counter() - t0, 3)})
        if progress and rank == 0:
            print(f"finetune epoch {epoch + 1}/{total} ({phase}): train loss {history[-1]['train_loss']:.4f}, "
                  f"EMA validation loss {val:.4f}{' (best, saved)' if improved else ''}", file=sys.stderr)
        if improved:
            best = val
            if rank == 0:
                _save_outputs(out, ema.module, spec, pairs, cfg, history, meta or {})
        epoch, step = epoch + 1, 0
        checkpoint(epoch, 0)
        if not math.isfinite(val):  # diverged: more epochs from NaN weights cannot recover
            if rank == 0:
                kept = f"the best head so far ({best:.4f}) is kept" if math.isfinite(best) else "no head improved"
                print(f"finetune: validation loss is {val} after epoch {epoch}: training diverged, stopping; "
                      f"{kept}. Lower --lr, or raise --warmup-steps.", file=sys.stderr)
            break
    if not out.is_file() and rank == 0:  # resumed after the last epoch, or no epoch improved on nan
        _save_outputs(out, ema.module, spec, pairs, cfg, history, meta or {})
    _barrier(world)
    return FinetuneResult(out, best, history, torch.load(out, weights_only=True)["meta"] if out.is_file() else {})


def _save_outputs(out: Path, model: TowerHead, spec: TowerSpec, pairs: Pairs, cfg: FinetuneConfig,
                  history: list[dict], meta: dict) -> None:
    """The tower first, then the head that names it (a head file never points at a tower not yet written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tower = model.tower
    was = next(tower.parameters()).device
    tower_id = save_tower(tower_file(out), tower.cpu())
    tower.to(was)
    best = history[-1]  # the model being saved is the one validated last
    save_head(out, model.head.cpu(), {
        **meta, "feature_model_id": tower_id, "in_dim": tower.dim, "out_dim": int(pairs.targets.shape[1]),
        "hidden": cfg.hidden, "mode": "finetune", "tower": tower_file(out).name, "tower_base": spec.base_model_id,
        "config": asdict(cfg), "metrics": {"val_loss": best["val_loss"], "val_cosine": best["val_cosine"],
                                           "epoch": best["epoch"]}, "history": list(history)})
    model.head.to(was)


def finetune_regressor(profile, cfg: FinetuneConfig, pairs: str | Path, out: str | Path | None = None,
                       run_dir: str | Path | None = None, prompts: str | Path | None = None,
                       init_head: str | Path | None = None, image_column: str = "image",
                       prompt_column: str = "prompt", on_step: Callable[[int, int], None] | None = None
                       ) -> FinetuneResult:
    """The command's work: read the pairs, embed their prompts with the metric model (cached), start the head
    from a prompts-only head (``init_head``, or trained here from ``prompts``), fine-tune, save."""
    from retriever import __version__
    from retriever.encoders.minilm import sentence_encoder
    from retriever.evaluation.tables import read_pairs, read_prompts
    from retriever.files import check_output_file
    from retriever.heads.features import source_digest, text_matrix
    from retriever.heads.model import check_head, load_head_file
    from retriever.heads.towers import tower_for
    from retriever.paths import resolve_home_path

    rank, world = dist_env()
    path = Path(out) if out else resolve_home_path(f"heads/{profile.name}-finetuned.pt")
    if out and rank == 0:
        check_output_file(path, "--out")
    run_dir = Path(run_dir) if run_dir else path.with_name(path.stem + ".run")
    spec = tower_for(profile, cfg.tower, cfg.resolution or None)
    image_paths, texts = read_pairs(pairs, image_column, prompt_column)
    digest = source_digest(pairs)
    metric = sentence_encoder(profile.metric_model)
    for turn in (0, 1):  # rank 0 fills the shared cache first; the others then read it
        if (rank == 0) == (turn == 0):
            y = np.asarray(text_matrix(metric, texts, digest, "targets", "pair targets").open()[0], np.float32)
        _barrier(world)
    head, start = None, {}
    if init_head:
        head, head_meta = load_head_file(init_head)
        check_head(init_head, head_meta, {"feature_model_id": spec.base_model_id, "out_dim": metric.dim})
        start = {"init_head": str(init_head), "init_val_cosine": head_meta.get("metrics", {}).get("val_cosine")}
    elif prompts:
        from retriever.heads.config import TrainConfig
        from retriever.heads.train import _summary, train_head

        if spec.kind != "open_clip":
            raise UnpromptError("--prompts (a prompts-only start) needs an open_clip tower: its image features "
                                "share the space of its text features")
        from retriever.encoders import create_space

        space = create_space(profile.retrieve.space)
        prompt_texts = read_prompts(prompts, prompt_column)
        pdigest = source_digest(prompts)
        x = text_matrix(space, prompt_texts, pdigest, "text-features", "prompt features").open()[0]
        py = text_matrix(metric, prompt_texts, pdigest, "targets", "prompt targets").open()[0]
        result = train_head(x, py, TrainConfig(hidden=cfg.hidden, seed=cfg.seed), progress=rank == 0,
                            desc="prompts")
        head, start = result.head, {"prompts": _summary(result)}
    meta = {"target_model_id": metric.model_id, "profile": profile.name, "start": start,
            "sources": {"pairs": {"path": str(pairs), "sha256": digest, "rows": len(texts)}},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "unprompt_version": __version__}
    return finetune(Pairs(image_paths, texts, y, digest), spec, cfg, path, run_dir, init_head=head, meta=meta,
                    progress=True, on_step=on_step)
