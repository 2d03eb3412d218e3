"""A paper model of the kaggle profile on one H100: FLOPs per stage, counted, then images/s at a stated utilisation.

    .venv/bin/python bench/gpu_model.py > bench/results/gpu-model.md

The FLOPs are counted, not estimated: torch's FlopCounterMode runs each tower of the real architectures
(open_clip ViT-bigG-14 and ViT-H-14, all-MiniLM-L6-v2's BERT) on the meta device, where the weights have
shapes but no values, so nothing is computed and random or real weights cost the same. Search FLOPs follow
from the index shapes autofaiss-style choice would give. Throughput is a MODEL: counted FLOPs divided by an
assumed sustained rate (a stated fraction of the H100 SXM's dense bf16 peak). No GPU ran any of this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

from index_build.plan import count_flops  # noqa: E402

H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM5, dense (no sparsity)


def clip_flops(name: str, text_tokens: int) -> tuple[float, float]:
    """(image FLOPs per image, text FLOPs per text of `text_tokens` tokens, EOT-truncated as we run it: the
    counted 77-token cost scaled by text_tokens / 77, slightly high since attention's part shrinks faster)."""
    import open_clip
    import torch

    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
        size = model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0]
        image = torch.empty(1, 3, size, size)
        tokens = torch.zeros(1, 77, dtype=torch.long)
        image_flops = count_flops(model.encode_image, image)
        text_flops = count_flops(model.encode_text, tokens) * text_tokens / 77
    return image_flops, text_flops


def minilm_flops(tokens: int) -> float:
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    with torch.device("meta"):
        model = BertModel(config)
        ids = torch.zeros(1, tokens, dtype=torch.long)
        return count_flops(model, ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utilisation", type=float, default=0.35, help="sustained fraction of the bf16 dense peak")
    ap.add_argument("--captions", type=float, default=20e6, help="rows of the caption index")
    ap.add_argument("--components", type=float, default=1.6e6, help="rows of the component index")
    ap.add_argument("--prompt-tokens", type=int, default=24, help="mean tokens of a candidate text (EOT included)")
    args = ap.parse_args()

    g_img, g_txt = clip_flops("ViT-bigG-14", args.prompt_tokens)
    h_img, h_txt = clip_flops("ViT-H-14", args.prompt_tokens)
    m_txt = minilm_flops(args.prompt_tokens + 8)
    k, kinds, templates, chain_steps, chain_pool = 60, 5, 112, 4, 40
    # searches: captions IVF-PQ (nlist 2^16, nprobe 1024, 64-byte codes -> one table add per byte) plus exact
    # rescoring of 10k shortlist rows; components: 1.6M rows, per-kind range search over an IVF-Flat-like list
    d = 1280
    caption_search = 2 * 65536 * d + 1024 * (args.captions / 65536) * 64 + 10 * k * 2 * d
    component_search = kinds * (2 * 4096 * d + 256 * (args.components / 4096) * 2 * d)
    h_texts = k + templates + chain_steps * chain_pool  # on-demand captions, templates, chain extensions
    stages = [
        ("bigG image tower (retrieval features, head input)", g_img, "1 image"),
        ("search: captions + components (k=60 per kind)", caption_search + component_search, "1 query per index"),
        ("H14 image tower (rerank)", h_img, "1 image"),
        (f"H14 text tower: {h_texts} texts (60 captions, 112 templates, 4 chain steps x 40)", h_txt * h_texts,
         f"{h_texts} x {args.prompt_tokens} tokens"),
        ("MiniLM: the prompt (final blend)", m_txt, f"1 x {args.prompt_tokens + 8} tokens"),
        ("regressor head (1280 -> 384 linear)", 2 * 1280 * 384, "1 image"),
    ]
    rate = H100_BF16_DENSE * args.utilisation
    total = sum(f for _, f, _ in stages)
    print("# GPU throughput model: kaggle profile on one H100 (a MODEL, not a measurement)\n")
    print("Command: `.venv/bin/python bench/gpu_model.py > bench/results/gpu-model.md` (counted on the meta device "
          "with torch's FlopCounterMode; no GPU ran this).\n")
    print(f"Assumed sustained rate: {args.utilisation:.0%} of the H100 SXM bf16 dense peak (989 TFLOP/s) = "
          f"{rate / 1e12:.0f} TFLOP/s for every stage; batching (`--batch-size 32` or more) is what makes such a "
          "rate plausible for the towers. Search is memory-bound in practice; its FLOPs are shown for scale.\n")
    print("| stage | work per image | GFLOP per image | share | modelled ms per image |")
    print("|---|---|---:|---:|---:|")
    for name, flops, work in stages:
        print(f"| {name} | {work} | {flops / 1e9:,.1f} | {flops / total:.1%} | {flops / rate * 1000:.3f} |")
    print(f"| **total** | | **{total / 1e9:,.1f}** | 100% | **{total / rate * 1000:.3f}** |\n")
    print(f"**Modelled throughput: {rate / total:,.0f} images/s** on one H100 at {args.utilisation:.0%} utilisation.\n")
    print(f"Build side (for `setup --dry-run`): bigG text tower {g_txt / 1e9:.2f} GFLOP per {args.prompt_tokens}-token "
          f"text -> {args.captions * g_txt / rate / 3600:.2f} GPU-hours for {args.captions / 1e6:.0f}M captions at the "
          "same rate.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
