"""What `unprompt setup` would build, without building it (`--dry-run`): indexes, manifests, sources, row
counts, the FAISS index each gets and where this machine would search it, and modelled disk, VRAM and GPU time.

GPU time is a MODEL, not a measurement. The FLOPs are counted, not guessed: torch's FlopCounterMode runs each
text tower of the real architecture (open_clip's config for the profile's model; all-MiniLM-L6-v2's BERT for the
lite bridge) on the meta device, where weights have shapes but no values, so nothing is computed and no weights
are needed. A text costs the counted 77-token pass scaled to its tokens (the towers stop at the end token, as
``retriever.encoders.clip_text`` runs them): ``PROMPT_TOKENS`` for a caption or prompt, ``COMPONENT_TOKENS`` for a
component. Seconds are those FLOPs over an assumed sustained rate:
``UTILISATION`` of one H100 SXM's dense bf16 peak. Coarse k-means (faiss's 25 iterations over the training sample)
is counted the same way. VRAM is fp16 weights (parameters counted on the meta device) plus index codes placed on
the GPU; checkpoint files are fp32 as the hub serves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from index_build.choose import GiB, choose_index
from index_build.faiss_build import TRAIN_SAMPLE
from index_build.manifest import load_manifest
from index_build.options import BuildOptions
from retriever.paths import index_dir
from retriever.profile import ClipSpaceSpec, Profile

H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM5, dense
UTILISATION = 0.40
# mean CLIP tokens of a text, start and end included: 39 on the 30 real SD prompts of the dev set (capped at 77);
# 4.5 on clip-interrogator's flavours, and DiffusionDB's comma fragments are of that kind
PROMPT_TOKENS = 40
COMPONENT_TOKENS = 8
KMEANS_ITERATIONS = 25  # faiss ClusteringParameters.niter
TEXT_BYTES = 90  # a staged text and its metadata row, about (DiffusionDB prompts average ~40 characters twice)


@dataclass(frozen=True)
class TowerCost:
    model: str
    dim: int
    token_flops: float  # text-tower FLOPs per token
    text_params: int
    params: int  # the whole model (image and text towers): served in VRAM, downloaded as a checkpoint

    @property
    def tokens_per_s(self) -> float:
        return UTILISATION * H100_BF16_DENSE / self.token_flops


@dataclass
class SourcePlan:
    name: str
    location: str
    rows: int | None
    license: str
    kind: str


@dataclass
class IndexPlan:
    name: str
    path: str
    manifest: str
    sources: list[SourcePlan]
    towers: list[TowerCost]  # the retrieval tower, then stored rerank towers
    factory: str = ""
    search: str = ""  # where this machine would search it
    rows: int = 0
    disk_bytes: int = 0
    ram_bytes: int = 0
    gpu_vram_bytes: int = 0  # index codes held on the GPU when it is searched there
    gpu_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class SetupPlan:
    profile: str
    gpus: int
    models: list[TowerCost]  # the retrieval model, then the rerank model when it is another one
    indexes: list[IndexPlan]

    @property
    def gpu_minutes(self) -> float:
        return sum(p.gpu_seconds for p in self.indexes) / 60

    @property
    def checkpoint_bytes(self) -> int:
        return sum(m.params * 4 for m in self.models)

    @property
    def disk_bytes(self) -> int:
        return sum(p.disk_bytes for p in self.indexes) + self.checkpoint_bytes

    @property
    def build_vram_bytes(self) -> int:
        return max(m.text_params * 2 for m in self.models)  # one text tower at a time, fp16

    @property
    def serve_vram_bytes(self) -> int:
        return sum(m.params * 2 for m in self.models) + sum(p.gpu_vram_bytes for p in self.indexes)


def count_flops(fn, *args, grad: bool = False) -> float:
    """FLOPs of ``fn(*args)`` as torch's FlopCounterMode counts them (on meta tensors: nothing runs);
    ``grad``: with autograd on, for a training step whose backward ``fn`` runs itself."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, (contextlib.nullcontext() if grad else torch.no_grad()):
        fn(*args)
    return float(counter.get_total_flops())


@lru_cache(maxsize=16)
def tower_cost(spec) -> TowerCost:
    """FLOPs and parameters of a space's text tower, counted on the meta device (no weights, no compute)."""
    import torch

    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    if isinstance(spec, ClipSpaceSpec):
        import logging

        import open_clip

        if spec.model_config_file:
            open_clip.add_model_config(spec.model_config_file)
        logging.disable(logging.WARNING)  # open_clip warns that no weights were loaded: none are wanted here
        try:
            with torch.device("meta"):
                model = open_clip.create_model(spec.model, device="meta")
        finally:
            logging.disable(logging.NOTSET)
        with torch.device("meta"):
            flops = count_flops(model.encode_text, torch.zeros(1, 77, dtype=torch.long)) / 77
        params = sum(p.numel() for p in model.parameters())
        image = sum(p.numel() for p in model.visual.parameters())
        dim = int(open_clip.get_model_config(spec.model)["embed_dim"])
        return TowerCost(spec.model, dim, flops, params - image, params)
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    with torch.device("meta"):  # all-MiniLM-L6-v2's shape: the bridge's text side
        model = BertModel(config)
        flops = count_flops(model, torch.zeros(1, PROMPT_TOKENS, dtype=torch.long)) / PROMPT_TOKENS
    params = sum(p.numel() for p in model.parameters())
    return TowerCost("minilm", 384, flops, params, params)


def _rows(source, base_dir: str) -> int | None:
    """The manifest's estimate; for a local source, its raw row count (cheap: polars counts without loading)."""
    if source.rows is not None:
        return source.rows
    import polars as pl

    from index_build.manifest import source_files, source_format
    from index_build.read import scan
    from index_build.remote import is_remote

    if source.dataset or is_remote(source.path):
        return source.limit
    n = sum(scan(f, source_format(source, f), source.column).select(pl.len()).collect().item()
            for f in source_files(source, base_dir))
    return min(n, source.limit) if source.limit else n


def _kmeans_seconds(factory: str, rows: int, dim: int) -> float:
    nlist = next((int(part[3:].split("_")[0]) for part in factory.split(",") if part.startswith("IVF")), 0)
    return 2 * min(rows, TRAIN_SAMPLE) * nlist * dim * KMEANS_ITERATIONS / (UTILISATION * H100_BF16_DENSE)


def plan_setup(profile: Profile, options: BuildOptions | None = None) -> SetupPlan:
    from retriever.search_device import describe as describe_search, plan_for_factory

    opts = options or BuildOptions()
    retrieval = tower_cost(profile.retrieve.space)
    rerank = None if profile.rerank.space == "retrieval" else tower_cost(profile.rerank.space)
    models = [retrieval] + ([rerank] if rerank and rerank != retrieval else [])
    plans = []
    for ref in profile.retrieve.indexes:
        if ref.manifest is None:
            plans.append(IndexPlan(ref.name, str(index_dir(ref.name)), "(none: built by hand)", [], [retrieval]))
            continue
        manifest = load_manifest(ref.manifest)
        sources = [SourcePlan(s.name, s.location, _rows(s, manifest.base_dir), s.license, s.kind)
                   for s in manifest.sources]
        towers = [retrieval] + ([rerank] if rerank and rerank != retrieval and ref.rerank_vectors == "stored" else [])
        plan = IndexPlan(ref.name, str(index_dir(ref.name)), ref.manifest, sources, towers)
        plan.rows = sum(s.rows or 0 for s in sources)
        if any(s.rows is None for s in sources):
            plan.notes.append("some sources give no row count; totals count them as 0")
        dim = retrieval.dim
        choice = choose_index(max(plan.rows, 1), dim, opts.memory_budget, opts.exact_max, gpu=opts.gpus > 0)
        plan.factory = choice.factory
        placement = plan_for_factory(choice.factory, dim, opts.gpus)
        plan.search = describe_search(placement)
        code_bytes = dim * 2 if choice.exact else int(choice.factory.rsplit("PQ", 1)[1].split("x")[0]) / (
            1 if opts.gpus else 2) + 8
        plan.ram_bytes = int(plan.rows * (code_bytes + TEXT_BYTES))
        plan.gpu_vram_bytes = 0 if placement.placement == "cpu" else int(plan.rows * code_bytes)
        shards = sum(t.dim * 2 for t in towers)  # float16 shards, kept for resume and incremental rebuilds
        copies = (0 if choice.exact else dim * 2) + sum(t.dim * 2 for t in towers[1:])  # vectors + rerank caches
        plan.disk_bytes = int(plan.rows * (shards + copies + code_bytes + 2 * TEXT_BYTES))
        tokens = sum((s.rows or 0) * (PROMPT_TOKENS if s.kind == "caption" else COMPONENT_TOKENS) for s in sources)
        plan.gpu_seconds = sum(tokens / t.tokens_per_s for t in towers) + (
            0.0 if choice.exact else _kmeans_seconds(choice.factory, plan.rows, dim))
        plans.append(plan)
    return SetupPlan(profile.name, opts.gpus, models, plans)


def _gib(n: float) -> str:
    return f"{n / GiB:,.1f} GiB"


def describe(setup: SetupPlan) -> str:
    lines = []
    for p in setup.indexes:
        lines.append(f"index {p.name} -> {p.path}")
        lines.append(f"  manifest {p.manifest}; towers {', '.join(f'{t.model} ({t.dim}-d)' for t in p.towers)}")
        for s in p.sources:
            rows = f"{s.rows:,}" if s.rows is not None else "unknown"
            lines.append(f"    source {s.name}: {s.location}  rows {rows}  license {s.license or 'not stated'}")
        if p.rows:
            lines.append(f"  rows (before dedup) {p.rows:,}; FAISS {p.factory}; searched on {p.search}")
            lines.append(f"  disk ~{_gib(p.disk_bytes)}; RAM to serve ~{_gib(p.ram_bytes)}; GPU ~{p.gpu_seconds / 60:,.1f} "
                         "min on one H100 (modelled: " + ", ".join(f"{t.model} {t.tokens_per_s / 1e6:,.1f}M tokens/s"
                                                                  for t in p.towers) + ")")
        lines += [f"  note: {n}" for n in p.notes]
    models = ", ".join(f"{m.model} ({m.params / 1e6:,.0f}M parameters, text tower {m.text_params / 1e6:,.0f}M, "
                       f"{m.token_flops / 1e6:,.0f} MFLOP per token)" for m in setup.models)
    minutes = setup.gpu_minutes
    lines += [
        f"profile {setup.profile}: models {models}",
        f"  GPUs faiss sees here: {setup.gpus}" + ("" if setup.gpus else " (a CPU build: fast-scan codes)"),
        f"  disk ~{_gib(setup.disk_bytes)} (indexes and their work files, and ~{_gib(setup.checkpoint_bytes)} of "
        f"fp32 checkpoints); VRAM ~{_gib(setup.build_vram_bytes)} of fp16 weights to build (plus activations: the "
        f"batch grows to half the free memory), ~{_gib(setup.serve_vram_bytes)} to serve",
        f"  first prompt after ~{minutes:,.1f} GPU-minutes ({'within' if minutes <= 60 else 'over'} the one GPU-hour "
        f"goal). MODELLED, not measured: FLOPs counted on the meta device, {PROMPT_TOKENS} tokens a prompt or caption "
        f"and {COMPONENT_TOKENS} a component, over {UTILISATION:.0%} of one H100 SXM's "
        f"{H100_BF16_DENSE / 1e12:,.0f} TFLOP/s bf16 dense peak",
    ]
    return "\n".join(lines)
