import json

import pytest

from conftest import EXAMPLES, run_cli


@pytest.fixture(scope="module")
def images(tmp_path_factory, lite_profile):
    import skimage.data
    from PIL import Image

    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(skimage.data.chelsea()).save(d / "chelsea.png")
    Image.fromarray(skimage.data.coffee()).save(d / "coffee.png")
    (d / "notes.txt").write_text("this is not an image")
    full = (d / "coffee.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 3])
    (d / "empty.jpg").write_bytes(b"")
    return d


def test_cat_prompt_names_a_cat(images):
    res = run_cli("predict", str(images / "chelsea.png"))
    assert res.returncode == 0, res.stderr
    assert "cat" in res.stdout.lower()


def test_coffee_prompt_names_coffee(images):
    res = run_cli("predict", str(EXAMPLES / "coffee.jpg"), str(images / "coffee.png"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert any(w in line.lower() for w in ("coffee", "espresso", "cup")), line


def test_bad_files_are_reported_and_the_rest_answered(images):
    res = run_cli("predict", str(images / "notes.txt"), str(EXAMPLES / "cat.jpg"), str(images / "truncated.png"),
                  str(images / "empty.jpg"), str(images / "missing.png"), "--json", "--top", "3")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["notes.txt", "cat.jpg", "truncated.png", "empty.jpg", "missing.png"]
    errors = {r["image"].rsplit("/", 1)[-1]: r["error"] for r in rows if "error" in r}
    assert "not an image" in errors["notes.txt"]
    assert "truncated or corrupt" in errors["truncated.png"]
    assert "empty" in errors["empty.jpg"]
    assert "no such file" in errors["missing.png"]
    good = rows[1]
    assert "cat" in good["prompt"].lower()
    assert len(good["embedding"]) == 384
    assert set(good["stage_embeddings"]) == {"retrieval", "template", "prompt", "regressor"}
    assert len(good["candidates"]) == 3 and all("rerank_score" in c for c in good["candidates"])
    assert {"decode", "image_encode", "retrieve", "rerank", "assemble", "regress", "blend", "total"} <= set(good["timings_ms"])
    for line in res.stderr.strip().splitlines():  # errors, and progress lines (stderr is not a terminal here)
        assert line.startswith(("unprompt: error:", "predict: "))


def test_missing_weights_exit_cleanly(tmp_path):
    res = run_cli("build-index", "components.toml", "--profile", "kaggle", "--out", str(tmp_path / "ix"),
                  env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "ViT-bigG-14" in res.stderr and "laion2b_s39b_b160k" in res.stderr and "checkpoint" in res.stderr


def test_a_missing_index_is_reported_before_any_model_loads(monkeypatch):
    import retriever.pipeline

    def no_models(*a, **k):
        raise AssertionError("a model was loaded before the indexes were checked")

    monkeypatch.setattr(retriever.pipeline, "create_space", no_models)
    res = run_cli("predict", "--profile", "kaggle", str(EXAMPLES / "cat.jpg"))
    assert res.returncode == 2 and "there is none at" in res.stderr and "captions-bigG" in res.stderr
    assert "`unprompt setup --profile kaggle`" in res.stderr  # the command that builds kaggle's, not lite's


@pytest.mark.parametrize("command", [[], ["predict"], ["setup"], ["build-index"]])
def test_help_explains_with_an_example(command):
    res = run_cli(*command, "--help")
    assert res.returncode == 0
    assert "example" in res.stdout.lower()
    assert "usage: unprompt" in res.stdout


def test_predict_with_no_readable_image_stops_before_loading_models(monkeypatch, tmp_path):
    import retriever.pipeline

    def no_models(*a, **k):
        raise AssertionError("models loaded although no image can be read")

    monkeypatch.setattr(retriever.pipeline.Interrogator, "load", no_models)
    res = run_cli("predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert res.returncode == 2 and "no image to read" in res.stderr
