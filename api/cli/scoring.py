"""`unprompt score`, `submit` and `eval`: offline scoring on Kaggle's metric."""

from __future__ import annotations

import argparse
import json

from api.cli.common import bounded_int, command, positive_int
from retriever.evaluation.metric import DEFAULT_BOOTSTRAP, DEFAULT_SEED

MAX_BOOTSTRAP = 100_000  # resamples: far past where the interval stops moving; each costs n floats at once
MAX_SEED = 2**32 - 1  # numpy's seed range
from retriever.feed import DEFAULT_BATCH_SIZE


def run_score(args: argparse.Namespace) -> int:
    from retriever.evaluation.run import score_files

    result = score_files(args.truth, args.predictions, args.bootstrap, args.seed)
    if args.json:
        print(json.dumps({**result.score.as_dict(), "per_image": dict(zip(result.ids, map(float, result.cosines)))}))
    else:
        s = result.score
        print(f"score {s.mean:.6f}  n={s.n}  95% CI [{s.ci_low:.6f}, {s.ci_high:.6f}]")
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from retriever.evaluation.run import image_ids, submit
    from retriever.files import check_distinct_outputs, check_output_file
    from retriever.images import list_images
    from retriever.pipeline import Interrogator

    check_output_file(args.out, "--out")  # before the models load, not after every image
    if args.prompts_out:
        check_output_file(args.prompts_out, "--prompts-out")
        check_distinct_outputs({"--out": args.out, "--prompts-out": args.prompts_out})
    image_ids(list_images(args.images_dir))  # bad names refused before the models load
    n = submit(Interrogator.load(args.profile), args.images_dir, args.out, prompts_out=args.prompts_out,
               batch_size=args.batch_size, metadata=not args.no_metadata)
    print(f"wrote {args.out}: {n} images x 384 rows" + (f"; prompts in {args.prompts_out}" if args.prompts_out else ""))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from retriever.evaluation.report import write_report
    from retriever.evaluation.run import DEFAULT_CONSTANT_PROMPT, evaluate
    from retriever.evaluation.tables import read_pairs, read_prompts
    from retriever.files import check_output_dir
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    profile = load_profile(args.profile)
    out = check_output_dir(args.out or f"eval-{profile.name}", "--out")
    read_pairs(args.table)  # a bad table is refused before the models load
    if args.dev_table:
        read_pairs(args.dev_table)
    train = read_prompts(args.train_prompts) if args.train_prompts else None
    result = evaluate(Interrogator.from_profile(profile), args.table, train,
                      args.constant_prompt or DEFAULT_CONSTANT_PROMPT, args.bootstrap, args.seed,
                      batch_size=args.batch_size, dev_table=args.dev_table)
    write_report(result, out)
    print(f"{'stage':<22}{'mean':>9}  95% CI")
    for name, s in [*result.stages.items(), *((f"baseline: {k}", v) for k, v in result.baselines.items())]:
        print(f"{name:<22}{s.mean:>9.4f}  [{s.ci_low:.4f}, {s.ci_high:.4f}]")
    print(f"report: {out / 'report.html'} (+ report.json, per_image.csv)")
    return 0


def _add_batch_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images per model call (decoding runs ahead in threads); results do not depend on it")


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=bounded_int(0, MAX_BOOTSTRAP), default=DEFAULT_BOOTSTRAP,
                   help=f"bootstrap resamples for the interval (0 to {MAX_BOOTSTRAP}; 0: no interval)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=DEFAULT_SEED,
                   help="seed of the bootstrap (0 to 2**32-1)")


def register(sub) -> None:
    p = command(sub, "score", run_score, profile=False)
    p.add_argument("--truth", required=True,
                   help="ground truth: imgId,prompt, or Kaggle's long format imgId_eId,val (sample_submission.csv)")
    p.add_argument("--predictions", required=True, help="imgId,prompt or imgId_eId,val")
    _add_bootstrap(p)
    p.add_argument("--json", action="store_true", help="print mean, n, interval and per-image cosines as JSON")

    p = command(sub, "submit", run_submit)
    p.add_argument("images_dir", help="folder of images")
    p.add_argument("--out", default="submission.csv", help="CSV to write (atomically)")
    p.add_argument("--prompts-out", default=None, help="also write imgId,prompt for every image to this CSV")
    p.add_argument("--no-metadata", action="store_true",
                   help="interrogate every image, even one whose file records its prompt (by default the recorded "
                        "prompt's embedding is submitted for it)")
    _add_batch_size(p)

    p = command(sub, "eval", run_eval)
    p.add_argument("table", help="CSV/parquet with image (path, relative to the file) and prompt columns")
    p.add_argument("--out", default=None, help="report folder (default eval-<profile>)")
    p.add_argument("--train-prompts", default=None,
                   help="prompts for the mean-embedding baseline (default: leave-one-out over the table)")
    p.add_argument("--constant-prompt", default=None, help="prompt for the constant baseline")
    p.add_argument("--dev-table", default=None,
                   help="table whose prompts choose the best single prior prompt, scored as a baseline on TABLE "
                        "(e.g. the dev half for the held-out half; its images are not read)")
    _add_batch_size(p)
    _add_bootstrap(p)
