"""The assembly's work: a profile's chain against the same profile scoring every component at every step.

    .venv/bin/python bench/assembly_work.py --out bench/results/assembly-work-cpu.txt
    .venv/bin/python bench/assembly_work.py --profile lite --repeat 3

Both configurations run in one process on the same loaded models and the same decoded images, in turns
(full, profile, full, profile, ...), so the host's speed drifts alike for both. For each it prints, per eval
table, the mean metric cosine of the final embedding with the true prompt, then over all images: how many
prompts differ from the full chain's, the texts the text encoder embedded (the memo cleared before each
run), the assembly's milliseconds an image and the whole run's seconds (medians of ``--repeat``).

Tables: the example folder's (``data_manifests/examples/eval.csv``), the photo dev set (``data_manifests/devset/dev.csv``,
``heldout.csv``) and, where ``../shared/sd-dev``
has been split into ``sd-dev-dev.csv`` and ``sd-dev-heldout.csv`` (``data_manifests/devset/split_sd_dev.py``),
the generated images; a missing table is named and left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TABLES = ("data_manifests/examples/eval.csv", "data_manifests/devset/dev.csv", "data_manifests/devset/heldout.csv",
          "data_manifests/devset/sd-dev-dev.csv", "data_manifests/devset/sd-dev-heldout.csv")


def read_tables(tables: list[str]) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """(table, image path, prompt) rows of the tables that exist, and the names of those that do not."""
    from retriever.evaluation.tables import read_pairs

    rows, missing = [], []
    for table in tables:
        if not (ROOT / table).exists():
            missing.append(table)
            continue
        paths, prompts = read_pairs(ROOT / table)
        rows += [(table, path, prompt) for path, prompt in zip(paths, prompts)]
    return rows, missing


def run(interrogator, images, batch: int) -> tuple[list, int, float]:
    embeddings = interrogator.text_embeddings
    embeddings.memo.clear()
    before = embeddings.computed
    start = time.perf_counter()
    out = []
    for i in range(0, len(images), batch):
        out += interrogator.interrogate_batch(images[i : i + batch])
    return out, embeddings.computed - before, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="lite")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated eval tables (image, prompt)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from PIL import Image

    from retriever.pipeline import Interrogator

    rows, missing = read_tables(args.tables.split(","))
    if not rows:
        raise SystemExit(f"none of the tables exist: {args.tables}")
    shipped = Interrogator.load(args.profile)
    profile = shipped.profile
    if not profile.assemble.lazy_round:
        raise SystemExit(f"profile {args.profile!r} scores every component already (assemble.lazy_round = 0)")
    full_profile = profile.model_copy(update={"assemble": profile.assemble.model_copy(update={"lazy_round": 0})})
    full = Interrogator(full_profile, shipped.retrieval_space, shipped.rerank_space, shipped.indexes, shipped.regressor)
    images = [Image.open(p).convert("RGB") for _, p, _ in rows]
    truth = shipped.metric.encode_text([p for _, _, p in rows])
    configs = {"every component (lazy_round = 0)": full,
               f"{args.profile} as shipped (lazy_round = {profile.assemble.lazy_round})": shipped}
    results: dict[str, dict] = {name: {"seconds": [], "assemble_ms": []} for name in configs}
    for _ in range(args.repeat):
        for name, interrogator in configs.items():
            out, texts, seconds = run(interrogator, images, args.batch_size)
            r = results[name]
            r["prompts"], r["texts"] = [o.prompt for o in out], texts
            r["seconds"].append(seconds)
            r["assemble_ms"].append(float(np.mean([o.timings_ms["assemble"] for o in out])))
            cosines = np.sum(np.stack([o.embedding for o in out]) * truth, axis=1)
            r["means"] = {t: float(np.mean([c for c, (tt, _, _) in zip(cosines, rows) if tt == t]))
                          for t in dict.fromkeys(t for t, _, _ in rows)}
    reference = results["every component (lazy_round = 0)"]["prompts"]
    lines = [f"$ .venv/bin/python bench/assembly_work.py --profile {args.profile} --repeat {args.repeat}"
             + (f" --out {args.out}" if args.out else ""),
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {len(rows)} images; medians of {args.repeat}; "
             f"batch {args.batch_size}; threads as the thread plan chooses"]
    if missing:
        lines.append("left out (absent): " + ", ".join(missing))
    tables = list(next(iter(results.values()))["means"])
    lines.append("")
    lines.append(f"{'configuration':<36}" + "".join(f"{Path(t).stem:>15}" for t in tables)
                 + f"{'changed':>9}{'texts':>7}{'assemble ms/img':>17}{'run s':>8}")
    for name, r in results.items():
        changed = sum(a != b for a, b in zip(r["prompts"], reference))
        lines.append(f"{name:<36}" + "".join(f"{r['means'][t]:>15.4f}" for t in tables)
                     + f"{changed:>9}{r['texts']:>7}{statistics.median(r['assemble_ms']):>17.1f}"
                     + f"{statistics.median(r['seconds']):>8.2f}")
    a, b = results.values()
    lines.append("")
    lines.append(f"texts embedded: {b['texts'] / a['texts']:.2f}x; assembly time: "
                 f"{statistics.median(b['assemble_ms']) / statistics.median(a['assemble_ms']):.2f}x; run time: "
                 f"{statistics.median(b['seconds']) / statistics.median(a['seconds']):.2f}x; largest change of a "
                 f"table's mean: {max(abs(b['means'][t] - a['means'][t]) for t in tables):.4f}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
