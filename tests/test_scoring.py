import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from browser import ARTIFACTS, chromium_page
from conftest import EXAMPLES, REPO, run_cli
from retriever.evaluation.metric import metric_embed, summarise
from retriever.evaluation.tables import ScoreInputError, write_long
from retriever.evaluation.run import score_files


def test_official_embedding_of_the_competition_example():
    emb = metric_embed(["hyper realistic photo of very friendly and dystopian crater"])[0]
    np.testing.assert_allclose(emb[:3], [0.018848, 0.030190, 0.072792], atol=1e-6)
    assert emb.shape == (384,) and math.isclose(float(np.linalg.norm(emb)), 1.0, abs_tol=1e-5)


def write(path: Path, frame: dict) -> Path:
    pl.DataFrame(frame).write_csv(path)
    return path


def test_identical_prompts_score_one_and_a_known_pair(tmp_path):
    truth = write(tmp_path / "t.csv", {"imgId": ["a", "b"], "prompt": ["a photo of a cat", "a red car at night"]})
    same = score_files(truth, truth, bootstrap=200)
    assert same.score.mean == pytest.approx(1.0, abs=1e-6) and same.score.n == 2
    pred = write(tmp_path / "p.csv", {"imgId": ["a"], "prompt": ["a picture of a kitten"]})
    one = write(tmp_path / "t1.csv", {"imgId": ["a"], "prompt": ["a photo of a cat"]})
    # all-MiniLM-L6-v2 cosine of this pair, computed once with the official model
    assert score_files(one, pred).score.mean == pytest.approx(0.7948399, abs=1e-5)


def test_bootstrap_interval_brackets_the_mean():
    s = summarise(np.array([0.2, 0.4, 0.6, 0.8]), bootstrap=500, seed=1)
    assert s.ci_low <= s.mean <= s.ci_high and s.mean == pytest.approx(0.5)
    assert summarise(np.array([0.2, 0.4, 0.6, 0.8]), 500, 1) == s  # seeded: repeatable


def test_long_format_scores_like_its_vectors(tmp_path):
    truth = write(tmp_path / "t.csv", {"imgId": ["x2", "x1"], "prompt": ["a castle on a hill", "a bowl of soup"]})
    vectors = metric_embed(["a castle on a hill", "a bowl of soup"])
    write_long(tmp_path / "sub.csv", ["x2", "x1"], vectors)
    rows = pl.read_csv(tmp_path / "sub.csv")
    assert rows.height == 768 and rows["imgId_eId"][0] == "x1_0" and rows["imgId_eId"][383] == "x1_383"
    assert rows["imgId_eId"][384] == "x2_0"
    assert score_files(truth, tmp_path / "sub.csv").score.mean == pytest.approx(1.0, abs=1e-5)


def test_long_format_values_past_float32_still_score(tmp_path):
    """1e308 is finite: its row is scaled before the norm, never inf / inf = NaN."""
    truth = write(tmp_path / "t.csv", {"imgId": ["x1", "x2"], "prompt": ["a castle on a hill", "a bowl of soup"]})
    vectors = metric_embed(["a castle on a hill", "a bowl of soup"]).astype(np.float64)
    rows = {"imgId_eId": [f"x{i + 1}_{e}" for i in range(2) for e in range(384)],
            "val": [str(float(v)) for v in np.concatenate([vectors[0] * 1e300, vectors[1] * 1e-300])]}
    big = write(tmp_path / "big.csv", rows)
    assert score_files(truth, big).score.mean == pytest.approx(1.0, abs=1e-5)
    flat = write(tmp_path / "flat.csv", long_rows(["x1", "x2"], value=1e308))
    res = run_cli("score", "--truth", str(truth), "--predictions", str(flat))
    assert res.returncode == 0 and "nan" not in res.stdout and "Warning" not in res.stderr, (res.stdout, res.stderr)
    expected = metric_embed(["a castle on a hill", "a bowl of soup"]).sum(axis=1) / math.sqrt(384)
    assert score_files(truth, flat).score.mean == pytest.approx(float(expected.mean()), abs=1e-5)


def long_rows(ids, n=384, value=0.01):
    return {"imgId_eId": [f"{i}_{e}" for i in ids for e in range(n)], "val": [str(value)] * (len(ids) * n)}


@pytest.mark.parametrize(
    "truth, pred, message",
    [
        ({"imgId": ["a", "b"], "prompt": ["x", "y"]}, {"imgId": ["a", "c"], "prompt": ["x", "y"]},
         "missing from predictions: b; not in ground truth: c"),
        ({"imgId": ["a", "a"], "prompt": ["x", "y"]}, {"imgId": ["a"], "prompt": ["x"]}, "duplicate ids: a"),
        ({"imgId": ["a", "b"], "prompt": ["x", "y"]}, {"imgId": ["b", "b", "a"], "prompt": ["x", "y", "z"]},
         "duplicate ids: b"),
        ({"imgId": ["a"], "prompt": ["x"]}, {"id": ["a"], "prompt": ["x"]}, "missing column(s) imgId"),
        ({"imgId": ["a", "b"], "prompt": ["x", "y"]}, {**long_rows(["a"]), **{}}, "missing from predictions: b"),
    ],
)
def test_malformed_inputs_are_refused_naming_ids(tmp_path, truth, pred, message):
    t, p = write(tmp_path / "t.csv", truth), write(tmp_path / "p.csv", pred)
    with pytest.raises(ScoreInputError) as err:
        score_files(t, p)
    assert message in str(err.value)


def _short_b(rows):
    rows["imgId_eId"] += [f"b_{e}" for e in range(383)]
    rows["val"] += ["0.1"] * 383
    return rows


def _set(rows, column, position, value):
    rows[column][position] = value
    return rows


@pytest.mark.parametrize(
    "rows, message",
    [
        (_short_b(long_rows(["a"])), r"384 rows.*b \(383 rows\)"),
        (_set(_set(long_rows(["a", "b"]), "val", 5, "nan"), "val", 400, "inf"), "non-finite.*a, b"),
        (_set(long_rows(["a", "b"]), "val", 3, "hello"), "non-numeric values for ids: a"),
        (_set(long_rows(["a", "b"]), "imgId_eId", 0, "a"), "not of the form"),
        (_set(long_rows(["a", "b"]), "imgId_eId", 1, "a_0"), "duplicate imgId_eId rows for ids: a"),
    ],
)
def test_long_format_errors(tmp_path, rows, message):
    t = write(tmp_path / "t.csv", {"imgId": ["a", "b"], "prompt": ["x", "y"]})
    with pytest.raises(ScoreInputError, match=message):
        score_files(t, write(tmp_path / "p.csv", rows))


def test_missing_file_and_empty_truth_prompt(tmp_path):
    with pytest.raises(ScoreInputError, match="no such file"):
        score_files(tmp_path / "none.csv", tmp_path / "none.csv")
    (tmp_path / "t.csv").write_text('imgId,prompt\na,\nb,"ok"\n')
    with pytest.raises(ScoreInputError, match="empty prompt for ids: a"):
        score_files(tmp_path / "t.csv", tmp_path / "t.csv")


def test_a_prompt_cell_past_the_limit_is_refused_naming_its_row(tmp_path):
    from retriever.evaluation.tables import MAX_PROMPT_CHARS, read_pairs, read_prompts

    long = "word " * (MAX_PROMPT_CHARS // 5) + "x"  # one character past the limit
    t = write(tmp_path / "t.csv", {"imgId": ["a", "b"], "prompt": ["a cat", "a dog"]})
    bad = write(tmp_path / "bad.csv", {"imgId": ["a", "b"], "prompt": ["a cat", long]})
    for truth, pred in ((bad, t), (t, bad)):
        with pytest.raises(ScoreInputError, match=r"bad.csv: the prompt in row 2 has 100,001 characters; at most "
                                                  r"100,000"):
            score_files(truth, pred)
    res = run_cli("score", "--truth", str(t), "--predictions", str(bad))
    assert res.returncode == 2 and "row 2" in res.stderr and "Traceback" not in res.stderr
    pairs = write(tmp_path / "pairs.csv", {"image": ["x.png"], "prompt": [long]})
    with pytest.raises(ScoreInputError, match="row 1 has 100,001"):
        read_pairs(pairs)
    (tmp_path / "p.txt").write_text(f"a cat\n{long}\n")
    with pytest.raises(ScoreInputError, match="line 2 has 100,001"):
        read_prompts(tmp_path / "p.txt")
    fits = write(tmp_path / "fits.csv", {"image": ["x.png"], "prompt": [long[:-1]]})
    assert len(read_pairs(fits)[1][0]) == MAX_PROMPT_CHARS  # the limit itself is read, unchanged


def test_score_cli_prints_mean_count_interval_and_errors_cleanly(tmp_path):
    t = write(tmp_path / "t.csv", {"imgId": ["a", "b"], "prompt": ["a cat", "a dog"]})
    res = run_cli("score", "--truth", str(t), "--predictions", str(t))
    assert res.returncode == 0 and "score 1.000000" in res.stdout and "n=2" in res.stdout and "95% CI" in res.stdout
    p = write(tmp_path / "p.csv", {"imgId": ["a", "zz"], "prompt": ["a cat", "a dog"]})
    res = run_cli("score", "--truth", str(t), "--predictions", str(p))
    assert res.returncode == 2 and "zz" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def prompt_only_profile(tmp_path_factory, lite_profile):
    """lite with the blend on the prompt alone (no regressor, no prior, no shrinkage), so the final embedding is
    MiniLM(prompt)."""
    text = (REPO / "retriever" / "profiles" / "lite.toml").read_text()
    text = re.sub(r"(?m)^regressor_weight = [0-9.]+", "regressor_weight = 0.0", text)
    text = re.sub(r"(?m)^blend_weight = [0-9.]+", "blend_weight = 0.0", text)
    text = re.sub(r"(?m)^uncertainty_prior_weight = [0-9.]+", "", text)
    text = re.sub(r"(?m)^centroids = .*$", "", text)  # [shrink] off
    assert "blend_weight = 0.0" in text and "regressor_weight = 0.0" in text
    path = tmp_path_factory.mktemp("profiles") / "lite-prompt.toml"
    path.write_text(text)
    return path


def test_submit_round_trip_scores_like_the_short_format(tmp_path, prompt_only_profile):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        (images / name).write_bytes((EXAMPLES / name).read_bytes())
    res = run_cli("submit", str(images), "--profile", str(prompt_only_profile), "--out", str(tmp_path / "sub.csv"))
    assert res.returncode == 0, res.stderr
    sub = pl.read_csv(tmp_path / "sub.csv")
    assert sub.height == 3 * 384
    assert sub["imgId_eId"].to_list()[:2] == ["cat_0", "cat_1"] and sub["imgId_eId"][384] == "coffee_0"
    res = run_cli("predict", *(str(images / n) for n in ("cat.jpg", "coffee.jpg", "rocket.jpg")),
                  "--profile", str(prompt_only_profile), "--format", "tsv")
    prompts = dict(line.split("\t") for line in res.stdout.strip().splitlines())
    short = write(tmp_path / "short.csv", {"imgId": [Path(k).stem for k in prompts], "prompt": list(prompts.values())})
    truth = write(tmp_path / "truth.csv", {"imgId": ["cat", "coffee", "rocket"],
                                           "prompt": ["a cat on a blanket", "espresso in a cup", "a rocket launch"]})
    long_score = score_files(truth, tmp_path / "sub.csv").score.mean
    short_score = score_files(truth, short).score.mean
    assert long_score == pytest.approx(short_score, abs=1e-5)


def test_submit_refuses_a_folder_with_a_bad_image(tmp_path, lite_profile):
    (tmp_path / "good.jpg").write_bytes((EXAMPLES / "cat.jpg").read_bytes())
    (tmp_path / "bad.png").write_bytes(b"nope")
    res = run_cli("submit", str(tmp_path), "--out", str(tmp_path / "s.csv"))
    assert res.returncode == 2 and "bad.png" in res.stderr and not (tmp_path / "s.csv").exists()


def test_eval_end_to_end_writes_the_report_and_opens_in_chromium(tmp_path, lite_interrogator):
    from retriever.evaluation.report import write_report
    from retriever.evaluation.run import evaluate

    manifest = REPO / "data_manifests" / "examples" / "eval.csv"
    first = evaluate(lite_interrogator, manifest, bootstrap=300, seed=7, progress=False)
    second = evaluate(lite_interrogator, manifest, bootstrap=300, seed=7, progress=False)
    out = write_report(first, tmp_path / "report")
    numbers = json.loads((out / "report.json").read_text())
    assert set(numbers["stages"]) == {"retrieval", "template", "assembled", "regressor", "final"}
    assert set(numbers["baselines"]) == {"constant", "mean", "prior_mean", "prior_oracle"}
    assert numbers["stages"]["final"]["n"] == 7
    again = json.loads((write_report(second, tmp_path / "again") / "report.json").read_text())
    numbers.pop("median_timings_ms"), again.pop("median_timings_ms")  # wall-clock times vary
    assert numbers == again  # seeded: every score, interval and prompt repeats
    per_image = pl.read_csv(out / "per_image.csv")
    assert per_image.height == 7 and {"score_final", "score_baseline_mean"} <= set(per_image.columns)
    html = (out / "report.html").read_text()
    assert "<svg" in html and "Worst examples" in html and "data:image/jpeg;base64," in html

    with chromium_page() as (page, problems):
        page.goto((out / "report.html").as_uri())
        assert page.locator("h1").inner_text().startswith("unprompt eval")
        assert page.locator("svg").count() == 2
        assert page.locator("img").count() == 6
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "eval-report.png"), full_page=True)
        assert problems == []
    assert (ARTIFACTS / "eval-report.png").stat().st_size > 10_000


def test_eval_per_image_csv_guards_cells_that_would_run_as_formulas(tmp_path):
    from retriever.evaluation.metric import Score
    from retriever.evaluation.report import write_report
    from retriever.evaluation.run import EvalResult, EvalRow
    from retriever.files import restore_cell

    image = str(REPO / "data_manifests" / "examples" / "images" / "cat.jpg")
    rows = [EvalRow(image, "=HYPERLINK(\"http://x\")", "+1+1", "@SUM(A1)", {"final": 0.5}),
            EvalRow(image, "a cat", "-a cat", "a=b", {"final": 0.25})]
    score = Score(0.375, 2, 0.25, 0.5)
    out = write_report(EvalResult("lite", rows, {"final": score}, {"mean": score}, {}, {"seed": 0}), tmp_path / "r")
    table = pl.read_csv(out / "per_image.csv")
    assert table["truth"].to_list() == ["'=HYPERLINK(\"http://x\")", "a cat"]
    assert table["prompt"].to_list() == ["'+1+1", "'-a cat"] and table["retrieval_prompt"][1] == "a=b"
    assert [restore_cell(t) for t in table["prompt"]] == ["+1+1", "-a cat"]
    assert json.loads((out / "report.json").read_text())["per_image"][0]["prompt"] == "+1+1"  # JSON keeps the text


def test_submit_refuses_control_characters_in_ids_and_score_reads_every_id_it_writes(tmp_path, lite_profile):
    from conftest import EXAMPLES, run_cli
    from retriever.evaluation.tables import read_predictions

    cat = (EXAMPLES / "cat.jpg").read_bytes()
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "we,ird\nid.jpg").write_bytes(cat)
    res = run_cli("submit", str(odd), "--out", str(tmp_path / "s.csv"))
    assert res.returncode == 2 and "hold control characters" in res.stderr and "'we,ird\\nid'" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "s.csv").exists()
    images = tmp_path / "images"
    images.mkdir()
    for name in ("we,ird id.jpg", "=x.jpg", 'q"uote.jpg'):
        (images / name).write_bytes(cat)
    s, p = tmp_path / "s.csv", tmp_path / "p.csv"
    res = run_cli("submit", str(images), "--out", str(s), "--prompts-out", str(p))
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "submit: 3/3 img (100%)" in res.stderr  # plain lines off a terminal
    assert sorted(read_predictions(s).ids) == sorted(["we,ird id", "=x", 'q"uote'])
    res = run_cli("score", "--truth", str(p), "--predictions", str(s), "--bootstrap", "0")
    assert res.returncode == 0 and res.stdout.startswith("score ") and "n=3" in res.stdout, res.stderr


def test_long_format_ids_may_hold_a_newline(tmp_path):
    import numpy as np

    from retriever.evaluation.tables import read_predictions, write_long

    write_long(tmp_path / "s.csv", ["a\nb", "c"], np.ones((2, 384), dtype=np.float32))
    assert read_predictions(tmp_path / "s.csv").ids == ["a\nb", "c"]
