"""`unprompt predict`: a prompt for each image."""

from __future__ import annotations

import argparse
import json
import time

from api.cli.common import command, err, positive_int
from retriever.errors import UnpromptError
from retriever.images import ImageLimits

LIMITS = ImageLimits()


def run(args: argparse.Namespace) -> int:
    from retriever.images import load_image
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    profile = load_profile(args.profile)
    interrogator = Interrogator.from_profile(profile)
    limits = ImageLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_aspect=LIMITS.max_aspect)
    failures = 0

    def fail(path: str, message: str) -> None:
        nonlocal failures
        failures += 1
        err(message)
        if args.json:
            print(json.dumps({"image": path, "error": message}), flush=True)

    for path in args.images:
        t0 = time.perf_counter()
        try:
            image = load_image(path, limits)
        except UnpromptError as exc:
            fail(path, str(exc))
            continue
        decode_ms = (time.perf_counter() - t0) * 1000
        try:
            result = interrogator.interrogate([image])[0]
        except MemoryError:
            fail(path, f"{path}: the image needs too much memory to process")
            continue
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


def register(sub) -> None:
    p = command(sub, "predict", run)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, WebP, GIF, TIFF, ...)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image: prompt, final embedding, stage embeddings, "
                        "top candidates with scores, prompt candidates, per-stage timings")
    p.add_argument("--top", type=positive_int, default=20, help="candidates to include with --json")
    p.add_argument("--no-embedding", action="store_true", help="leave embeddings out of --json output")
    p.add_argument("--max-pixels", type=positive_int, default=LIMITS.max_pixels,
                   help="refuse images with more pixels than this")
    p.add_argument("--max-bytes", type=positive_int, default=LIMITS.max_bytes, help="refuse larger files")
