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

Profiles: {profiles} (default {default}; set --profile or ${env}).
Indexes and caches live in $UNPROMPT_HOME (default ~/.cache/unprompt).
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


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
    report = build_index(manifest, encoder, Path(args.out), options)
    rec = report.record
    print(f"index {rec.name}: {rec.count} texts x {rec.dim}-d, {rec.factory} ({report.choice.reason})")
    print("embedded: " + ", ".join(f"{k}={v}" for k, v in report.embedded.items()))
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in report.timings_s.items()))
    print(f"written to {report.out}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unprompt",
        description="Recover the prompt that made an image (Stable Diffusion), by retrieval over "
                    "captions and prompt components.",
        epilog=EPILOG_MAIN.format(profiles=", ".join(builtin_profiles()), default=DEFAULT_PROFILE, env=PROFILE_ENV),
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "predict", help="print a prompt for each image", formatter_class=_Formatter,
        description="Interrogate images and print one prompt per image (TAB-separated with the path "
                    "when several are given). Bad files are reported on stderr and the rest still answered; "
                    "the exit status is 1 if any image failed.",
        epilog="examples:\n  unprompt predict cat.jpg\n  unprompt predict *.png --json --top 5\n"
               "  unprompt predict art.webp --profile kaggle",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, WebP, GIF, TIFF, ...)")
    _add_profile(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image: prompt, final embedding, stage embeddings, "
                        "top candidates with scores, prompt candidates, per-stage timings")
    p.add_argument("--top", type=int, default=20, help="candidates to include with --json")
    p.add_argument("--no-embedding", action="store_true", help="leave embeddings out of --json output")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse images with more pixels than this")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "setup", help="build the indexes a profile needs, if missing or stale", formatter_class=_Formatter,
        description="Build every index the profile names that has a manifest, when it is missing or its "
                    "manifest or model changed. Unchanged sources are not embedded again.",
        epilog="examples:\n  unprompt setup\n  UNPROMPT_HOME=/data/unprompt unprompt setup --profile lite",
    )
    _add_profile(p)
    p.add_argument("--force", action="store_true", help="rebuild even if the index looks current")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser(
        "build-index", help="build a FAISS index from a manifest", formatter_class=_Formatter,
        description="Read the manifest's sources (polars, lazily), normalise and deduplicate, embed with the "
                    "profile's retrieval text tower in resumable shards, choose and train a FAISS index from "
                    "the count and memory budget, and commit the index directory atomically.",
        epilog="examples:\n  unprompt build-index data_manifests/components.toml --out ~/.cache/unprompt/indexes/components-lite\n"
               "  unprompt build-index my_captions.toml --profile kaggle --out /data/captions-bigG --memory-budget 64",
    )
    p.add_argument("manifest", help="manifest file (TOML or YAML), or the name of one in data_manifests/")
    _add_profile(p)
    p.add_argument("--out", required=True, help="index directory to write (shards are kept inside for resume)")
    p.add_argument("--shard-size", type=int, default=8192, help="texts per embedding shard")
    p.add_argument("--memory-budget", type=float, default=4.0, help="GiB the index may take in memory")
    p.add_argument("--exact-max", type=int, default=1_000_000, help="largest count served by exact search")
    p.add_argument("--factory", default=None, help="FAISS factory string, overriding the automatic choice")
    p.add_argument("--pca", type=int, default=None, help="reduce dimensions with PCA before IVF-PQ")
    p.add_argument("--opq", action="store_true", help="rotate with OPQ before PQ")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_index)
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
