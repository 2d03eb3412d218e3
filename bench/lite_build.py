"""Lite build embedding speed: today's sentence-transformers path against the length-batched one, same run.

    .venv/bin/python bench/lite_build.py                 # 24576 of the 107k component texts (3 shards)
    .venv/bin/python bench/lite_build.py --n 0           # all of them (minutes)

The texts are the real lite index's (``components.toml``, staged as ``unprompt setup`` stages them), taken
evenly across the staged order. Each method runs in its own fresh process, as a build would, and embeds the
texts shard by shard (8192 texts, as ``index_build/embed.py`` hands them to the encoder):

- baseline: what the build did before: ``SentenceTransformer.encode`` in batches of 16, torch's default
  threads (every CPU the host shows);
- new: ``SentenceEncoder`` (tokenizers + torch functional ops, batches of similar token length, run on one
  one-thread worker per CPU of the thread plan of ``retriever/threads.py``), with the batch size picked by
  ``calibrated_embed`` while it embeds the first shard (its time is counted).

Index contents: the shards are stored as float16 (rounding of 2^-11 relative, which rescoring reads back); the
check is that the two methods' stored values differ by far less than that rounding, how many are
bit-identical, and the least cosine between a text's two stored vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARD = 8192


def staged_texts(n: int) -> list[str]:
    from index_build.manifest import load_manifest
    from index_build.read import read_manifest

    staged = read_manifest(load_manifest("components.toml"), Path(tempfile.mkdtemp()), SHARD)
    texts = [t for st in staged for t in st.all_texts()]
    if n and n < len(texts):
        step = len(texts) / n
        texts = [texts[int(i * step)] for i in range(n)]
    return texts


def worker(method: str, texts_file: str, out_file: str) -> None:
    texts = json.loads(Path(texts_file).read_text())
    extra: dict = {}
    if method == "new":
        from retriever.threads import configure_environment

        plan = configure_environment()  # before torch loads
    t0 = time.perf_counter()
    import numpy as np

    if method == "baseline":
        from retriever._compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        from sentence_transformers import SentenceTransformer

        from retriever.encoders.minilm import METRIC_MODEL, resolve_sentence_model

        model = SentenceTransformer(resolve_sentence_model(METRIC_MODEL), device="cpu")

        def encode(chunk):
            return model.encode(chunk, batch_size=16, normalize_embeddings=True, show_progress_bar=False)
    else:
        from index_build.embed import calibrated_embed
        from retriever.encoders.minilm import SentenceEncoder, METRIC_MODEL
        from retriever.threads import apply_threads, batch_workers

        apply_threads()
        encoder = SentenceEncoder(METRIC_MODEL, runtime="torch")  # the path measured in lite-build-cpu.txt
        encode = encoder.encode_text
    import torch

    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    parts = []
    if method == "new":  # the first shard picks the batch size as it embeds (index_build/embed.py)
        first, rates = calibrated_embed(encoder, texts[:SHARD])
        parts.append(first)
        extra = {"budget": encoder.token_budget, "rates": {str(k): round(v) for k, v in rates.items()},
                 "plan": plan.describe(), "workers": batch_workers(2 * plan.intra_op)}
    parts += [np.asarray(encode(texts[s:s + SHARD]), dtype=np.float32)
              for s in range(len(parts) * SHARD, len(texts), SHARD)]
    vectors = np.concatenate(parts)
    seconds = time.perf_counter() - t1
    np.save(out_file, vectors)
    print(json.dumps({"method": method, "seconds": seconds, "load": load, "threads": torch.get_num_threads(),
                      **extra}))


def run(method: str, texts_file: str, out_file: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
        "UNPROMPT_THREADS", "_UNPROMPT_OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, __file__, "--worker", method, texts_file, out_file], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3 * SHARD, help="texts (0 = all of components.toml)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each method, interleaved (the best is kept)")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "TEXTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    import numpy as np

    texts = staged_texts(args.n)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "texts.json").write_text(json.dumps(texts))
    print(f"$ .venv/bin/python bench/lite_build.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC; {os.cpu_count()} CPUs; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on this machine)")
    chars = sorted(len(t) for t in texts)
    print(f"texts: {len(texts)} lite component texts, characters median {chars[len(chars) // 2]}, max {chars[-1]}\n")
    results = {}
    for method in ("baseline", "new") * args.repeat:  # interleaved: drifting load hits both alike
        r = run(method, str(tmp / "texts.json"), str(tmp / f"{method}.npy"))
        results.setdefault(method, []).append(r)
    print(f"{'method':<60} {'texts/s':>8} {'seconds':>8}")
    best = {}
    for method, label in (("baseline", "baseline: sentence-transformers, batch 16, default threads"),
                          ("new", "new: length-batched, thread plan, calibrated batch")):
        seconds = min(r["seconds"] for r in results[method])
        best[method] = len(texts) / seconds
        print(f"{label:<60} {best[method]:>8.0f} {seconds:>8.1f}   (runs: "
              + ", ".join(f"{r['seconds']:.1f} s" for r in results[method]) + f"; {results[method][0]['threads']} "
              "torch threads)")
    new = results["new"][-1]
    print(f"\nnew: {new['plan']}; batches run on {new['workers']} one-thread workers; calibrated batch "
          f"{new['budget']} tokens; texts/s per candidate (first shard): {new['rates']}")
    print(f"speed-up (best run of each): {best['new'] / best['baseline']:.2f}x")
    a, b = np.load(tmp / "baseline.npy"), np.load(tmp / "new.npy")
    a16, b16 = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
    cos16 = (a16 * b16).sum(1) / np.linalg.norm(a16, axis=1) / np.linalg.norm(b16, axis=1)
    print(f"index contents: max |difference| float32 {np.abs(a - b).max():.2e}, of the stored float16 values "
          f"{np.abs(a16 - b16).max():.2e} (float16's own step at 0.05, a typical component, is 3.1e-05); "
          f"bit-identical float16 values {(a16 == b16).mean() * 100:.3f}%; min cosine between stored vectors "
          f"{float(cos16.min()):.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
