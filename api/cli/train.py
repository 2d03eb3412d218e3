"""`unprompt train-regressor`: a thin front to retriever.heads.train (heads over frozen features) and
retriever.heads.finetune (``--finetune``: an image tower and its head trained end to end)."""

from __future__ import annotations

import argparse

from api.cli.common import bounded_float, bounded_int, command, positive_int
from retriever.errors import UnpromptError
from retriever.heads.config import FT_LR, FinetuneConfig, TrainConfig

DEFAULTS = TrainConfig()
FT = FinetuneConfig()
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BATCHNORMS = ("frozen", "train")  # retriever.heads.finetune.BATCHNORMS (not imported here: it loads torch)


def _pick(value, head_default, finetune_default, finetune: bool):
    return value if value is not None else (finetune_default if finetune else head_default)


def run(args: argparse.Namespace) -> int:
    from retriever.profile import load_profile

    if args.finetune:
        return _run_finetune(args, load_profile(args.profile))
    from retriever.heads.train import train_regressor

    if not (args.pairs or args.prompts):
        raise UnpromptError("give --prompts (text-only initialisation), --pairs (image, prompt), or both")
    config = TrainConfig(hidden=args.hidden, epochs=_pick(args.epochs, DEFAULTS.epochs, 0, False),
                         batch_size=_pick(args.batch_size, DEFAULTS.batch_size, 0, False),
                         lr=_pick(args.lr, DEFAULTS.lr, 0, False), val_fraction=args.val_fraction,
                         patience=args.patience, seed=args.seed)
    path, meta = train_regressor(load_profile(args.profile), config, out=args.out, pairs=args.pairs,
                                 prompts=args.prompts, image_column=args.image_column, prompt_column=args.prompt_column)
    for stage, m in meta["stages"].items():
        print(f"{stage}: {m['n_train']} train / {m['n_val']} validation rows, best validation cosine "
              f"{m['val_cosine']:.4f} after {m['epochs']} epochs")
    print(f"head saved to {path} ({meta['mode']})")
    return 0


def _run_finetune(args: argparse.Namespace, profile) -> int:
    from retriever.heads.finetune import dist_env, finetune_regressor

    if not args.pairs:
        raise UnpromptError("--finetune trains on (image, prompt) pairs: give --pairs (e.g. from generate-pairs)")
    if not 0 < args.val_fraction < 1:
        raise UnpromptError("--val-fraction must be between 0 and 1 with --finetune (validation is by prompt)")
    checks = [(args.resolution == 0 or args.resolution >= 16, "--resolution must be 0 (the tower's) or at least 16"),
              (args.lp_epochs >= 0, "--lp-epochs must be 0 or more"),
              (0 < args.layer_decay <= 1, "--layer-decay must be in (0, 1]"),
              (0 <= args.ema_decay < 1, "--ema-decay must be in [0, 1)"),
              (args.head_lr > 0 and (args.lr is None or args.lr > 0), "learning rates must be positive"),
              (args.warmup_steps >= 0 and args.weight_decay >= 0, "--warmup-steps and --weight-decay must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise UnpromptError(message)
    cfg = FinetuneConfig(
        tower=args.tower, resolution=args.resolution, hidden=args.hidden, lp_epochs=args.lp_epochs,
        epochs=_pick(args.epochs, 0, FT.epochs, True), batch_size=_pick(args.batch_size, 0, FT.batch_size, True),
        head_lr=args.head_lr, lr=_pick(args.lr, 0, FT.lr, True), layer_decay=args.layer_decay,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
        val_fraction=args.val_fraction, seed=args.seed, precision=args.precision,
        grad_checkpointing=not args.no_grad_checkpointing, augment=not args.no_augment,
        colour_augment=not args.no_colour_augment, batchnorm=args.batchnorm, workers=args.workers,
        checkpoint_every=args.checkpoint_every)
    result = finetune_regressor(profile, cfg, args.pairs, out=args.out, run_dir=args.run_dir, prompts=args.prompts,
                                init_head=args.init_head, image_column=args.image_column,
                                prompt_column=args.prompt_column)
    if dist_env()[0] == 0:
        best = result.meta.get("metrics", {})
        print(f"finetune: best EMA validation cosine {best.get('val_cosine', float('nan')):.4f} at epoch "
              f"{best.get('epoch')} of {len(result.history)}")
        print(f"head saved to {result.head_path} (finetune; tower weights beside it)")
    return 0


def register(sub) -> None:
    p = command(sub, "train-regressor", run)
    p.add_argument("--prompts", help="text file (one prompt a line) or table with a prompt column: trains CLIP text "
                                     "-> MiniLM first (the initialisation)")
    p.add_argument("--pairs", help="CSV/parquet/JSONL with image paths (relative to the file) and prompts, e.g. "
                                   "DiffusionDB images with their prompts: fine-tunes on image features")
    p.add_argument("--image-column", default="image")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--out", default=None, help="head file (default: the profile's regress.head under $UNPROMPT_HOME; "
                                               "with --finetune heads/<profile>-finetuned.pt)")
    p.add_argument("--hidden", type=bounded_int(0, 65536), default=DEFAULTS.hidden, help="hidden width of a 2-layer MLP head (0 = linear)")
    p.add_argument("--epochs", type=bounded_int(1, 100_000), default=None,
                   help=f"default {DEFAULTS.epochs}; with --finetune {FT.epochs} (after --lp-epochs)")
    p.add_argument("--batch-size", type=bounded_int(1, 1 << 20), default=None,
                   help=f"default {DEFAULTS.batch_size}; with --finetune {FT.batch_size} (the global batch)")
    p.add_argument("--lr", type=bounded_float(0, 10, lo_open=True), default=None,
                   help=f"(0 to 10) default {DEFAULTS.lr}; with --finetune the tower kind's: "
                        + ", ".join(f"{k} {v:g}" for k, v in FT_LR.items()))
    p.add_argument("--val-fraction", type=bounded_float(0, 0.9), default=DEFAULTS.val_fraction,
                   help="held out for validation, 0 to 0.9 (with --finetune: a fraction of the prompts)")
    p.add_argument("--patience", type=positive_int, default=DEFAULTS.patience,
                   help="epochs without validation gain before stopping")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=DEFAULTS.seed)
    ft = p.add_argument_group("fine-tuning (--finetune; run under torchrun for several GPUs)")
    ft.add_argument("--finetune", action="store_true",
                    help="train an image tower and its head end to end on --pairs (LP-FT, EMA, layer-wise decay)")
    ft.add_argument("--tower", default=FT.tower,
                    help="'retrieval' (the profile's open_clip tower, or lite's EfficientNet) or efficientnet-lite0/2")
    ft.add_argument("--resolution", type=bounded_int(0, 4096), default=FT.resolution, help="training and serving side (0: the tower's)")
    ft.add_argument("--init-head", default=None,
                    help="a prompts-only head (train-regressor --prompts) to start the head from")
    ft.add_argument("--lp-epochs", type=bounded_int(0, 100_000), default=FT.lp_epochs, help="epochs training the head on a frozen tower")
    ft.add_argument("--head-lr", type=bounded_float(0, 10, lo_open=True), default=FT.head_lr, help="learning rate of the LP phase")
    ft.add_argument("--layer-decay", type=bounded_float(0, 1, lo_open=True), default=FT.layer_decay,
                    help="each tower level below trains at this times the rate of the level above")
    ft.add_argument("--weight-decay", type=bounded_float(0, 10), default=FT.weight_decay)
    ft.add_argument("--warmup-steps", type=bounded_int(0, 10**9), default=FT.warmup_steps)
    ft.add_argument("--ema-decay", type=bounded_float(0, 0.999999), default=FT.ema_decay)
    ft.add_argument("--precision", choices=PRECISIONS, default=FT.precision, help="autocast on CUDA (the CPU runs fp32)")
    ft.add_argument("--no-grad-checkpointing", action="store_true", help="keep activations (CUDA checkpoints by default)")
    ft.add_argument("--no-augment", action="store_true",
                    help="no random resized crop, RandAugment (without posterize/solarize/equalize) or random erasing")
    ft.add_argument("--no-colour-augment", action="store_true",
                    help="keep RandAugment off brightness, colour and contrast (for prompts that hinge on colours)")
    ft.add_argument("--batchnorm", choices=BATCHNORMS, default=FT.batchnorm,
                    help="FT: 'frozen' keeps the pretrained BatchNorm statistics (small batches), 'train' "
                         "re-estimates them from each batch")
    ft.add_argument("--workers", type=bounded_int(-1, 256), default=FT.workers, help="image decoding processes (-1: automatic)")
    ft.add_argument("--run-dir", default=None, help="resumable checkpoints (default: beside the head, <head>.run)")
    ft.add_argument("--checkpoint-every", type=positive_int, default=FT.checkpoint_every,
                    help="steps between checkpoints (also at every epoch's end)")
    register_fit_ensemble(sub)


def run_fit_ensemble(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retriever.files import check_output_file
    from retriever.heads.ensemble import choose_weights, head_predictions, regress_section, with_regress
    from retriever.profile import load_profile

    if len(args.heads) < 2:
        raise UnpromptError("give at least two head files to weigh")
    profile = load_profile(args.profile)
    if args.write_profile:
        check_output_file(Path(args.write_profile), "--write-profile")
    predictions, targets = head_predictions(profile, args.heads, args.table, args.image_column, args.prompt_column)
    choice = choose_weights(predictions, targets)
    for head, cosine in zip(args.heads, choice.single):
        print(f"{head}: validation cosine {cosine:.4f}")
    print(f"plain average: {choice.uniform:.4f}; chosen weights {choice.weights}: {choice.cosine:.4f} "
          f"({len(targets)} images)")
    section = regress_section(args.heads, choice.weights, profile.regress.require_head)
    print(section, end="")
    if args.write_profile:
        from retriever.files import write_bytes_atomic

        text = with_regress(Path(profile.source).read_text(), section)
        write_bytes_atomic(Path(args.write_profile), text.encode())
        load_profile(args.write_profile)  # the written profile must load
        print(f"profile written to {args.write_profile}")
    return 0


def register_fit_ensemble(sub) -> None:
    p = command(sub, "fit-ensemble", run_fit_ensemble)
    p.add_argument("heads", nargs="+", help="head files (fine-tuned heads bring their tower)")
    p.add_argument("--table", required=True, help="held-out (image, prompt) pairs: CSV/parquet/JSONL")
    p.add_argument("--image-column", default="image")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--write-profile", default=None, help="write a copy of the profile with these heads and weights")
