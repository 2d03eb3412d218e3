"""The constants every lite quality claim is measured against, on each eval table (prompts only, no images):
the prior-mean constant, the best single prior prompt chosen on the dev half (scored on the held-out half),
the oracle-best prior prompt, and the leave-one-prompt-out mean of the true prompts.

    .venv/bin/python bench/lite_sd_baselines.py > bench/results/lite-sd-baselines.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from retriever.evaluation.metric import metric_embed, row_cosines
from retriever.evaluation.run import leave_prompt_out_means, prior_baselines
from retriever.evaluation.tables import read_table
from retriever.stages.prior import prior_texts

REPO = Path(__file__).resolve().parents[1]
D = "data_manifests/devset"
SETS = [("data_manifests/examples/eval.csv", None), (f"{D}/dev.csv", None), (f"{D}/heldout.csv", f"{D}/dev.csv"),
        (f"{D}/sd-dev-dev.csv", None), (f"{D}/sd-dev-heldout.csv", f"{D}/sd-dev-dev.csv")]


def prompts(table: str) -> list[str]:
    return [str(p) for p in read_table(REPO / table)["prompt"].to_list()]


def main() -> None:
    prior = prior_texts("pkg:retriever/data/prior_prompts.txt", "lite")
    print(f"{'table':<40}{'prior mean':>11}{'best on dev':>12}{'oracle':>8}{'LOPO mean':>10}")
    for table, dev in SETS:
        truths = prompts(table)
        emb = metric_embed(truths)
        settings: dict = {}
        b = prior_baselines(prior, emb, prompts(dev) if dev else None, settings)
        lopo = row_cosines(leave_prompt_out_means(truths, emb), emb)
        best = f"{b['prior_best_on_dev'].mean():.4f}" if dev else "-"
        print(f"{table:<40}{b['prior_mean'].mean():>11.4f}{best:>12}{b['prior_oracle'].mean():>8.4f}"
              f"{float(np.mean(lopo)):>10.4f}   best on dev: {settings.get('prior_best_on_dev', '-')!r}")


if __name__ == "__main__":
    sys.exit(main())
