"""Train and fill a FAISS index chunk by chunk (GPU when faiss has one, CPU otherwise)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from index_build.choose import IndexChoice
from retriever.errors import UnpromptError

TRAIN_SAMPLE = 256 * 1024
SEED = 1234


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else exc.__class__.__name__)[:300]


def new_index(dim: int, choice: IndexChoice):
    import faiss

    try:
        return faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise UnpromptError(f"FAISS cannot make index {choice.factory!r} for {dim}-d vectors: {_first_line(exc)}") from None


def check_trainable(index, n: int) -> None:
    """Refuse an IVF index with more lists than there are texts to train it (FAISS would fail late)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and not index.is_trained and min(n, TRAIN_SAMPLE) < ivf.nlist:
        raise UnpromptError(
            f"{n} texts cannot train an IVF index of {ivf.nlist} lists; give a --factory with fewer lists "
            f"(at most {n}, ideally under {max(1, n // 39)}) or let the build choose exact search")


def train(index, sample: np.ndarray, gpus: int = 0) -> None:
    """Train on a sample; the coarse k-means on ``gpus`` GPUs when there are some (the index stays on the CPU)."""
    import faiss

    if index.is_trained:
        return
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        # index_factory's 8-bit IVF-PQ anneals a polysemous code order (about 5 s per sub-quantizer, on the CPU,
        # whatever the sample): it serves only a CPU Hamming pre-filter (polysemous_ht) that is never set here,
        # and the GPU IVF-PQ refuses it; the codes are the same without it
        faiss.downcast_index(ivf).do_polysemous_training = False
    if ivf is not None and gpus > 0:
        # k-means of the coarse quantiser on the GPUs (a flat index: replicated on each); the rest is cheap
        clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d), ngpu=gpus)
        ivf.clustering_index = clustering_index
    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    try:
        index.train(sample)
    except RuntimeError as exc:
        raise UnpromptError(f"FAISS could not train the index on {len(sample)} vectors: {_first_line(exc)}") from None


def sample_rows(n: int, size: int = TRAIN_SAMPLE, seed: int = SEED) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))


def fill(index, chunks: Iterable[np.ndarray]) -> None:
    for chunk in chunks:
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))


def set_nprobe(index, nprobe: int) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
