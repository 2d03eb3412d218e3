"""`unprompt generate-pairs`: a thin front to index_build.generate."""

from __future__ import annotations

import argparse

from api.cli.common import command, positive_int
from index_build.generate import GenerateOptions

DEFAULTS = GenerateOptions()


def run(args: argparse.Namespace) -> int:
    from index_build.generate import generate_pairs, generator_for, pipeline_id, read_prompt_source

    opts = GenerateOptions(model=args.model, steps=args.steps, guidance=args.guidance, seeds=args.seeds,
                           size=args.size, batch_size=args.batch_size, shard_size=args.shard_size, seed=args.seed)
    prompts = read_prompt_source(args.prompts, args.manifest, args.prompt_column, args.limit)
    runner = None
    if args.ray is not None:
        from functools import partial

        from index_build.ray_runner import RayRunner

        # placed as build-index places its encoder actors: one GPU each when the cluster's totals have GPUs
        runner = RayRunner({pipeline_id(opts): partial(generator_for, opts, str(args.out))},
                           actors=args.ray_actors, address=args.ray or None, num_gpus_per_actor=None,
                           role="pipeline")
    try:
        table = generate_pairs(prompts, args.out, opts, runner=runner, shard_index=args.shard_index,
                               num_shards=args.num_shards, progress=not args.quiet)
    finally:
        if runner is not None:
            runner.shutdown()
    import polars as pl

    n = pl.scan_parquet(table).select(pl.len()).collect().item()
    print(f"pairs table {table}: {n} images of {len(set(prompts))} prompts ({opts.seeds} seeds each, "
          f"{opts.steps} DPM-Solver++ steps)")
    return 0


def register(sub) -> None:
    p = command(sub, "generate-pairs", run, profile=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="text file (one prompt a line) or table with a prompt column")
    src.add_argument("--manifest", help="a build manifest: every text of its sources (DiffusionDB, COCO, ...)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--limit", type=int, default=0, help="the first N prompts only (0: all)")
    p.add_argument("--out", required=True, help="folder for the image cache and pairs.parquet (a rerun resumes)")
    p.add_argument("--model", default=DEFAULTS.model, help="diffusers Stable Diffusion repo id or a local folder")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help="DPM-Solver++ steps")
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance scale")
    p.add_argument("--seeds", type=positive_int, default=DEFAULTS.seeds, help="images per prompt")
    p.add_argument("--size", type=int, default=DEFAULTS.size, help="image side in pixels (0: the model's own)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--shard-size", type=positive_int, default=DEFAULTS.shard_size, help="images per shard (one job)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="base of the per-prompt seeds")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's share: shards i, i+n, i+2n, ...")
    p.add_argument("--num-shards", type=positive_int, default=1, help="machines sharing the output folder")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="generate on Ray actors (a GPU each where there are GPUs); no address: a local cluster")
    p.add_argument("--ray-actors", type=positive_int, default=2, help="pipeline actors (each loads the model once)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
