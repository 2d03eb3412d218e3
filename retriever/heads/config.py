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


# FT learning rates by tower kind: CLIP ViTs are fine-tuned gently (the Kaggle teams' 1e-5 .. 1e-4); the
# EfficientNet-Lite convnets with frozen BatchNorm statistics want more (bench/finetune_real.py: at 1e-4 the
# fine-tuned Lite2 stayed below its frozen-feature head, at 1e-3 it passed it)
FT_LR = {"open_clip": 3e-5, "efficientnet": 1e-3}


@dataclass
class FinetuneConfig:
    """Knobs of ``train-regressor --finetune`` (an image tower and its head trained end to end)."""

    tower: str = "retrieval"  # the profile's retrieval tower, or an EfficientNet-Lite by name
    resolution: int = 0  # training and serving side in pixels (0: the tower's own)
    hidden: int = 0
    lp_epochs: int = 1  # LP: epochs training the head alone on the frozen tower
    epochs: int = 10  # FT: epochs training tower and head
    batch_size: int = 64  # the global batch (split across DDP processes)
    head_lr: float = 1e-3  # LP learning rate
    lr: float = 0.0  # FT learning rate of the head and the top of the tower (0: the tower kind's, FT_LR)
    layer_decay: float = 0.75  # each level down the tower trains at this times the level above's rate
    weight_decay: float = 0.05
    warmup_steps: int = 100
    ema_decay: float = 0.999
    val_fraction: float = 0.1  # of the prompts (a prompt's every image lands on the same side)
    seed: int = 0
    precision: str = "auto"  # autocast on CUDA: auto (bf16 where supported, else fp16), bf16, fp16, fp32
    grad_checkpointing: bool = True  # on CUDA: recompute activations in the backward pass
    batchnorm: str = "frozen"  # FT: "frozen" keeps BatchNorm running statistics (eval mode; affine trains), "train"
    # re-estimates them from each batch (only sound with large per-process batches)
    augment: bool = True  # random resized crop, RandAugment (no posterize/solarize/equalize), random erasing
    colour_augment: bool = True  # RandAugment's colour ops too (brightness, colour, contrast, autocontrast), as
    # the 3rd place kept them; off when the prompts hinge on colours (on the renders bench it made no clear odds)
    randaug_ops: int = 2
    randaug_magnitude: int = 9
    erase_p: float = 0.25
    crop_scale: float = 0.5  # the smallest crop kept by random resized crop, as a fraction of the area
    workers: int = -1  # image decoding processes (-1: as many as the CPUs allow, up to 8; 0: in this process)
    checkpoint_every: int = 200  # steps between resumable checkpoints (also at every epoch's end)
