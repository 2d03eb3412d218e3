"""Reader: sources -> normalised, filtered, deduplicated texts, read lazily with polars."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from index_build.manifest import Manifest, Source, source_files, source_format
from retriever.errors import ManifestError

NORMALISATION_VERSION = "1"


def _scan(path: Path, fmt: str, column: str) -> pl.LazyFrame:
    if fmt == "text":  # one text per line, taken whole: no quoting, no header, no separator
        frame = pl.scan_lines(path, name=column)
    elif fmt == "csv":
        frame = pl.scan_csv(path, infer_schema=False)
    elif fmt == "jsonl":
        frame = pl.scan_ndjson(path)
    else:
        frame = pl.scan_parquet(path)
    return frame


def normalise(expr: pl.Expr) -> pl.Expr:
    """Unicode NFC, whitespace collapsed, trimmed."""
    return expr.cast(pl.String).str.normalize("NFC").str.replace_all(r"\s+", " ").str.strip_chars()


def near_key(expr: pl.Expr) -> pl.Expr:
    """Key under which near-duplicates collide: case, punctuation and spacing ignored."""
    return expr.str.to_lowercase().str.replace_all(r"[^\w ]+", "").str.replace_all(r"\s+", " ").str.strip_chars()


def source_frame(source: Source, base_dir: str) -> pl.LazyFrame:
    frames = []
    for path in source_files(source, base_dir):
        frame = _scan(path, source_format(source, path), source.column)
        frames.append(frame.select(pl.col(source.column).alias("raw")))
    frame = pl.concat(frames, how="vertical")
    if source.limit:
        frame = frame.head(source.limit)
    text = normalise(pl.col("raw"))
    frame = frame.select(text.alias("body")).drop_nulls()
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
    texts: list[str]
    content_hash: str  # of the final texts, so any change to data or shaping changes it


def read_source(source: Source, base_dir: str, near: bool = False) -> SourceTexts:
    frame = source_frame(source, base_dir)
    key = near_key(pl.col("text")) if near else pl.col("text")
    try:
        texts = (
            frame.with_columns(key.alias("_key"))
            .unique(subset="_key", keep="first", maintain_order=True)
            .select("text")
            .collect()["text"]
            .to_list()
        )
    except pl.exceptions.ColumnNotFoundError as exc:
        raise ManifestError(f"source {source.name!r}: column {source.column!r} not found ({exc})") from None
    except pl.exceptions.PolarsError as exc:
        raise ManifestError(f"source {source.name!r}: cannot read ({str(exc).splitlines()[0]})") from None
    digest = hashlib.sha256(NORMALISATION_VERSION.encode())
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\n")
    return SourceTexts(source, texts, digest.hexdigest()[:20])


def read_manifest(manifest: Manifest) -> list[SourceTexts]:
    return [read_source(s, manifest.base_dir, manifest.dedup.near) for s in manifest.sources]


def dedup_across(sources: list[SourceTexts], near: bool = False) -> list[np.ndarray]:
    """Row positions to keep per source, dropping texts already given by an earlier source (same key as
    within a source: the text itself, or its near-duplicate key)."""
    key = near_key(pl.col("text")) if near else pl.col("text")
    rows = pl.concat([
        pl.DataFrame({"text": st.texts}, schema={"text": pl.String}).with_row_index("row")
        .with_columns(pl.lit(i, pl.Int32).alias("source"))
        for i, st in enumerate(sources)
    ])
    kept = rows.with_columns(key.alias("_key")).unique(subset="_key", keep="first", maintain_order=True)
    return [kept.filter(pl.col("source") == i)["row"].to_numpy().astype(np.int64) for i in range(len(sources))]
