"""What reading generation metadata costs, against admitting the same file's image (same run, same machine).

    .venv/bin/python bench/metadata_cost.py > bench/results/metadata-cost-cpu.txt

For ordinary generated files (A1111 PNG and JPEG, ComfyUI PNG, a 768x768 picture) and hostile ones (30 MiB of
text chunks, zTXt and iTXt bombs, a cyclic graph, a 5,000-node graph, a 4,000-link chain, JSON nested 100,000
deep): the median seconds of ``read_metadata`` and of ``admit_image`` (decoding, or refusing, the image),
their ratio, and the peak memory the metadata read allocates (tracemalloc). The issue's bound: never more
costly than the image itself, so every ratio should stay under 1.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from metadata_files import (A1111, comfy_graph, comfy_png, cyclic_graph, deflated, many_text_chunks, png,  # noqa: E402
                            with_exif, ztxt_bomb)
from retriever.images import ImageRejected, admit_image  # noqa: E402
from retriever.metadata import read_metadata  # noqa: E402


def picture(side: int = 768) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([x // 3, y // 3, (x + y) // 6], axis=-1) % 256
    return Image.fromarray(((base + rng.integers(0, 24, (side, side, 3))) % 256).astype(np.uint8))


def cases() -> dict[str, bytes]:
    im = picture()
    chain = {str(i): {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": [str(i + 1), 0]}}
             for i in range(1, 4000)}
    chain["0"] = {"class_type": "KSampler", "inputs": {"seed": 1, "positive": ["1", 0], "negative": ["1", 0]}}
    wide = {str(i): {"class_type": "CLIPTextEncode", "inputs": {"text": f"node {i}"}} for i in range(4999)}
    wide["k"] = {"class_type": "KSampler", "inputs": {"steps": 1, "positive": ["0", 0], "negative": ["1", 0]}}
    return {
        "a1111 png": png({"parameters": A1111}, image=im),
        "a1111 jpeg (exif)": with_exif(b"UNICODE\x00" + A1111.encode("utf-16-be"), image=im),
        "comfyui png": comfy_png(comfy_graph(), image=im),
        "no metadata png": png(image=im),
        "30 MiB of text chunks": many_text_chunks(im),
        "zTXt bomb (32 MiB)": ztxt_bomb(32, image=im),
        "iTXt bomb (32 MiB)": png(image=im, extra_chunks=[(b"iTXt", b"parameters\x00\x01\x00\x00\x00" + deflated(32))]),
        "cyclic graph": comfy_png(cyclic_graph(False), image=im),
        "5000-node graph": comfy_png(wide, image=im),
        "4000-link chain": comfy_png(chain, image=im),
        "JSON nested 100k deep": png({"prompt": '{"a": ' * 100_000}, image=im),
    }


def median_seconds(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def admit(data: bytes) -> None:
    try:
        admit_image(data)
    except ImageRejected:
        pass


def main() -> None:
    print(__doc__.strip().splitlines()[2].strip())
    print(f"{'file':<24}{'bytes':>10}{'metadata s':>12}{'image s':>10}{'ratio':>8}{'peak MiB':>10}  record")
    worst = 0.0
    for name, data in cases().items():
        meta = median_seconds(lambda: read_metadata(data))
        image = median_seconds(lambda: admit(data))
        tracemalloc.start()
        rec = read_metadata(data)
        peak = tracemalloc.get_traced_memory()[1] / (1 << 20)
        tracemalloc.stop()
        worst = max(worst, meta / image)
        label = f"{rec.generator}: {rec.prompt[:30]!r}" if rec else "none (interrogated)"
        print(f"{name:<24}{len(data):>10}{meta:>12.5f}{image:>10.5f}{meta / image:>8.3f}{peak:>10.2f}  {label}")
    print(f"worst ratio metadata/image: {worst:.3f} ({'under' if worst < 1 else 'OVER'} 1)")
    print(json.dumps({"worst_ratio": round(worst, 4)}))


if __name__ == "__main__":
    main()
