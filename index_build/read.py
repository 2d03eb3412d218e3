"""Reader: sources -> normalised, filtered, deduplicated texts, read lazily with polars."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from index_build.manifest import Manifest, Source, source_files, source_format
from retriever.errors import ManifestError

NORMALISATION_VERSION = "1"


def _scan(path: Path, fmt: str, column: str) -> pl.LazyFrame:
    if fmt == "text":
        # one text per line; no quoting, no header
        frame = pl.scan_csv(
            path, has_header=False, separator="\x1f", quote_char=None, new_columns=[column],
            schema_overrides={column: pl.String}, truncate_ragged_lines=True,
        )
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


def dedup_across(sources: list[SourceTexts], near: bool = False) -> list[list[int]]:
    """Row positions to keep per source, dropping texts already given by an earlier source."""
    seen: set[str] = set()
    keep: list[list[int]] = []
    for st in sources:
        rows = []
        for i, t in enumerate(st.texts):
            k = _near_key_py(t) if near else t
            if k not in seen:
                seen.add(k)
                rows.append(i)
        keep.append(rows)
    return keep


def _near_key_py(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w ]+", "", text.lower())).strip()
