"""GPU throughput: random-initialised ViT-bigG-14 text tower in bf16, and GPU vs CPU search.

    python bench/gpu.py            # any CUDA machine; prints "no CUDA device" and exits 0 elsewhere

1. The card's measured bf16 matrix rate (8192^3 matmuls), the baseline for (2).
2. Text embedding with the production tower (ViT-bigG-14, random weights: same FLOPs as trained):
   texts/s for open_clip's encode_text and for unprompt's truncated, length-bucketed path, and the
   fraction of the measured bf16 rate each achieves (2 x non-embedding text parameters x tokens run).
3. Search on the same 1280-d vectors: faiss-gpu when faiss has GPUs, else exhaustive torch.mm on the
   GPU (as the 4th place searched 56M texts), against faiss-cpu exact search.
The output is also written to bench/results/gpu-<device>.txt, to keep with the benchmark.
"""

from __future__ import annotations

import io
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def timed(fn, sync):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def run() -> None:
    import torch

    from retriever._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from retriever.encoders.clip import ClipSpace
    from retriever.encoders.clip_text import encode_truncated, eot_lengths
    from retriever.profile import ClipSpaceSpec
    from text_embedding import prompt_like_texts

    sync = torch.cuda.synchronize
    name = torch.cuda.get_device_name(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _, s = timed(lambda: [a @ b for _ in range(20)], sync)
    peak = 20 * 2 * 8192**3 / s
    print(f"device: {name}; measured bf16 matmul rate {peak / 1e12:.0f} TFLOP/s (8192^3, baseline for fractions)\n")
    a = b = None  # free the card for the next part

    space = ClipSpace(ClipSpaceSpec(kind="open_clip", model="ViT-bigG-14", pretrained="random", precision="bf16"))
    tower = space.model
    text_params = sum(p.numel() for n, p in tower.named_parameters()
                      if not n.startswith("visual") and "token_embedding" not in n)
    texts = prompt_like_texts(30_000, 10_000)
    tokens = space.tokenizer(texts)
    lengths = eot_lengths(tokens).float()
    space.encode_text(texts[:2048])
    batch = space.batch_size or 1024

    @torch.inference_mode()
    def baseline():
        for s0 in range(0, len(tokens), batch):
            tower.encode_text(tokens[s0 : s0 + batch].to("cuda"))

    _, base_s = timed(baseline, sync)
    _, ours_s = timed(lambda: space.encode_text(texts), sync)
    base_flops = 2 * text_params * 77 * len(texts)
    ours_flops = 2 * text_params * float(lengths.sum())
    print(f"ViT-bigG-14 text tower: {text_params / 1e6:.0f}M non-embedding parameters; {len(texts)} prompt-like texts, "
          f"mean {lengths.mean():.1f} tokens")
    print(f"{'method':<40}{'texts/s':>10}{'of bf16 rate':>14}")
    print(f"{'open_clip encode_text (77 tokens)':<40}{len(texts) / base_s:>10,.0f}{base_flops / base_s / peak:>14.1%}")
    print(f"{'unprompt truncated + buckets':<40}{len(texts) / ours_s:>10,.0f}{ours_flops / ours_s / peak:>14.1%}")
    print(f"speed-up: {base_s / ours_s:.2f}x\n")
    with torch.inference_mode():
        t = tokens[:256].to("cuda")
        diff = (tower.encode_text(t).float() - encode_truncated(tower, t).float()).abs().max().item()
    print(f"max |difference| of raw features in bf16 (256 texts): {diff:.3e}\n")
    space = tower = None
    torch.cuda.empty_cache()

    import faiss

    n, d, nq, k = 2_000_000, 1280, 1000, 60
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, nq, replace=False)] + 0.1 * rng.standard_normal((nq, d), dtype=np.float32)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    _, cpu_s = timed(lambda: cpu.search(xq, k), lambda: None)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
        gpu.search(xq[:10], k)
        _, gpu_s = timed(lambda: gpu.search(xq, k), lambda: None)
        label = "faiss-gpu IndexFlatIP"
    else:
        xb_t = torch.from_numpy(xb).to("cuda", torch.float16)
        xq_t = torch.from_numpy(xq).to("cuda", torch.float16)
        torch.topk(xq_t[:10] @ xb_t.T, k)
        _, gpu_s = timed(lambda: torch.topk(xq_t @ xb_t.T, k), sync)
        label = "torch.mm + topk on the GPU (fp16)"
    print(f"exact search, {n:,} x {d}-d, {nq} queries, k={k}")
    print(f"{'faiss-cpu IndexFlatIP (baseline)':<40}{nq / cpu_s:>10,.0f} q/s")
    print(f"{label:<40}{nq / gpu_s:>10,.0f} q/s  = {cpu_s / gpu_s:.1f}x")


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 0
    buf = io.StringIO()
    with redirect_stdout(buf):
        run()
    text = buf.getvalue()
    print(text, end="")
    out = Path(__file__).parent / "results" / f"gpu-{torch.cuda.get_device_name(0).replace(' ', '_')}.txt"
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
