"""`unprompt setup` and `unprompt build-index`: the offline side."""

from __future__ import annotations

import argparse
from pathlib import Path

from api.cli.common import bounded_float, bounded_int, command, positive_int
from index_build.options import GiB, BuildOptions
from retriever.errors import UnpromptError

DEFAULTS = BuildOptions()


def run_setup(args: argparse.Namespace) -> int:
    from index_build.setup import ensure_indexes
    from retriever.profile import load_profile
    from retriever.search_device import machine_gpus

    profile = load_profile(args.profile)
    options = BuildOptions(gpus=machine_gpus())  # a GPU machine gets GPU codes, and k-means on its GPUs
    if args.dry_run:
        from index_build.plan import describe, plan_setup

        print(describe(plan_setup(profile, options)))
        return 0
    for r in ensure_indexes(profile, options, force=args.force):
        state = f"built in {r.seconds:.1f} s" if r.built else "up to date"
        print(f"index {r.name}: {r.count} texts, {r.factory}, {state} ({r.path}); searched on {r.search}")
        if options.gpus and not r.built and r.search.startswith("faiss-cpu"):
            print(f"  this machine has {options.gpus} GPU(s) but the index has CPU codes: "
                  f"`{profile.setup_command} --force` rebuilds it for the GPU")
    _export_models(profile, args.force)
    return 0


def _export_models(profile, force: bool) -> None:
    """The profile's lite models as ONNX files (retriever.encoders.onnx_export): checked against torch, and
    answered from their records when current. A failed export is a warning: those models run in torch."""
    import warnings

    from retriever.errors import UnpromptWarning

    try:
        from retriever.encoders.onnx_export import ensure_exports

        results = ensure_exports(profile, force=force)
    except (ImportError, UnpromptError) as exc:
        warnings.warn(f"the lite models were not exported to ONNX ({exc}); they run in torch", UnpromptWarning)
        return
    for r in results:
        state = f"exported in {r.seconds:.1f} s" if r.exported else "up to date"
        print(f"model {r.label}: ONNX, {state}, within {r.max_diff:.1g} of torch ({r.path})")


def run_build_index(args: argparse.Namespace) -> int:
    from index_build.build import build_index
    from index_build.manifest import load_manifest
    from index_build.setup import rerank_towers
    from retriever.encoders import create_space, text_tower
    from retriever.files import check_output_dir
    from retriever.profile import load_profile

    out = check_output_dir(args.out, "--out")
    if args.rollback:
        from retriever.index_files import rollback

        left, restored = rollback(Path(out))
        print(f"index {out}: back to build {restored.build_id} ({restored.count} texts); build {left.build_id} "
              "is no longer served")
        return 0
    if args.manifest is None:
        raise UnpromptError("build-index needs a MANIFEST (or --rollback)")
    profile = load_profile(args.profile)
    manifest = load_manifest(args.manifest)
    from retriever.search_device import machine_gpus

    options = BuildOptions(shard_size=args.shard_size, memory_budget=int(args.memory_budget * GiB),
                           exact_max=args.exact_max, factory=args.factory, reduce_to=args.pca, opq=args.opq,
                           progress=not args.quiet, gpus=machine_gpus())
    encoder = text_tower(create_space(profile.retrieve.space))
    extras = rerank_towers(profile)
    if args.ray is not None:
        from functools import partial

        from index_build.ray_runner import RayRunner
        from retriever.encoders import text_tower_for

        specs = [profile.retrieve.space] + ([profile.rerank.space] if extras else [])
        towers = {tower.model_id: partial(text_tower_for, spec) for tower, spec in zip([encoder, *extras], specs)}
        # an actor per GPU when the cluster has GPUs (Ray's totals, not this machine's), CPU actors otherwise
        options.runner = RayRunner(towers, actors=args.ray_actors, address=args.ray or None, num_gpus_per_actor=None)
    if args.append:
        from index_build.append import append_index

        report = append_index(manifest, encoder, Path(out), options, rerank_encoders=extras)
    else:
        report = build_index(manifest, encoder, Path(out), options, rerank_encoders=extras)
    rec = report.record
    if args.append:
        added = sum(s.count for s in rec.sources[len(rec.sources) - len(rec.appended):])
        print(f"appended {added} new texts (those the build held were dropped) to build {rec.parent}: new generation "
              f"{rec.build_id}; `unprompt build-index --rollback --out {out}` returns to the previous one")
    print(f"index {rec.name}: {rec.count} texts x {rec.dim}-d, {rec.factory} ({report.choice.reason})")
    print("embedded: " + ", ".join(f"{k}={v}" for k, v in report.embedded.items()))
    print("timings: " + ", ".join(f"{k}={v:.1f}" for k, v in report.timings_s.items()))
    print(f"written to {report.out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    import time

    from retriever.index import TextIndex
    from retriever.paths import index_dir

    path = Path(args.index) if Path(args.index).exists() else index_dir(args.index)
    t = time.perf_counter()
    index = TextIndex.load(path, checksums=True)
    print(f"index {path}: {index.record.count} rows, {len(index.record.files)} files; sizes and SHA-256 match "
          f"the build record ({time.perf_counter() - t:.1f} s)")
    return 0


def register(sub) -> None:
    p = command(sub, "setup", run_setup)
    p.add_argument("--force", action="store_true", help="rebuild even if the index looks current")
    p.add_argument("--dry-run", action="store_true",
                   help="list every index, manifest, source, row count, FAISS index and where it is searched, disk, "
                        "RAM and VRAM estimates and modelled GPU-minutes; build nothing")

    p = command(sub, "build-index", run_build_index)
    p.add_argument("manifest", nargs="?", default=None,
                   help="manifest file (TOML or YAML), or the name of one in data_manifests/")
    p.add_argument("--append", action="store_true",
                   help="add the manifest's texts to the build in --out without retraining (same model and index "
                        "type; texts the build holds are dropped), as a new generation that --rollback can undo")
    p.add_argument("--rollback", action="store_true",
                   help="return the index in --out to the generation its last --append extended")
    p.add_argument("--out", required=True, help="index directory to write (shards are kept inside for resume)")
    p.add_argument("--shard-size", type=bounded_int(1, 1 << 24), default=DEFAULTS.shard_size, help="texts per embedding shard")
    p.add_argument("--memory-budget", type=bounded_float(0, 1 << 20, lo_open=True), default=DEFAULTS.memory_budget / GiB,
                   help="GiB the index may take in memory")
    p.add_argument("--exact-max", type=positive_int, default=DEFAULTS.exact_max,
                   help="largest count served by exact search")
    p.add_argument("--factory", default=None, help="FAISS factory string, overriding the automatic choice")
    p.add_argument("--pca", type=bounded_int(1, 65536), default=None, help="reduce dimensions with PCA before IVF-PQ")
    p.add_argument("--opq", action="store_true", help="rotate with OPQ before PQ")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="embed on Ray: a cluster address, or nothing for a local Ray instance")
    p.add_argument("--ray-actors", type=bounded_int(1, 4096), default=2, help="encoder actors (each loads the model once)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command(sub, "verify", run_verify, profile=False)
    p.add_argument("index", help="index directory, or the name of one under $UNPROMPT_HOME/indexes")
