"""Index build at scale: a synthetic corpus of prompt-like texts through the whole build pipeline.

    .venv/bin/python bench/build_index.py                 # 1,050,000 texts, tiny random CLIP text tower (384-d)
    .venv/bin/python bench/build_index.py --texts 200000  # quicker

Reports texts/s of each stage (read, embed, train, add, write), the index size in bytes per
vector, and recall@60 of the chosen index (as served: shortlist rescored from the stored
vectors) against exact search, on held-out queries. Baseline: exact search over the same vectors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1_050_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--workdir", default=None, help="keep the corpus and index here (default: a temp dir)")
    ap.add_argument("--memory-budget-gib", type=float, default=0.25,
                    help="index memory budget; the default forces the IVF-PQ path at 1M")
    args = ap.parse_args()

    import faiss
    import polars as pl

    from _tiny_clip import tiny_clip_spec
    from index_build.build import BuildOptions, build_index
    from index_build.manifest import load_manifest
    from retriever.encoders import create_space, text_tower
    from retriever.index import TextIndex
    from synthetic import synthetic_prompts

    work = Path(args.workdir or tempfile.mkdtemp(prefix="unprompt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    texts = synthetic_prompts(args.texts + args.queries, seed=1)
    corpus, held_out = texts[: args.texts], texts[args.texts :]
    pl.DataFrame({"text": corpus}).write_parquet(work / "corpus.parquet")
    (work / "m.toml").write_text('name = "bench"\n[[sources]]\nname = "synthetic"\npath = "corpus.parquet"\nkind = "caption"\n')
    encoder = text_tower(create_space(tiny_clip_spec(work / "model")))

    t = time.perf_counter()
    report = build_index(load_manifest(work / "m.toml"), encoder, work / "index",
                         BuildOptions(memory_budget=int(args.memory_budget_gib * (1 << 30)), exact_max=1_000_000))
    wall = time.perf_counter() - t
    rec, n = report.record, report.record.count
    index = TextIndex.load(work / "index")
    index_bytes = (work / "index" / rec.files["index"].path).stat().st_size
    vec_bytes = (work / "index" / rec.files["vectors"].path).stat().st_size if "vectors" in rec.files else 0

    queries = encoder.encode_text(held_out)
    t = time.perf_counter()
    approx = index.search(queries, args.k)
    approx_s = time.perf_counter() - t
    flat = faiss.IndexFlatIP(rec.dim)
    stored = np.asarray(index.vectors if index.vectors is not None else index.index.reconstruct_n(0, n), np.float32)
    flat.add(stored)
    t = time.perf_counter()
    _, exact_ids = flat.search(queries, args.k)
    exact_s = time.perf_counter() - t
    recall = np.mean([len({h.row for h in a} & set(e.tolist())) / args.k for a, e in zip(approx, exact_ids)])

    tm = report.timings_s
    print(f"corpus: {n} synthetic prompt-like texts; encoder {rec.model_id} ({rec.dim}-d); {report.choice.reason}")
    print(f"factory: {rec.factory} (nprobe {report.choice.nprobe}); build wall time {wall:.1f} s\n")
    print(f"{'stage':<10}{'seconds':>10}{'texts/s':>14}")
    for stage in ("read_s", "embed_s", "train_s", "add_s", "write_s"):
        print(f"{stage[:-2]:<10}{tm[stage]:>10.1f}{n / max(tm[stage], 1e-9):>14,.0f}")
    print(f"\nindex file: {index_bytes / n:.1f} bytes/vector ({index_bytes / 2**20:.1f} MiB); "
          f"stored fp16 vectors for rescoring: {vec_bytes / n:.1f} bytes/vector (on disk, memory-mapped)")
    print(f"recall@{args.k} vs exact search on {len(held_out)} held-out queries: {recall:.4f}")
    print(f"search: chosen index {len(held_out) / approx_s:,.0f} q/s vs exact (baseline) {len(held_out) / exact_s:,.0f} q/s "
          f"= {exact_s / approx_s:.2f}x")
    return 0 if recall >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
