"""Per-stage latency of one image through the pipeline.

    .venv/bin/python bench/stages.py                    # lite profile on this machine
    .venv/bin/python bench/stages.py --random-clip      # on a GPU: random-init ViT-bigG-14 + ViT-H-14 at real size

Prints the median and p90 milliseconds of each stage over --runs images (one image a call,
start-up excluded), then each stage's share of the end-to-end median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()


def sample_images(n: int):
    import skimage.data
    from PIL import Image

    names = ["chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field"]
    base = [Image.fromarray(getattr(skimage.data, k)()).convert("RGB") for k in names]
    return [base[i % len(base)] for i in range(n)]


def random_clip_interrogator(k: int, n_texts: int):
    """bigG retrieval + H14 rerank with random weights and a synthetic exact index (GPU throughput only)."""
    import faiss

    from retriever.encoders.clip import ClipSpace
    from retriever.index import TextIndex
    from retriever.index_files import BuildRecord
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    profile = load_profile("kaggle")
    retrieval = ClipSpace(profile.retrieve.space.model_copy(update={"pretrained": "random"}))
    rerank = ClipSpace(profile.rerank.space.model_copy(update={"pretrained": "random"}))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_texts, retrieval.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.index_factory(retrieval.dim, "SQfp16", faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    import polars as pl

    kinds = ["caption", "medium", "movement", "artist", "flavour"]
    per = n_texts // len(kinds)
    meta = pl.DataFrame({"text": [f"synthetic text {i}" for i in range(n_texts)],
                         "kind": [kinds[min(i // per, 4)] for i in range(n_texts)], "source": ["synthetic"] * n_texts})
    ranges = {kind: (j * per, n_texts if j == 4 else (j + 1) * per) for j, kind in enumerate(kinds)}
    record = BuildRecord(build_id="bench", name="synthetic", model_id=retrieval.text_model_id, dim=retrieval.dim,
                         count=n_texts, factory="SQfp16", kinds=ranges, files={}, sources=[])
    tindex = TextIndex(Path("."), record, index, meta, None)
    return Interrogator(profile.model_copy(update={"regress": profile.regress.model_copy(update={"kind": "none"})}),
                        retrieval, rerank, {"synthetic": tindex}, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="lite")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--random-clip", action="store_true", help="random-init bigG/H14 (needs a GPU to be meaningful)")
    ap.add_argument("--synthetic-texts", type=int, default=1_000_000)
    args = ap.parse_args()

    import torch

    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    t = time.perf_counter()
    if args.random_clip:
        interrogator = random_clip_interrogator(60, args.synthetic_texts)
        label = f"kaggle (random-init ViT-bigG-14 + ViT-H-14, {args.synthetic_texts} synthetic texts)"
    else:
        interrogator = Interrogator.from_profile(load_profile(args.profile))
        label = args.profile
    startup = time.perf_counter() - t
    images = sample_images(args.runs + args.warmup)
    rows: dict[str, list[float]] = {}
    totals = []
    for i, image in enumerate(images):
        interrogator.text_embeddings.memo.clear()  # repeated images must not find their prompts cached
        t = time.perf_counter()
        result = interrogator.interrogate(image)
        total = (time.perf_counter() - t) * 1000
        if i < args.warmup:
            continue
        totals.append(total)
        for k, v in result.timings_ms.items():
            rows.setdefault(k, []).append(v)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"profile: {label}\ndevice: {device}\nstart-up: {startup:.1f} s, runs: {len(totals)}\n")
    print(f"{'stage':<14}{'median ms':>12}{'p90 ms':>10}{'share':>8}")
    med_total = statistics.median(totals)
    for k, v in rows.items():
        med = statistics.median(v)
        print(f"{k:<14}{med:>12.2f}{np.percentile(v, 90):>10.2f}{med / med_total:>8.1%}")
    print(f"{'end to end':<14}{med_total:>12.2f}{np.percentile(totals, 90):>10.2f}{1:>8.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
