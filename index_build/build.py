"""Orchestrator: manifest -> texts -> embeddings (sharded, resumable) -> FAISS index -> index directory.

The directory is committed by one rename of ``build.json``; files of older builds and
shards no longer referenced are removed after the commit.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import importlib.metadata
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from index_build import embed as embedding
from index_build.choose import IndexChoice, choose_index
from index_build.faiss_build import check_trainable, fill, new_index, sample_rows, set_nprobe, train
from index_build.manifest import Manifest
from index_build.options import BuildOptions
from index_build.read import SourceTexts, dedup_across, read_manifest
from retriever.encoders.base import TextEncoder, l2_normalize
from retriever.errors import ManifestError, UnpromptError
from retriever.files import TMP_SUFFIX, atomic_write, write_bytes_atomic
from retriever.index import RECORD_NAME, BuildRecord, FileEntry, SourceEntry, sha256_file

SHARD_DIR = ".shards"


@dataclass
class BuildReport:
    out: Path
    record: BuildRecord
    embedded: dict[str, int]
    choice: IndexChoice
    timings_s: dict[str, float] = field(default_factory=dict)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UnpromptError(f"another build is writing {out}; wait for it to finish") from None
        yield


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("unprompt", "faiss-cpu", "faiss-gpu", "torch", "open_clip_torch", "sentence-transformers", "polars"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def build_index(manifest: Manifest, encoder: TextEncoder, out: str | Path, options: BuildOptions | None = None,
                rerank_encoders: Sequence[TextEncoder] = ()) -> BuildReport:
    """Build (or resume, or incrementally rebuild) the index for ``manifest`` in ``out``.

    ``rerank_encoders``: other text towers whose embeddings of every row are stored beside the
    index (a rerank cache), so the service never re-embeds a known text.
    """
    import faiss
    import polars as pl

    opts = options or BuildOptions()
    out = Path(out)
    timings: dict[str, float] = {}
    with _exclusive(out):
        t = time.perf_counter()
        sources = read_manifest(manifest)
        keep = dedup_across(sources, manifest.dedup.near)
        timings["read_s"] = time.perf_counter() - t
        # rows grouped by kind, in the order kinds first appear in the manifest
        kinds: list[str] = list(dict.fromkeys(st.source.kind for st in sources))
        ordered = [(st, rows) for kind in kinds for st, rows in zip(sources, keep) if st.source.kind == kind]
        n = sum(len(rows) for _, rows in ordered)
        if n == 0:
            raise ManifestError(f"manifest {manifest.name!r} yields no texts after filtering")
        choice = choose_index(n, encoder.dim, opts.memory_budget, opts.exact_max, opts.reduce_to, opts.opq, opts.factory)
        check_trainable(new_index(encoder.dim, choice), n)  # a bad factory or too few texts: refused before embedding

        t = time.perf_counter()
        shard_root = out / SHARD_DIR
        embedded = embedding.embed_sources(
            sources, encoder, shard_root, opts.shard_size, runner=opts.runner, progress=opts.progress
        )
        for extra in rerank_encoders:
            extra_counts = embedding.embed_sources(
                sources, extra, shard_root, opts.shard_size, progress=opts.progress
            )
            for name, count in extra_counts.items():
                embedded[name] += count
        timings["embed_s"] = time.perf_counter() - t


        def chunks(model_id: str = encoder.model_id) -> Iterator[np.ndarray]:
            for st, rows in ordered:
                vectors = embedding.load_source_vectors(shard_root, model_id, st, opts.shard_size)
                yield l2_normalize(vectors[rows].astype(np.float32))

        build_id = hashlib.sha256(
            json.dumps([manifest.digest(), encoder.model_id, [e.model_id for e in rerank_encoders], choice.factory,
                        [(st.source.name, st.content_hash) for st, _ in ordered]]).encode()
        ).hexdigest()[:12]

        t = time.perf_counter()
        index = new_index(encoder.dim, choice)
        vec_path = out / f".vectors-{build_id}.npy.tmp"
        vectors_mm = None
        if not choice.exact:
            vectors_mm = _write_rows(vec_path, n, encoder.dim, chunks())
            train(index, vectors_mm[sample_rows(n)].astype(np.float32))
        timings["train_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if vectors_mm is not None:
            fill(index, (vectors_mm[s : s + 65536] for s in range(0, n, 65536)))
        else:
            fill(index, chunks())
        set_nprobe(index, choice.nprobe)
        timings["add_s"] = time.perf_counter() - t

        t = time.perf_counter()
        texts, kinds_col, source_col, kind_ranges, source_entries = [], [], [], {}, []
        for st, rows in ordered:
            start = len(texts)
            texts.extend(st.texts[i] for i in rows)
            kinds_col.extend([st.source.kind] * len(rows))
            source_col.extend([st.source.name] * len(rows))
            lo, hi = kind_ranges.get(st.source.kind, (start, start))
            kind_ranges[st.source.kind] = (min(lo, start), len(texts))
            source_entries.append(SourceEntry(name=st.source.name, kind=st.source.kind,
                                              content_hash=st.content_hash, count=len(rows)))
        files: dict[str, FileEntry] = {}

        def commit_file(role: str, final_name: str) -> None:
            final = out / final_name
            files[role] = FileEntry(path=final_name, bytes=final.stat().st_size, sha256=sha256_file(final))

        with atomic_write(out / f"index-{build_id}.faiss") as tmp:
            faiss.write_index(index, str(tmp))
        commit_file("index", f"index-{build_id}.faiss")
        with atomic_write(out / f"meta-{build_id}.parquet") as tmp:
            pl.DataFrame({"text": texts, "kind": kinds_col, "source": source_col}).write_parquet(tmp)
        commit_file("meta", f"meta-{build_id}.parquet")
        if vectors_mm is not None:
            del vectors_mm
            vec_path.replace(out / f"vectors-{build_id}.npy")
            commit_file("vectors", f"vectors-{build_id}.npy")
        rerank_caches: dict[str, str] = {}
        for extra in rerank_encoders:
            role = f"rerank-{embedding.model_key(extra.model_id)}"
            with atomic_write(out / f"{role}-{build_id}.npy") as tmp:
                _write_rows(tmp, n, extra.dim, chunks(extra.model_id))  # flushed; the map closes when dropped
            commit_file(role, f"{role}-{build_id}.npy")
            rerank_caches[extra.model_id] = role
        timings["write_s"] = time.perf_counter() - t

        record = BuildRecord(
            build_id=build_id, name=manifest.name, model_id=encoder.model_id, dim=encoder.dim, count=n,
            factory=choice.factory, exact=choice.exact, rerank_caches=rerank_caches, kinds=kind_ranges, files=files, sources=source_entries,
            manifest_hash=manifest.digest(), timings_s={k: round(v, 3) for k, v in timings.items()},
            versions=_versions(), created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        write_bytes_atomic(out / RECORD_NAME, record.model_dump_json(indent=2).encode())  # the commit point
        for model_id in [encoder.model_id, *(e.model_id for e in rerank_encoders)]:
            _collect_garbage(out, build_id, shard_root, model_id, [st for st, _ in ordered])
        return BuildReport(out, record, embedded, choice, timings)


def _write_rows(path: Path, n: int, dim: int, blocks: Iterator[np.ndarray]) -> np.ndarray:
    """Stream row blocks into a float16 .npy file; returns it memory-mapped."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    offset = 0
    for block in blocks:
        array[offset : offset + len(block)] = block
        offset += len(block)
    array.flush()
    return array


def _collect_garbage(out: Path, build_id: str, shard_root: Path, model_id: str, used: list[SourceTexts]) -> None:
    for path in out.iterdir():
        stale_file = path.name.split("-", 1)[0] in ("index", "meta", "vectors", "rerank") and build_id not in path.name
        leftover_tmp = path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)  # from a killed build
        if path.is_file() and (stale_file or leftover_tmp):
            path.unlink(missing_ok=True)
    model_dir = shard_root / embedding.model_key(model_id)
    wanted = {embedding.source_shard_dir(shard_root, model_id, st).name for st in used}
    if model_dir.is_dir():
        for d in model_dir.iterdir():
            if d.is_dir() and d.name not in wanted:
                shutil.rmtree(d, ignore_errors=True)
