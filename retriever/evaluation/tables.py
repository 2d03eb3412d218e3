"""Reading and validating ground truth and predictions (short imgId,prompt or Kaggle's long format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from retriever.encoders.base import rescale_extreme
from retriever.errors import UnpromptError
from retriever.files import FORMULA_PREFIXES, atomic_write, safe_cell
from retriever.paths import local_file
from retriever.evaluation.metric import EMBED_DIM


class ScoreInputError(UnpromptError):
    pass


def _ids(values, limit: int = 10) -> str:
    values = sorted(map(str, values))
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


# The longest prompt cell read. The metric model reads only the first 256 word pieces (about 1,000-2,000
# characters of English) and CLIP 77 tokens, so 100,000 characters refuses no real prompt, while it bounds what
# one cell costs to tokenise (about 0.1 s; a 10 MB cell took 10.8 s and 1.8 GB, a 100 MB one 13.5 GB).
MAX_PROMPT_CHARS = 100_000

_GUARDED = "^'([" + "".join(FORMULA_PREFIXES).replace("-", "\\-") + "])"


def read_table(path: str | Path) -> pl.DataFrame:
    """A CSV (every column read as text, RFC 4180 quoting; a cell written with the formula guard of
    ``retriever.files.safe_cell`` read back as it was), parquet or JSONL file as a DataFrame, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    try:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path)
        frame = pl.read_csv(path, infer_schema=False)
        return frame.with_columns(pl.col(pl.String).str.replace(_GUARDED, "$1"))
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ScoreInputError(f"{path}: cannot read as a table ({str(exc).splitlines()[0]})") from None


def _nulls(frame: pl.DataFrame, columns: list[str], path) -> None:
    """Refuse empty cells in the columns that must hold text, naming the first rows (1 = the first data row)."""
    for column in columns:
        rows = frame.with_row_index("row").filter(pl.col(column).is_null())["row"].to_list()
        if rows:
            raise ScoreInputError(f"{path}: empty {column!r} in row(s) {_ids([r + 1 for r in rows])}")


def _bounded(prompts: list, path, where: str = "row") -> None:
    """Refuse a prompt longer than MAX_PROMPT_CHARS, naming the first such row (1 = the first data row)."""
    for k, p in enumerate(prompts):
        if p is not None and len(str(p)) > MAX_PROMPT_CHARS:
            raise ScoreInputError(f"{path}: the prompt in {where} {k + 1} has {len(str(p)):,} characters; at most "
                                  f"{MAX_PROMPT_CHARS:,} are read (the metric model reads its first 256 word pieces)")


def _require(frame: pl.DataFrame, columns: list[str], path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoreInputError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}")


def _not_empty(frame: pl.DataFrame, path) -> None:
    if frame.height == 0:
        raise ScoreInputError(f"{path}: no rows (only a header?); nothing to score")


def _no_duplicates(ids: list[str], what: str) -> None:
    seen, dupes = set(), set()
    for i in ids:
        (dupes if i in seen else seen).add(i)
    if dupes:
        raise ScoreInputError(f"{what} has duplicate ids: {_ids(dupes)}")


@dataclass
class Prompts:
    """Ground truth or predictions: prompts (short format) or their 384-d embeddings (Kaggle's long format)."""

    ids: list[str]
    prompts: list[str] | None  # short format
    vectors: np.ndarray | None  # long format, (n, 384), rows in `ids` order


def read_truth(path: str | Path) -> Prompts:
    """imgId,prompt, or the long format (Kaggle's sample_submission.csv holds the true prompts' embeddings)."""
    frame = read_table(path)
    if "imgId_eId" in frame.columns:
        return read_predictions(path)
    _require(frame, ["imgId", "prompt"], path)
    _not_empty(frame, path)
    _nulls(frame, ["imgId"], path)
    ids = [str(i) for i in frame["imgId"].to_list()]
    prompts = frame["prompt"].to_list()
    nulls = [i for i, p in zip(ids, prompts) if p is None]
    if nulls:
        raise ScoreInputError(f"{path}: empty prompt for ids: {_ids(nulls)}")
    _bounded(prompts, path)
    _no_duplicates(ids, f"ground truth {path}")
    return Prompts(ids, [str(p) for p in prompts], None)


def read_predictions(path: str | Path) -> Prompts:
    frame = read_table(path)
    if "imgId_eId" in frame.columns:
        _require(frame, ["imgId_eId", "val"], path)
        _not_empty(frame, path)
        _nulls(frame, ["imgId_eId"], path)
        return _long(frame.with_columns(pl.col("imgId_eId").cast(pl.String)), path)
    _require(frame, ["imgId", "prompt"], path)
    _not_empty(frame, path)
    _nulls(frame, ["imgId"], path)
    ids = [str(i) for i in frame["imgId"].to_list()]
    _no_duplicates(ids, f"predictions {path}")
    prompts = frame["prompt"].to_list()
    _bounded(prompts, path)
    return Prompts(ids, ["" if p is None else str(p) for p in prompts], None)


def _long(frame: pl.DataFrame, path) -> Prompts:
    # any imgId (a newline too); eId written as Kaggle does: no leading zeros (b_00 is not b_0)
    key = r"(?s)^(.*)_(0|[1-9]\d{0,2})$"
    split = frame.select(
        pl.col("imgId_eId").str.extract(key, 1).alias("imgId"),
        pl.col("imgId_eId").str.extract(key, 2).cast(pl.Int64, strict=False).alias("eId"),
        pl.col("imgId_eId").alias("key"),
        pl.col("val").cast(pl.Float64, strict=False).alias("val"),
        pl.col("val").alias("raw"),
    )
    bad_keys = split.filter(pl.col("imgId").is_null())["key"].to_list()
    if bad_keys:
        raise ScoreInputError(f"{path}: imgId_eId values not of the form <imgId>_<0..383>: {_ids(bad_keys)}")
    dupes = split.filter(pl.col("key").is_duplicated())["imgId"].unique().to_list()
    if dupes:
        raise ScoreInputError(f"{path}: duplicate imgId_eId rows for ids: {_ids(dupes)}")
    bad_vals = split.filter(pl.col("val").is_null() | ~pl.col("val").is_finite())["imgId"].unique().to_list()
    if bad_vals:
        raise ScoreInputError(f"{path}: non-finite or non-numeric values for ids: {_ids(bad_vals)}")
    counts = split.group_by("imgId", maintain_order=True).agg(
        pl.len().alias("rows"), pl.col("eId").min().alias("lo"), pl.col("eId").max().alias("hi"),
        pl.col("eId").n_unique().alias("distinct"))
    wrong = counts.filter((pl.col("rows") != EMBED_DIM) | (pl.col("lo") != 0) | (pl.col("hi") != EMBED_DIM - 1)
                          | (pl.col("distinct") != EMBED_DIM))
    if wrong.height:
        detail = _ids([f"{r['imgId']} ({r['rows']} rows)" for r in wrong.iter_rows(named=True)])
        raise ScoreInputError(f"{path}: each image needs {EMBED_DIM} rows, _0 to _{EMBED_DIM - 1}; wrong for: {detail}")
    ordered = split.sort(["imgId", "eId"])
    ids = ordered["imgId"].unique(maintain_order=True).to_list()
    # a row of finite values past float32's range (1e308) is scaled first: only its direction is scored
    vectors = rescale_extreme(ordered["val"].to_numpy().reshape(len(ids), EMBED_DIM)).astype(np.float32)
    return Prompts(ids, None, vectors)


def align(truth: Prompts, pred: Prompts) -> list[int]:
    """Positions in `pred` for each truth id; refuses mismatched id sets, naming the ids."""
    t, p = set(truth.ids), set(pred.ids)
    problems = []
    if t - p:
        problems.append(f"missing from predictions: {_ids(t - p)}")
    if p - t:
        problems.append(f"not in ground truth: {_ids(p - t)}")
    if problems:
        raise ScoreInputError("id sets differ; " + "; ".join(problems))
    where = {i: k for k, i in enumerate(pred.ids)}
    return [where[i] for i in truth.ids]


def write_long(path: str | Path, ids: list[str], vectors: np.ndarray) -> None:
    """Kaggle's submission: rows <imgId>_<eId>,val, ids sorted, eId 0..383 within each (atomic write)."""
    path = Path(path)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    keys = [safe_cell(f"{ids[i]}_{e}") for i in order for e in range(EMBED_DIM)]
    vals = np.asarray(vectors, dtype=np.float32)[order].reshape(-1)
    with atomic_write(path) as tmp:
        pl.DataFrame({"imgId_eId": keys, "val": vals}).write_csv(tmp, float_precision=7)


def write_short(path: str | Path, ids: list[str], prompts: list[str]) -> None:
    """imgId,prompt rows, ids sorted (atomic write)."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    with atomic_write(path) as tmp:
        pl.DataFrame({"imgId": [safe_cell(ids[i]) for i in order],
                      "prompt": [safe_cell(prompts[i]) for i in order]}).write_csv(tmp)


def read_pairs(table: str | Path, image_column: str = "image", prompt_column: str = "prompt") -> tuple[list[Path], list[str]]:
    """(image path, prompt) pairs from a table; relative image paths are relative to the table's folder, and
    ``pkg:<package>/<file>`` is a file inside an installed package (the dev set's images)."""
    frame = read_table(table)
    _require(frame, [image_column, prompt_column], table)
    _not_empty(frame, table)
    _nulls(frame, [image_column, prompt_column], table)
    _bounded(frame[prompt_column].to_list(), table)
    base = Path(table).parent
    try:
        paths = [local_file(str(p), base) for p in frame[image_column].to_list()]
    except ValueError as exc:  # the dev set's images come with unprompt's test extra
        raise ScoreInputError(f"{table}: {exc}") from None
    return paths, [str(p) for p in frame[prompt_column].to_list()]


def read_prompts(path: str | Path, column: str = "prompt") -> list[str]:
    """Prompts from a text file (one a line) or a table's column."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise ScoreInputError(f"{path}: no such file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ScoreInputError(f"{path}: not a UTF-8 text file") from None
        _bounded(lines, path, "line")
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        table = read_table(path)
        _require(table, [column], path)
        _bounded(table[column].to_list(), path)
        prompts = [str(p) for p in table[column].drop_nulls().to_list()]
    if not prompts:
        raise ScoreInputError(f"{path}: no prompts")
    return prompts
