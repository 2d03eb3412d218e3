"""Mapper + writer: embed each source's texts in shards that are written as they finish.

Shards live under ``<shard_root>/<model>/<source>-<content_hash>/NNNNNN.npy`` and are
written to a temporary name, then renamed, so a shard on disk is always complete. A build
killed at any moment resumes at the first missing shard; a source whose texts did not
change (same content hash) is not embedded again. A shard whose header or size is wrong
(truncated or damaged on disk) is removed and embedded again.
"""

from __future__ import annotations

import hashlib
from itertools import chain
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from index_build.options import DEFAULT_SHARD_SIZE
from index_build.read import SourceTexts
from retriever.encoders.base import TextEncoder
from retriever.errors import IndexIntegrityError
from retriever.files import atomic_write


def model_key(model_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:60]
    return f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def source_shard_dir(shard_root: Path, model_id: str, st: SourceTexts) -> Path:
    return shard_root / model_key(model_id) / f"{st.source.name}-{st.content_hash}"


def _save_shard(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def read_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an open .npy file, which is left at the first data byte."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    return shape, dtype


def _shard_ok(path: Path, rows: int) -> bool:
    """A complete float16 shard of ``rows`` vectors: the header reads, and the file is exactly as long as it says."""
    try:
        with open(path, "rb") as f:
            shape, dtype = read_npy_header(f)
            data_start = f.tell()
        size = path.stat().st_size
    except Exception:  # a damaged header raises OSError, ValueError, SyntaxError, TokenError, ...
        return False
    return (len(shape) == 2 and shape[0] == rows and dtype == np.float16
            and size == data_start + shape[0] * shape[1] * dtype.itemsize)


def shard_count(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


def missing_shards(directory: Path, n: int, shard_size: int) -> list[int]:
    """Shards not on disk, or on disk but damaged (those are removed, to be embedded again)."""
    missing = []
    for i in range(shard_count(n, shard_size)):
        path = directory / f"{i:06d}.npy"
        if not _shard_ok(path, min(shard_size, n - i * shard_size)):
            path.unlink(missing_ok=True)
            missing.append(i)
    return missing


EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class ShardJob:
    """One shard to embed: the texts of one staged part, read when the job runs (never all at once)."""

    source: str
    path: Path  # where the shard goes
    part: Path  # the staged texts
    rows: int
    model_id: str = ""  # the text tower that embeds it (a runner with several towers picks by it)

    def texts(self) -> list[str]:
        import polars as pl

        return pl.read_parquet(self.part)["text"].to_list()


class Runner(Protocol):
    """Maps shard jobs to vectors, yielding each (job, vectors) as it finishes, in any order."""

    def run(self, jobs: list[ShardJob]) -> Iterator[tuple[ShardJob, np.ndarray]]: ...


class LocalRunner:
    def __init__(self, embed: EmbedFn) -> None:
        self.embed = embed

    def run(self, jobs: list[ShardJob]) -> Iterator[tuple[ShardJob, np.ndarray]]:
        for job in jobs:
            yield job, np.asarray(self.embed(job.texts()))


def plan_jobs(sources: list[SourceTexts], model_id: str, shard_root: Path, shard_size: int) -> list[ShardJob]:
    """Reader side: one job per shard that is not on disk yet."""
    jobs = []
    for st in sources:
        directory = source_shard_dir(shard_root, model_id, st)
        for i in missing_shards(directory, st.count, shard_size):
            jobs.append(ShardJob(st.source.name, directory / f"{i:06d}.npy", st.part(i),
                                 min(shard_size, st.count - i * shard_size), model_id))
    return jobs


CALIBRATE_MIN_TEXTS = 16384  # builds smaller than this keep the encoder's default batch
TOKEN_BUDGETS = (256, 512, 1024, 2048)  # 4096 and 8192 were never fastest (bench/results/lite-build-cpu.txt)


def calibrated_embed(encoder: TextEncoder, texts: Sequence[str],
                     budgets: Sequence[int] = TOKEN_BUDGETS) -> tuple[np.ndarray, dict[int, float]]:
    """Embed ``texts`` (a build's largest shard, embedded first) and pick, on the way, the batch size (tokens
    per batch, for an encoder that batches by ``token_budget``) this CPU runs fastest.

    Each candidate embeds its own interleaved share of the texts (every k-th text: the same mix of lengths), so
    the timing costs no extra work; the fastest is set on the encoder. Returns the vectors in input order and
    the texts/s of each candidate (empty for encoders that batch otherwise). Results do not depend on the batch
    size (batches of similar length; tests/test_minilm.py)."""
    import time

    if not getattr(encoder, "exact_fast_path", False) or len(texts) < 2 * len(budgets):
        return np.asarray(encoder.encode_text(list(texts)), dtype=np.float32), {}
    encoder.encode_text(list(texts[:32]))  # warm-up: first calls allocate
    k = len(budgets)
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    rates = {}
    for i, budget in enumerate(budgets):
        encoder.token_budget = budget
        t = time.perf_counter()
        out[i::k] = encoder.encode_text(list(texts[i::k]))
        rates[budget] = len(range(i, len(texts), k)) / max(time.perf_counter() - t, 1e-9)
    encoder.token_budget = max(rates, key=rates.__getitem__)
    return out, rates


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
    total = sum(j.rows for j in jobs)
    for job in jobs:
        job.path.parent.mkdir(parents=True, exist_ok=True)
    calibrate = 1 if runner is None and total >= CALIBRATE_MIN_TEXTS else 0
    if calibrate:  # the largest shard goes first and picks the batch size as it embeds
        jobs.insert(0, jobs.pop(max(range(len(jobs)), key=lambda i: jobs[i].rows)))
    first = ((job, calibrated_embed(encoder, job.texts())[0]) for job in jobs[:calibrate])
    with tqdm(total=total, unit="text", unit_scale=True, desc=f"embed ({encoder.model_id})",
              disable=not progress or total == 0, smoothing=0.1) as bar:
        for job, vectors in chain(first, (runner or LocalRunner(encoder.encode_text)).run(jobs[calibrate:])):
            vectors = np.asarray(vectors, dtype=np.float16)
            if vectors.shape != (job.rows, encoder.dim):
                raise IndexIntegrityError(f"encoder returned {vectors.shape} for {job.rows} texts of dim {encoder.dim}")
            _save_shard(job.path, vectors)
            embedded[job.source] += job.rows
            bar.set_postfix_str(job.source)
            bar.update(job.rows)
    return embedded


def source_vectors(shard_root: Path, model_id: str, st: SourceTexts, shard_size: int) -> Iterator[np.ndarray]:
    """A source's vectors, one shard at a time (float16, in row order)."""
    directory = source_shard_dir(shard_root, model_id, st)
    for i in range(shard_count(st.count, shard_size)):
        shard = np.load(directory / f"{i:06d}.npy")
        if len(shard) != min(shard_size, st.count - i * shard_size):
            raise IndexIntegrityError(f"shard {i} of {st.source.name} holds {len(shard)} vectors; rebuild")
        yield shard
