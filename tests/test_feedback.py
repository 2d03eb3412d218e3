"""Feedback round trip: POST /v1/feedback (kept images) -> `feedback export` -> train-regressor --pairs and
build-index --append consume it; bad feedback gets a clear 422."""

import csv
import hashlib

import httpx
import pytest

from api.app import create_app
from api.settings import Settings
from conftest import EXAMPLES, run_cli
from server import LiveServer

CORRECTIONS = {"cat.jpg": "a tabby cat lying on a blanket, soft light", "coffee.jpg": "a cup of espresso on a saucer",
               "rocket.jpg": "a rocket launching at dawn, long exposure", "clock.jpg": "an antique wall clock"}


@pytest.fixture()
def served(lite_interrogator, home):
    app = create_app(Settings(feedback_keep_images=True), lite_interrogator)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client, app.state.feedback


def test_post_export_then_train_and_append(served, tmp_path, lite_interrogator):
    client, store = served
    for name, corrected in CORRECTIONS.items():
        data = (EXAMPLES / name).read_bytes()
        given = client.post("/v1/interrogate", content=data, headers={"content-type": "image/jpeg"}).json()
        assert given["image_sha256"] == hashlib.sha256(data).hexdigest()
        r = client.post("/v1/feedback", data={"image_sha256": given["image_sha256"], "prompt": given["prompt"],
                                              "corrected_prompt": corrected, "rating": "4"},
                        files={"file": (name, data, "image/jpeg")})
        assert r.status_code == 200 and r.json()["image_kept"] is True, r.text
    r = client.post("/v1/feedback", json={"image_sha256": "ab" * 32, "prompt": "x", "corrected_prompt": "a red kite"})
    assert r.status_code == 200 and r.json()["image_kept"] is False  # JSON: no image, row kept
    assert store.path.parent.name == "feedback" and (store.path.parent / "images").is_dir()
    assert store._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    out = tmp_path / "export"
    res = run_cli("feedback", "export", "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    assert sorted(r["prompt"] for r in rows) == sorted(CORRECTIONS.values())  # kept images only
    assert (out / "corrected_prompts.txt").read_text().splitlines() == [*CORRECTIONS.values(), "a red kite"]

    res = run_cli("train-regressor", "--profile", "lite", "--pairs", str(out / "pairs.csv"), "--out",
                  str(tmp_path / "head.pt"), "--epochs", "2", "--hidden", "0")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "head.pt").is_file() and "pairs: " in res.stdout

    # an index built by the lite tower, then the corrected prompts appended to it
    (tmp_path / "base.txt").write_text("a photo of a dog\na cup of espresso on a saucer\n")
    (tmp_path / "base.toml").write_text('name = "base"\n[[sources]]\nname = "base"\npath = "base.txt"\nkind = "caption"\n')
    index_dir = tmp_path / "index"
    assert run_cli("build-index", str(tmp_path / "base.toml"), "--out", str(index_dir), "--quiet").returncode == 0
    res = run_cli("build-index", str(out / "feedback.toml"), "--append", "--out", str(index_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "appended 4 new texts" in res.stdout  # the espresso correction was already there

    from retriever.index import TextIndex

    index = TextIndex.load(index_dir, checksums=True)
    assert index.record.count == 6 and index.record.appended == ["feedback"]
    query = lite_interrogator.retrieval_space.encode_text(["an antique wall clock"])
    assert index.search(query, 1)[0][0].text == "an antique wall clock"


@pytest.mark.parametrize("body, message", [
    ({"image_sha256": "xyz", "corrected_prompt": "a cat"}, "64 hex digits"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "   "}, "empty"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "a cat", "rating": 9}, "1 to 5"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "a cat", "rating": "lots"}, "1 to 5"),
    ([1, 2], "JSON object"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "a cat", "prompt": {"a": [1]}}, "prompt must be a string"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": 5}, "corrected_prompt must be a string"),
    ({"image_sha256": ["ab" * 32], "corrected_prompt": "a cat"}, "image_sha256 must be a string"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "a\x00cat"}, "control character"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "a cat", "prompt": "\x1b]0;pwned\x07"}, "control character"),
    ({"image_sha256": "ab" * 32, "corrected_prompt": "a cat", "rating": 1e308}, "1 to 5"),
])
def test_bad_feedback_is_a_clear_422(served, body, message):
    client, store = served
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_feedback" and message in r.json()["error"]["message"]
    assert store.rows() == []


@pytest.mark.parametrize("body, message", [
    (b'{"image_sha256": "' + b"ab" * 32 + b'", "corrected_prompt": "a cat", "rating": 1e400}', "out of range"),
    (b'{"image_sha256": "' + b"ab" * 32 + b'", "corrected_prompt": "a cat", "rating": -Infinity}', "not a number"),
    (b'{"image_sha256": "' + b"ab" * 32 + b'", "corrected_prompt": "a cat", "rating": NaN}', "not a number"),
    (b'{"image_sha256": "' + b"ab" * 32 + b'", "corrected_prompt": "a cat", "rating": 1' + b"0" * 5000 + b"}",
     "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested deeper"),
    (b'{"image_sha256": "' + b"ab" * 32 + b'", "corrected_prompt": "\\ud800 x"}', "lone surrogate"),
    (b'{"image_sha256": "' + b"ab" * 32 + b'", "corrected_prompt": "a\\u0000cat"}', "control character"),
])
def test_hostile_json_is_a_422_not_a_500(served, body, message):
    client, store = served
    r = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_feedback", r.text
    assert message in r.json()["error"]["message"], r.text
    form = {"image_sha256": (None, "ab" * 32), "corrected_prompt": (None, "a cat"), "rating": (None, "1e400")}
    r = client.post("/v1/feedback", files=form)  # multipart, no image: the form's rating is checked the same way
    assert r.status_code == 422 and "1 to 5" in r.json()["error"]["message"], r.text
    assert store.rows() == []


def test_an_image_that_does_not_match_its_hash_is_refused_when_not_kept(served):
    client, store = served
    store.keep_images = False
    data = (EXAMPLES / "cat.jpg").read_bytes()
    r = client.post("/v1/feedback", data={"image_sha256": "ab" * 32, "corrected_prompt": "a cat"},
                    files={"file": ("cat.jpg", data, "image/jpeg")})
    assert r.status_code == 422 and "does not match" in r.json()["error"]["message"]
    sha = hashlib.sha256(data).hexdigest()
    r = client.post("/v1/feedback", data={"image_sha256": sha, "corrected_prompt": "a cat"},
                    files={"file": ("cat.jpg", data, "image/jpeg")})
    assert r.status_code == 200 and r.json()["image_kept"] is False
    assert len(store.rows()) == 1 and not (store.path.parent / "images").exists()


def test_an_image_that_does_not_match_its_hash_is_refused(served):
    client, store = served
    data = (EXAMPLES / "cat.jpg").read_bytes()
    r = client.post("/v1/feedback", data={"image_sha256": "ab" * 32, "corrected_prompt": "a cat"},
                    files={"file": ("cat.jpg", data, "image/jpeg")})
    assert r.status_code == 422 and "does not match" in r.json()["error"]["message"]
    r = client.post("/v1/feedback", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_a_store_that_cannot_be_written_is_a_clear_503(served):
    client, store = served
    store.path.mkdir(parents=True)  # the database's name taken by a folder: SQLite cannot open it
    r = client.post("/v1/feedback", json={"image_sha256": "ab" * 32, "corrected_prompt": "a cat"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "feedback_unavailable"
    assert client.get("/healthz").status_code == 200
