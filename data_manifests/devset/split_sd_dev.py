"""Split ../shared/sd-dev into the SD dev set's two eval tables, by prompt (never by image).

The 120 images are 30 prompts, each drawn by 4 models; all 4 images of a prompt go to the same half. The rule:
the 30 distinct prompts, sorted, shuffled with Python's ``random.Random(0)``; the first 15 are the dev half
(``sd-dev-dev.csv``: thresholds and blend weights are chosen on it; no shipped weight is fitted to it), the other
15 the held-out half (``sd-dev-heldout.csv``: never used to choose anything). Image paths are written relative to this folder
(``../../../shared/sd-dev/images/...``: the shared/ folder beside the repository), so the images never enter the
repository or the package. The tables copy the prompts, whose source states no license, so they are made here
on demand and never committed (.gitignore); run this before evaluating on them (the output is deterministic):

    .venv/bin/python data_manifests/devset/split_sd_dev.py [path/to/sd-dev]
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
SHARED = Path("..") / ".." / ".." / "shared" / "sd-dev"  # relative to HERE: <repo>/../shared/sd-dev
SEED = 0
COLUMNS = ["image", "prompt", "model", "style"]


def split(prompts: list[str], seed: int = SEED) -> tuple[set[str], set[str]]:
    """(dev, held-out) prompt sets: the sorted distinct prompts shuffled with ``random.Random(seed)``, halved."""
    order = sorted(set(prompts))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return set(order[:half]), set(order[half:])


def main(source: Path) -> None:
    table = source / "prompts.csv"
    if not table.is_file():
        raise SystemExit(f"split_sd_dev: no {table}: the SD dev set lives in ../shared/sd-dev beside the repository "
                         "(prompts.csv and images/)")
    if source.resolve() != (HERE / SHARED).resolve():
        raise SystemExit(f"split_sd_dev: the tables name their images as {SHARED.as_posix()}/images/...; "
                         f"{source} is elsewhere: link it there instead")
    frame = pl.read_csv(table, infer_schema=False)
    dev, _ = split(frame["prompt"].to_list())
    frame = frame.with_columns(pl.concat_str(pl.lit(SHARED.as_posix() + "/"), pl.col("image")).alias("image"))
    for name, rows in (("sd-dev-dev.csv", frame.filter(pl.col("prompt").is_in(dev))),
                       ("sd-dev-heldout.csv", frame.filter(~pl.col("prompt").is_in(dev)))):
        rows.select(COLUMNS).sort(["style", "model"]).write_csv(HERE / name)
        print(f"{name}: {rows.height} images, {rows['prompt'].n_unique()} prompts")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", type=Path, default=(HERE / SHARED).resolve(),
                    help="the sd-dev folder (default: ../shared/sd-dev beside the repository)")
    main(ap.parse_args().source)
