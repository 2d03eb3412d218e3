"""Lite's quality on every eval table, before and after the cross-validated shrinkage, with bootstrap-by-prompt
95% CIs of the two acceptance margins on the held-out halves. Prints aggregates only (no prompt, no per-image row).

    .venv/bin/python data_manifests/devset/split_sd_dev.py     # the SD dev tables, from ../shared
    .venv/bin/python bench/lite_heldout_ci.py > bench/results/lite-heldout-ci.txt

"before": the same interrogator with its shrink stage off (the blend of the prior's weight plus
describe.uncertainty_prior_weight, as on main); "after": the lite profile as shipped. The margins:
final - the leave-one-prompt-out mean of the table's true prompts, and assembled prompt text - the single prior
prompt best on the table's dev half; each resampled by prompt (every image of a prompt together), 2000 draws.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from retriever.evaluation.run import evaluate
from retriever.pipeline import Interrogator
from retriever.stages.blend import PriorBlend

REPO = Path(__file__).resolve().parents[1]
D = "data_manifests/devset"
SETS = [("data_manifests/examples/eval.csv", None), (f"{D}/dev.csv", None), (f"{D}/heldout.csv", f"{D}/dev.csv"),
        (f"{D}/sd-dev-dev.csv", None), (f"{D}/sd-dev-heldout.csv", f"{D}/sd-dev-dev.csv")]
DRAWS = 2000


def by_prompt_ci(diff: np.ndarray, prompts: list[str], seed: int = 0) -> tuple[float, float, float]:
    keys = {p: k for k, p in enumerate(dict.fromkeys(prompts))}
    group = np.array([keys[p] for p in prompts])
    sums, counts = np.bincount(group, diff), np.bincount(group)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(DRAWS, len(keys)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def main() -> int:
    it = Interrogator.load("lite")
    p = it.profile
    shrunk = it.final_embedding  # the shipped final: lite's Shrink.for_description
    blended = PriorBlend(p.blend.text_weight, p.blend.regressor_weight, it.prior.metric, p.prior.blend_weight,
                         p.describe.uncertainty_prior_weight)  # what the pipeline uses with the shrink stage off
    print(f"{'table':<26}{'assembled':>10}{'final before':>13}{'final after':>12}{'prior mean':>11}"
          f"{'best prior':>11}{'LOO mean':>9}")
    cis = []
    for table, dev in SETS:
        if not (REPO / table).is_file():
            print(f"{table}: missing (run data_manifests/devset/split_sd_dev.py)")
            continue
        results = {}
        for name, final in (("before", blended), ("after", shrunk)):
            it.final_embedding = final
            results[name] = evaluate(it, REPO / table, progress=False, bootstrap=0,
                                     dev_table=REPO / dev if dev else None)
        after = results["after"]
        col = lambda res, key: np.array([r.scores[key] for r in res.rows])
        best = f"{col(after, 'baseline_prior_best_on_dev').mean():>11.4f}" if dev else f"{'-':>11}"
        print(f"{Path(table).name:<26}{col(after, 'assembled').mean():>10.4f}{col(results['before'], 'final').mean():>13.4f}"
              f"{col(after, 'final').mean():>12.4f}{col(after, 'baseline_prior_mean').mean():>11.4f}{best}"
              f"{col(after, 'baseline_mean').mean():>9.4f}")
        if dev:
            prompts = [r.truth for r in after.rows]
            for label, res in (("before", results["before"]), ("after", after)):
                cis.append((Path(table).name, f"final - LOO mean ({label})",
                            by_prompt_ci(col(res, "final") - col(res, "baseline_mean"), prompts)))
            cis.append((Path(table).name, "assembled - best prior prompt",
                        by_prompt_ci(col(after, "assembled") - col(after, "baseline_prior_best_on_dev"), prompts)))
    print(f"\nheld-out margins, bootstrap by prompt ({DRAWS} draws), 95% CI")
    for table, what, (mean, lo, hi) in cis:
        print(f"{table:<26}{what:<34}{mean:>8.4f}  [{lo:.4f}, {hi:.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
