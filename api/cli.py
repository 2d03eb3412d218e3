"""The `unprompt` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retriever.errors import UnpromptError  # noqa: E402
from retriever.profile import DEFAULT_PROFILE, PROFILE_ENV, builtin_profiles  # noqa: E402

EPILOG_MAIN = """\
examples:
  unprompt setup                              build the lite component index (once)
  unprompt predict photo.jpg                  print a prompt for an image
  unprompt predict a.png b.png --json         JSON lines: prompt, embedding, candidates, timings
  unprompt build-index data_manifests/components.toml --out ./my-index
  unprompt eval data_manifests/examples/eval.csv   per-stage scores and an HTML report
  unprompt score --truth truth.csv --predictions submission.csv
  unprompt serve --port 8000                  HTTP API, web page at /, docs at /docs

Profiles: {profiles} (default {default}; set --profile or ${env}).
Indexes and caches live in $UNPROMPT_HOME (default ~/.cache/unprompt).
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; shows a default only where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None,
                   help=f"built-in profile name or path to a .toml file (default: ${PROFILE_ENV} or {DEFAULT_PROFILE})")


def _err(msg: str) -> None:
    print(f"unprompt: error: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from retriever.images import load_image
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    profile = load_profile(args.profile)
    interrogator = Interrogator.from_profile(profile)
    failures = 0
    for path in args.images:
        t0 = time.perf_counter()
        try:
            image = load_image(path, max_pixels=args.max_pixels)
        except UnpromptError as exc:
            failures += 1
            _err(str(exc))
            if args.json:
                print(json.dumps({"image": path, "error": str(exc)}), flush=True)
            continue
        decode_ms = (time.perf_counter() - t0) * 1000
        result = interrogator.interrogate([image])[0]
        if args.json:
            out = {"image": path, **result.as_dict(embeddings=not args.no_embedding, top=args.top)}
            out["timings_ms"] = {"decode": round(decode_ms, 3), **out["timings_ms"],
                                 "total": round((time.perf_counter() - t0) * 1000, 3)}
            out["profile"] = profile.name
            print(json.dumps(out), flush=True)
        elif len(args.images) > 1:
            print(f"{path}\t{result.prompt}", flush=True)
        else:
            print(result.prompt, flush=True)
    return 1 if failures else 0


# ---------------------------------------------------------------- setup / build-index
def cmd_setup(args: argparse.Namespace) -> int:
    from index_build.setup import ensure_indexes
    from retriever.profile import load_profile

    profile = load_profile(args.profile)
    for r in ensure_indexes(profile, force=args.force):
        state = f"built in {r.seconds:.1f} s" if r.built else "up to date"
        print(f"index {r.name}: {r.count} texts, {state} ({r.path})")
    return 0


def cmd_build_index(args: argparse.Namespace) -> int:
    from index_build.build import BuildOptions, build_index
    from index_build.choose import GiB
    from index_build.manifest import load_manifest
    from retriever.encoders import create_space, text_tower
    from retriever.profile import load_profile

    profile = load_profile(args.profile)
    manifest = load_manifest(args.manifest)
    encoder = text_tower(create_space(profile.retrieve.space))
    options = BuildOptions(
        shard_size=args.shard_size, memory_budget=int(args.memory_budget * GiB), exact_max=args.exact_max,
        factory=args.factory, reduce_to=args.pca, opq=args.opq, progress=not args.quiet,
    )
    from index_build.setup import rerank_towers

    if args.ray is not None:
        from functools import partial

        from index_build.ray_runner import RayRunner
        from retriever.encoders import text_tower_for

        options.runner = RayRunner(partial(text_tower_for, profile.retrieve.space), actors=args.ray_actors,
                                   address=args.ray or None)
    report = build_index(manifest, encoder, Path(args.out), options, rerank_encoders=rerank_towers(profile))
    rec = report.record
    print(f"index {rec.name}: {rec.count} texts x {rec.dim}-d, {rec.factory} ({report.choice.reason})")
    print("embedded: " + ", ".join(f"{k}={v}" for k, v in report.embedded.items()))
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in report.timings_s.items()))
    print(f"written to {report.out}")
    return 0


# ---------------------------------------------------------------- train-regressor
def cmd_train_regressor(args: argparse.Namespace) -> int:
    from index_build.train_head import TrainConfig, cached_image_features, read_prompts, train_head
    from retriever.evaluation.run import read_pairs
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.paths import resolve_home_path
    from retriever.profile import load_profile
    from retriever.stages.regress import save_head

    profile = load_profile(args.profile)
    if not args.pairs and not args.prompts:
        raise UnpromptError("give --pairs FILE (image, prompt) or --prompts FILE (prompts only)")
    space = create_space(profile.retrieve.space)
    metric = sentence_encoder(profile.metric_model)
    if args.pairs:
        image_paths, prompts = read_pairs(args.pairs, args.image_column, args.prompt_column)
        features = cached_image_features(space, [str(p) for p in image_paths])
        mode = "pairs"
    else:
        if profile.retrieve.space.kind != "open_clip":
            raise UnpromptError("--prompts (text-only initialisation) needs a CLIP retrieval space")
        prompts = read_prompts(args.prompts, args.prompt_column)
        features = space.encode_text(prompts)
        mode = "prompts"
    targets = metric.encode_text(prompts)
    config = TrainConfig(hidden=args.hidden, epochs=args.epochs, lr=args.lr, val_fraction=args.val_fraction,
                         patience=args.patience, seed=args.seed)
    result = train_head(features, targets, config, progress=True)
    out = Path(args.out) if args.out else resolve_home_path(profile.regress.head or f"heads/{profile.name}.pt")
    meta = {
        "feature_model_id": space.model_id, "in_dim": int(features.shape[1]),
        "target_model_id": metric.model_id, "out_dim": int(targets.shape[1]), "hidden": args.hidden,
        "mode": mode, "profile": profile.name,
        "metrics": {"train_cosine": result.train_cosine, "val_cosine": result.val_cosine,
                    "epochs": result.epochs, "n_train": result.n_train, "n_val": result.n_val},
    }
    save_head(out, result.head, meta)
    print(f"head saved to {out}: {mode}, {result.n_train} train / {result.n_val} validation pairs, "
          f"validation cosine {result.val_cosine:.4f} after {result.epochs} epochs")
    return 0


# ---------------------------------------------------------------- score / submit / eval
def cmd_score(args: argparse.Namespace) -> int:
    from retriever.evaluation.run import score_files

    result = score_files(args.truth, args.predictions, args.bootstrap, args.seed)
    if args.json:
        print(json.dumps({**result.score.as_dict(), "per_image": dict(zip(result.ids, map(float, result.cosines)))}))
    else:
        s = result.score
        print(f"score {s.mean:.6f}  n={s.n}  95% CI [{s.ci_low:.6f}, {s.ci_high:.6f}]")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from retriever.evaluation.run import submit
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    interrogator = Interrogator.from_profile(load_profile(args.profile))
    n = submit(interrogator, args.images_dir, args.out)
    print(f"wrote {args.out}: {n} images x 384 rows")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from index_build.train_head import read_prompts
    from retriever.evaluation.report import write_report
    from retriever.evaluation.run import DEFAULT_CONSTANT_PROMPT, evaluate
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    profile = load_profile(args.profile)
    interrogator = Interrogator.from_profile(profile)
    train = read_prompts(args.train_prompts) if args.train_prompts else None
    result = evaluate(interrogator, args.manifest, train, args.constant_prompt or DEFAULT_CONSTANT_PROMPT,
                      args.bootstrap, args.seed)
    out = write_report(result, args.out or f"eval-{profile.name}")
    print(f"{'stage':<22}{'mean':>9}  95% CI")
    for name, s in [*result.stages.items(), *((f"baseline: {k}", v) for k, v in result.baselines.items())]:
        print(f"{name:<22}{s.mean:>9.4f}  [{s.ci_low:.4f}, {s.ci_high:.4f}]")
    print(f"report: {out / 'report.html'} (+ report.json, per_image.csv)")
    return 0


# ---------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.settings import Settings
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    overrides = {k: v for k, v in {"profile": args.profile, "host": args.host, "port": args.port}.items() if v is not None}
    if args.no_batching:
        overrides["batching"] = False
    settings = Settings(**overrides)
    # load before the server starts, so a missing index or weights is a clear error, not a failed start-up
    interrogator = Interrogator.from_profile(load_profile(settings.profile), checksums=settings.verify_checksums)
    app = create_app(settings, interrogator)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


# ---------------------------------------------------------------- parser
def _command(sub, name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str,
             examples: list[str], profile: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=description, formatter_class=_Formatter,
                       epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))
    if profile:
        _add_profile(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unprompt",
        description="Recover the prompt that made an image (Stable Diffusion), by retrieval over "
                    "captions and prompt components.",
        epilog=EPILOG_MAIN.format(profiles=", ".join(builtin_profiles()), default=DEFAULT_PROFILE, env=PROFILE_ENV),
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(
        sub, "predict", cmd_predict, "print a prompt for each image",
        "Interrogate images and print one prompt per image (TAB-separated with the path when several are given). "
        "Bad files are reported on stderr and the rest still answered; the exit status is 1 if any image failed.",
        ["unprompt predict cat.jpg", "unprompt predict *.png --json --top 5",
         "unprompt predict art.webp --profile kaggle"])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, WebP, GIF, TIFF, ...)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image: prompt, final embedding, stage embeddings, "
                        "top candidates with scores, prompt candidates, per-stage timings")
    p.add_argument("--top", type=int, default=20, help="candidates to include with --json")
    p.add_argument("--no-embedding", action="store_true", help="leave embeddings out of --json output")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse images with more pixels than this")

    p = _command(
        sub, "setup", cmd_setup, "build the indexes a profile needs, if missing or stale",
        "Build every index the profile names that has a manifest, when it is missing or its manifest or model "
        "changed. Unchanged sources are not embedded again.",
        ["unprompt setup", "UNPROMPT_HOME=/data/unprompt unprompt setup --profile lite"])
    p.add_argument("--force", action="store_true", help="rebuild even if the index looks current")

    p = _command(
        sub, "build-index", cmd_build_index, "build a FAISS index from a manifest",
        "Read the manifest's sources (polars, lazily), normalise and deduplicate, embed with the profile's "
        "retrieval text tower in resumable shards, choose and train a FAISS index from the count and memory "
        "budget, and commit the index directory atomically.",
        ["unprompt build-index data_manifests/components.toml --out ~/.cache/unprompt/indexes/components-lite",
         "unprompt build-index my_captions.toml --profile kaggle --out /data/captions-bigG --memory-budget 64"])
    p.add_argument("manifest", help="manifest file (TOML or YAML), or the name of one in data_manifests/")
    p.add_argument("--out", required=True, help="index directory to write (shards are kept inside for resume)")
    p.add_argument("--shard-size", type=int, default=8192, help="texts per embedding shard")
    p.add_argument("--memory-budget", type=float, default=4.0, help="GiB the index may take in memory")
    p.add_argument("--exact-max", type=int, default=1_000_000, help="largest count served by exact search")
    p.add_argument("--factory", default=None, help="FAISS factory string, overriding the automatic choice")
    p.add_argument("--pca", type=int, default=None, help="reduce dimensions with PCA before IVF-PQ")
    p.add_argument("--opq", action="store_true", help="rotate with OPQ before PQ")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="embed on Ray: a cluster address, or nothing for a local Ray instance")
    p.add_argument("--ray-actors", type=int, default=2, help="encoder actors (each loads the model once)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _command(
        sub, "train-regressor", cmd_train_regressor, "train the head that maps image features to MiniLM space",
        "Train a regressor head for the profile's retrieval space with a cosine loss, a validation split and early "
        "stopping. --pairs trains on (image, prompt) pairs (image features cached); --prompts fits CLIP text "
        "embeddings -> MiniLM from prompts alone, then serves on image embeddings. The head records its model ids "
        "and dimensions and is refused if they do not fit.",
        ["unprompt train-regressor --profile kaggle --pairs train.csv",
         "unprompt train-regressor --profile kaggle --prompts diffusiondb_prompts.parquet --out head.pt"])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pairs", help="CSV/parquet/JSONL with image paths (relative to the file) and prompts")
    src.add_argument("--prompts", help="text file (one prompt a line) or table with a prompt column")
    p.add_argument("--image-column", default="image")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--out", default=None, help="head file (default: the profile's regress.head under $UNPROMPT_HOME)")
    p.add_argument("--hidden", type=int, default=0, help="hidden width of a 2-layer MLP head (0 = linear)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=10, help="epochs without validation gain before stopping")
    p.add_argument("--seed", type=int, default=0)

    p = _command(
        sub, "score", cmd_score, "score predictions against ground truth on the Kaggle metric",
        "Mean cosine between all-MiniLM-L6-v2 embeddings of predicted and true prompts, with a bootstrap 95%% "
        "confidence interval. Ground truth: CSV/parquet with imgId,prompt. Predictions: imgId,prompt, or Kaggle's "
        "long format imgId_eId,val (384 rows per image). Mismatched or duplicate ids, wrong row counts and "
        "non-finite values are refused, naming the ids.",
        ["unprompt score --truth prompts.csv --predictions submission.csv",
         "unprompt score --truth prompts.parquet --predictions guesses.csv --json"], profile=False)
    p.add_argument("--truth", required=True, help="ground truth table: imgId,prompt")
    p.add_argument("--predictions", required=True, help="imgId,prompt or imgId_eId,val")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print mean, n, interval and per-image cosines as JSON")

    p = _command(
        sub, "submit", cmd_submit, "write a Kaggle submission for a folder of images",
        "Run the profile over every image in a folder and write Kaggle's long format: imgId_eId,val with image ids "
        "(file names without suffix) sorted, then _0 to _383.",
        ["unprompt submit images/ --out submission.csv",
         "unprompt submit /kaggle/input/images --profile kaggle --out submission.csv"])
    p.add_argument("images_dir", help="folder of images")
    p.add_argument("--out", default="submission.csv", help="CSV to write (atomically)")

    p = _command(
        sub, "eval", cmd_eval, "score every stage on (image, prompt) pairs and write a report",
        "Run the pipeline over a manifest of (image, prompt) pairs. Scores the retrieval-only prompt, the assembled "
        "prompt, the regressor, the final blend, a constant prompt and the mean training embedding; writes "
        "report.json, per_image.csv and report.html (plots, best and worst examples).",
        ["unprompt eval data_manifests/examples/eval.csv",
         "unprompt eval pairs.parquet --profile kaggle --train-prompts train.csv --out reports/kaggle"])
    p.add_argument("manifest", help="CSV/parquet with image (path, relative to the file) and prompt columns")
    p.add_argument("--out", default=None, help="report folder (default eval-<profile>)")
    p.add_argument("--train-prompts", default=None,
                   help="prompts for the mean-embedding baseline (default: leave-one-out over the manifest)")
    p.add_argument("--constant-prompt", default=None, help="prompt for the constant baseline")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)

    p = _command(
        sub, "serve", cmd_serve, "run the HTTP service",
        "Serve POST /v1/interrogate (and /v1/interrogate/batch, /v1/info, /healthz, /readyz, /metrics, /docs and a "
        "web page at /) with uvicorn. Models and indexes load once, at start-up. Other settings come from UNPROMPT_* "
        "environment variables: UNPROMPT_API_KEY, UNPROMPT_MAX_UPLOAD_BYTES, UNPROMPT_MAX_PIXELS, "
        "UNPROMPT_CORS_ORIGINS, UNPROMPT_MAX_BATCH_SIZE, UNPROMPT_MAX_WAIT_MS.",
        ["unprompt serve", "unprompt serve --host 0.0.0.0 --port 8080 --profile kaggle",
         "curl -F file=@cat.jpg http://127.0.0.1:8000/v1/interrogate"])
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (no micro-batching)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UnpromptError as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
