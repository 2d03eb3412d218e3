"""Synthetic prompt-like texts as a polars frame, vectorised: rows [lo, hi) of an endless deterministic corpus.

Row i is built from the id ``i % unique`` (so ids past ``unique`` repeat earlier texts exactly: duplicates),
and that id's hashes pick a subject, a setting, a style and three flavours from ``synthetic``'s vocabularies.
"""

from __future__ import annotations

import polars as pl

from synthetic import FLAVOURS, SETTINGS, STYLES, SUBJECTS


def _pick(words: list[str], salt: int, seed: int) -> pl.Expr:
    return (pl.col("id").hash(seed * 1000 + salt) % len(words)).replace_strict(dict(enumerate(words)),
                                                                               return_dtype=pl.String)


def synthetic_frame(lo: int, hi: int, unique: int, seed: int = 0) -> pl.DataFrame:
    ids = pl.DataFrame({"id": pl.int_range(lo, hi, eager=True, dtype=pl.Int64) % unique})
    return ids.select(pl.concat_str([
        _pick(SUBJECTS, 1, seed), pl.lit(" "), _pick(SETTINGS, 2, seed), pl.lit(", "), _pick(STYLES, 3, seed),
        pl.lit(", "), _pick(FLAVOURS, 4, seed), pl.lit(", "), _pick(FLAVOURS, 5, seed), pl.lit(", "),
        _pick(FLAVOURS, 6, seed), pl.lit(", #"), pl.col("id").cast(pl.String),
    ]).alias("text"))
