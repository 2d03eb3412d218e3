"""`unprompt predict`: a prompt for each image, in a stable shape whatever the number of images."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from api.cli.common import bounded_int, command, err, positive_int, require_stdout
from retriever.errors import UnpromptError
from retriever.files import printable, safe_cell
from retriever.feed import DEFAULT_BATCH_SIZE
from retriever.images import ImageLimits, ImageRejected, is_listed_image, list_images
from retriever.profile import MODES

LIMITS = ImageLimits()
FORMATS = ("text", "tsv", "csv", "jsonl")
SIDECARS = ("txt", "json")


def expand(inputs: list[str], recursive: bool = False) -> tuple[list[str], dict[str, str]]:
    """Files as given; a folder stands for its image files, sorted by name (with ``recursive``, those of
    every folder below it too, each folder's files sorted by path). Subfolders left out are named on stderr.
    A folder that cannot be listed (no permission, no images) is an error of its own: (paths, {folder:
    message}); the other inputs go on."""
    out: list[str] = []
    errors: dict[str, str] = {}
    for item in inputs:
        if not Path(item).is_dir():
            out.append(item)
            continue
        try:
            files, skipped = walk_images(Path(item), recursive)
        except ImageRejected as exc:
            errors[item] = str(exc)
            continue
        except OSError as exc:
            errors[item] = f"{item}: cannot list the folder ({exc.strerror or exc})"
            continue
        if skipped:
            print(f"unprompt: note: {printable(item)}: {skipped} subfolder(s) not read; "
                  "add --recursive to caption them too",
                  file=sys.stderr)
        out.extend(str(f) for f in files)
    return out, errors


def walk_images(folder: Path, recursive: bool) -> tuple[list[Path], int]:
    """The image files under ``folder`` (sorted by path; only its own files unless ``recursive``) and how
    many subfolders were left out. A folder with no image anywhere is the usual clear error."""
    if not recursive:
        return list_images(folder), sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for p in folder.rglob("*") if is_listed_image(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return (files, 0) if files else (list_images(folder), 0)


def sidecar_path(image: str, kind: str) -> Path:
    """The caption file beside an image, kohya-style: ``dir/name.png`` -> ``dir/name.txt`` (or ``.json``)."""
    return Path(image).with_suffix("." + kind)


def plan_sidecars(paths: list[str], kind: str, overwrite: bool) -> tuple[list[str], int]:
    """The images still to caption (those without a sidecar, or all with ``overwrite``) and how many were
    skipped. Two images that would share one sidecar (``a.png`` and ``a.jpg``) are refused before any work."""
    owners: dict[Path, list[str]] = {}
    for p in paths:
        owners.setdefault(sidecar_path(p, kind).resolve(), []).append(p)
    clashes = [names for names in owners.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" and ".join(names) for names in clashes[:3])
        raise UnpromptError(f"--sidecar {kind}: these images would share one caption file: {shown}"
                            + (f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else "")
                            + "; rename one of each pair")
    odd = [str(sidecar_path(p, kind)) for p in paths
           if os.path.lexists(sidecar_path(p, kind)) and not sidecar_path(p, kind).is_file()]
    if odd:  # a folder named a.txt is no caption, and a caption could not be written there either
        raise UnpromptError(f"--sidecar {kind}: {len(odd)} caption path(s) exist and are not regular files: "
                            + "; ".join(odd[:3]) + (" ..." if len(odd) > 3 else "") + "; move them first")
    todo = paths if overwrite else [p for p in paths if not sidecar_path(p, kind).is_file()]
    return todo, len(paths) - len(todo)


def write_sidecar(image: str, kind: str, result, profile: str, top: int) -> None:
    """The caption file, written atomically: a killed run leaves it whole or absent, never half written."""
    from retriever.files import atomic_write

    if kind == "txt":
        text = result.prompt + "\n"
    else:
        text = json.dumps({"image": printable(Path(image).name), "profile": profile, **result.as_dict(False, top)},
                          ensure_ascii=False, indent=1) + "\n"
    with atomic_write(sidecar_path(image, kind), clean_stale=False) as tmp:  # one per image: no folder scan
        Path(tmp).write_text(text, encoding="utf-8")


def read_sidecar(image: str, kind: str) -> dict:
    """The caption an earlier run wrote beside ``image``: prompt (and, from a .json, negative prompt and
    generator), or UnpromptError when it cannot be read."""
    path = sidecar_path(image, kind)
    try:
        text = path.read_text(encoding="utf-8")
        if kind == "txt":
            return {"prompt": text.strip()}
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise ValueError("no prompt in it")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UnpromptError(f"{path}: cannot read the caption ({exc.strerror if isinstance(exc, OSError) else exc}); "
                            "--overwrite to caption the image again") from None
    return {"prompt": data["prompt"], "negative_prompt": str(data.get("negative_prompt") or ""),
            "generator": str(data.get("generator") or "")}


class Writer:
    """One record per image, in input order: a failed image keeps its place (empty prompt, or its error).
    Paths and messages are written through ``printable``: a file name that is not UTF-8 costs no row."""

    def __init__(self, stream: TextIO, fmt: str, with_embedding: bool, top: int) -> None:
        self.stream, self.fmt, self.with_embedding, self.top = stream, fmt, with_embedding, top
        # RFC 4180: CRLF between records, so a CR or LF inside a cell is always quoted; cells that a spreadsheet
        # would run as a formula get a leading apostrophe (retriever.files.safe_cell)
        self.csv = csv.writer(stream, lineterminator="\r\n") if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(["image", "prompt", "negative_prompt", "error", "source", "generator"])

    def result(self, path: str, result, extra: dict) -> None:
        path = printable(path)
        if self.fmt == "jsonl":
            self._line(json.dumps({"image": path, **result.as_dict(self.with_embedding, self.top), **extra}))
        elif self.csv:
            self.csv.writerow(map(safe_cell, [path, result.prompt, result.negative_prompt, "", result.source,
                                              result.generator or ""]))
        else:
            self._line(f"{_one_line(path)}\t{_one_line(result.prompt)}" if self.fmt == "tsv" else _one_line(result.prompt))
        self.stream.flush()

    def captioned(self, path: str, caption: dict) -> None:
        """An image skipped for the caption beside it: that caption, with source ``sidecar``."""
        path, prompt = printable(path), caption["prompt"]
        negative, generator = caption.get("negative_prompt", ""), caption.get("generator", "")
        if self.fmt == "jsonl":
            self._line(json.dumps({"image": path, "prompt": prompt, "negative_prompt": negative, "source": "sidecar",
                                   "generator": generator or None}))
        elif self.csv:
            self.csv.writerow(map(safe_cell, [path, prompt, negative, "", "sidecar", generator]))
        else:
            self._line(f"{_one_line(path)}\t{_one_line(prompt)}" if self.fmt == "tsv" else _one_line(prompt))
        self.stream.flush()

    def failure(self, path: str, message: str) -> None:
        path, message = printable(path), printable(message)
        if self.fmt == "jsonl":
            self._line(json.dumps({"image": path, "error": message}))
        elif self.csv:
            self.csv.writerow(map(safe_cell, [path, "", "", message, "", ""]))
        else:
            self._line(f"{_one_line(path)}\t" if self.fmt == "tsv" else "")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(args: argparse.Namespace) -> int:
    from retriever.feed import interrogate_files, start_decoders
    from retriever.files import atomic_write, check_output_file
    from retriever.progress import progress

    fmt = "jsonl" if args.json else args.format
    out = check_output_file(args.out, "--out") if args.out else None
    if out is None:
        require_stdout()
    paths, unlisted = expand(args.images, args.recursive)
    listed, captioned = paths, set()
    if args.sidecar:
        paths, skipped = plan_sidecars(paths, args.sidecar, args.overwrite)
        if skipped:
            captioned = set(listed) - set(paths)
            print(f"unprompt: note: {skipped} image(s) already have a .{args.sidecar} caption, skipped "
                  "(--overwrite to caption them again)" + ("; --out lists them with that caption" if out else ""),
                  file=sys.stderr)
        if not paths and not unlisted and not out:
            return 0
    if not (out and captioned) and not any(Path(p).is_file() for p in paths):  # say so before any model loads
        named = [*unlisted.values(), *paths]
        raise UnpromptError("no image to read: " + "; ".join(named[:5]) + (" ..." if len(named) > 5 else ""))
    interrogator = None
    if paths:
        start_decoders()  # they start while torch and the models load
        from retriever.pipeline import Interrogator

        interrogator = Interrogator.load(args.profile)
        if args.verbose:
            from retriever.encoders.runtime import runtimes

            ran = runtimes(interrogator.retrieval_space, interrogator.rerank_space, interrogator.metric)
            print("unprompt: runtimes: " + ", ".join(f"{k} {v}" for k, v in ran.items()), file=sys.stderr)
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
        # with --out, the images skipped for their caption keep their place in the table (nothing lost on a rerun)
        order = deque(listed if out and captioned else [])

        def read_back(upto: str | None) -> int:
            """Rows for the captioned images listed before ``upto`` (all that remain for None); failures."""
            bad = 0
            while order and order[0] != upto:
                image = order.popleft()
                try:
                    writer.captioned(image, read_sidecar(image, args.sidecar))
                except UnpromptError as exc:
                    bad += 1
                    err(str(exc))
                    writer.failure(image, str(exc))
            if order:
                order.popleft()  # ``upto`` itself: answered below
            return bad

        answers = interrogate_files(interrogator, paths, args.batch_size, limits, args.mode, args.flavours,
                                    stages=fmt == "jsonl" and not args.no_embedding,
                                    metadata=not args.no_metadata) if interrogator else iter(())
        for answer in progress(answers, len(paths), "predict"):
            failures += read_back(answer.path)
            if answer.result is None:
                failures += 1
                err(answer.error or "")
                writer.failure(answer.path, answer.error or "")
                continue
            if args.sidecar:
                write_sidecar(answer.path, args.sidecar, answer.result, interrogator.profile.name, args.top)
            writer.result(answer.path, answer.result,
                          {"timings_ms": answer.timings_ms, "profile": interrogator.profile.name})
        failures += read_back(None)
    return 1 if failures else 0


def register(sub) -> None:
    p = command(sub, "predict", run)
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files (PNG, JPEG, WebP, GIF, TIFF, ...) "
                                                                   "or folders of them")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="text: one prompt a line; tsv: path and prompt; csv: image,prompt,negative_prompt,error,source,"
                        "generator; "
                        "jsonl: one JSON object per image (prompt, alternatives, negative prompt, embeddings, "
                        "candidates, timings)")
    p.add_argument("--json", action="store_true", help="same as --format jsonl")
    p.add_argument("--out", default=None, help="write to this file (atomically) instead of standard output")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="fast: retrieval only; classic: subject, medium, artist, movement and a few flavours; "
                        "best: the full assembly (default); negative: print the negative prompt")
    p.add_argument("--flavours", type=bounded_int(0, 256), default=None, metavar="N",
                   help="most components the assembly may chain, 0 or more (default: the mode's)")
    p.add_argument("--recursive", "-r", action="store_true", help="caption the images of every subfolder too")
    p.add_argument("--sidecar", choices=SIDECARS, default=None,
                   help="also write each caption next to its image (name.txt: the prompt, kohya-style; name.json: "
                        "prompt, alternatives, negative prompt, candidates); images that already have one are "
                        "skipped, so an interrupted run resumes where it stopped (with --out, the table lists "
                        "them too, with the caption read back from the sidecar)")
    p.add_argument("--overwrite", action="store_true", help="with --sidecar: caption images that already have one")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images per model call (decoding runs ahead in threads); results do not depend on it")
    p.add_argument("--top", type=positive_int, default=20, help="candidates to include with jsonl")
    p.add_argument("--no-embedding", action="store_true", help="leave embeddings out of jsonl output")
    p.add_argument("--no-metadata", action="store_true",
                   help="interrogate every image, even one whose file records its prompt (A1111 parameters, a "
                        "ComfyUI graph, InvokeAI, NovelAI, EXIF, XMP); by default that recorded prompt is the "
                        "answer, with source=metadata and the generator named")
    p.add_argument("--max-pixels", type=positive_int, default=LIMITS.max_pixels,
                   help="refuse images with more pixels than this")
    p.add_argument("--max-bytes", type=positive_int, default=LIMITS.max_bytes, help="refuse larger files")
