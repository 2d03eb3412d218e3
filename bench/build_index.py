"""Index build at scale: tens of millions of synthetic prompt-like texts (many duplicates) through the whole
streaming build, killed mid-embedding and resumed, then searched.

    .venv/bin/python bench/build_index.py --n 2000000
    .venv/bin/python bench/build_index.py --n 20000000 --workdir /data/bench20m

The texts are written as parquet parts by polars (never a Python list of them). The encoder is a tiny
feature-hashing text encoder (64-d, numpy), so that 20M texts embed on 2 cores; everything else is the
production build: staged parts, dedup by 64-bit keys, float16 shards, memory-mapped vectors, IVF-PQ trained
on a sample and filled in chunks, Arrow metadata.

Prints, per stage, the wall time and the peak RSS of the build process (VmHWM, reset as each stage starts),
bytes per row in RAM (the FAISS index and the serving metadata) and on disk, the resume after kill -9, the
start-up time of the finished index, and search latency and recall@60 against exact search over the same
vectors (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from synthetic_frames import synthetic_frame  # noqa: E402

DIM = 64


class HashingEncoder:
    """Feature hashing of words into 64 signed buckets: a stand-in text tower that costs next to nothing."""

    model_id = "bench:hashing-64"
    text_model_id = model_id
    dim = DIM

    def encode_text(self, texts) -> np.ndarray:
        words = pl.Series(texts, dtype=pl.String).str.split(" ")
        lengths = words.list.len().to_numpy()
        h = words.explode().hash(7).to_numpy()
        rows = np.repeat(np.arange(len(texts)), lengths)
        signs = np.where((h >> np.uint64(40)) & np.uint64(1), 1.0, -1.0)
        flat = np.bincount(rows * DIM + (h % np.uint64(DIM)).astype(np.int64), weights=signs,
                           minlength=len(texts) * DIM)
        out = flat.reshape(len(texts), DIM).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_corpus(work: Path, n: int) -> Path:
    data = work / "corpus"
    if (data / "DONE").is_file():
        return data
    data.mkdir(parents=True, exist_ok=True)
    step = 1_000_000
    for i, lo in enumerate(range(0, n, step)):
        synthetic_frame(lo, min(n, lo + step), unique=int(n * 0.7), seed=1).write_parquet(data / f"part-{i:04d}.parquet")
    (data / "DONE").write_text(str(n))
    return data


def child(work: Path) -> None:
    """One build in this process; prints the per-stage peaks as JSON (the parent may kill it)."""
    from index_build.build import build_index
    from index_build.manifest import load_manifest
    from index_build.options import BuildOptions

    stages: dict[str, dict] = {}
    current = {"name": None, "t": time.perf_counter()}

    def on_stage(name: str) -> None:
        if current["name"]:
            stages[current["name"]] = {"s": round(time.perf_counter() - current["t"], 1), "peak_rss_mib": round(peak_rss_mib())}
        reset_peak()
        current.update(name=name, t=time.perf_counter())

    report = build_index(load_manifest(work / "m.toml"), HashingEncoder(), work / "index",
                         BuildOptions(progress=False, on_stage=on_stage))
    print(json.dumps({"stages": stages, "embedded": report.embedded, "factory": report.record.factory,
                      "count": report.record.count}), flush=True)


def run_child(work: Path, kill_after_shards: int | None = None) -> dict | None:
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(work)], stdout=subprocess.PIPE, text=True)
    if kill_after_shards is not None:
        while proc.poll() is None:
            shards = sum(1 for _ in (work / "index" / ".shards").rglob("*.npy")) if (work / "index" / ".shards").exists() else 0
            if shards >= kill_after_shards:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"killed_after_shards": shards}
            time.sleep(0.5)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"build failed with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def search_report(work: Path, queries: int, k: int) -> dict:
    from retriever.index import TextIndex

    t = time.perf_counter()
    index = TextIndex.load(work / "index")
    start_s = time.perf_counter() - t
    texts = synthetic_frame(10**9, 10**9 + queries, unique=10**12, seed=7)["text"].to_list()  # not in the corpus
    q = HashingEncoder().encode_text(texts)
    lat, got = [], []
    for row in q:
        t = time.perf_counter()
        hits = index.search(row[None], k)[0]
        lat.append((time.perf_counter() - t) * 1000)
        got.append({h.row for h in hits})
    vectors = index.vectors  # the memory-mapped float16 copy: exact search over it is the baseline
    t = time.perf_counter()
    best = np.full((len(q), k), -np.inf, np.float32)
    ids = np.zeros((len(q), k), np.int64)
    block = 1_000_000
    for lo in range(0, len(vectors), block):
        s = q @ np.asarray(vectors[lo : lo + block], np.float32).T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([ids, part + lo], 1)
        top = np.argpartition(-cand_s, k, axis=1)[:, :k]
        best, ids = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    exact_ms = (time.perf_counter() - t) * 1000 / len(q)
    # synthetic texts tie a lot (same words, another #id): a returned row counts when its exact score reaches
    # the k-th best exact score, whichever of the tied rows exact search happened to list
    kth = best.min(axis=1)
    recall = float(np.mean([sum(float(np.asarray(vectors[r], np.float32) @ q[i]) >= kth[i] - 1e-4 for r in g) / k
                            for i, g in enumerate(got)]))
    return {"start_s": round(start_s, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "exact_ms_per_query": round(exact_ms, 1),
            f"recall@{k}": round(recall, 4), "queries": len(q)}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000, help="rows of synthetic text (30%% are duplicates)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child))
        return 0
    import shutil
    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="unprompt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "index", ignore_errors=True)
    t = time.perf_counter()
    corpus = make_corpus(work, args.n)
    print(f"corpus: {args.n:,} rows as parquet parts in {time.perf_counter() - t:.0f} s ({du(corpus) / 2**20:,.0f} MiB)")
    (work / "m.toml").write_text(f'name = "bench"\n[[sources]]\nname = "synthetic"\npath = "{corpus}/*.parquet"\n'
                                 'kind = "caption"\n')
    shards_total = -(-int(args.n * 0.7) // 8192)
    killed = run_child(work, kill_after_shards=max(1, shards_total // 3))
    print(f"kill -9 after {killed['killed_after_shards']} of ~{shards_total} shards")
    t = time.perf_counter()
    done = run_child(work)
    wall = time.perf_counter() - t
    print(f"resumed build: {wall:.0f} s; embedded on resume {done['embedded']} of {done['count']:,} rows "
          f"(the rest came from the shards the killed run left); {done['factory']}")
    print(f"{'stage':<8}{'seconds':>9}{'peak RSS MiB':>14}")
    for name, s in done["stages"].items():
        print(f"{name:<8}{s['s']:>9.1f}{s['peak_rss_mib']:>14,}")
    index_dir = work / "index"
    record = json.loads((index_dir / "build.json").read_text())
    files = {role: e["bytes"] for role, e in record["files"].items()}
    n = record["count"]
    print(f"rows {n:,}; RAM to serve: FAISS {files['index'] / n:.1f} B/row + metadata {files['meta'] / n:.1f} B/row; "
          f"disk: index dir {du(index_dir) / n:.1f} B/row (vectors {files.get('vectors', 0) / n:.1f}, shards and "
          f"staged texts {(du(index_dir / '.shards') + du(index_dir / '.texts')) / n:.1f})")
    s = search_report(work, args.queries, args.k)
    print(f"start of the finished index (sizes checked, no checksums): {s['start_s']} s")
    print(f"search, one query at a time: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; exact (baseline) "
          f"{s['exact_ms_per_query']} ms/query; ratio {s['exact_ms_per_query'] / s['p50_ms']:.0f}x; "
          f"recall@{args.k} {s[f'recall@{args.k}']} over {s['queries']} held-out queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
