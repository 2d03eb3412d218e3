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
    gpu: bool = False  # the index will be searched on GPUs: no fast-scan codes (they have no GPU kernel)
    progress: bool = True
    runner: Any = None  # an index_build.embed.Runner; default: embed in this process
    on_stage: Callable[[str], None] | None = None  # told as each stage starts (read, embed, train, add, write, done)
