"""Training knobs of a regressor head (light: the command line reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    hidden: int = 0  # hidden width of a 2-layer MLP head (0 = linear)
    epochs: int = 200
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    patience: int = 10  # epochs without validation gain before stopping
    seed: int = 0
    finetune_lr_scale: float = 0.3  # pairs fine-tuning after a prompts-only start runs at lr times this
