"""Where an index is searched, decided in one place: on the GPU(s) when there are some, else on the CPU.

* ``faiss-gpu``: the FAISS index on the GPU(s), placed by its type as faiss's cloner
  (``faiss/gpu/GpuCloner.cpp``) can hold it:

  - ``IndexFlat``, ``IndexIVFFlat``, ``IndexIVFScalarQuantizer`` and 8-bit ``IndexIVFPQ`` over a flat coarse
    quantizer: sharded across the GPUs when there are several (``ToGpuClonerMultiple::clone_Index_to_shards``),
    one GPU otherwise; float16 lookup tables and coarse quantizer.
  - ``SQfp16`` (``IndexScalarQuantizer`` with ``QT_fp16``): one GPU only. ``ToGpuCloner`` turns it into a float16
    ``GpuIndexFlat``, but the multi-GPU cloner handles only the four types above and hands everything else to the
    CPU ``Cloner``: on two or more GPUs it would silently come back as a CPU copy.
  - A PCA/OPQ pre-transform stays on the CPU and its inner index is placed as above (both cloners recurse).
  - Fast-scan (``...x4fs``) and everything else have no GPU form: CPU, and the report says why.

  The placement is then checked on the object faiss returned (every leaf a ``GpuIndex``), so the report names
  what happened, not what was asked for.
* ``torch-exact``: exhaustive search over the stored float16 vectors with ``torch.mm`` on a CUDA device, as
  the 4th place of Kaggle's "Stable Diffusion - Image to Prompts" searched its 56M texts.
* ``faiss-cpu``: everything else, and every machine without a GPU.

The choices take the libraries as arguments, so they are tested on a CPU with stand-ins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Preference = Literal["auto", "cpu", "gpu_exact"]
Placement = Literal["cpu", "single", "sharded"]
log = logging.getLogger("unprompt.search")


def faiss_gpus(faiss: Any) -> int:
    """GPUs this faiss can use (0 for faiss-cpu, which has ``get_num_gpus`` but no GPU cloner)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") and hasattr(faiss, "index_cpu_to_gpus_list") else 0


def machine_gpus() -> int:
    """The GPU count every build and plan passes on: what the installed faiss sees on this machine."""
    import faiss

    return faiss_gpus(faiss)


@dataclass(frozen=True)
class GpuPlan:
    placement: Placement
    gpus: int  # GPUs the index will occupy (0 on the CPU)
    reason: str


def _inner(index: Any, faiss: Any) -> Any:
    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index


def gpu_plan(index: Any, gpus: int, faiss: Any) -> GpuPlan:
    """How ``index`` (a CPU faiss index, possibly untrained) goes onto ``gpus`` GPUs, by its type."""
    if gpus <= 0:
        return GpuPlan("cpu", 0, "no GPU")
    inner = _inner(index, faiss)
    kind = type(inner).__name__
    spread: Placement = "sharded" if gpus > 1 else "single"
    if isinstance(inner, faiss.IndexScalarQuantizer):
        if inner.sq.qtype != faiss.ScalarQuantizer.QT_fp16:
            return GpuPlan("cpu", 0, f"{kind} other than fp16 has no GPU form")
        why = "" if gpus == 1 else "; faiss's multi-GPU cloner would keep a CPU copy of it, so one GPU holds it"
        return GpuPlan("single", 1, "SQfp16 becomes a float16 GpuIndexFlat" + why)
    if isinstance(inner, faiss.IndexFlat):
        return GpuPlan(spread, gpus, "flat")
    if isinstance(inner, (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ)):
        if isinstance(inner, faiss.IndexIVFPQ) and inner.pq.nbits != 8:
            return GpuPlan("cpu", 0, f"{inner.pq.nbits}-bit PQ codes: faiss's GPU IVF-PQ takes 8-bit codes only")
        quantizer = faiss.downcast_index(inner.quantizer)
        if not isinstance(quantizer, faiss.IndexFlat):
            return GpuPlan("cpu", 0, f"the coarse quantizer {type(quantizer).__name__} has no GPU form")
        return GpuPlan(spread, gpus, kind)
    return GpuPlan("cpu", 0, f"{kind} has no GPU implementation in faiss (fast-scan codes are CPU-only)")


def describe(plan: GpuPlan) -> str:
    if plan.placement == "cpu":
        return f"faiss-cpu ({plan.reason})"
    return f"faiss-gpu {'sharded ' if plan.placement == 'sharded' else ''}x{plan.gpus} ({plan.reason})"


def plan_for_factory(factory: str, dim: int, gpus: int) -> GpuPlan:
    """``gpu_plan`` of the (empty) index a factory string makes: what a build's index will get, before it exists."""
    import faiss

    return gpu_plan(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT), gpus, faiss)


def choose_backend(prefer: Preference, faiss: Any, torch: Any) -> str:
    cuda = bool(torch is not None and torch.cuda.is_available())
    if prefer == "cpu":
        return "faiss-cpu"
    if prefer == "gpu_exact" and cuda:
        return "torch-exact"
    return "faiss-gpu" if faiss_gpus(faiss) > 0 else "faiss-cpu"


def gpu_leaves(index: Any, faiss: Any) -> tuple[int, int]:
    """(leaves on a GPU, all leaves) of a placed index: shards/replicas and pre-transforms are looked through."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return gpu_leaves(index.index, faiss)
    if isinstance(index, (faiss.IndexShards, faiss.IndexReplicas)):
        counts = [gpu_leaves(index.at(i), faiss) for i in range(index.count())]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    return int(isinstance(index, faiss.GpuIndex)), 1


def to_gpus(index: Any, faiss: Any, gpus: int | None = None) -> tuple[Any, str]:
    """(index to search, where it is): placed as ``gpu_plan`` says, then checked on what faiss returned."""
    gpus = faiss_gpus(faiss) if gpus is None else gpus
    plan = gpu_plan(index, gpus, faiss)
    if plan.placement == "cpu":
        return index, f"faiss-cpu ({plan.reason})"
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = True  # float16 lookup tables for IVF-PQ, float16 storage for flat lists
    options.useFloat16CoarseQuantizer = True
    options.shard = plan.placement == "sharded"  # one GPU: the list has one device, and faiss uses ToGpuCloner
    try:
        placed = faiss.index_cpu_to_gpus_list(index, co=options, gpus=list(range(plan.gpus)))
    except RuntimeError as exc:
        return index, f"faiss-cpu (faiss could not place it on the GPU: {str(exc).splitlines()[-1][:200]})"
    on_gpu, leaves = gpu_leaves(placed, faiss)
    if on_gpu == 0:
        return index, "faiss-cpu (faiss's cloner returned a CPU copy)"
    where = "faiss-gpu x1" if plan.placement == "single" else f"faiss-gpu sharded x{on_gpu}"
    return placed, where + (f" ({leaves - on_gpu} of {leaves} parts left on the CPU)" if on_gpu < leaves else "")


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

    torch = None
    if prefer == "gpu_exact":  # only the exact GPU searcher needs torch (a predict on ONNX Runtime never loads it)
        try:
            import torch
        except ImportError:
            pass
    backend = choose_backend(prefer, faiss, torch)
    if backend == "torch-exact" and vectors is not None:
        placed, exact, where = index, TorchExact(vectors, torch), "torch-exact (cuda)"
    elif backend == "faiss-gpu":
        (placed, where), exact = to_gpus(index, faiss), None
    else:
        placed, exact, where = index, None, "faiss-cpu"
    log.info("%s vectors searched on %s", index.ntotal, where)
    return placed, exact, where
