"""`unprompt train-regressor`: a thin front to retriever.heads.train."""

from __future__ import annotations

import argparse

from api.cli.common import bounded_float, bounded_int, command, positive_int
from retriever.errors import UnpromptError
from retriever.heads.config import TrainConfig

DEFAULTS = TrainConfig()


def run(args: argparse.Namespace) -> int:
    from retriever.heads.train import train_regressor
    from retriever.profile import load_profile

    if not (args.pairs or args.prompts):
        raise UnpromptError("give --prompts (text-only initialisation), --pairs (image, prompt), or both")
    config = TrainConfig(hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         val_fraction=args.val_fraction, patience=args.patience, seed=args.seed)
    path, meta = train_regressor(load_profile(args.profile), config, out=args.out, pairs=args.pairs,
                                 prompts=args.prompts, image_column=args.image_column, prompt_column=args.prompt_column)
    for stage, m in meta["stages"].items():
        print(f"{stage}: {m['n_train']} train / {m['n_val']} validation rows, best validation cosine "
              f"{m['val_cosine']:.4f} after {m['epochs']} epochs")
    print(f"head saved to {path} ({meta['mode']})")
    return 0


def register(sub) -> None:
    p = command(sub, "train-regressor", run)
    p.add_argument("--prompts", help="text file (one prompt a line) or table with a prompt column: trains CLIP text "
                                     "-> MiniLM first (the initialisation)")
    p.add_argument("--pairs", help="CSV/parquet/JSONL with image paths (relative to the file) and prompts, e.g. "
                                   "DiffusionDB images with their prompts: fine-tunes on image features")
    p.add_argument("--image-column", default="image")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--out", default=None, help="head file (default: the profile's regress.head under $UNPROMPT_HOME)")
    p.add_argument("--hidden", type=bounded_int(0, 65536), default=DEFAULTS.hidden, help="hidden width of a 2-layer MLP head (0 = linear)")
    p.add_argument("--epochs", type=bounded_int(1, 100_000), default=DEFAULTS.epochs)
    p.add_argument("--batch-size", type=bounded_int(1, 1 << 20), default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=bounded_float(0, 10, lo_open=True), default=DEFAULTS.lr, help="learning rate (0 to 10)")
    p.add_argument("--val-fraction", type=bounded_float(0, 0.9), default=DEFAULTS.val_fraction,
                   help="share of rows held out for validation (0 to 0.9)")
    p.add_argument("--patience", type=positive_int, default=DEFAULTS.patience,
                   help="epochs without validation gain before stopping")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=DEFAULTS.seed)
