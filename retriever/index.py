"""A text index on disk: FAISS vectors, parquet metadata, and a build record that vouches for both.

Layout of an index directory (written by ``index_build``)::

    build.json                  the record; written last, by one rename, so it is the commit point
    index-<build_id>.faiss      FAISS index, inner product over unit vectors
    meta-<build_id>.parquet     one row per vector: text, kind, source
    vectors-<build_id>.npy      optional float16 copy of the vectors (exact rescoring, rerank cache)

Rows are grouped by kind; ``kinds`` in the record gives each kind's [start, end) row range,
so a search can be limited to one kind without a second index.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from retriever.errors import IndexIntegrityError

RECORD_NAME = "build.json"
FORMAT_VERSION = 1


class FileEntry(BaseModel):
    path: str
    bytes: int
    sha256: str


class SourceEntry(BaseModel):
    name: str
    kind: str
    content_hash: str
    count: int


class BuildRecord(BaseModel):
    format: int = FORMAT_VERSION
    build_id: str
    name: str
    model_id: str
    dim: int
    count: int
    factory: str
    exact: bool = True
    metric: Literal["ip"] = "ip"
    rerank_caches: dict[str, str] = {}  # model id -> role in `files` of a float16 (count, dim') array
    kinds: dict[str, tuple[int, int]]
    files: dict[str, FileEntry]
    sources: list[SourceEntry]
    manifest_hash: str = ""
    timings_s: dict[str, float] = {}
    versions: dict[str, str] = {}
    created: str = ""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_record(directory: Path) -> BuildRecord:
    path = directory / RECORD_NAME
    if not path.is_file():
        raise IndexIntegrityError(
            f"no index at {directory} (missing {RECORD_NAME}); build it with `unprompt setup` "
            "or `unprompt build-index MANIFEST --out DIR`"
        )
    try:
        record = BuildRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"index record {path} is corrupt: {str(exc).splitlines()[0]}") from None
    if record.format != FORMAT_VERSION:
        raise IndexIntegrityError(f"index {directory} has format {record.format}; this unprompt reads {FORMAT_VERSION}")
    return record


def verify_files(directory: Path, record: BuildRecord, checksums: bool = True) -> None:
    """Sizes always, SHA-256 when ``checksums``: a mismatch means a truncated, corrupt or mixed index."""
    for role, entry in record.files.items():
        path = directory / entry.path
        if not path.is_file():
            raise IndexIntegrityError(f"index {directory}: {role} file {entry.path} is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise IndexIntegrityError(
                f"index {directory}: {role} file {entry.path} has {size} bytes, the build record says {entry.bytes} "
                "(truncated or replaced); rebuild the index"
            )
        if checksums and sha256_file(path) != entry.sha256:
            raise IndexIntegrityError(
                f"index {directory}: {role} file {entry.path} fails its SHA-256 check (corrupt); rebuild the index"
            )


@dataclass(frozen=True)
class Hit:
    row: int
    score: float
    text: str
    kind: str
    source: str


class TextIndex:
    def __init__(self, directory: Path, record: BuildRecord, index, meta, vectors: np.ndarray | None) -> None:
        self.directory = directory
        self.record = record
        self.index = index
        # polars Series (Arrow memory), not Python lists: tens of millions of rows stay compact
        self._texts, self._kinds, self._sources = meta["text"], meta["kind"], meta["source"]
        self.vectors = vectors
        self._caches: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, directory: str | Path, checksums: bool = True, mmap: bool = True) -> "TextIndex":
        import faiss
        import polars as pl

        directory = Path(directory)
        record = read_record(directory)
        verify_files(directory, record, checksums=checksums)
        try:
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            try:
                index = faiss.read_index(str(directory / record.files["index"].path), flags)
            except RuntimeError:  # not every index type can be memory-mapped
                index = faiss.read_index(str(directory / record.files["index"].path))
        except RuntimeError as exc:
            raise IndexIntegrityError(f"index {directory}: FAISS cannot read the index file ({str(exc)[:200]})") from None
        try:
            meta = pl.read_parquet(directory / record.files["meta"].path)
        except Exception as exc:  # polars raises several types for bad files
            raise IndexIntegrityError(f"index {directory}: metadata parquet is unreadable ({exc})") from None
        vectors = _load_array(directory, record, "vectors", mmap) if "vectors" in record.files else None
        problems = []
        if index.ntotal != record.count:
            problems.append(f"FAISS holds {index.ntotal} vectors")
        if index.d != record.dim:
            problems.append(f"FAISS dimension is {index.d}")
        if meta.height != record.count:
            problems.append(f"metadata has {meta.height} rows")
        if vectors is not None and vectors.shape != (record.count, record.dim):
            problems.append(f"vectors have shape {vectors.shape}")
        if problems:
            raise IndexIntegrityError(
                f"index {directory} does not match its build record ({record.count} x {record.dim}): "
                + "; ".join(problems)
            )
        return cls(directory, record, index, meta, vectors)

    def __len__(self) -> int:
        return self.record.count

    @property
    def kinds(self) -> list[str]:
        return list(self.record.kinds)

    def search(self, queries: np.ndarray, k: int, kind: str | None = None, rescore: int = 10) -> list[list[Hit]]:
        """Top-k rows per query by inner product, optionally only rows of one kind.

        On an approximate index with stored vectors, ``k * rescore`` candidates are fetched and
        rescored exactly from the (memory-mapped) vectors, so the head of the ranking is exact
        whenever the true neighbours make the shortlist.
        """
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        start, end = 0, len(self)
        if kind is not None:
            if kind not in self.record.kinds:
                return [[] for _ in range(len(q))]
            start, end = self.record.kinds[kind]
        k = min(k, end - start)
        if k <= 0:
            return [[] for _ in range(len(q))]
        exact_scores = not self.record.exact and self.vectors is not None and rescore > 1
        fetch = min(k * rescore, end - start) if exact_scores else k
        params = None
        if kind is not None and (start, end) != (0, len(self)):
            params = _search_params(self.index, faiss.IDSelectorRange(start, end, True))
        scores, ids = self.index.search(q, fetch, params=params) if params is not None else self.index.search(q, fetch)
        out = []
        for qi, (srow, irow) in enumerate(zip(scores, ids)):
            valid = irow >= 0
            srow, irow = srow[valid], irow[valid]
            if exact_scores and len(irow):
                order = np.argsort(irow)  # sorted reads are kinder to a memory-mapped file
                exact = np.asarray(self.vectors[irow[order]], dtype=np.float32) @ q[qi]
                srow = np.empty_like(exact)
                srow[order] = exact
                best = np.argsort(-srow, kind="stable")[:k]
                srow, irow = srow[best], irow[best]
            out.append([self.hit(int(i), float(s)) for s, i in zip(srow[:k], irow[:k])])
        return out

    def hit(self, row: int, score: float) -> Hit:
        return Hit(row, score, self._texts[row], self._kinds[row], self._sources[row])

    def text(self, row: int) -> str:
        return self._texts[row]

    def embeddings_for(self, model_id: str) -> Callable[[list[int]], np.ndarray] | None:
        """A function rows -> unit vectors in ``model_id``'s space, when this directory holds them.

        The index's own space: the stored float16 copy, or the FAISS index itself when it is exact.
        Another space: a rerank cache (``rerank_caches`` in the record) built beside the index.
        """
        if model_id == self.record.model_id:
            if self.vectors is not None:
                vectors = self.vectors
                return lambda rows: np.asarray(vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
            if self.record.exact:
                index = self.index
                return lambda rows: index.reconstruct_batch(np.asarray(rows, dtype=np.int64))
            return None
        role = self.record.rerank_caches.get(model_id)
        if role is None:
            return None
        cache = self._caches.get(role)
        if cache is None:
            cache = self._caches[role] = _load_array(self.directory, self.record, role, mmap=True)
        return lambda rows: np.asarray(cache[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


def _load_array(directory: Path, record: BuildRecord, role: str, mmap: bool) -> np.ndarray:
    try:
        return np.load(directory / record.files[role].path, mmap_mode="r" if mmap else None)
    except Exception as exc:  # a damaged .npy header raises OSError, ValueError, SyntaxError, TokenError, ...
        raise IndexIntegrityError(f"index {directory}: {role} file is unreadable ({str(exc)[:200]}); rebuild the index") from None


def _search_params(index, selector):
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe) if ivf is not None else faiss.SearchParameters(sel=selector)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.SearchParametersPreTransform(index_params=params)
    return params
