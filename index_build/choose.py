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


def choose_index(
    n: int,
    dim: int,
    memory_budget: int = 4 * GiB,
    exact_max: int = 1_000_000,
    reduce_to: int | None = None,
    opq: bool = False,
    factory: str | None = None,
) -> IndexChoice:
    if factory:
        exact = "IVF" not in factory and "HNSW" not in factory and "PQ" not in factory
        return IndexChoice(factory, exact, nprobe=32, reason="given with --factory")
    flat_bytes = n * dim * 2
    if n <= exact_max and flat_bytes <= memory_budget:
        return IndexChoice("SQfp16", True, 1, f"{n} vectors x {dim}-d fp16 = {flat_bytes / GiB:.2f} GiB fits; exact")
    # about sqrt(n) lists: with 4-bit fast-scan codes, scanning fuller lists is cheap
    nlist = 2 ** round(math.log2(max(math.sqrt(n), 64)))
    nlist = max(16, min(nlist, 65536, max(n // 39, 16)))
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 4096 else f"IVF{nlist}"  # HNSW assignment keeps adds fast
    d = reduce_to or dim
    per_vector = memory_budget / max(n, 1) - 8  # 8 bytes of id per vector in the inverted lists
    m = _pq_subquantizers(d, per_vector)
    prefix = f"PCAR{d}," if reduce_to and reduce_to < dim else (f"OPQ{m}," if opq else "")
    nprobe = max(32, min(nlist // 8, 256))  # bench/build_index.py: nlist/8 keeps recall@60 >= 0.95 at 1M
    return IndexChoice(
        f"{prefix}{coarse},PQ{m}x4fs",
        False,
        nprobe,
        f"{n} vectors: fp16 flat needs {flat_bytes / GiB:.2f} GiB (budget {memory_budget / GiB:.2f}) or passes "
        f"--exact-max {exact_max}; IVF{nlist} with {m} 4-bit PQ codes, shortlist rescored from stored vectors",
    )
