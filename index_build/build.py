"""Orchestrator: manifest -> texts -> embeddings (sharded, resumable) -> FAISS index -> index directory.

Every stage streams: texts are staged as parquet parts, embedded one shard at a time, copied shard by shard
into a float16 vectors file (plain writes, no memory map), and added to FAISS in chunks; the metadata is
written by polars' streaming engine. Peak memory is the FAISS index itself plus bounded buffers and 8 bytes a row of dedup
keys. The directory format, and its commit by one rename of ``build.json``, is ``retriever.index_files``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import importlib.metadata
import json
import time
import warnings
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
from index_build.read import SourceTexts, read_manifest
from retriever.encoders.base import TextEncoder, l2_normalize
from retriever.errors import ManifestError, UnpromptError, UnpromptWarning
from retriever.index_files import BuildRecord, IndexWriter, SourceEntry

SHARD_DIR = ".shards"
TEXT_DIR = ".texts"
ADD_CHUNK = 65536


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
    """Installed versions of what shapes an index; ``faiss`` is the library that wrote it (whichever wheel: the
    CPU one, or a GPU flavour such as faiss-gpu-cu12, listed under its own name)."""
    import faiss

    out = {"faiss": faiss.__version__}
    for dist in ("unprompt", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "torch", "open_clip_torch",
                 "sentence-transformers", "polars"):
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
    stage = opts.on_stage or (lambda name: None)
    with _exclusive(out):
        stage("read")
        t = time.perf_counter()
        sources = _drop_empty(read_manifest(manifest, out / TEXT_DIR, opts.shard_size, opts.progress))
        timings["read_s"] = time.perf_counter() - t
        # rows grouped by kind, in the order kinds first appear in the manifest
        kinds: list[str] = list(dict.fromkeys(st.source.kind for st in sources))
        ordered = [st for kind in kinds for st in sources if st.source.kind == kind]
        n = sum(st.count for st in ordered)
        if n == 0:
            raise ManifestError(f"manifest {manifest.name!r} yields no texts after filtering")
        choice = choose_index(n, encoder.dim, opts.memory_budget, opts.exact_max, opts.reduce_to, opts.opq, opts.factory,
                              opts.gpus > 0)
        check_trainable(new_index(encoder.dim, choice), n)  # a bad factory or too few texts: refused before embedding

        stage("embed")
        t = time.perf_counter()
        shard_root = out / SHARD_DIR
        embedded = embedding.embed_sources(sources, encoder, shard_root, opts.shard_size, runner=opts.runner,
                                           progress=opts.progress)
        for extra in rerank_encoders:
            for name, count in embedding.embed_sources(sources, extra, shard_root, opts.shard_size,
                                                       runner=opts.runner, progress=opts.progress).items():
                embedded[name] += count
        timings["embed_s"] = time.perf_counter() - t

        def blocks(model_id: str = encoder.model_id) -> Iterator[np.ndarray]:
            for st in ordered:
                for shard in embedding.source_vectors(shard_root, model_id, st, opts.shard_size):
                    yield l2_normalize(shard.astype(np.float32))

        build_id = hashlib.sha256(
            json.dumps([manifest.digest(), encoder.model_id, [e.model_id for e in rerank_encoders], choice.factory,
                        [(st.source.name, st.content_hash) for st in ordered]]).encode()
        ).hexdigest()[:12]
        writer = IndexWriter(out, build_id)

        index = new_index(encoder.dim, choice)
        stage("train" if not choice.exact else "add")
        t = time.perf_counter()
        if choice.exact:
            fill(index, blocks())
        else:  # the vectors go to disk first: IVF trains on a sample of them, then adds them in chunks
            with writer.file("vectors", ".npy") as tmp:
                _write_rows(tmp, n, encoder.dim, blocks())
                train(index, _sample_rows(tmp, sample_rows(n)), opts.gpus)
                timings["train_s"] = time.perf_counter() - t
                stage("add")
                t = time.perf_counter()
                fill(index, (block for _, block in _read_rows(tmp)))
        set_nprobe(index, choice.nprobe)
        timings["add_s"] = time.perf_counter() - t

        stage("write")
        t = time.perf_counter()
        with writer.file("index", ".faiss") as tmp:
            faiss.write_index(index, str(tmp))
        del index
        with writer.file("meta", ".arrow") as tmp:
            pl.concat([pl.scan_parquet(st.parts()).select(
                "text", pl.lit(st.source.kind, pl.Categorical).alias("kind"),
                pl.lit(st.source.name, pl.Categorical).alias("source"))
                for st in ordered]).sink_ipc(tmp)
        rerank_caches: dict[str, str] = {}
        for extra in rerank_encoders:
            role = f"rerank-{embedding.model_key(extra.model_id)}"
            with writer.file(role, ".npy") as tmp:
                _write_rows(tmp, n, extra.dim, blocks(extra.model_id))
            rerank_caches[extra.model_id] = role
        timings["write_s"] = time.perf_counter() - t

        kind_ranges: dict[str, tuple[int, int]] = {}
        row = 0
        for st in ordered:  # grouped by kind: each kind's rows are one span
            kind_ranges[st.source.kind] = (kind_ranges.get(st.source.kind, (row, row))[0], row + st.count)
            row += st.count
        record = writer.commit(BuildRecord(
            build_id=build_id, name=manifest.name, model_id=encoder.model_id, dim=encoder.dim, count=n,
            factory=choice.factory, exact=choice.exact, rerank_caches=rerank_caches, kinds=kind_ranges, files={},
            sources=[SourceEntry(name=st.source.name, kind=st.source.kind, content_hash=st.content_hash,
                                 count=st.count) for st in ordered],
            manifest_hash=manifest.digest(), timings_s={k: round(v, 3) for k, v in timings.items()},
            versions=_versions(), gpus=opts.gpus, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ), keep_dirs=_work_in_use(shard_root, ordered, [encoder, *rerank_encoders]))
        stage("done")
        return BuildReport(out, record, embedded, choice, timings)


def _drop_empty(sources: list[SourceTexts]) -> list[SourceTexts]:
    """Sources that kept texts; each one that kept none (all blocked, empty, too long, or already given by an
    earlier source) is reported as a warning and left out of the index, before anything is embedded."""
    for st in sources:
        if st.count == 0:
            warnings.warn(UnpromptWarning(f"source {st.source.name!r} keeps no texts after filtering and "
                                          f"deduplication; it is left out of the index"), stacklevel=2)
    return [st for st in sources if st.count]


def _write_rows(path: Path, n: int, dim: int, blocks: Iterator[np.ndarray]) -> None:
    """Stream row blocks into a float16 .npy file with plain writes: no memory map, so the file's pages are
    the page cache's, never the build's resident memory."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": (n, dim)}
    written = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for block in blocks:
            f.write(np.ascontiguousarray(block, dtype=np.float16).tobytes())
            written += len(block)
    if written != n:
        raise UnpromptError(f"wrote {written} vectors to {path.name}, expected {n}")


def _read_rows(path: Path, chunk: int = ADD_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 block) of a float16 .npy file, read in order with plain reads."""
    with open(path, "rb") as f:
        shape, dtype = embedding.read_npy_header(f)
        for start in range(0, shape[0], chunk):
            rows = min(chunk, shape[0] - start)
            yield start, np.fromfile(f, dtype=dtype, count=rows * shape[1]).reshape(rows, shape[1]).astype(np.float32)


def _sample_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """The given (sorted) rows of a float16 .npy file, as float32, in one sequential pass."""
    picked = []
    for start, block in _read_rows(path):
        inside = rows[(rows >= start) & (rows < start + len(block))]
        picked.append(block[inside - start])
    return np.concatenate(picked)


def _work_in_use(shard_root: Path, used: list[SourceTexts], encoders: Sequence[TextEncoder]) -> dict[str, set[str]]:
    """What the work folders must keep after a commit: the staged texts and shards of this build's sources."""
    keep = {TEXT_DIR: {st.directory.name for st in used}}
    for enc in encoders:
        keep[f"{SHARD_DIR}/{embedding.model_key(enc.model_id)}"] = {embedding.source_shard_dir(shard_root, enc.model_id, st).name for st in used}
    return keep
