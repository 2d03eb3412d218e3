"""`unprompt predict`: a prompt for each image, in a stable shape whatever the number of images."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from api.cli.common import bounded_int, command, err, positive_int
from retriever.errors import UnpromptError
from retriever.files import safe_cell
from retriever.feed import DEFAULT_BATCH_SIZE
from retriever.images import ImageLimits, ImageRejected, list_images
from retriever.profile import MODES

LIMITS = ImageLimits()
FORMATS = ("text", "tsv", "csv", "jsonl")


def expand(inputs: list[str]) -> tuple[list[str], dict[str, str]]:
    """Files as given; a folder stands for its image files, sorted by name. A folder that cannot be listed (no
    permission, no images) is an error of its own: (paths, {folder: message}); the other inputs go on."""
    paths: list[str] = []
    errors: dict[str, str] = {}
    for item in inputs:
        if not Path(item).is_dir():
            paths.append(item)
            continue
        try:
            paths += [str(f) for f in list_images(item)]
        except ImageRejected as exc:
            errors[item] = str(exc)
        except OSError as exc:
            errors[item] = f"{item}: cannot list the folder ({exc.strerror or exc})"
    return paths, errors


class Writer:
    """One record per image, in input order: a failed image keeps its place (empty prompt, or its error)."""

    def __init__(self, stream: TextIO, fmt: str, with_embedding: bool, top: int) -> None:
        self.stream, self.fmt, self.with_embedding, self.top = stream, fmt, with_embedding, top
        # RFC 4180: CRLF between records, so a CR or LF inside a cell is always quoted; cells that a spreadsheet
        # would run as a formula get a leading apostrophe (retriever.files.safe_cell)
        self.csv = csv.writer(stream, lineterminator="\r\n") if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(["image", "prompt", "negative_prompt", "error"])

    def result(self, path: str, result, extra: dict) -> None:
        if self.fmt == "jsonl":
            self._line(json.dumps({"image": path, **result.as_dict(self.with_embedding, self.top), **extra}))
        elif self.csv:
            self.csv.writerow(map(safe_cell, [path, result.prompt, result.negative_prompt, ""]))
        else:
            self._line(f"{_one_line(path)}\t{_one_line(result.prompt)}" if self.fmt == "tsv" else _one_line(result.prompt))
        self.stream.flush()

    def failure(self, path: str, message: str) -> None:
        if self.fmt == "jsonl":
            self._line(json.dumps({"image": path, "error": message}))
        elif self.csv:
            self.csv.writerow(map(safe_cell, [path, "", "", message]))
        else:
            self._line(f"{_one_line(path)}\t" if self.fmt == "tsv" else "")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from retriever.feed import interrogate_files
    from retriever.files import atomic_write, check_output_file
    from retriever.pipeline import Interrogator

    fmt = "jsonl" if args.json else args.format
    out = check_output_file(args.out, "--out") if args.out else None
    paths, unlisted = expand(args.images)
    if not any(Path(p).is_file() for p in paths):  # nothing to answer: say so before any model loads
        named = [*unlisted.values(), *paths]
        raise UnpromptError("no image to read: " + "; ".join(named[:5]) + (" ..." if len(named) > 5 else ""))
    interrogator = Interrogator.load(args.profile)
    limits = ImageLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_aspect=LIMITS.max_aspect)
    failures = len(unlisted)
    for message in unlisted.values():
        err(message)
    with ExitStack() as stack:
        stream: TextIO = sys.stdout
        if out:
            tmp = stack.enter_context(atomic_write(out))
            stream = stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
        writer = Writer(stream, fmt, not args.no_embedding, args.top)
        for folder, message in unlisted.items():
            writer.failure(folder, message)
        answers = interrogate_files(interrogator, paths, args.batch_size, limits, args.mode, args.flavours,
                                    stages=fmt == "jsonl" and not args.no_embedding)
        for answer in tqdm(answers, total=len(paths), desc="predict", unit="img",
                           disable=None if len(paths) > 1 else True, file=sys.stderr):
            if answer.result is None:
                failures += 1
                err(answer.error or "")
                writer.failure(answer.path, answer.error or "")
                continue
            writer.result(answer.path, answer.result,
                          {"timings_ms": answer.timings_ms, "profile": interrogator.profile.name})
    return 1 if failures else 0


def register(sub) -> None:
    p = command(sub, "predict", run)
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files (PNG, JPEG, WebP, GIF, TIFF, ...) "
                                                                   "or folders of them")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="text: one prompt a line; tsv: path and prompt; csv: image,prompt,negative_prompt,error; "
                        "jsonl: one JSON object per image (prompt, alternatives, negative prompt, embeddings, "
                        "candidates, timings)")
    p.add_argument("--json", action="store_true", help="same as --format jsonl")
    p.add_argument("--out", default=None, help="write to this file (atomically) instead of standard output")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="fast: retrieval only; classic: subject, medium, artist, movement and a few flavours; "
                        "best: the full assembly (default); negative: print the negative prompt")
    p.add_argument("--flavours", type=bounded_int(0, 256), default=None, metavar="N",
                   help="most components the assembly may chain (default: the profile's)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images per model call (decoding runs ahead in threads); results do not depend on it")
    p.add_argument("--top", type=positive_int, default=20, help="candidates to include with jsonl")
    p.add_argument("--no-embedding", action="store_true", help="leave embeddings out of jsonl output")
    p.add_argument("--max-pixels", type=positive_int, default=LIMITS.max_pixels,
                   help="refuse images with more pixels than this")
    p.add_argument("--max-bytes", type=positive_int, default=LIMITS.max_bytes, help="refuse larger files")
