"""Train and fill a FAISS index chunk by chunk (GPU when faiss has one, CPU otherwise)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from index_build.choose import IndexChoice

TRAIN_SAMPLE = 256 * 1024
SEED = 1234


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def new_index(dim: int, choice: IndexChoice):
    import faiss

    return faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)


def train(index, sample: np.ndarray) -> None:
    """Train on a sample; on a GPU when there is one (the trained index is moved back to the CPU)."""
    import faiss

    if index.is_trained:
        return
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and gpu_count() > 0:
        # k-means of the coarse quantiser on the GPU; the rest of training is cheap
        clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
        ivf.clustering_index = clustering_index
    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    index.train(sample)


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
