"""Images per second through the batched path, against the per-image loop, measured in the same run.

    .venv/bin/python bench/throughput.py                    # tiny-CLIP kaggle profile and lite, this CPU
    .venv/bin/python bench/throughput.py --profiles tiny --images 96 --batch-sizes 1 8 32

Baseline ("per-image loop"): how predict, submit and eval ran before batching: decode one file, then
``Interrogator.interrogate`` on it with every stage embedding computed and open_clip's own tokenizer on
every candidate text, image after image. Batched: ``retriever.feed.interrogate_files`` at each batch size
(decoding in threads ahead of the model, one encoder call per stage per batch, prompt pieces tokenised once,
report-only embeddings skipped). The "vs batch 1" column isolates batching itself. Both run the same profile
on the same images with the text memo cleared before each run; start-up (models, indexes) is excluded.

"tiny" is the kaggle profile (14 templates x top 8, greedy chain, two CLIPs, on-demand caption vectors, no
head) with tiny random open_clip models in place of bigG and H14, over a 20k-caption index and the lite
components. Images are random crops of 20 real photographs (examples + scikit-image), so candidates differ.
The lite section also times `unprompt predict` on 1 and on 20 images in fresh processes: the marginal
per-image time is (t20 - t1) / 19.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._tiny_clip import tiny_clip_spec  # noqa: E402
from retriever._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = 20_000


def real_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs: random crops (30-100% of the side, any place) of 20 real photographs."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    bases = [Image.open(p).convert("RGB") for p in sorted((REPO / "data_manifests/examples/images").glob("*.jpg"))]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "camera", "brick", "grass", "gravel", "moon", "horse"):
        arr = getattr(skimage.data, name)()
        bases.append(Image.fromarray(arr if arr.dtype == np.uint8 else (arr * 255).astype(np.uint8)).convert("RGB"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        im = bases[i % len(bases)]
        side = int(min(im.size) * rng.uniform(0.3, 1.0))
        x, y = rng.integers(0, im.width - side + 1), rng.integers(0, im.height - side + 1)
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            im.crop((x, y, x + side, y + side)).save(path, quality=90)
        paths.append(path)
    return paths


def tiny_profile(work: Path) -> Path:
    """The kaggle profile with tiny random CLIPs, its indexes built (once) under work/home."""
    from api.cli import main as cli

    # the smallest open_clip shapes: the towers' own FLOPs are negligible, as a GPU makes them for bigG and H14,
    # so what is measured is the pipeline around them
    vision = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32}
    a = tiny_clip_spec(work, "unprompt-bench-a", embed_dim=32, width=32, layers=1, seed=0, vision=vision)
    b = tiny_clip_spec(work, "unprompt-bench-b", embed_dim=32, width=32, layers=1, seed=1, vision=vision)
    flavours = (REPO / "data_manifests/clip_interrogator/flavors.txt").read_text().splitlines()
    (work / "captions.txt").write_text("\n".join(flavours[-CAPTIONS:]) + "\n")
    (work / "captions.toml").write_text('[[sources]]\nname = "captions"\npath = "captions.txt"\nkind = "caption"\n')
    text = (REPO / "retriever/profiles/kaggle.toml").read_text()
    for big, tiny in (('model = "ViT-bigG-14", pretrained = "laion2b_s39b_b160k"', a),
                      ('model = "ViT-H-14", pretrained = "laion2b_s32b_b79k"', b)):
        text = text.replace(big, f'model = "{tiny.model}", pretrained = "{tiny.pretrained}", '
                                 f'model_config_file = "{tiny.model_config_file}"')
    text = text.replace('manifest = "captions.toml"', f'manifest = "{work / "captions.toml"}"')
    text = text.replace('manifest = "components-1.6m.toml"', f'manifest = "{REPO / "data_manifests/components.toml"}"')
    text = text.replace("floor = 0.29", "floor = -1.0")  # random weights: keep every candidate
    path = work / "kaggle-tiny.toml"
    path.write_text(text)
    if cli(["setup", "--profile", str(path)]) != 0:
        raise SystemExit("could not build the tiny indexes")
    return path


def median_rate(run, repeats: int) -> float:
    """Images/s: the median of ``repeats`` runs (the text memo cleared before each)."""
    import statistics

    return statistics.median(run() for _ in range(repeats))


def per_image_loop(interrogator, paths) -> float:
    """The loop as it ran before batching (see the module's docstring)."""
    from open_clip.tokenizer import SimpleTokenizer

    import retriever.stages.assemble as assemble
    from retriever.images import load_image

    class OpenClipCount:
        tokenizer = SimpleTokenizer()

        def count(self, text: str) -> int:
            return len(self.tokenizer.encode(text)) + 2

    spaces = {interrogator.retrieval_space, interrogator.rerank_space}
    saved = [(s, s.tokenizer) for s in spaces if hasattr(s, "tokenizer")]
    counter, assemble._clip_tokens = assemble._clip_tokens, OpenClipCount
    for space, tokenizer in saved:
        space.tokenizer = tokenizer.tokenizer  # open_clip's tokenizer itself, every text from scratch
    interrogator.text_embeddings.memo.clear()
    try:
        t = time.perf_counter()
        for p in paths:
            interrogator.interrogate(load_image(p))
        return len(paths) / (time.perf_counter() - t)
    finally:
        assemble._clip_tokens = counter
        for space, tokenizer in saved:
            space.tokenizer = tokenizer


def batched(interrogator, paths, batch_size: int) -> float:
    from retriever.feed import interrogate_files

    interrogator.text_embeddings.memo.clear()
    t = time.perf_counter()
    n = sum(1 for a in interrogate_files(interrogator, paths, batch_size, stages=False) if a.result is not None)
    assert n == len(paths)
    return len(paths) / (time.perf_counter() - t)


def measure(name: str, profile: str, paths: list[Path], batch_sizes: list[int], repeats: int) -> None:
    import warnings

    from retriever.pipeline import Interrogator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny profile has no head: a warning says so
        interrogator = Interrogator.load(profile)
    interrogator.interrogate_batch([p for p in paths[:8]])  # warm-up (first calls allocate)
    base = median_rate(lambda: per_image_loop(interrogator, paths), repeats)
    print(f"\n{name}: {len(paths)} images, median of {repeats} runs; baseline = per-image loop ({base:.2f} images/s)")
    print(f"{'batch size':>10}  {'images/s':>9}  {'vs per-image loop':>17}  {'vs batch 1':>10}")
    one = None
    for bs in batch_sizes:
        rate = median_rate(lambda: batched(interrogator, paths, bs), repeats)
        one = one or (rate if bs == 1 else None)
        print(f"{bs:>10}  {rate:>9.2f}  {rate / base:>16.2f}x  {f'{rate / one:.2f}x' if one else '':>10}", flush=True)


def predict_marginal(paths: list[Path], rounds: int) -> None:
    exe = str(Path(sys.executable).with_name("unprompt"))

    def wall(args) -> float:
        t = time.perf_counter()
        subprocess.run([exe, "predict", *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - t

    one = min(wall(paths[:1]) for _ in range(rounds))
    twenty = min(wall(paths[:20]) for _ in range(rounds))
    print(f"\nlite `unprompt predict` (fresh process, best of {rounds}): 1 image {one:.2f} s, 20 images "
          f"{twenty:.2f} s -> marginal {(twenty - one) / 19 * 1000:.0f} ms per image (goal: under 150)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", choices=("tiny", "lite"), default=["tiny", "lite"])
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--work", default=None, help="folder for the tiny models, indexes and images (kept)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each predict timing (best is kept)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each throughput row (the median is kept)")
    args = ap.parse_args()
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="unprompt-throughput-"))
    paths = real_images(work / "images", args.images)
    print(f"CPU, {torch.get_num_threads()} threads; images: random crops of 20 real photographs")
    if "tiny" in args.profiles:
        home = os.environ.get("UNPROMPT_HOME")
        os.environ["UNPROMPT_HOME"] = str(work / "home")
        try:
            measure("tiny-CLIP kaggle profile (14 templates x top 8)", str(tiny_profile(work)), paths, args.batch_sizes,
                    args.repeats)
        finally:
            os.environ.pop("UNPROMPT_HOME") if home is None else os.environ.__setitem__("UNPROMPT_HOME", home)
    if "lite" in args.profiles:
        measure("lite profile", "lite", paths, args.batch_sizes, args.repeats)
        predict_marginal(paths, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
