"""A text index, loaded for search: FAISS vectors, the texts of its rows, stored vectors for exact rescoring
and rerank caches. The directory format (schema, file names, writer, checks) is ``retriever.index_files``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from retriever.errors import IndexIntegrityError
from retriever.index_files import BuildRecord, read_record, verify_files
from retriever.search_device import Preference, place


@dataclass(slots=True)
class Hit:
    row: int
    score: float
    text: str
    kind: str
    source: str


def read_flags(faiss, factory: str, mmap: bool) -> list[int]:
    """FAISS read flags to try in turn for an index of ``factory`` (the build record's), the last one plain.

    ``IO_FLAG_MMAP_IFC`` maps the codes of IndexFlatCodes-derived indices (flat, scalar-quantised, PQ) and HNSW
    from the file instead of copying them (faiss/index_io.h): the lite index's 82 MB of SQfp16 codes load in
    4 ms instead of 54 ms, and stay in the page cache, shared by every process. ``IO_FLAG_MMAP`` maps inverted
    lists; the two together fail on an IVF index with array inverted lists (faiss 1.15.1: "Error in ...
    OnDiskInvertedListsIOHook::read_ArrayInvertedLists"), so an IVF factory never asks for both."""
    if not mmap:
        return [0]
    mapped = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    codes = [mapped | ifc] if ifc and "IVF" not in factory.upper() else []
    return [*codes, mapped, 0]


def _read_faiss(faiss, path: Path, flags: list[int], directory: Path):
    """The index read with the first of ``flags`` that works (not every type maps); an unreadable file is an
    IndexIntegrityError."""
    for i, flag in enumerate(flags):
        try:
            return faiss.read_index(str(path), flag)
        except RuntimeError as exc:
            if i + 1 == len(flags):
                raise IndexIntegrityError(
                    f"index {directory}: FAISS cannot read the index file ({str(exc)[:200]})") from None
    raise AssertionError("read_flags always ends with a plain read")


class TextIndex:
    def __init__(self, directory: Path, record: BuildRecord, index, meta, vectors: np.ndarray | None) -> None:
        self.directory = directory
        self.record = record
        self.index = index
        # polars Series (Arrow memory), not Python lists: tens of millions of rows stay compact
        self._texts, self._kinds, self._sources = meta["text"], meta["kind"], meta["source"]
        self.vectors = vectors
        self._caches: dict[str, np.ndarray] = {}
        self.placed, self.exact_gpu, self.where = index, None, "faiss-cpu"
        self.loaded_at = time.time()  # when this build was loaded (wall clock), and how long it took
        self.load_s = 0.0

    def place(self, prefer: Preference = "auto") -> "TextIndex":
        """Search on the GPU(s) when this machine has them (``retriever.search_device`` decides); else the CPU."""
        if prefer != "cpu":
            self.placed, self.exact_gpu, self.where = place(self.index, self.vectors, prefer)
        return self

    @classmethod
    def load(cls, directory: str | Path, checksums: bool = False, mmap: bool = True) -> "TextIndex":
        """Sizes are checked against the build record always; SHA-256 of every file with ``checksums``."""
        import faiss
        import polars as pl

        t0 = time.perf_counter()
        directory = Path(directory)
        record = read_record(directory)
        verify_files(directory, record, checksums=checksums)
        index = _read_faiss(faiss, directory / record.files["index"].path, read_flags(faiss, record.factory, mmap),
                            directory)
        meta_path = directory / record.files["meta"].path
        try:
            meta = pl.read_parquet(meta_path) if meta_path.suffix == ".parquet" else pl.read_ipc(meta_path)
        except Exception as exc:  # polars raises several types for bad files
            raise IndexIntegrityError(f"index {directory}: metadata file is unreadable ({exc})") from None
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
        loaded = cls(directory, record, index, meta, vectors)
        loaded.load_s = time.perf_counter() - t0
        return loaded

    @property
    def texts(self):
        """Every row's text, as a polars Series (Arrow memory, in row order)."""
        return self._texts

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
        if self.exact_gpu is not None:
            scores, ids = self.exact_gpu.search(q, k, start, end)
            return self._hit_lists(np.asarray(ids), np.asarray(scores), k)
        exact_scores = not self.record.exact and self.vectors is not None and rescore > 1
        fetch = min(k * rescore, end - start) if exact_scores else k
        if (start, end) == (0, len(self)):  # the whole index: the placed one (on the GPU when there is one)
            scores, ids = self.placed.search(q, fetch)
        else:  # one kind's rows: a range selector, which only the CPU index takes
            scores, ids = self.index.search(q, fetch, params=_search_params(self.index, faiss.IDSelectorRange(start, end, True)))
        if exact_scores:
            scores, ids = self._rescore(q, ids, k)
        return self._hit_lists(ids, scores, k)

    def _hit_lists(self, ids: np.ndarray, scores: np.ndarray, k: int) -> list[list[Hit]]:
        """Each query's valid hits (at most k), the batch's texts read in one gather per column."""
        ids, scores = ids[:, :k], scores[:, :k]
        valid = ids >= 0
        flat, counts = self.hits(ids[valid], scores[valid]), valid.sum(axis=1)
        return [flat[e - n : e] for e, n in zip(np.cumsum(counts), counts)]

    def _rescore(self, q: np.ndarray, ids: np.ndarray, k: int, group: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of each query's shortlist from the stored vectors, best k first. Queries go in groups:
        each group's distinct rows are read once, in row order (kinder to a memory-mapped file)."""
        out_scores = np.full((len(q), k), -np.inf, np.float32)
        out_ids = np.full((len(q), k), -1, np.int64)
        for g in range(0, len(q), group):
            gid = ids[g : g + group]
            valid = gid >= 0
            rows = np.unique(gid[valid])
            if not len(rows):
                continue
            table = np.asarray(self.vectors[rows], dtype=np.float32) @ q[g : g + group].T  # (rows, queries)
            pos = np.searchsorted(rows, np.where(valid, gid, rows[0]))
            exact = np.where(valid, table[pos, np.arange(len(gid))[:, None]], -np.inf)
            best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            out_scores[g : g + group, : best.shape[1]] = np.take_along_axis(exact, best, axis=1)
            out_ids[g : g + group, : best.shape[1]] = np.where(np.isfinite(out_scores[g : g + group, : best.shape[1]]),
                                                               np.take_along_axis(gid, best, axis=1), -1)
        return out_scores, out_ids

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits for many rows: one gather per column (a row at a time costs a lookup per field)."""
        rows = np.asarray(rows, dtype=np.int64)
        texts, kinds, sources = (col.gather(rows).to_list() for col in (self._texts, self._kinds, self._sources))
        return [Hit(int(r), float(s), t, k, src) for r, s, t, k, src in zip(rows, scores, texts, kinds, sources)]

    def first_rows(self, kind: str, n: int) -> range:
        """The first ``n`` rows of one kind (empty when the index has none): sources keep their order, so for
        clip-interrogator's flavours these are the most used."""
        start, end = self.record.kinds.get(kind, (0, 0))
        return range(start, min(end, start + n))

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
