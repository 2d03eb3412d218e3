"""Text embedding: exact context truncation + length buckets vs open_clip's encode_text.

    .venv/bin/python bench/text_embedding.py                       # ViT-B-32 text tower (random weights), CPU
    .venv/bin/python bench/text_embedding.py --model ViT-bigG-14   # on a GPU: bf16, the production tower

Texts follow a prompt-like length distribution: the real clip-interrogator component lists
(flavours, artists, mediums, movements) plus sentence-length captions. Random weights cost
the same FLOPs as trained ones. Baseline: open_clip's encode_text on the same texts and model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()


def prompt_like_texts(n_components: int, n_captions: int, seed: int = 0) -> list[str]:
    from index_build.manifest import load_manifest
    from index_build.read import read_manifest
    from synthetic import synthetic_prompts

    rng = np.random.default_rng(seed)
    import tempfile

    staged = read_manifest(load_manifest("components.toml"), Path(tempfile.mkdtemp()), 8192)
    pool = [t for st in staged for t in st.all_texts()]
    components = [pool[i] for i in rng.choice(len(pool), n_components, replace=False)]
    texts = components + synthetic_prompts(n_captions, seed)
    rng.shuffle(texts)
    return texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--components", type=int, default=3000)
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    import torch

    from retriever.encoders.clip import ClipSpace
    from retriever.encoders.clip_text import eot_lengths, encode_truncated
    from retriever.profile import ClipSpaceSpec

    space = ClipSpace(ClipSpaceSpec(kind="open_clip", model=args.model, pretrained="random"), batch_size=args.batch_size)
    texts = prompt_like_texts(args.components, args.captions)
    tokens = space.tokenizer(texts)
    lengths = eot_lengths(tokens).float()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: {args.model} text tower, random weights, {space.dtype}; device: {device}; truncation: {space.truncate}")
    print(f"texts: {len(texts)} ({args.components} components + {args.captions} captions); tokens incl. SOT/EOT: "
          f"mean {lengths.mean():.1f}, median {lengths.median():.0f}, max {lengths.max():.0f} of 77\n")

    space.encode_text(texts[:256])  # warm-up
    def timed(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    @torch.inference_mode()
    def baseline():
        out = [space.model.encode_text(tokens[s : s + args.batch_size].to(space.device)).float().cpu()
               for s in range(0, len(tokens), args.batch_size)]
        return torch.cat(out).numpy()

    base, base_s = timed(baseline)
    ours, ours_s = timed(lambda: space.encode_text(texts))
    base_unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    raw = encode_truncated(space.model, tokens[:512].to(space.device)).float().cpu().numpy()
    print(f"{'method':<44}{'texts/s':>10}{'seconds':>10}")
    print(f"{'open_clip encode_text (baseline, 77 tokens)':<44}{len(texts) / base_s:>10,.0f}{base_s:>10.2f}")
    print(f"{'unprompt (truncated, length buckets)':<44}{len(texts) / ours_s:>10,.0f}{ours_s:>10.2f}")
    print(f"\nmax |difference|: unit embeddings {np.abs(ours - base_unit).max():.2e}; "
          f"raw features {np.abs(raw - base[:512]).max():.2e}")
    print(f"speed-up vs encode_text: {base_s / ours_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
