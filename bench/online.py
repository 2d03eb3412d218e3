"""The online path of one image, as `unprompt predict` runs it: ours against the naive stages.

    .venv/bin/python bench/online.py            # lite profile, this CPU

Ours: candidate texts' embeddings come from the index (stored), new strings are embedded once
and remembered (the memory is cleared before each image here, so repeats don't flatter it), the retrieval-only and prompt embeddings reuse the rerank space when it is
the metric's. Naive baseline (same models, same images, same run): every candidate text and
every metric embedding is computed afresh per request; for CLIP text towers it would also
run the full 77-token context. Start-up (loading models and index) is excluded from both.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

REPO = Path(__file__).resolve().parents[1]


def images() -> list[bytes]:
    import skimage.data
    from PIL import Image

    out = [p.read_bytes() for p in sorted((REPO / "data_manifests" / "examples" / "images").glob("*.jpg"))]
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run(interrogator, data: list[bytes], rounds: int) -> tuple[list[float], dict[str, list[float]]]:
    from retriever.images import decode_image

    totals, stages = [], {}
    for r in range(rounds + 1):
        for blob in data:
            interrogator.text_embeddings.memo.clear()  # repeated images must not find their prompts cached
            t = time.perf_counter()
            image = decode_image(blob)
            decode = (time.perf_counter() - t) * 1000
            result = interrogator.interrogate(image)
            total = (time.perf_counter() - t) * 1000
            if r == 0:
                continue  # warm-up round
            totals.append(total)
            for k, v in {"decode": decode, **result.timings_ms}.items():
                stages.setdefault(k, []).append(v)
    return totals, stages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="lite")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import copy

    import torch

    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile
    from retriever.stages.rerank import Reranker, TextEmbeddings

    ours = Interrogator.from_profile(load_profile(args.profile))
    naive = copy.copy(ours)
    naive.text_embeddings = TextEmbeddings(ours.rerank_space, {}, memo_size=0)
    naive.reranker = Reranker(naive.text_embeddings, ours.profile.rerank.floor, ours.profile.rerank.keep)
    naive._rerank_is_metric = False
    for space in {id(ours.retrieval_space): ours.retrieval_space, id(ours.rerank_space): ours.rerank_space}.values():
        if hasattr(space, "truncate"):
            space.truncate = True
    data = images()
    totals, stages = run(ours, data, args.rounds)
    for space in (naive.retrieval_space, naive.rerank_space):
        if hasattr(space, "truncate"):
            space.truncate = False  # full 77-token context for the naive CLIP text path
    naive_totals, naive_stages = run(naive, data, args.rounds)

    print(f"profile {args.profile}; {len(data)} images x {args.rounds} rounds, one image a call; "
          f"CPU ({torch.get_num_threads()} threads); start-up excluded\n")
    print(f"{'stage':<14}{'ours p50 ms':>13}{'naive p50 ms':>14}{'ratio':>8}")
    for k in stages:
        a, b = statistics.median(stages[k]), statistics.median(naive_stages[k])
        print(f"{k:<14}{a:>13.2f}{b:>14.2f}{b / max(a, 1e-9):>8.1f}x")
    a, b = statistics.median(totals), statistics.median(naive_totals)
    print(f"{'end to end':<14}{a:>13.2f}{b:>14.2f}{b / a:>8.1f}x")
    print(f"\nend to end p90: ours {np.percentile(totals, 90):.1f} ms, naive {np.percentile(naive_totals, 90):.1f} ms; "
          f"sum of naive stage medians {sum(statistics.median(v) for v in naive_stages.values()):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
