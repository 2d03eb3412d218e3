"""The kaggle profile's wiring, end to end, with tiny random CLIPs swapped in through the same profile keys."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, run_cli
from tiny_profiles import CAPTIONS, tiny_profile

PROMPTS = CAPTIONS + [
    "digital painting of a dragon, highly detailed, artstation", "a cute cat, studio ghibli style",
    "cyberpunk city at night, neon lights, 4k", "oil painting of a ship at sea by turner",
    "a cozy cabin in the snow, warm light", "macro photo of a bee on a flower",
] * 4


@pytest.fixture(scope="module")
def kaggle_env(tmp_path_factory, tiny_clip):
    """Indexes for the tiny kaggle profile, built once for this module in a private $UNPROMPT_HOME."""
    tmp = tmp_path_factory.mktemp("kaggle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNPROMPT_HOME", str(tmp / "home"))
        profile = tiny_profile(tmp, tiny_clip)
        (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        res = run_cli("setup", "--profile", str(profile))
        assert res.returncode == 0, res.stderr
        yield profile, tmp, tmp / "home"


@pytest.fixture()
def kaggle_tiny(kaggle_env, monkeypatch):
    monkeypatch.setenv("UNPROMPT_HOME", str(kaggle_env[2]))
    return kaggle_env[0]


@pytest.fixture()
def tmp_path(kaggle_env):
    return kaggle_env[1]


@pytest.fixture()
def home(kaggle_env):
    return kaggle_env[2]


def test_text_only_head_then_full_predict(kaggle_tiny, tmp_path, home):
    res = run_cli("train-regressor", "--profile", str(kaggle_tiny), "--prompts", str(tmp_path / "prompts.txt"),
                  "--epochs", "30")
    assert res.returncode == 0, res.stderr
    head = home / "heads" / "kaggle-bigG.pt"
    assert head.is_file() and "validation cosine" in res.stdout

    import torch

    meta = torch.load(head, weights_only=True)["meta"]
    assert meta["mode"] == "prompts" and meta["in_dim"] == 32 and meta["out_dim"] == 384
    assert meta["feature_model_id"].startswith("open_clip:unprompt-tiny-a:sha256-")  # weights, not path

    res = run_cli("predict", "--profile", str(kaggle_tiny), str(EXAMPLES / "cat.jpg"), "--json", "--top", "50")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["prompt"]
    assert {c["index"] for c in out["candidates"]} == {"captions-bigG", "components-bigG"}
    assert "caption" in {c["kind"] for c in out["candidates"]}
    assert set(out["stage_embeddings"]) == {"retrieval", "template", "prompt", "regressor"}
    emb = np.array(out["embedding"])
    assert emb.shape == (384,) and np.isclose(np.linalg.norm(emb), 1, atol=1e-4)
    p, r = np.array(out["stage_embeddings"]["prompt"]), np.array(out["stage_embeddings"]["regressor"])
    expected = 0.25 * p / np.linalg.norm(p) + 0.75 * r / np.linalg.norm(r)
    np.testing.assert_allclose(emb, expected / np.linalg.norm(expected), atol=1e-4)


def test_rerank_cache_means_known_texts_are_not_embedded(kaggle_tiny, tmp_path, home):
    from retriever.heads.config import TrainConfig
    from retriever.heads.train import train_head
    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.images import load_image
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile
    from retriever.heads.model import save_head

    profile = load_profile(str(kaggle_tiny))
    space = create_space(profile.retrieve.space)
    metric = sentence_encoder()
    x, y = space.encode_text(PROMPTS), metric.encode_text(PROMPTS)
    save_head(home / "heads" / "kaggle-bigG.pt", train_head(x, y, TrainConfig(epochs=3)).head,
              {"feature_model_id": space.model_id, "in_dim": 32, "target_model_id": metric.model_id, "out_dim": 384})
    interrogator = Interrogator.from_profile(profile)
    assert interrogator.rerank_space is not interrogator.retrieval_space
    result = interrogator.interrogate(load_image(EXAMPLES / "coffee.jpg"))
    n_tried = len(result.prompts)
    assert set(interrogator.text_embeddings.stored) == {"components-bigG"}  # captions: rerank vectors on demand
    captions = {c.text for c in result.candidates if c.index == "captions-bigG"}
    # new strings: the assembled prompts and the caption candidates; every component came from the stored cache
    assert captions and captions <= set(interrogator.text_embeddings.memo)
    assert interrogator.text_embeddings.computed <= n_tried + len(captions)
    assert all(c.rerank_score is not None for c in result.candidates)


def test_mismatched_head_is_refused(kaggle_tiny, tmp_path, home):
    from retriever.heads.model import make_head, save_head

    save_head(home / "heads" / "kaggle-bigG.pt", make_head(64, 384),
              {"feature_model_id": "open_clip:ViT-bigG-14:laion2b_s39b_b160k", "in_dim": 64,
               "target_model_id": "x", "out_dim": 384})
    res = run_cli("predict", "--profile", str(kaggle_tiny), str(EXAMPLES / "cat.jpg"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "does not fit this profile" in res.stderr and "feature_model_id" in res.stderr


def test_pairs_training_caches_image_features(kaggle_tiny, tmp_path, home):
    pairs = REPO / "data_manifests" / "examples" / "eval.csv"
    out = tmp_path / "pairs-head.pt"
    res = run_cli("train-regressor", "--profile", str(kaggle_tiny), "--pairs", str(pairs), "--epochs", "5",
                  "--out", str(out))
    assert res.returncode == 0, res.stderr
    import torch

    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["mode"] == "pairs" and meta["metrics"]["n_train"] + meta["metrics"]["n_val"] == 7
    assert meta["sources"]["pairs"]["rows"] == 7 and len(meta["metrics"]["history"]) == meta["metrics"]["epochs"]
    assert res.stderr.count("pairs epoch ") == meta["metrics"]["epochs"]  # a validation line per epoch
    cached = list((home / "cache" / "heads").rglob("features.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape == (7, 32)  # one memory-mapped matrix
    stamp = cached[0].stat().st_mtime_ns
    again = run_cli("train-regressor", "--profile", str(kaggle_tiny), "--pairs", str(pairs), "--epochs", "5",
                    "--out", str(out))
    assert again.returncode == 0 and cached[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    bad = run_cli("train-regressor", "--profile", str(kaggle_tiny), "--pairs", str(pairs), "--image-column", "img")
    assert bad.returncode == 2 and "missing column(s) img" in bad.stderr and "Traceback" not in bad.stderr


def test_kaggle_assembly_scores_112_templates_and_batches_match_single_images(kaggle_tiny, tmp_path, home):
    from retriever.pipeline import Interrogator
    from retriever.profile import load_profile

    from retriever.errors import MissingWeightsError, UnpromptWarning

    profile = load_profile(str(kaggle_tiny))
    assert profile.assemble.top_n == 8 and len(profile.assemble.templates) == 14
    (home / "heads" / "kaggle-bigG.pt").unlink(missing_ok=True)
    with pytest.raises(MissingWeightsError, match="train-regressor"):  # a profile that requires its head
        Interrogator.from_profile(profile.model_copy(update={
            "regress": profile.regress.model_copy(update={"require_head": True})}))
    with pytest.warns(UnpromptWarning, match="retrieval and assembly alone"):
        interrogator = Interrogator.from_profile(profile)
    assert interrogator.regressor is None
    images = [EXAMPLES / f"{n}.jpg" for n in ("cat", "coffee", "rocket", "clock", "galaxies")]
    calls = []
    embeddings = interrogator.text_embeddings
    for_texts = embeddings.for_texts
    embeddings.for_texts = lambda texts: calls.append(len(texts)) or for_texts(texts)
    try:
        batch = interrogator.interrogate_batch(images)
    finally:
        del embeddings.for_texts
    assert all(r.template_candidates == 112 for r in batch)  # 14 templates x top 8, per image
    # text vectors: one call for the batch's on-demand caption candidates (rerank), one for its 5 x 112
    # templates, then one per chain step
    assert calls[:2] == [5 * 12, 5 * 112] and len(calls) <= 2 + profile.assemble.max_chain
    interrogator.text_embeddings.memo.clear()
    for image, together in zip(images, batch):
        alone = interrogator.interrogate(image)
        assert alone.prompt == together.prompt
        np.testing.assert_allclose(alone.embedding, together.embedding, atol=1e-5)
        for stage in together.stage_embeddings:
            np.testing.assert_allclose(alone.stage_embeddings[stage], together.stage_embeddings[stage], atol=1e-5)


def shapes_dataset(folder: Path) -> list[tuple[str, str]]:
    """Small real-pixel pairs whose prompts follow what is drawn: colour x shape x background."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40),
               "purple": (140, 50, 170), "orange": (250, 140, 20)}
    backgrounds = {"white": (250, 250, 250), "black": (10, 10, 10)}
    rows = []
    for (cname, c), shape, (bname, b) in [(c, s, b) for c in colours.items() for s in ("circle", "square", "triangle")
                                          for b in backgrounds.items()]:
        im = Image.new("RGB", (96, 96), b)
        draw = ImageDraw.Draw(im)
        box = (20, 20, 76, 76)
        {"circle": lambda: draw.ellipse(box, fill=c), "square": lambda: draw.rectangle(box, fill=c),
         "triangle": lambda: draw.polygon([(48, 14), (82, 80), (14, 80)], fill=c)}[shape]()
        name = f"{cname}-{shape}-{bname}.png"
        im.save(folder / name)
        rows.append((name, f"a {cname} {shape} on a {bname} background"))
    return rows


def test_text_init_then_pairs_fine_tune_beats_text_only_on_held_out_pairs(kaggle_tiny, tmp_path, home):
    import csv

    import torch

    from retriever.encoders import create_space
    from retriever.encoders.minilm import sentence_encoder
    from retriever.heads.model import load_head_file
    from retriever.images import load_image
    from retriever.profile import load_profile

    folder = tmp_path / "shapes"
    rows = shapes_dataset(folder)
    rng = np.random.default_rng(0)
    held = set(rng.choice(len(rows), size=8, replace=False).tolist())
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt"])
        w.writerows(r for i, r in enumerate(rows) if i not in held)
    (folder / "prompts.txt").write_text("\n".join(p for i, (_, p) in enumerate(rows) if i not in held) + "\n"
                                        + "\n".join(PROMPTS) + "\n")
    text_only, both = folder / "text.pt", folder / "both.pt"
    common = ["--profile", str(kaggle_tiny), "--epochs", "60", "--patience", "60", "--val-fraction", "0.15"]
    res = run_cli("train-regressor", *common, "--prompts", str(folder / "prompts.txt"), "--out", str(text_only))
    assert res.returncode == 0, res.stderr
    res = run_cli("train-regressor", *common, "--prompts", str(folder / "prompts.txt"), "--pairs",
                  str(folder / "train.csv"), "--out", str(both))
    assert res.returncode == 0, res.stderr
    assert "prompts: " in res.stdout and "pairs: " in res.stdout and "prompts+pairs" in res.stdout

    profile = load_profile(str(kaggle_tiny))
    space, metric = create_space(profile.retrieve.space), sentence_encoder()
    held_rows = [rows[i] for i in sorted(held)]
    x = torch.from_numpy(space.encode_images([load_image(folder / name) for name, _ in held_rows]))
    y = metric.encode_text([p for _, p in held_rows])

    def held_out_cosine(path):
        head, meta = load_head_file(path)
        with torch.no_grad():
            pred = torch.nn.functional.normalize(head(x), dim=1).numpy()
        return float((pred * y).sum(1).mean()), meta

    text_cos, _ = held_out_cosine(text_only)
    both_cos, meta = held_out_cosine(both)
    assert meta["mode"] == "prompts+pairs" and set(meta["stages"]) == {"prompts", "pairs"}
    assert set(meta["sources"]) == {"prompts", "pairs"} and len(meta["sources"]["pairs"]["sha256"]) == 20
    print(f"held-out cosine: text-only {text_cos:.3f}, text init + pairs fine-tune {both_cos:.3f}")
    assert both_cos > text_cos + 0.05, (both_cos, text_cos)


def test_doctor_says_the_head_is_missing_and_how_to_train_it(kaggle_tiny, tmp_path, home):
    (home / "heads" / "kaggle-bigG.pt").unlink(missing_ok=True)
    res = run_cli("doctor", "--profile", str(kaggle_tiny))
    assert res.returncode == 0, res.stdout + res.stderr  # require_head = false: it can serve, with a warning
    lines = res.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("warn  head heads/kaggle-bigG.pt: missing"))
    assert lines[head + 1].strip().startswith(f"fix: unprompt train-regressor --profile {kaggle_tiny}")
    assert any(line.startswith("ok    index captions-bigG: build ") for line in lines)
    assert any(line.startswith("ok    weights retrieval: open_clip:unprompt-tiny-a:sha256-") for line in lines)
    assert any(line.startswith(("ok    gpu:", "warn  gpu:")) for line in lines)
    strict = tmp_path / "kaggle-tiny-strict.toml"
    strict.write_text(kaggle_tiny.read_text().replace("require_head = false", "require_head = true"))
    res = run_cli("doctor", "--profile", str(strict))
    assert res.returncode == 1 and "fail  head heads/kaggle-bigG.pt: missing" in res.stdout
    assert "cannot serve: 1 failed" in res.stderr


def test_generated_pairs_fine_tune_a_tower_that_serves_through_the_profile(kaggle_tiny, tmp_path, home):
    """generate-pairs (a tiny random diffusers pipeline) -> a resumable pairs table -> train-regressor
    --finetune -> the head and its tower listed in regress.heads serve predictions; a second tower, then
    fit-ensemble writes a profile that serves their weighted average."""
    pytest.importorskip("diffusers")
    import polars as pl
    import torch

    from retriever.heads.model import load_head_file
    from retriever.heads.towers import FineTunedSpace
    from retriever.images import load_image
    from tiny_diffusers import build_tiny_pipeline

    pipe = build_tiny_pipeline(tmp_path / "tiny-sd")
    (tmp_path / "gen-prompts.txt").write_text("\n".join(CAPTIONS[:4]) + "\n")
    gen = tmp_path / "generated"
    args = ["generate-pairs", "--prompts", str(tmp_path / "gen-prompts.txt"), "--out", str(gen), "--model", str(pipe),
            "--steps", "2", "--guidance", "1", "--seeds", "2", "--size", "32", "--shard-size", "4", "--quiet"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    table = pl.read_parquet(gen / "pairs.parquet")
    assert table.height == 8 and table["prompt"].n_unique() == 4 and table["seed"].n_unique() == 8
    # resume: a shard whose record and one image were lost is redone; finished shards are not touched
    stamps = {p: (gen / p).stat().st_mtime_ns for p in table["image"]}
    lost = pl.read_parquet(gen / "work" / "done" / "000001.parquet")["image"][0]
    (gen / lost).unlink()
    (gen / "work" / "done" / "000001.parquet").unlink()
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert (gen / lost).is_file() and pl.read_parquet(gen / "pairs.parquet").equals(table)
    assert all((gen / p).stat().st_mtime_ns == t for p, t in stamps.items() if p != lost)
    other = run_cli(*args, "--steps", "3")  # other settings into the same folder are refused
    assert other.returncode == 2 and "other prompts or settings" in other.stderr
    # --ray, through an in-process stand-in for Ray's actors (tests/test_ray_build.py has the real one, opt-in):
    # what the command hands the runner must pickle (Ray ships it to the actors) and key the shards' jobs
    import pickle

    import index_build.ray_runner as ray_runner

    calls = {}

    class InProcessRay:
        def __init__(self, towers, actors, address, num_gpus_per_actor, role):
            calls.update(actors=actors, gpus=num_gpus_per_actor, role=role, keys=set(towers))
            self.built = {k: f() for k, f in pickle.loads(pickle.dumps(towers)).items()}

        def run(self, jobs):
            for job in jobs:
                yield job, self.built[job.model_id].encode_text(job.texts())

        def shutdown(self):
            calls["shutdown"] = True

    ray_args = [a if a != str(gen) else str(tmp_path / "generated-ray") for a in args]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_runner, "RayRunner", InProcessRay)
        res = run_cli(*ray_args, "--ray", "--ray-actors", "3")
    assert res.returncode == 0, res.stderr
    assert calls == {"actors": 3, "gpus": None, "role": "pipeline", "keys": {f"diffusers:{pipe}"}, "shutdown": True}
    assert pl.read_parquet(tmp_path / "generated-ray" / "pairs.parquet").equals(table)

    out = home / "heads" / "kaggle-ft.pt"
    out.parent.mkdir(exist_ok=True)
    res = run_cli("train-regressor", "--profile", str(kaggle_tiny), "--finetune", "--pairs", str(gen / "pairs.parquet"),
                  "--epochs", "1", "--lp-epochs", "1", "--batch-size", "4", "--workers", "0", "--val-fraction", "0.25",
                  "--warmup-steps", "1", "--ema-decay", "0.5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "finetune epoch 2/2 (ft)" in res.stderr and out.with_name("kaggle-ft.tower.pt").is_file()
    profile = tmp_path / "kaggle-ft.toml"
    profile.write_text(kaggle_tiny.read_text().replace('head = "heads/kaggle-bigG.pt"',
                                                       'heads = [{ path = "heads/kaggle-ft.pt" }]'))
    res = run_cli("predict", "--profile", str(profile), str(EXAMPLES / "cat.jpg"), "--json", "--mode", "fast")
    assert res.returncode == 0, res.stderr
    served = np.array(json.loads(res.stdout)["stage_embeddings"]["regressor"])
    head, meta = load_head_file(out)
    space = FineTunedSpace(out.with_name("kaggle-ft.tower.pt"))
    with torch.no_grad():
        expected = head(torch.from_numpy(space.encode_images([load_image(EXAMPLES / "cat.jpg")]))).numpy()[0]
    np.testing.assert_allclose(served, expected / np.linalg.norm(expected), atol=1e-4)
    assert meta["feature_model_id"] == space.model_id and meta["mode"] == "finetune"

    # fit-ensemble: a second fine-tuned tower (another seed), weights chosen on held-out pairs, the written
    # profile serves the weighted average of both heads, each through its own tower
    second = home / "heads" / "kaggle-ft2.pt"
    res = run_cli("train-regressor", "--profile", str(kaggle_tiny), "--finetune", "--pairs", str(gen / "pairs.parquet"),
                  "--epochs", "1", "--lp-epochs", "1", "--batch-size", "4", "--workers", "0", "--val-fraction", "0.25",
                  "--warmup-steps", "1", "--ema-decay", "0.5", "--seed", "1", "--head-lr", "0.3", "--out", str(second))
    assert res.returncode == 0, res.stderr
    written = tmp_path / "kaggle-ens.toml"
    res = run_cli("fit-ensemble", "--profile", str(kaggle_tiny), "--table", str(gen / "pairs.parquet"), str(out),
                  str(second), "--write-profile", str(written))
    assert res.returncode == 0, res.stderr
    assert f"{out}: validation cosine" in res.stdout and f"{second}: validation cosine" in res.stdout
    chosen = re.search(r"chosen weights \[([0-9.]+), ([0-9.]+)\]", res.stdout)
    weights = [float(chosen[1]), float(chosen[2])]
    assert sum(weights) == pytest.approx(1.0)
    import tomllib

    refs = tomllib.loads(written.read_text())["regress"]["heads"]
    assert [(r["path"], r["weight"]) for r in refs] == [(p, w) for p, w in zip((str(out), str(second)), weights) if w > 0]
    res = run_cli("predict", "--profile", str(written), str(EXAMPLES / "cat.jpg"), "--json", "--mode", "fast")
    assert res.returncode == 0, res.stderr
    served = np.array(json.loads(res.stdout)["stage_embeddings"]["regressor"])
    total = np.zeros(384)
    for path, weight in zip((out, second), weights):
        head, _ = load_head_file(path)
        space = FineTunedSpace(path.with_name(path.stem + ".tower.pt"))
        with torch.no_grad():
            p = head(torch.from_numpy(space.encode_images([load_image(EXAMPLES / "cat.jpg")]))).numpy()[0]
        total += weight * p / np.linalg.norm(p)
    np.testing.assert_allclose(served, total / np.linalg.norm(total), atol=1e-4)
