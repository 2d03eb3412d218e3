"""GPU choices in one place, tested on a CPU: which FAISS index a GPU machine builds, where each index type is
searched (single GPU, sharded, CPU) with faiss's cloner played by a stand-in that follows faiss/gpu/GpuCloner.cpp,
and setup on a "GPU" machine (a stand-in GPU count)."""

from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from conftest import run_cli
from fakes import HashTextEncoder
from retriever.search_device import choose_backend, gpu_leaves, gpu_plan, to_gpus


class FakeGpuIndex:
    def __init__(self, cpu, device: int) -> None:
        self.cpu, self.device = cpu, device


class FakeShards:  # IndexShards / IndexReplicas as the multi-GPU cloner returns them
    def __init__(self, parts) -> None:
        self.parts = parts

    def count(self) -> int:
        return len(self.parts)

    def at(self, i: int):
        return self.parts[i]


class GpuFaiss:
    """faiss as a machine with ``gpus`` GPUs shows it. The cloner does what GpuCloner.cpp does: one device ->
    ToGpuCloner (flat, SQfp16, IVF-Flat/SQ/PQ; anything else throws "not implemented on GPU"); several ->
    ToGpuClonerMultiple, which shards or replicates only IndexFlat, IndexIVFFlat, IndexIVFScalarQuantizer and
    IndexIVFPQ and hands every other type to the CPU Cloner: a CPU copy."""

    IndexShards = IndexReplicas = FakeShards
    GpuIndex = FakeGpuIndex

    def __init__(self, gpus: int) -> None:
        self.gpus, self.calls = gpus, []

    def __getattr__(self, name):
        return getattr(faiss, name)

    def get_num_gpus(self) -> int:
        return self.gpus

    def GpuMultipleClonerOptions(self):  # noqa: N802 (faiss's name)
        return SimpleNamespace(useFloat16=False, useFloat16CoarseQuantizer=False, shard=False)

    def downcast_index(self, index):
        return index if isinstance(index, (FakeGpuIndex, FakeShards)) else faiss.downcast_index(index)

    def index_cpu_to_gpus_list(self, index, co=None, gpus=None):
        self.calls.append((type(faiss.downcast_index(index)).__name__, co.shard, co.useFloat16, list(gpus)))
        inner = faiss.downcast_index(index)
        sq16 = isinstance(inner, faiss.IndexScalarQuantizer) and inner.sq.qtype == faiss.ScalarQuantizer.QT_fp16
        multi = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ)
        if len(gpus) == 1:
            if not (sq16 or isinstance(inner, multi)):
                raise RuntimeError("Error in ToGpuCloner::clone_Index\nThis index type is not implemented on GPU.")
            return FakeGpuIndex(index, gpus[0])
        if isinstance(inner, multi):
            return FakeShards([FakeGpuIndex(index, g) for g in gpus])
        return faiss.clone_index(index)  # Cloner::clone_Index


def cpu_index(factory: str, dim: int = 32):
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


@pytest.mark.parametrize("factory, one, two", [
    ("SQfp16", "single", "single"),  # the multi-GPU cloner would make a CPU copy: one GPU holds it
    ("Flat", "single", "sharded"),
    ("IVF16,PQ8", "single", "sharded"),  # 8-bit IVF-PQ (what choose_index picks for GPUs)
    ("PCAR16,IVF16,PQ8", "single", "sharded"),  # pre-transform on the CPU, the IVF-PQ inside on the GPUs
    ("IVF16,Flat", "single", "sharded"),
    ("IVF16,PQ8x4fs", "cpu", "cpu"),  # fast-scan: no GPU implementation
    ("OPQ8,IVF16,PQ8x4fs", "cpu", "cpu"),
    ("IVF16,PQ8x4", "cpu", "cpu"),  # 4-bit PQ: the GPU IVF-PQ takes 8-bit codes only
    ("IVF16_HNSW32,PQ8", "cpu", "cpu"),  # HNSW coarse quantizer: no GPU form
])
def test_gpu_placement_by_index_type(factory, one, two):
    index = cpu_index(factory)
    assert gpu_plan(index, 0, faiss).placement == "cpu"
    assert gpu_plan(index, 1, faiss).placement == one
    plan = gpu_plan(index, 2, faiss)
    assert plan.placement == two and plan.gpus == {"cpu": 0, "single": 1, "sharded": 2}[two]


def test_placement_reported_is_what_the_cloner_returned():
    fake = GpuFaiss(2)
    sq = cpu_index("SQfp16")
    sq.add(np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32))
    # asked of both GPUs as the project used to (index_cpu_to_all_gpus), SQfp16 comes back as a CPU copy
    naive = fake.index_cpu_to_gpus_list(sq, co=SimpleNamespace(shard=True, useFloat16=True), gpus=[0, 1])
    assert gpu_leaves(naive, fake) == (0, 1)
    placed, where = to_gpus(sq, fake)
    assert isinstance(placed, FakeGpuIndex) and where == "faiss-gpu x1" and fake.calls[-1][-1] == [0]
    placed, where = to_gpus(cpu_index("IVF16,PQ8"), fake)
    assert where == "faiss-gpu sharded x2" and [p.device for p in placed.parts] == [0, 1]
    assert fake.calls[-1] == ("IndexIVFPQ", True, True, [0, 1])  # sharded, float16 lookup tables
    n_calls = len(fake.calls)
    fast = cpu_index("IVF16,PQ8x4fs")
    placed, where = to_gpus(fast, fake)
    assert placed is fast and where.startswith("faiss-cpu (IndexIVFPQFastScan has no GPU implementation")
    assert len(fake.calls) == n_calls  # not even tried
    assert to_gpus(cpu_index("Flat"), GpuFaiss(1))[1] == "faiss-gpu x1"

    cpu_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    cuda_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True))
    assert choose_backend("auto", faiss, cpu_torch) == "faiss-cpu"  # this machine: faiss-cpu has no GPU cloner
    assert choose_backend("auto", GpuFaiss(2), cpu_torch) == "faiss-gpu"
    assert choose_backend("cpu", GpuFaiss(2), cuda_torch) == "faiss-cpu"
    assert choose_backend("gpu_exact", GpuFaiss(0), cuda_torch) == "torch-exact"
    assert choose_backend("gpu_exact", GpuFaiss(0), cpu_torch) == "faiss-cpu"  # no CUDA: the CPU fallback


def test_index_choice_for_gpu_search_avoids_fast_scan():
    from index_build.choose import choose_index

    cpu, gpu = choose_index(20_000_000, 1280, 8 << 30), choose_index(20_000_000, 1280, 8 << 30, gpu=True)
    assert cpu.factory.endswith("x4fs") and "HNSW" in cpu.factory
    assert gpu.factory == "IVF4096,PQ64" and "8-bit" in gpu.reason
    assert cpu.nprobe == gpu.nprobe == 1024
    assert gpu_plan(cpu_index(gpu.factory, 1280), 2, faiss).placement == "sharded"


@pytest.fixture()
def gpu_machine(monkeypatch):
    """faiss-cpu dressed as a 2-GPU machine: the GPU count setup reads, and a k-means "GPU" index that is the
    CPU one (so training runs here). Records what the build asked of it."""
    import retriever.search_device as search_device

    asked = []
    monkeypatch.setattr(search_device, "machine_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index, co=None, ngpu=-1: asked.append(ngpu) or index,
                        raising=False)
    return asked


def test_setup_on_a_gpu_machine_chooses_gpu_codes(gpu_machine, tmp_path, home):
    res = run_cli("setup", "--profile", "sdxl", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "GPUs faiss sees here: 2" in res.stdout
    # both indexes (2M prompts, 1.7M components): 8-bit IVF-PQ codes, sharded over both GPUs; no fast-scan
    assert res.stdout.count("FAISS IVF1024,PQ64; searched on faiss-gpu sharded x2 (IndexIVFPQ)") == 2
    assert "x4fs" not in res.stdout

    (tmp_path / "t.txt").write_text("\n".join(f"prompt number {i}, digital art" for i in range(400)) + "\n")
    (tmp_path / "m.toml").write_text("[[sources]]\nname = 'p'\npath = 't.txt'\nkind = 'caption'\n")
    from index_build.build import build_index
    from index_build.manifest import load_manifest
    from index_build.options import BuildOptions
    from retriever.index import TextIndex
    from retriever.search_device import machine_gpus

    report = build_index(load_manifest(tmp_path / "m.toml"), HashTextEncoder(dim=16), tmp_path / "ix",
                         BuildOptions(gpus=machine_gpus(), exact_max=100, memory_budget=400 * 12, progress=False))
    assert report.record.factory == "IVF16,PQ4" and report.record.gpus == 2  # 8-bit codes: the GPU IVF-PQ's
    assert gpu_machine == [2]  # coarse k-means asked of both GPUs
    assert report.record.versions["faiss"] == faiss.__version__ and "faiss-cpu" in report.record.versions
    assert gpu_plan(TextIndex.load(tmp_path / "ix").index, 2, faiss).placement == "sharded"
