"""score, submit and eval: the offline commands behind `unprompt score|submit|eval`."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from retriever.evaluation.metric import Score, metric_embed, row_cosines, summarise
from retriever.evaluation.tables import (Prompts, ScoreInputError, align, read_pairs, read_predictions, read_truth,
                                         write_long, write_short)
from retriever.feed import DEFAULT_BATCH_SIZE, interrogate_files
from retriever.files import check_output_file, printable
from retriever.images import list_images
from retriever.progress import progress as report_progress

DEFAULT_CONSTANT_PROMPT = "a highly detailed digital painting of a beautiful landscape, trending on artstation, 8k"


@dataclass
class ScoreResult:
    score: Score
    ids: list[str]
    cosines: np.ndarray


def score_files(truth_path: str | Path, pred_path: str | Path, bootstrap: int = 1000, seed: int = 0) -> ScoreResult:
    truth = read_truth(truth_path)
    pred = read_predictions(pred_path)
    positions = align(truth, pred)
    cos = row_cosines(_embeddings(pred, positions), _embeddings(truth, list(range(len(truth.ids)))))
    if not np.isfinite(cos).all():  # never a NaN score with status 0
        lost = [i for i, c in zip(truth.ids, cos) if not np.isfinite(c)]
        raise ScoreInputError(f"no finite score for ids: {', '.join(sorted(lost)[:10])}")
    return ScoreResult(summarise(cos, bootstrap, seed), truth.ids, cos)


def _embeddings(table: Prompts, rows: list[int]) -> np.ndarray:
    if table.prompts is not None:
        return metric_embed([table.prompts[i] for i in rows])
    assert table.vectors is not None
    return table.vectors[rows]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def submit(interrogator, images_dir: str | Path, out: str | Path, progress: bool = True,
           prompts_out: str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE, metadata: bool = True) -> int:
    """Interrogate every image of a folder and write Kaggle's long submission (and, with ``prompts_out``, the
    prompts as imgId,prompt); refuses if any image is bad. Outputs are checked first and written atomically.
    An image whose file records its prompt is submitted with that prompt's embedding unless ``metadata=False``."""
    out = check_output_file(out, "--out")
    prompts_path = check_output_file(prompts_out, "--prompts-out") if prompts_out else None
    paths = list_images(images_dir)
    ids = image_ids(paths)
    vectors, prompts, bad = [], [], []
    answers = interrogate_files(interrogator, paths, batch_size, stages=False, metadata=metadata)
    for answer in report_progress(answers, len(paths), "submit") if progress else answers:
        if answer.result is None:
            bad.append(answer.error or answer.path)
            continue
        vectors.append(answer.result.embedding)
        prompts.append(answer.result.prompt)
    if bad:
        raise ScoreInputError(f"no submission written; {len(bad)} image(s) could not be read: " + "; ".join(bad))
    write_long(out, ids, np.stack(vectors))
    if prompts_path:
        write_short(prompts_path, ids, prompts)
    return len(ids)


def image_ids(paths: list[Path]) -> list[str]:
    """The submission's imgId of each image: its file name without the suffix (bytes that are not UTF-8 as
    ``\\xNN``). Refused up front: ids that repeat, and ids with control characters (a newline or CR would
    split Kaggle's imgId_eId key across lines, and ``score`` would not read the submission back)."""
    ids = [printable(p.stem) for p in paths]
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ScoreInputError(f"image ids (file names without suffix) repeat: {', '.join(dupes)}")
    control = [i for i in ids if any(ord(c) < 32 or ord(c) == 127 for c in i)]
    if control:
        shown = ", ".join(repr(i) for i in control[:5]) + (f" and {len(control) - 5} more" if len(control) > 5 else "")
        raise ScoreInputError(f"{len(control)} image name(s) hold control characters (a newline, a tab), which "
                              f"no Kaggle imgId may: {shown}; rename them")
    return ids


@dataclass
class EvalRow:
    image: str
    truth: str
    prompt: str
    retrieval_prompt: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    profile: str
    rows: list[EvalRow]
    stages: dict[str, Score]
    baselines: dict[str, Score]
    timings_ms: dict[str, float]
    settings: dict


def evaluate(interrogator, table: str | Path, train_prompts: list[str] | None = None,
             constant_prompt: str = DEFAULT_CONSTANT_PROMPT, bootstrap: int = 1000, seed: int = 0,
             progress: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
             dev_table: str | Path | None = None) -> EvalResult:
    """Score every stage on its own, the final blend, and the baselines, per image. ``dev_table``: the table the
    best single prior prompt is chosen on (its prompts only; no image is read); without it that baseline is
    not reported, only the oracle (the prior prompt best on this very table). Recorded prompts are never
    read here: eval measures interrogation, and a file's own prompt would score itself."""
    seed_everything(seed)
    paths, truths = read_pairs(table)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ScoreInputError(f"{table}: {len(missing)} image file(s) not found: {', '.join(missing[:10])}"
                              + _shared_hint(missing))
    dev_truths = read_pairs(dev_table)[1] if dev_table is not None else None
    truth_emb = metric_embed(truths)
    rows: list[EvalRow] = []
    per_stage: dict[str, list[float]] = {}
    timings: dict[str, list[float]] = {}
    answers = interrogate_files(interrogator, paths, batch_size, metadata=False)
    rows_in = zip(answers, truths, truth_emb)
    for answer, truth, t_emb in report_progress(rows_in, len(truths), "eval") if progress else rows_in:
        if answer.result is None:
            raise ScoreInputError(f"{table}: {answer.error}")
        result = answer.result
        row = EvalRow(str(answer.path), truth, result.prompt, result.retrieval_prompt)
        named = {"retrieval": result.stage_embeddings["retrieval"], "template": result.stage_embeddings["template"],
                 "assembled": result.stage_embeddings["prompt"]}
        if "regressor" in result.stage_embeddings:
            named["regressor"] = result.stage_embeddings["regressor"]
        named["final"] = result.embedding
        for stage, emb in named.items():
            row.scores[stage] = float(row_cosines(emb[None], t_emb[None])[0])
            per_stage.setdefault(stage, []).append(row.scores[stage])
        for k, v in result.timings_ms.items():
            timings.setdefault(k, []).append(v)
        rows.append(row)
    const = row_cosines(np.repeat(metric_embed([constant_prompt]), len(truths), axis=0), truth_emb)
    if train_prompts:
        mean = metric_embed(train_prompts).mean(axis=0, keepdims=True)
        mean_cos = row_cosines(np.repeat(mean, len(truths), axis=0), truth_emb)
        mean_note = f"mean embedding of {len(train_prompts)} training prompts"
    else:  # leave-one-out mean of the evaluation prompts themselves: no prompt scores against itself
        mean_cos = row_cosines(leave_prompt_out_means(truths, truth_emb), truth_emb)
        mean_note = ("leave-one-out mean embedding of the evaluation prompts (every row with the same prompt is "
                     "left out: one prompt drawn by several models never scores against its own copies)")
    baselines = {"constant": const, "mean": mean_cos}
    settings = {"table": str(table), "seed": seed, "bootstrap": bootstrap, "constant_prompt": constant_prompt,
                "mean_baseline": mean_note, "blend": interrogator.profile.blend.model_dump()}
    if interrogator.profile.shrink.centroids:
        settings["shrink"] = interrogator.profile.shrink.model_dump()
    prior = _prior_prompts(interrogator)
    if prior:
        baselines.update(prior_baselines(prior, truth_emb, dev_truths, settings))
    for name, values in baselines.items():
        for row, v in zip(rows, values):
            row.scores[f"baseline_{name}"] = float(v)
    return EvalResult(
        profile=interrogator.profile.name,
        rows=rows,
        stages={k: summarise(np.array(v), bootstrap, seed) for k, v in per_stage.items()},
        baselines={k: summarise(v, bootstrap, seed) for k, v in baselines.items()},
        timings_ms={k: float(np.median(v)) for k, v in timings.items()},
        settings=settings,
    )


def leave_prompt_out_means(truths: list[str], truth_emb: np.ndarray) -> np.ndarray:
    """Per row, the mean embedding of the rows whose prompt differs (zeros when every row has that prompt)."""
    keys = {t: k for k, t in enumerate(dict.fromkeys(truths))}
    group = np.array([keys[t] for t in truths])
    sums = np.zeros((len(keys), truth_emb.shape[1]), np.float64)
    np.add.at(sums, group, truth_emb)
    counts = np.bincount(group, minlength=len(keys))
    rest = truth_emb.sum(axis=0, dtype=np.float64)[None, :] - sums[group]
    return (rest / np.maximum(len(truths) - counts[group], 1)[:, None]).astype(np.float32)


def prior_baselines(prior: list[str], truth_emb: np.ndarray, dev_truths: list[str] | None,
                    settings: dict) -> dict[str, np.ndarray]:
    """Constants drawn from the profile's prior prompts: their mean embedding; the single prompt best on the dev
    table, scored here (only with a dev table); the single prompt best on this table (an oracle, for honesty)."""
    emb = metric_embed(prior)
    sims = truth_emb @ emb.T  # (rows, prior prompts): both unit length
    mean = emb.mean(axis=0, keepdims=True)
    out = {"prior_mean": row_cosines(np.repeat(mean, len(truth_emb), axis=0), truth_emb)}
    if dev_truths is not None:
        best = int(np.argmax((metric_embed(dev_truths) @ emb.T).mean(axis=0)))
        out["prior_best_on_dev"] = sims[:, best]
        settings["prior_best_on_dev"] = prior[best]
    oracle = int(np.argmax(sims.mean(axis=0)))
    out["prior_oracle"] = sims[:, oracle]
    settings["prior_oracle"] = prior[oracle]
    return out


def _prior_prompts(interrogator) -> list[str]:
    from retriever.stages.prior import prior_texts

    location = interrogator.profile.prior.texts
    return prior_texts(location, interrogator.profile.name) if location else []


def _shared_hint(missing: list[str]) -> str:
    if any("shared" in Path(m).parts for m in missing):
        return ("\nThe SD dev set's images live outside the repository, in the shared/ folder beside it "
                "(../shared/sd-dev); put that folder there (the images are not part of the package).")
    return ""
