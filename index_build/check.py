"""What a manifest's sources hold, read without downloading their data (`unprompt check-sources`).

For each source: its files (a hub glob listed through the tree API, an HTTP glob from the server's listing), and
for each parquet file its columns and row count from the footer (polars reads the last bytes of the file with a
Range request). The source's column must exist with a text type (a list of texts when ``explode``); a wrong
path, revision or column is one line naming the source, the file and the columns there are.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from index_build.manifest import Manifest, Source, source_files, source_format
from index_build.read import scan
from retriever.errors import ManifestError

FOOTER_THREADS = 8


@dataclass
class FileFacts:
    path: str
    format: str
    columns: dict[str, str]  # name -> polars type
    rows: int | None  # None: not a parquet file (counting would read it all)


@dataclass
class SourceFacts:
    source: Source
    files: list[FileFacts] = field(default_factory=list)
    error: str = ""

    @property
    def rows(self) -> int | None:
        counts = [f.rows for f in self.files]
        return None if not counts or None in counts else sum(counts)


def _file_facts(source: Source, path: str) -> FileFacts:
    fmt = source_format(source, path)
    frame = scan(path, fmt, source.column)
    try:
        schema = frame.collect_schema()
        rows = frame.select(pl.len()).collect().item() if fmt == "parquet" else None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ManifestError(f"source {source.name!r}: cannot read the footer of {path} "
                            f"({(str(exc).strip().splitlines() or [''])[0]})") from None
    return FileFacts(path, fmt, {k: str(v) for k, v in schema.items()}, rows)


def _column_problem(source: Source, facts: FileFacts) -> str:
    dtype = facts.columns.get(source.column)
    if dtype is None:
        return (f"source {source.name!r}: no column {source.column!r} in {facts.path} "
                f"(columns: {', '.join(facts.columns)})")
    wanted = "a list of texts (explode = true)" if source.explode else "text"
    ok = dtype.startswith("List(String") if source.explode else dtype == "String"
    if not ok and facts.format == "parquet":
        return f"source {source.name!r}: column {source.column!r} in {facts.path} is {dtype}, not {wanted}"
    return ""


def check_source(source: Source, base_dir: str) -> SourceFacts:
    out = SourceFacts(source)
    try:
        paths = source_files(source, base_dir)
        with ThreadPoolExecutor(min(FOOTER_THREADS, len(paths))) as pool:
            out.files = list(pool.map(lambda p: _file_facts(source, p), paths))
    except ManifestError as exc:
        out.error = str(exc)
        return out
    out.error = next((p for p in (_column_problem(source, f) for f in out.files) if p), "")
    return out


def check_manifest(manifest: Manifest) -> list[SourceFacts]:
    return [check_source(s, manifest.base_dir) for s in manifest.sources]


def _count(n: int | None) -> str:
    return "rows not counted (not parquet)" if n is None else f"{n:,} rows"


def describe(manifest: Manifest, facts: list[SourceFacts]) -> str:
    lines = [f"manifest {manifest.name}: {len(facts)} sources"]
    for f in facts:
        s = f.source
        lines.append(f"source {s.name}: {s.location}")
        if f.error:
            lines.append(f"  FAILED {f.error}")
            continue
        for file in f.files:
            lines.append(f"  {file.path}  {_count(file.rows)}")
        columns = f.files[0].columns
        lines.append("  columns: " + ", ".join(f"{k} ({v})" for k, v in columns.items()))
        stated = f" (manifest states {s.rows:,})" if s.rows is not None else ""
        used = f"; reads the first {s.limit:,}" if s.limit else ""
        lines.append(f"  column {s.column!r} {columns[s.column]}; {len(f.files)} files, {_count(f.rows)}"
                     f"{stated}{used}")
    return "\n".join(lines)
