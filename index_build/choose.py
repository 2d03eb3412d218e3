"""Choose a FAISS index from the vector count and a memory budget, as autofaiss reasons.

* Few enough vectors, and fp16 copies fit the budget: exact search over fp16 vectors (``SQfp16``).
* Otherwise IVF with 4-bit fast-scan product quantisation, sized from the count: about sqrt(n)
  lists, and the largest PQ code that fits the budget; optional OPQ rotation or PCA reduction first.
  Exact rescoring of the shortlist from the stored vectors restores the top of the ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True)
class IndexChoice:
    factory: str
    exact: bool
    nprobe: int
    reason: str


def _pq_subquantizers(dim: int, bytes_per_vector: float) -> int:
    """Most 4-bit PQ sub-quantizers (two per byte) that divide dim, fit the budget, and keep >= 2 dims each."""
    options = [m for m in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if dim % m == 0 and m <= dim // 2]
    fitting = [m for m in options if m / 2 <= bytes_per_vector]
    return max(fitting) if fitting else min(options or [8])


def _gpu_subquantizers(dim: int, bytes_per_vector: float) -> int:
    """Most 8-bit PQ sub-quantizers (one byte each) that faiss's GPU IVF-PQ takes, divide dim and fit the budget."""
    options = [m for m in (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96) if dim % m == 0]
    fitting = [m for m in options if m <= bytes_per_vector]
    return max(fitting) if fitting else min(options)


def choose_index(
    n: int,
    dim: int,
    memory_budget: int = 4 * GiB,
    exact_max: int = 1_000_000,
    reduce_to: int | None = None,
    opq: bool = False,
    factory: str | None = None,
    gpu: bool = False,
) -> IndexChoice:
    """``gpu``: the index will be searched by faiss on GPUs, which have no fast-scan kernel: 8-bit PQ codes
    (sub-quantizer counts the GPU IVF-PQ supports) and a flat coarse quantizer instead."""
    if factory:
        exact = "IVF" not in factory and "HNSW" not in factory and "PQ" not in factory
        return IndexChoice(factory, exact, nprobe=32, reason="given with --factory")
    flat_bytes = n * dim * 2
    if n <= exact_max and flat_bytes <= memory_budget:
        return IndexChoice("SQfp16", True, 1, f"{n} vectors x {dim}-d fp16 = {flat_bytes / GiB:.2f} GiB fits; exact")
    # about sqrt(n) lists: with 4-bit fast-scan codes, scanning fuller lists is cheap
    nlist = 2 ** round(math.log2(max(math.sqrt(n), 64)))
    nlist = max(16, min(nlist, 65536, max(n // 39, 16)))
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 4096 and not gpu else f"IVF{nlist}"  # HNSW assignment: fast adds
    d = reduce_to or dim
    per_vector = memory_budget / max(n, 1) - 8  # 8 bytes of id per vector in the inverted lists
    m = _gpu_subquantizers(d, per_vector) if gpu else _pq_subquantizers(d, per_vector)
    prefix = f"PCAR{d}," if reduce_to and reduce_to < dim else (f"OPQ{m}," if opq else "")
    # half the lists, at most 1024: on the real MiniLM vectors of the 106k components (bench/recall_real.py) recall@60
    # is bound by the probed lists, not by PQ or rescoring: nlist/8 gave 0.915 (texts) and 0.855 (image queries),
    # nlist/4 0.954 and 0.941, nlist/2 0.985 and 0.986. Real vectors spread wider than synthetic ones.
    nprobe = max(32, min(nlist // 2, 1024))
    return IndexChoice(
        f"{prefix}{coarse},PQ{m}" + ("" if gpu else "x4fs"),
        False,
        nprobe,
        f"{n} vectors: fp16 flat needs {flat_bytes / GiB:.2f} GiB (budget {memory_budget / GiB:.2f}) or passes "
        f"--exact-max {exact_max}; IVF{nlist} with {m} {8 if gpu else 4}-bit PQ codes, shortlist rescored from stored "
        f"vectors",
    )
