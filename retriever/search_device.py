"""Where an index is searched, decided in one place: on the GPU(s) when there are some, else on the CPU.

* ``faiss-gpu``: the FAISS index cloned onto every GPU faiss sees (``index_cpu_to_all_gpus``), sharded across
  them, with float16 lookup tables. Fast-scan 4-bit PQ has no GPU kernel: such an index stays on the CPU.
* ``torch-exact``: exhaustive search over the stored float16 vectors with ``torch.mm`` on a CUDA device, as
  the 4th place of Kaggle's "Stable Diffusion - Image to Prompts" searched its 56M texts.
* ``faiss-cpu``: everything else, and every machine without a GPU.

``choose_backend`` takes the libraries as arguments, so its choice is tested on a CPU with stand-ins.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Preference = Literal["auto", "cpu", "gpu_exact"]


def faiss_gpus(faiss: Any) -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") and hasattr(faiss, "index_cpu_to_all_gpus") else 0


def choose_backend(prefer: Preference, faiss: Any, torch: Any) -> str:
    cuda = bool(torch is not None and torch.cuda.is_available())
    if prefer == "cpu":
        return "faiss-cpu"
    if prefer == "gpu_exact" and cuda:
        return "torch-exact"
    return "faiss-gpu" if faiss_gpus(faiss) > 0 else "faiss-cpu"


def to_gpus(index: Any, faiss: Any) -> tuple[Any, str]:
    """The index on every GPU (sharded when there are several, float16 tables); the CPU index if it has no
    GPU form (fast-scan PQ)."""
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True  # float16 lookup tables for IVF-PQ, float16 storage for flat lists
    options.shard = faiss_gpus(faiss) > 1
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options), f"faiss-gpu x{faiss_gpus(faiss)}"
    except RuntimeError:
        return index, "faiss-cpu (this index type has no GPU implementation)"


class TorchExact:
    """Exact inner-product search over float16 vectors held on a CUDA device, in blocks of rows."""

    def __init__(self, vectors: np.ndarray, torch: Any, device: str = "cuda", block: int = 1 << 22) -> None:
        self.torch, self.device, self.block = torch, device, block
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors)).to(device, torch.float16)

    def search(self, queries: np.ndarray, k: int, start: int = 0, end: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        end = len(self.vectors) if end is None else end
        q = torch.from_numpy(np.asarray(queries, np.float32)).to(self.device, torch.float16)
        best_s = torch.full((len(q), 0), -float("inf"), device=self.device)
        best_i = torch.zeros((len(q), 0), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for lo in range(start, end, self.block):
                hi = min(end, lo + self.block)
                s = (q @ self.vectors[lo:hi].T).float()
                top = torch.topk(s, min(k, hi - lo), dim=1)
                best_s = torch.cat([best_s, top.values], 1)
                best_i = torch.cat([best_i, top.indices + lo], 1)
                keep = torch.topk(best_s, min(k, best_s.shape[1]), dim=1)
                best_s, best_i = keep.values, torch.gather(best_i, 1, keep.indices)
        return best_s.cpu().numpy(), best_i.cpu().numpy()


def place(index: Any, vectors: np.ndarray | None, prefer: Preference = "auto") -> tuple[Any, TorchExact | None, str]:
    """(FAISS index to search, exact GPU searcher or None, where) for this machine."""
    import faiss

    try:
        import torch
    except ImportError:
        torch = None
    backend = choose_backend(prefer, faiss, torch)
    if backend == "torch-exact" and vectors is not None:
        return index, TorchExact(vectors, torch), "torch-exact (cuda)"
    if backend == "faiss-gpu":
        placed, where = to_gpus(index, faiss)
        return placed, None, where
    return index, None, "faiss-cpu"
