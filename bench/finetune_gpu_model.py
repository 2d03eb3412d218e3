"""A paper model of the winners' regressor recipe on one H100: generating pairs with SD 2.0 and fine-tuning
image towers on them. Appends a section to the GPU model (run after bench/gpu_model.py, which rewrites it):

    .venv/bin/python bench/finetune_gpu_model.py >> bench/results/gpu-model.md

FLOPs are counted, not estimated: torch's FlopCounterMode runs the real architectures on the meta device
(shapes, no values): each image tower's forward and backward with the 384-d head and the cosine loss, at the
training resolution; SD 2.0's UNet (diffusers' UNet2DConditionModel with SD 2's block layout: 320-640-1280-1280
channels, 1024-d cross-attention from OpenCLIP-H's text tower, linear projections), its VAE decoder and its
text encoder, for one 512 px image. Throughput and hours are a MODEL: counted FLOPs over an assumed sustained
rate (a stated fraction of the H100 SXM dense bf16/fp16 peak). No GPU ran any of this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

from bench.gpu_model import H100_BF16_DENSE  # noqa: E402
from index_build.plan import count_flops  # noqa: E402


def train_step_flops(tower: str, resolution: int) -> float:
    """Forward + backward FLOPs of one image through tower + head + 1 - cosine (batch 1; linear in batch)."""
    import torch

    from retriever.heads.finetune import TowerHead, cosine_loss
    from retriever.heads.model import make_head

    with torch.device("meta"):
        if tower.startswith("efficientnet"):
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name(tower)
            net._fc = torch.nn.Identity()
            visual, dim = net, int(net._bn1.num_features)
        else:
            import open_clip

            model = open_clip.create_model(tower, device="meta", force_image_size=resolution)
            visual, dim = model.visual, int(model.visual.output_dim)
        head = make_head(dim, 384)

        class _Tower(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.v = visual

            def forward(self, x):
                return self.v(x)

        model = TowerHead(_Tower(), head)
        x = torch.empty(1, 3, resolution, resolution)
        y = torch.empty(1, 384)

        def step():
            cosine_loss(model(x), y, torch.ones(1)).backward()

        return count_flops(step, grad=True)


def sd2_flops(size: int) -> tuple[float, float, float]:
    """(UNet FLOPs per call on a batch of 1, VAE decode per image, text encoder per prompt) for SD 2.0."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    latent = size // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=latent, block_out_channels=(320, 640, 1280, 1280),
                                    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                                    use_linear_projection=True, layers_per_block=2)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
                                            max_position_embeddings=77))
        with torch.no_grad():
            u = count_flops(lambda: unet(torch.empty(1, 4, latent, latent), torch.tensor([500]),
                                   encoder_hidden_states=torch.empty(1, 77, 1024)))
            v = count_flops(lambda: vae.decode(torch.empty(1, 4, latent, latent)))
            t = count_flops(lambda: text(torch.zeros(1, 77, dtype=torch.long)))
    return u, v, t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utilisation", type=float, default=0.35, help="sustained fraction of the dense bf16/fp16 peak")
    ap.add_argument("--steps", type=int, default=16, help="DPM-Solver++ steps (the 2nd place's 16)")
    ap.add_argument("--size", type=int, default=512, help="generated image side (SD 2.0 base)")
    ap.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (LP + FT) over the pairs")
    ap.add_argument("--checkpointing", type=float, default=4 / 3,
                    help="step cost multiplier of gradient checkpointing (one more forward: about 4/3)")
    args = ap.parse_args()
    rate = H100_BF16_DENSE * args.utilisation

    u, v, t = sd2_flops(args.size)
    per_image = args.steps * 2 * u + v + 2 * t  # classifier-free guidance: two UNet rows and two texts per image
    gen_rate = rate / per_image
    print("\n## Regressor recipe: generated pairs and fine-tuned towers (a MODEL, not a measurement)\n")
    print("Command: `.venv/bin/python bench/finetune_gpu_model.py >> bench/results/gpu-model.md` (after "
          "`bench/gpu_model.py`, which rewrites the file). Counted with torch's FlopCounterMode on the meta device "
          f"at the real shapes; the same assumed rate: {args.utilisation:.0%} of the H100 SXM dense peak "
          f"(989 TFLOP/s bf16/fp16) = {rate / 1e12:.0f} TFLOP/s. No GPU ran this.\n")
    print(f"### Generation: SD 2.0 ({args.size} px), DPM-Solver++ {args.steps} steps, classifier-free guidance\n")
    print("| part | per image | GFLOP |")
    print("|---|---|---:|")
    print(f"| UNet | {args.steps} steps x 2 (guidance) | {args.steps * 2 * u / 1e9:,.0f} |")
    print(f"| VAE decoder | 1 | {v / 1e9:,.0f} |")
    print(f"| text encoder (OpenCLIP-H, 23 layers) | 2 (prompt + empty) | {2 * t / 1e9:,.0f} |")
    print(f"| **total** | | **{per_image / 1e9:,.0f}** |\n")
    print(f"**Modelled generation: {gen_rate:.2f} images/s** on one H100 ({args.steps} steps; 50 DDIM steps would "
          f"be {rate / (50 * 2 * u + v + 2 * t):.2f} images/s).\n")
    towers = [("ViT-H-14", 224), ("ViT-H-14", 336), ("ViT-L-14", 336), ("ViT-bigG-14", 224),
              ("efficientnet-lite2", 260)]
    rows = []
    for tower, res in towers:
        f = train_step_flops(tower, res)
        rows.append((tower, res, f, rate / (f * args.checkpointing)))
    print("### Fine-tuning: forward + backward per image (tower + 384-d head + cosine loss)\n")
    print(f"Gradient checkpointing (on by default on CUDA) recomputes the forward: x{args.checkpointing:.2f} "
          "per step, included in images/s.\n")
    print("| tower | px | GFLOP per image (fwd+bwd) | modelled images/s |")
    print("|---|---:|---:|---:|")
    for tower, res, f, ips in rows:
        print(f"| {tower} | {res} | {f / 1e9:,.0f} | {ips:,.0f} |")
    print(f"\n### Hours on one H100: generate the pairs once, fine-tune {args.epochs} epochs over them\n")
    print("| pairs | generation h | " + " | ".join(f"fine-tune {t} {r}px h" for t, r, _, _ in rows) + " |")
    print("|---:|---:|" + "---:|" * len(rows))
    for n in (400_000, 2_000_000):
        cells = [f"{n * args.epochs / ips / 3600:,.1f}" for _, _, _, ips in rows]
        print(f"| {n:,} | {n / gen_rate / 3600:,.0f} | " + " | ".join(cells) + " |")
    print("\nGeneration dominates: it is what the 2nd place cut by using 16 DPM-Solver++ steps instead of 50 DDIM "
          "steps, and what `generate-pairs --ray` spreads over GPU actors (hours divide by the GPU count). "
          "Fine-tuning under `torchrun --nproc-per-node N` divides likewise, minus DDP's all-reduce of the "
          "tower's gradients.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
