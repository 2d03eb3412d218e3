"""Reader: sources -> normalised, filtered, deduplicated texts, streamed with polars into parquet parts on disk.

Nothing here holds one Python object per row. Each source is scanned lazily and collected in batches by
polars' streaming engine; a text's dedup key is a 64-bit polars hash (of the text, or of its near-duplicate
key), checked against a sorted array of the keys already kept (8 bytes a row: 160 MB at 20M rows). Kept texts
are written as parquet parts of exactly ``shard_size`` rows (the last may be shorter): part i of a source is
the input of embedding shard i, so the embedding stage reads one part at a time.

A source's folder is named after the content hash of its kept texts, so a source whose texts did not change
keeps its name, and its embedding shards are reused.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from index_build.manifest import Manifest, Source, source_files, source_format
from index_build.remote import storage_options
from retriever.errors import ManifestError

NORMALISATION_VERSION = "2"
HASH_SEED = 20231124
BATCH_ROWS = 1 << 16


def scan(paths: str | list[str], fmt: str, column: str) -> pl.LazyFrame:
    """One scan over all of a source's files of one format (polars reads them in turn, with bounded buffers;
    a concat of one scan per file would run them all at once)."""
    options = storage_options(paths if isinstance(paths, str) else paths[0])
    if fmt == "text":  # one text per line, taken whole: no quoting, no header, no separator
        return pl.scan_lines(paths, name=column, storage_options=options)
    if fmt == "csv":
        return pl.scan_csv(paths, infer_schema=False, storage_options=options)
    if fmt == "jsonl":
        return pl.scan_ndjson(paths, storage_options=options)
    return pl.scan_parquet(paths, storage_options=options)


def normalise(expr: pl.Expr) -> pl.Expr:
    """Unicode NFC, whitespace collapsed, trimmed."""
    return expr.cast(pl.String).str.normalize("NFC").str.replace_all(r"\s+", " ").str.strip_chars()


def near_key(expr: pl.Expr) -> pl.Expr:
    """Key under which near-duplicates collide: case, punctuation and spacing ignored."""
    return expr.str.to_lowercase().str.replace_all(r"[^\w ]+", "").str.replace_all(r"\s+", " ").str.strip_chars()


def _components(frame: pl.LazyFrame, source: Source) -> pl.LazyFrame:
    """Prompts -> their comma-separated fragments, kept when seen ``min_count`` times, most frequent first."""
    fragments = (frame.select(pl.col("body").str.split(source.split_on).alias("body")).explode("body")
                 .select(normalise(pl.col("body")).alias("body")).filter(pl.col("body").str.len_chars() > 0))
    counted = fragments.group_by("body").agg(pl.len().alias("n")).filter(pl.col("n") >= source.min_count)
    return counted.sort(["n", "body"], descending=[True, False]).select("body")


def source_frame(source: Source, base_dir: str) -> pl.LazyFrame:
    by_format: dict[str, list[str]] = {}
    for path in source_files(source, base_dir):
        by_format.setdefault(source_format(source, path), []).append(path)
    frames = []
    for fmt, paths in by_format.items():
        frame = scan(paths, fmt, source.column).select(pl.col(source.column).alias("raw"))
        frames.append(frame.explode("raw") if source.explode else frame)
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    if source.limit:
        frame = frame.head(source.limit)
    frame = frame.select(normalise(pl.col("raw")).alias("body")).drop_nulls()
    if source.transform == "components":
        frame = _components(frame, source)
    length = pl.col("body").str.len_chars()
    frame = frame.filter((length >= max(source.min_chars, 1)) & (length <= source.max_chars))
    if source.blocked_words:
        words = "|".join(re.escape(w.lower()) for w in source.blocked_words)
        frame = frame.filter(~pl.col("body").str.to_lowercase().str.contains(rf"\b(?:{words})\b"))
    prefix, _, suffix = source.template.partition("{}")
    return frame.select(pl.concat_str([pl.lit(prefix), pl.col("body"), pl.lit(suffix)]).alias("text"))


@dataclass(frozen=True)
class SourceTexts:
    source: Source
    directory: Path  # parquet parts 000000.parquet, 000001.parquet, ... of `shard_size` texts
    count: int
    content_hash: str  # of the kept texts' hashes in order: any change to data or shaping changes it

    def part(self, i: int) -> Path:
        return self.directory / f"{i:06d}.parquet"

    def texts(self, i: int) -> list[str]:
        """The texts of part i (one shard's worth: bounded, whatever the source's size)."""
        return pl.read_parquet(self.part(i))["text"].to_list()

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("*.parquet"))

    def all_texts(self) -> list[str]:
        """Every text as a Python list: for small sources and inspection only (a list is one object a row)."""
        return pl.read_parquet(self.parts())["text"].to_list() if self.count else []


class SeenKeys:
    """The 64-bit keys of every text kept so far, sorted in a growing buffer; 8 bytes a row (plus slack)."""

    def __init__(self) -> None:
        self.buf = np.zeros(1 << 20, dtype=np.uint64)
        self.n = 0

    def keep_new(self, keys: np.ndarray) -> np.ndarray:
        """Mask of the first occurrence of each key not seen before; those keys become seen."""
        _, first = np.unique(keys, return_index=True)
        mask = np.zeros(len(keys), dtype=bool)
        mask[first] = True
        seen = self.buf[: self.n]
        if self.n:
            pos = np.minimum(np.searchsorted(seen, keys), self.n - 1)
            mask &= seen[pos] != keys
        new = keys[mask]
        if self.n + len(new) > len(self.buf):  # grow by half: the copy is the only moment of 2.5x
            grown = np.zeros(max(int(len(self.buf) * 1.5), self.n + len(new)), dtype=np.uint64)
            grown[: self.n] = seen
            self.buf = grown
        self.buf[self.n : self.n + len(new)] = new
        self.n += len(new)
        self.buf[: self.n].sort(kind="stable")  # two sorted runs: timsort merges them in place, in linear time
        return mask


class _PartWriter:
    def __init__(self, directory: Path, rows: int) -> None:
        self.directory, self.rows = directory, rows
        self.pending: list[pl.DataFrame] = []
        self.held = self.count = self.parts = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.pending.append(frame)
        self.held += frame.height
        self.count += frame.height
        while self.held >= self.rows:
            self._flush(self.rows)

    def close(self) -> None:
        if self.held:
            self._flush(self.held)

    def _flush(self, n: int) -> None:
        frame = pl.concat(self.pending)
        frame.head(n).write_parquet(self.directory / f"{self.parts:06d}.parquet", statistics=False)
        self.parts += 1
        rest = frame.slice(n)
        self.pending, self.held = ([rest] if rest.height else []), rest.height


def _batches(frame: pl.LazyFrame, source: Source) -> Iterator[pl.DataFrame]:
    try:
        yield from frame.collect_batches(chunk_size=BATCH_ROWS)
    except pl.exceptions.ColumnNotFoundError as exc:
        raise ManifestError(f"source {source.name!r}: column {source.column!r} not found "
                            f"({str(exc).strip().splitlines()[0]})") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ManifestError(f"source {source.name!r}: cannot read ({str(exc).splitlines()[0]})") from None


def stage_source(source: Source, base_dir: str, near: bool, seen: SeenKeys, root: Path, shard_size: int,
                 progress: bool = False) -> SourceTexts:
    """Stream one source into parquet parts under ``root``, skipping texts any earlier source already gave."""
    key = near_key(pl.col("text")) if near else pl.col("text")
    frame = source_frame(source, base_dir).with_columns(key.hash(HASH_SEED).alias("_key"))
    work = root / f".reading-{source.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    writer = _PartWriter(work, shard_size)
    digest = hashlib.sha256(NORMALISATION_VERSION.encode())
    with tqdm(desc=f"read {source.name}", unit="text", unit_scale=True, disable=not progress) as bar:
        for batch in _batches(frame, source):
            keys = batch["_key"].to_numpy()
            kept = batch.filter(pl.Series(seen.keep_new(keys)))
            digest.update(kept["_key"].to_numpy().tobytes())
            writer.add(kept.select("text"))
            bar.update(batch.height)
    writer.close()
    content_hash = digest.hexdigest()[:20]
    final = root / f"{source.name}-{content_hash}"
    if final.is_dir():  # the same texts were staged before: keep those
        shutil.rmtree(work)
    else:
        work.rename(final)
    return SourceTexts(source, final, writer.count, content_hash)


def read_manifest(manifest: Manifest, root: Path, shard_size: int, progress: bool = False) -> list[SourceTexts]:
    """Every source, in manifest order, deduplicated within and across sources (the first source keeps a text)."""
    seen = SeenKeys()
    return [stage_source(s, manifest.base_dir, manifest.dedup.near, seen, root, shard_size, progress)
            for s in manifest.sources]
