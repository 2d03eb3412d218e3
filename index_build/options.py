"""Build options and their defaults (light: the command line reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

GiB = 1 << 30
DEFAULT_SHARD_SIZE = 8192


@dataclass
class BuildOptions:
    shard_size: int = DEFAULT_SHARD_SIZE  # texts per embedding shard
    memory_budget: int = 4 * GiB  # bytes the index may take in memory
    exact_max: int = 1_000_000  # largest count served by exact search
    factory: str | None = None  # FAISS factory string, overriding the automatic choice
    reduce_to: int | None = None  # PCA dimensions before IVF-PQ
    opq: bool = False
    gpus: int = 0  # GPUs faiss sees (retriever.search_device.machine_gpus): > 0 means GPU codes (no fast-scan,
    # which has no GPU kernel) and GPU k-means; setup, its --dry-run and build-index all pass the machine's count
    progress: bool = True
    runner: Any = None  # an index_build.embed.Runner; default: embed in this process
    on_stage: Callable[[str], None] | None = None  # told as each stage starts (read, embed, train, add, write, done)
