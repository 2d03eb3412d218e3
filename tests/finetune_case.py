"""A tiny fine-tuning case: solid-colour images whose targets are a fixed linear map of their colour (so
held-out prompts are learnable), a tiny random open_clip tower, a few steps. The tests import it and run
``run_case`` in forked processes (kill -9, DDP); it also runs as a script, under torchrun too:

usage: python -m torch.distributed.run --standalone --nproc-per-node 2 finetune_case.py ROOT RUN_DIR OUT [EPOCH:STEP]
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import TINY_CLIP_CONFIG  # noqa: E402

N_PROMPTS, PER_PROMPT = 16, 2


def make_case(root: Path):
    """Write the images and a tiny checkpoint under root (once); return (pairs, spec, config)."""
    import torch
    from PIL import Image

    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    from retriever.heads.config import FinetuneConfig
    from retriever.heads.finetune import Pairs
    from retriever.heads.towers import TowerSpec

    root.mkdir(parents=True, exist_ok=True)
    name = "unprompt-tiny-ft"
    config = root / f"{name}.json"
    checkpoint = root / f"{name}.pt"
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (N_PROMPTS, 3))
    w = rng.standard_normal((4, 384)).astype(np.float32)
    feats = np.c_[colours / 255.0 - 0.5, np.ones(N_PROMPTS)].astype(np.float32)
    targets = feats @ w
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    paths, prompts, ys = [], [], []
    for i, c in enumerate(colours):
        for k in range(PER_PROMPT):
            path = root / f"img-{i}-{k}.png"
            if not path.is_file():
                pixels = np.clip(np.full((40, 40, 3), c) + rng.integers(-8, 9, (40, 40, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths.append(path)
            prompts.append(f"prompt {i}")
            ys.append(targets[i])
    if not checkpoint.is_file():
        config.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(config)
        torch.manual_seed(0)
        torch.save({"state_dict": open_clip.create_model(name).state_dict()}, checkpoint)
    spec = TowerSpec("open_clip", name, 32, pretrained=str(checkpoint), model_config=TINY_CLIP_CONFIG)
    cfg = FinetuneConfig(lp_epochs=1, epochs=2, batch_size=4, head_lr=3e-2, lr=3e-3, layer_decay=0.7,
                         warmup_steps=1, ema_decay=0.5, val_fraction=0.25, workers=0, checkpoint_every=1)
    return Pairs(paths, prompts, np.stack(ys)), spec, cfg


def run_case(rank: int, root: Path, run_dir: Path, out: Path, kill: tuple[int, int] | None = None,
             world: int = 1, port: int = 0) -> None:
    """One process of the case (``rank`` of ``world``, a gloo group on ``port``); kill -9 itself after step
    ``kill`` = (epoch, step) when given."""
    import torch

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    from retriever.heads.finetune import finetune

    def on_step(epoch: int, step: int) -> None:
        if (epoch, step) == kill:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9, mid-epoch, after that step's checkpoint

    pairs, spec, cfg = make_case(root)
    finetune(pairs, spec, cfg, out, run_dir, on_step=on_step)


if __name__ == "__main__":
    run_case(int(os.environ.get("RANK", "0")), Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
             tuple(int(v) for v in sys.argv[4].split(":")) if len(sys.argv) > 4 else None)
