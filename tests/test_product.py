"""The Python API, the modes and the output shapes, as a user meets them."""

import csv
import io
import json

import httpx
import numpy as np
import polars as pl
import pytest
from PIL import Image

from api.app import create_app
from api.settings import Settings
from conftest import EXAMPLES, run_cli
from server import LiveServer

CAT = EXAMPLES / "cat.jpg"


def test_python_api(lite_interrogator):
    from retriever import Interrogator

    assert Interrogator is type(lite_interrogator)
    result = lite_interrogator.interrogate(str(CAT))
    assert "cat" in result.prompt.lower() and result.mode == "best"
    assert 1 <= len(result.alternatives) <= 5 and result.prompt not in result.alternatives
    assert result.negative_prompt and "cat" not in result.negative_prompt.lower()
    assert result.embedding.shape == (384,) and abs(np.linalg.norm(result.embedding) - 1) < 1e-5
    assert {"image_encode", "retrieve", "rerank", "assemble", "negative", "regress", "blend"} <= set(result.timings_ms)
    same = lite_interrogator.interrogate(Image.open(CAT))  # a PIL image as well as a path
    assert same.prompt == result.prompt
    grey = lite_interrogator.interrogate(Image.open(CAT).convert("L"))  # in any mode
    assert grey.prompt.startswith("a black and white photo")
    batch = lite_interrogator.interrogate_batch([CAT, EXAMPLES / "coffee.jpg"])
    assert batch[0].prompt == result.prompt and np.allclose(batch[0].embedding, result.embedding, atol=1e-5)


def test_interrogator_load_by_name(lite_profile, session_home, monkeypatch):
    from retriever import Interrogator

    monkeypatch.setenv("UNPROMPT_HOME", str(session_home))
    assert Interrogator.load("lite").profile.name == "lite"


def test_modes_map_onto_the_assembly(lite_interrogator):
    best = lite_interrogator.interrogate(CAT)
    fast = lite_interrogator.interrogate(CAT, mode="fast")
    assert fast.prompt == "an Egyptian cat" and fast.retrieval_prompt == "Egyptian cat" and fast.mode == "fast"  # subject only
    negative = lite_interrogator.interrogate(CAT, mode="negative")
    assert negative.negative_prompt == best.negative_prompt  # the useful one: quality negatives, then what it is not
    assert negative.prompt and negative.prompt != negative.negative_prompt  # mode=negative: least similar components
    assert best.negative_prompt.startswith("lowres, low quality") and "photo" not in best.negative_prompt.split(", ")
    no_chain = lite_interrogator.interrogate(CAT, flavours=0)
    assert len(no_chain.prompt) <= len(best.prompt)
    long_chain = lite_interrogator.interrogate(CAT, mode="classic", flavours=8)
    assert long_chain.prompt.count(",") <= 8 + 3


def test_modes_on_the_cli_and_over_http_agree_with_the_api(lite_interrogator, tmp_path):
    api_fast = lite_interrogator.interrogate(CAT, mode="fast").prompt
    api_negative = lite_interrogator.interrogate(CAT, mode="negative").prompt
    assert run_cli("predict", str(CAT), "--mode", "fast").stdout.strip() == api_fast
    assert run_cli("predict", str(CAT), "--mode", "negative").stdout.strip() == api_negative
    with LiveServer(create_app(Settings(), lite_interrogator)) as server:
        r = httpx.post(server.url + "/v1/interrogate", params={"mode": "fast"}, content=CAT.read_bytes(),
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200 and r.json()["prompt"] == api_fast and r.json()["mode"] == "fast"
        r = httpx.post(server.url + "/v1/interrogate", params={"mode": "nonsense"}, content=CAT.read_bytes(),
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        body = httpx.post(server.url + "/v1/interrogate", params={"flavours": 0}, content=CAT.read_bytes(),
                          headers={"content-type": "image/jpeg"}, timeout=60).json()
        assert body["negative_prompt"] and len(body["alternatives"]) <= 5


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        (d / name).write_bytes((EXAMPLES / name).read_bytes())
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return d


@pytest.mark.parametrize("fmt", ["text", "tsv", "csv", "jsonl"])
def test_predict_output_has_one_stable_shape(folder, tmp_path, fmt, lite_profile):
    one = run_cli("predict", str(folder / "cat.jpg"), "--format", fmt, "--no-embedding")
    res = run_cli("predict", str(folder), "--format", fmt, "--out", str(tmp_path / f"out.{fmt}"), "--no-embedding")
    assert res.returncode == 1 and res.stdout == "" and "broken.png" in res.stderr  # one bad image: exit 1
    text = (tmp_path / f"out.{fmt}").read_text()
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["broken.png", "cat.jpg", "coffee.jpg"]
        assert rows[0]["error"] and rows[1]["prompt"] and not rows[1]["error"] and rows[1]["negative_prompt"]
        assert list(csv.DictReader(io.StringIO(one.stdout)))[0]["prompt"] == rows[1]["prompt"]
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        assert "error" in rows[0] and rows[1]["prompt"] and rows[1]["alternatives"] and rows[1]["negative_prompt"]
        assert json.loads(one.stdout)["prompt"] == rows[1]["prompt"]
    else:
        lines = text.split("\n")[:-1]
        assert len(lines) == 3  # a failed image keeps its line
        first = lines[1].split("\t")[-1]
        assert one.stdout.strip().split("\t")[-1] == first and "cat" in first.lower()
        if fmt == "tsv":
            assert lines[0].endswith("broken.png\t") and lines[1].split("\t")[0].endswith("cat.jpg")
        else:
            assert lines[0] == ""


def test_submit_writes_prompts_too(folder, tmp_path, lite_profile):
    (folder / "broken.png").unlink()
    res = run_cli("submit", str(folder), "--out", str(tmp_path / "s.csv"), "--prompts-out", str(tmp_path / "p.csv"))
    assert res.returncode == 0, res.stderr
    prompts = pl.read_csv(tmp_path / "p.csv")
    assert prompts["imgId"].to_list() == ["cat", "coffee"] and "cat" in prompts["prompt"][0].lower()
    assert pl.read_csv(tmp_path / "s.csv").height == 2 * 384


def test_score_takes_kaggles_long_format_as_truth(tmp_path):
    from retriever.evaluation.metric import metric_embed
    from retriever.evaluation.tables import write_long

    prompts = {"a": "a cat on a sofa", "b": "a rocket at night, oil painting"}
    write_long(tmp_path / "sample_submission.csv", list(prompts), metric_embed(list(prompts.values())))
    pl.DataFrame({"imgId": ["a", "b"], "prompt": ["a cat on a couch", "a rocket at night, oil painting"]}).write_csv(
        tmp_path / "pred.csv")
    pl.DataFrame({"imgId": list(prompts), "prompt": list(prompts.values())}).write_csv(tmp_path / "truth.csv")
    long_truth = run_cli("score", "--truth", str(tmp_path / "sample_submission.csv"), "--predictions",
                         str(tmp_path / "pred.csv"), "--json")
    short_truth = run_cli("score", "--truth", str(tmp_path / "truth.csv"), "--predictions", str(tmp_path / "pred.csv"),
                          "--json")
    assert long_truth.returncode == 0, long_truth.stderr
    assert json.loads(long_truth.stdout)["mean"] == pytest.approx(json.loads(short_truth.stdout)["mean"], abs=1e-5)


def test_version_and_help_text():
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("unprompt 0.")
    assert "95%" in run_cli("score", "--help").stdout and "95%%" not in run_cli("score", "--help").stdout


def test_lite_batches_equal_single_images_and_prefetching_keeps_order(lite_interrogator, tmp_path):
    from retriever.feed import decoded_batches, interrogate_files

    paths = sorted(EXAMPLES.glob("*.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    mixed = [*paths[:3], tmp_path / "bad.jpg", *paths[3:]]
    together = list(interrogate_files(lite_interrogator, mixed, batch_size=4))
    assert [a.path for a in together] == [str(p) for p in mixed]
    assert together[3].result is None and "bad.jpg" in together[3].error
    for answer in together[:3] + together[4:]:
        alone = lite_interrogator.interrogate(answer.path)
        assert alone.prompt == answer.result.prompt
        np.testing.assert_allclose(alone.embedding, answer.result.embedding, atol=1e-5)
    inline = [d.path for batch in decoded_batches(mixed, 3, workers=0) for d in batch]  # no threads at all
    assert inline == [str(p) for p in mixed]
