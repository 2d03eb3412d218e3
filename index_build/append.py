"""Append: add a manifest's texts to an existing build without retraining, as a new generation.

The new sources are read as any build reads them, deduplicated against every text the build already holds
(exact, or near-duplicate keys when the manifest asks), and embedded in resumable shards by the build's own
text tower (an append is refused when the profile's tower or rerank towers are not the build's). The FAISS
index is a copy of the build's, trained state kept, refilled in the new row order: rows stay grouped by kind
(each kind's old rows, then its new ones), so a search limited to one kind stays one range. The new
generation's files get new names; its ``build.json`` commit is one rename, and the previous generation's record
and files are kept (``build-<id>.json``) for ``rollback``. A kill at any point leaves the previous generation
committed and whole.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from index_build import embed as embedding
from index_build.build import SHARD_DIR, TEXT_DIR, BuildReport, _exclusive, _read_rows, _versions, _write_rows
from index_build.faiss_build import fill
from index_build.choose import IndexChoice
from index_build.manifest import Manifest
from index_build.options import BuildOptions
from index_build.read import HASH_SEED, SeenKeys, near_key, stage_source
from retriever.encoders.base import TextEncoder, l2_normalize
from retriever.errors import IndexIntegrityError, ManifestError
from retriever.index import TextIndex
from retriever.index_files import BuildRecord, IndexWriter, SourceEntry

READ_CHUNK = 65536


def append_index(manifest: Manifest, encoder: TextEncoder, out: str | Path, options: BuildOptions | None = None,
                 rerank_encoders: Sequence[TextEncoder] = ()) -> BuildReport:
    import faiss
    import polars as pl

    opts = options or BuildOptions()
    out = Path(out)
    stage = opts.on_stage or (lambda name: None)
    timings: dict[str, float] = {}
    with _exclusive(out):
        old = TextIndex.load(out)
        rec = old.record
        _check_same_models(rec, encoder, rerank_encoders, out)
        stage("read")
        t = time.perf_counter()
        seen = SeenKeys()
        key = near_key(pl.col("text")) if manifest.dedup.near else pl.col("text")
        seen.keep_new(old.texts.to_frame("text").select(key.hash(HASH_SEED)).to_series().to_numpy())
        added = [stage_source(s, manifest.base_dir, manifest.dedup.near, seen, out / TEXT_DIR, opts.shard_size,
                              opts.progress) for s in manifest.sources]
        added = [st for st in added if st.count]
        timings["read_s"] = time.perf_counter() - t
        if not added:
            raise ManifestError(f"nothing to append to {out}: every text of {manifest.name!r} is already in build "
                                f"{rec.build_id} (or filtered out)")
        stage("embed")
        t = time.perf_counter()
        shard_root = out / SHARD_DIR
        embedded = embedding.embed_sources(added, encoder, shard_root, opts.shard_size, runner=opts.runner,
                                           progress=opts.progress)
        for extra in rerank_encoders:
            embedding.embed_sources(added, extra, shard_root, opts.shard_size, progress=opts.progress)
        timings["embed_s"] = time.perf_counter() - t

        kinds = list(dict.fromkeys([*rec.kinds, *(st.source.kind for st in added)]))
        plan = [(kind, rec.kinds.get(kind), [st for st in added if st.source.kind == kind]) for kind in kinds]
        n = rec.count + sum(st.count for st in added)

        def blocks(model_id: str, old_rows) -> Iterator[np.ndarray]:
            """Every row's vectors in the new order: each kind's old rows, then its appended ones."""
            for _, span, new in plan:
                if span:
                    for start in range(span[0], span[1], READ_CHUNK):
                        yield old_rows(np.arange(start, min(start + READ_CHUNK, span[1])))
                for st in new:
                    for shard in embedding.source_vectors(shard_root, model_id, st, opts.shard_size):
                        yield l2_normalize(shard.astype(np.float32))

        own_rows = old.embeddings_for(rec.model_id)
        if own_rows is None:
            raise IndexIntegrityError(f"index {out} keeps no copy of its vectors (approximate, no vectors file): an "
                                      "append cannot refill it; rebuild with the new sources in the manifest")
        build_id = hashlib.sha256(json.dumps([rec.build_id, manifest.digest(),
                                              [(st.source.name, st.content_hash) for st in added]]).encode()
                                  ).hexdigest()[:12]
        writer = IndexWriter(out, build_id)
        stage("add")
        t = time.perf_counter()
        index = faiss.deserialize_index(faiss.serialize_index(old.index))  # trained state, no rows shared
        index.reset()
        if "vectors" in rec.files:
            with writer.file("vectors", ".npy") as tmp:
                _write_rows(tmp, n, rec.dim, blocks(rec.model_id, own_rows))
            fill(index, (block for _, block in _read_rows(out / writer.name("vectors", ".npy"))))
        else:
            fill(index, blocks(rec.model_id, own_rows))
        timings["add_s"] = time.perf_counter() - t

        stage("write")
        t = time.perf_counter()
        with writer.file("index", ".faiss") as tmp:
            faiss.write_index(index, str(tmp))
        del index
        frames = []
        old_meta = pl.scan_ipc(out / rec.files["meta"].path).select(
            "text", pl.col("kind").cast(pl.String), pl.col("source").cast(pl.String))
        for kind, span, new in plan:
            if span:
                frames.append(old_meta.slice(span[0], span[1] - span[0]).collect())
            frames.extend(pl.read_parquet(st.parts()).select(
                "text", pl.lit(kind).alias("kind"), pl.lit(st.source.name).alias("source")) for st in new)
        with writer.file("meta", ".arrow") as tmp:
            pl.concat(frames).with_columns(pl.col("kind").cast(pl.Categorical),
                                           pl.col("source").cast(pl.Categorical)).write_ipc(tmp)
        for extra in rerank_encoders:
            role = rec.rerank_caches[extra.model_id]
            cache = old.embeddings_for(extra.model_id)
            with writer.file(role, ".npy") as tmp:
                _write_rows(tmp, n, extra.dim, blocks(extra.model_id, cache))
        timings["write_s"] = time.perf_counter() - t

        ranges, row = {}, 0
        for kind, span, new in plan:
            size = (span[1] - span[0] if span else 0) + sum(st.count for st in new)
            ranges[kind], row = (row, row + size), row + size
        stage("commit")
        record = writer.commit(rec.model_copy(update=dict(
            build_id=build_id, count=n, kinds=ranges, parent=rec.build_id, appended=[st.source.name for st in added],
            sources=[*rec.sources, *(SourceEntry(name=st.source.name, kind=st.source.kind,
                                                 content_hash=st.content_hash, count=st.count) for st in added)],
            timings_s={k: round(v, 3) for k, v in timings.items()}, versions=_versions(),
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))),
            keep_dirs={},  # the work folders keep every generation's texts and shards (resume, rebuilds)
            keep_parent=rec)
        stage("done")
        return BuildReport(out, record, embedded, IndexChoice(rec.factory, rec.exact, 0, "appended: no retraining"),
                           timings)


def _check_same_models(rec: BuildRecord, encoder: TextEncoder, rerank_encoders: Sequence[TextEncoder],
                       out: Path) -> None:
    if rec.model_id != encoder.model_id or rec.dim != encoder.dim:
        raise IndexIntegrityError(f"index {out} was built with {rec.model_id} ({rec.dim}-d); the profile embeds with "
                                  f"{encoder.model_id} ({encoder.dim}-d): an append needs the same model "
                                  "(use the profile that built it, or rebuild)")
    wanted = {e.model_id for e in rerank_encoders}
    if wanted != set(rec.rerank_caches):
        raise IndexIntegrityError(f"index {out} stores rerank vectors of {sorted(rec.rerank_caches) or 'no model'}; "
                                  f"the profile reranks with {sorted(wanted) or 'the retrieval model'}: an append "
                                  "needs the same models")
