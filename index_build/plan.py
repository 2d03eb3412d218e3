"""What `unprompt setup` would build, without building it (`--dry-run`): indexes, manifests, sources, row
counts, and modelled disk, RAM and GPU time.

GPU time is a model, not a measurement: texts/s for each text tower on one H100 at a stated utilisation,
from its FLOPs per text (2 x parameters x tokens; prompts average about 25 CLIP tokens once the context is cut
at the end token, as ``retriever.encoders.clip_text`` does):

    ViT-bigG-14 text tower  ~ 0.69 B params -> 35 GFLOP/text; at 40% of 989 TFLOP/s (bf16) ~ 11,300 texts/s
    ViT-H-14 text tower     ~ 0.35 B params -> 18 GFLOP/text; at 40%                    ~ 22,600 texts/s
    all-MiniLM-L6-v2        ~ 0.022 B params -> 1.1 GFLOP/text; at 40%                 ~ 360,000 texts/s
"""

from __future__ import annotations

from dataclasses import dataclass, field

from index_build.choose import GiB, choose_index
from index_build.manifest import load_manifest
from index_build.options import BuildOptions
from retriever.paths import index_dir
from retriever.profile import ClipSpaceSpec, Profile

H100_UTILISATION = 0.40
MODELLED_TEXTS_PER_S = {"ViT-bigG-14": 11_300, "ViT-H-14": 22_600, "minilm": 360_000}
TEXT_BYTES = 90  # a staged text and its metadata row, about (DiffusionDB prompts average ~40 characters twice)


@dataclass
class SourcePlan:
    name: str
    location: str
    rows: int | None
    license: str


@dataclass
class IndexPlan:
    name: str
    path: str
    manifest: str
    sources: list[SourcePlan]
    towers: list[tuple[str, int]]  # (model, dim): the retrieval tower, then stored rerank towers
    factory: str = ""
    rows: int = 0
    disk_bytes: int = 0
    ram_bytes: int = 0
    gpu_hours: float = 0.0
    notes: list[str] = field(default_factory=list)


def _tower(spec) -> tuple[str, int]:
    if isinstance(spec, ClipSpaceSpec):
        from retriever._compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        import open_clip

        config = open_clip.get_model_config(spec.model) or {}
        return spec.model, int(config.get("embed_dim", 0))
    return "minilm", 384  # the bridge's text side is the metric's MiniLM


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


def plan_setup(profile: Profile, options: BuildOptions | None = None) -> list[IndexPlan]:
    opts = options or BuildOptions()
    retrieval = _tower(profile.retrieve.space)
    rerank = None if profile.rerank.space == "retrieval" else _tower(profile.rerank.space)
    plans = []
    for ref in profile.retrieve.indexes:
        if ref.manifest is None:
            plans.append(IndexPlan(ref.name, str(index_dir(ref.name)), "(none: built by hand)", [], [retrieval]))
            continue
        manifest = load_manifest(ref.manifest)
        sources = [SourcePlan(s.name, s.location, _rows(s, manifest.base_dir), s.license) for s in manifest.sources]
        towers = [retrieval] + ([rerank] if rerank and rerank != retrieval and ref.rerank_vectors == "stored" else [])
        plan = IndexPlan(ref.name, str(index_dir(ref.name)), ref.manifest, sources, towers)
        plan.rows = sum(s.rows or 0 for s in sources)
        if any(s.rows is None for s in sources):
            plan.notes.append("some sources give no row count; totals count them as 0")
        dim = retrieval[1]
        choice = choose_index(max(plan.rows, 1), dim, opts.memory_budget, opts.exact_max)
        plan.factory = choice.factory
        code_bytes = dim * 2 if choice.exact else int(choice.factory.rsplit("PQ", 1)[1].split("x")[0]) / 2 + 8
        plan.ram_bytes = int(plan.rows * (code_bytes + TEXT_BYTES))
        shards = sum(d * 2 for _, d in towers)  # float16 shards, kept for resume and incremental rebuilds
        copies = (0 if choice.exact else dim * 2) + sum(d * 2 for _, d in towers[1:])  # vectors + rerank caches
        plan.disk_bytes = int(plan.rows * (shards + copies + code_bytes + 2 * TEXT_BYTES))
        plan.gpu_hours = sum(plan.rows / MODELLED_TEXTS_PER_S.get(m, 10_000) for m, _ in towers) / 3600
        plans.append(plan)
    return plans


def describe(plans: list[IndexPlan]) -> str:
    lines = []
    for p in plans:
        lines.append(f"index {p.name} -> {p.path}")
        lines.append(f"  manifest {p.manifest}; towers {', '.join(f'{m} ({d}-d)' for m, d in p.towers)}")
        for s in p.sources:
            rows = f"{s.rows:,}" if s.rows is not None else "unknown"
            lines.append(f"    source {s.name}: {s.location}  rows {rows}  license {s.license or 'not stated'}")
        if p.rows:
            lines.append(f"  rows (before dedup) {p.rows:,}; FAISS {p.factory}")
            lines.append(f"  disk ~{p.disk_bytes / GiB:,.1f} GiB; RAM to serve ~{p.ram_bytes / GiB:,.1f} GiB; "
                         f"GPU ~{p.gpu_hours:,.2f} h on one H100 (modelled at {H100_UTILISATION:.0%} of bf16 peak: "
                         + ", ".join(f"{m} {MODELLED_TEXTS_PER_S.get(m, 10_000):,} texts/s" for m, _ in p.towers) + ")")
        lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)
