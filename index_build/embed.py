"""Mapper + writer: embed each source's texts in shards that are written as they finish.

Shards live under ``<shard_root>/<model>/<source>-<content_hash>/NNNNNN.npy`` and are
written to a temporary name, then renamed, so a shard on disk is always complete. A build
killed at any moment resumes at the first missing shard; a source whose texts did not
change (same content hash) is not embedded again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from index_build.read import SourceTexts
from retriever.encoders.base import TextEncoder

DEFAULT_SHARD_SIZE = 8192


def model_key(model_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:60]
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def source_shard_dir(shard_root: Path, model_id: str, st: SourceTexts) -> Path:
    return shard_root / model_key(model_id) / f"{st.source.name}-{st.content_hash}"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def shard_count(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


def missing_shards(directory: Path, n: int, shard_size: int) -> list[int]:
    return [i for i in range(shard_count(n, shard_size)) if not (directory / f"{i:06d}.npy").is_file()]


EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class ShardJob:
    source: str
    path: Path
    texts: list[str]


class Runner(Protocol):
    """Maps shard jobs to vectors, yielding each (job, vectors) as it finishes, in any order."""

    def run(self, jobs: list[ShardJob]) -> Iterator[tuple[ShardJob, np.ndarray]]: ...


class LocalRunner:
    def __init__(self, embed: EmbedFn) -> None:
        self.embed = embed

    def run(self, jobs: list[ShardJob]) -> Iterator[tuple[ShardJob, np.ndarray]]:
        for job in jobs:
            yield job, np.asarray(self.embed(job.texts))


def plan_jobs(sources: list[SourceTexts], model_id: str, shard_root: Path, shard_size: int) -> list[ShardJob]:
    """Reader side: one job per shard that is not on disk yet."""
    jobs = []
    for st in sources:
        directory = source_shard_dir(shard_root, model_id, st)
        for i in missing_shards(directory, len(st.texts), shard_size):
            jobs.append(ShardJob(st.source.name, directory / f"{i:06d}.npy",
                                 st.texts[i * shard_size : (i + 1) * shard_size]))
    return jobs


def embed_sources(
    sources: list[SourceTexts],
    encoder: TextEncoder,
    shard_root: Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    runner: Runner | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Embed what is missing (writer side: each shard saved atomically as it arrives).

    Returns the number of texts embedded per source (0 = all reused)."""
    jobs = plan_jobs(sources, encoder.model_id, shard_root, shard_size)
    embedded = {st.source.name: 0 for st in sources}
    total = sum(len(j.texts) for j in jobs)
    for job in jobs:
        job.path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=total, unit="text", unit_scale=True, desc=f"embed ({encoder.model_id})",
              disable=not progress or total == 0, smoothing=0.1) as bar:
        for job, vectors in (runner or LocalRunner(encoder.encode_text)).run(jobs):
            vectors = np.asarray(vectors, dtype=np.float16)
            if vectors.shape != (len(job.texts), encoder.dim):
                raise RuntimeError(f"encoder returned {vectors.shape} for {len(job.texts)} texts of dim {encoder.dim}")
            _atomic_save(job.path, vectors)
            embedded[job.source] += len(job.texts)
            bar.set_postfix_str(job.source)
            bar.update(len(job.texts))
    return embedded


def load_source_vectors(shard_root: Path, model_id: str, st: SourceTexts, shard_size: int) -> np.ndarray:
    directory = source_shard_dir(shard_root, model_id, st)
    parts = [np.load(directory / f"{i:06d}.npy") for i in range(shard_count(len(st.texts), shard_size))]
    if not parts:
        return np.zeros((0, 0), dtype=np.float16)
    out = np.concatenate(parts)
    if len(out) != len(st.texts):
        raise RuntimeError(f"shards of {st.source.name} hold {len(out)} vectors for {len(st.texts)} texts")
    return out
