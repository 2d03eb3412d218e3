"""Lite on generated images: the SD dev set split by prompt, the medium head, look words, the useful negative
prompt, the prior baselines of eval."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from retriever.profile import DescribeConfig
from retriever.stage_configs import LookConfig
from retriever.stages.describe import Describer
from retriever.stages.look import look, look_words
from retriever.stages.medium import MEDIUMS, MediumHead, medium_phrase, pixel_stats

SHARED = REPO.parent / "shared" / "sd-dev"
needs_shared = pytest.mark.skipif(not (SHARED / "prompts.csv").is_file(),
                                  reason=f"the SD dev set's images are not beside the repository ({SHARED})")
DEVSET = REPO / "data_manifests" / "devset"


@needs_shared
def test_the_sd_dev_set_is_split_by_prompt_never_by_image():
    import polars as pl

    sys.path.insert(0, str(DEVSET))
    from split_sd_dev import main, split

    main(SHARED)  # the tables are made from ../shared, never committed (its prompts carry no license)
    source = pl.read_csv(SHARED / "prompts.csv", infer_schema=False)
    dev, held = split(source["prompt"].to_list())
    tables = {n: pl.read_csv(DEVSET / f"sd-dev-{n}.csv", infer_schema=False) for n in ("dev", "heldout")}
    assert set(tables["dev"]["prompt"]) == dev and set(tables["heldout"]["prompt"]) == held and not dev & held
    assert tables["dev"].height + tables["heldout"].height == source.height == 120
    from retriever.evaluation.tables import read_pairs

    paths, _ = read_pairs(DEVSET / "sd-dev-heldout.csv")
    assert all(p.is_file() for p in paths)  # the tables' ../../../shared paths resolve beside the repository


def test_the_medium_head_ships_with_its_provenance_and_never_saw_the_sd_dev_set_or_the_held_out_halves():
    data = REPO / "retriever" / "data"
    head = MediumHead.load("pkg:retriever/data/medium_head.npz")
    assert set(head.classes) <= set(MEDIUMS) and {"photo"} < set(head.classes) and head.w.shape[1] == 1280
    meta = json.loads((data / "medium_head.json").read_text())
    # package images only: the SD dev set states no license (measurement only), the held-out halves are held out
    assert set(meta["trained_on"]) == {"data_manifests/devset/dev.csv"}
    assert {"heldout.csv", "sd-dev-dev.csv", "sd-dev-heldout.csv"} == {t.rsplit("/", 1)[-1] for t in meta["never_read"]}
    p = head.predict(np.random.default_rng(0).normal(size=(3, 1280)).astype(np.float32))
    assert p.shape == (3, len(head.classes)) and np.allclose(p.sum(axis=1), 1)


def test_a_bad_medium_head_is_a_profile_error(tmp_path):
    from retriever.errors import ProfileError

    bad = tmp_path / "head.npz"
    np.savez(bad, classes=np.array(["photo", "pottery"]), mean=np.zeros(4), scale=np.ones(4), w=np.zeros((2, 4)),
             b=np.zeros(2))
    with pytest.raises(ProfileError, match="not a medium head"):
        MediumHead.load(str(bad))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ProfileError, match="cannot be read"):
        MediumHead.load(str(tmp_path / "junk.npz"))


class _Head:
    classes = ("anime", "digital art", "photo")

    def __init__(self, winner):
        self.winner = winner

    def predict(self, features):
        p = np.full((len(features), 3), 0.1)
        p[:, self.classes.index(self.winner)] = 0.8
        return p


@pytest.mark.parametrize("medium", ["anime", "digital art"])
def test_a_render_never_gets_a_photo_when_the_medium_decision_says_otherwise(medium):
    d = Describer(DescribeConfig(enabled=True), lambda w: True)
    d.head = _Head(medium)
    render = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    spread = np.full(1000, 1e-3, np.float32) / 1.0
    (desc,) = d.describe(spread[None] / spread.sum(), [render], np.zeros((1, 1280), np.float32))
    assert desc.medium == medium and "photo" not in desc.medium_text
    cands, _ = d.apply(desc, {}, [])
    texts = [c.text for cs in cands.values() for c in cs]
    assert cands["medium"][0].text == DescribeConfig().medium_phrases[medium]
    assert not any("photo" in t for t in texts), texts
    assert "style" in cands  # colour, lighting and style words: never a bare medium


def test_look_words_from_pixels():
    cfg = LookConfig()
    night = Image.new("RGB", (80, 60), (40, 45, 60))
    words = look_words(look(night), cfg)
    assert "blue tones" in words and "dark" in words and "cold light" in words
    assert "neon lights" in look_words(look(Image.new("RGB", (80, 60), (10, 20, 70))), cfg)  # dark and vivid
    grey = Image.new("RGB", (80, 60), (128, 128, 128))
    assert look_words(look(grey), cfg)[0] == "black and white"
    sunset = Image.new("RGB", (80, 60), (250, 140, 30))
    assert {"orange tones", "warm light"} <= set(look_words(look(sunset), cfg))
    assert medium_phrase("photo", pixel_stats(grey), DescribeConfig()) == "a black and white photo"


def test_the_useful_negative_prompt_is_quality_terms_then_what_the_image_is_not():
    from retriever.profile import NegativeConfig
    from retriever.stages.negative import NegativePrompt

    neg = NegativePrompt({}, NegativeConfig(quality_terms=3, not_mediums=2))
    (photo, unknown) = neg.useful([{"photo": 0.7, "anime": 0.05, "painting": 0.1, "3D render": 0.15}, None])
    assert photo == "lowres, low quality, worst quality, anime, painting" and unknown == "lowres, low quality, worst quality"
    assert (REPO / "retriever" / "data" / "NEGATIVE_LICENSE").is_file()


def test_prior_baselines_choose_on_the_dev_table_and_leave_whole_prompts_out():
    from retriever.evaluation.run import leave_prompt_out_means, prior_baselines

    e = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    loo = leave_prompt_out_means(["a", "a", "b", "c"], e)
    assert np.allclose(loo[0], [0, 0.5, 0.5, 0]) and np.allclose(loo[2], [2 / 3, 0, 1 / 3, 0])
    prior = ["a photo of a cat", "a digital painting of a castle, highly detailed"]
    from retriever.evaluation.metric import metric_embed

    truth = metric_embed(["a photo of a dog on grass", "a photo of a cat on a sofa"])
    settings = {}
    out = prior_baselines(prior, truth, ["a fantasy castle painting, artstation"], settings)
    assert settings["prior_best_on_dev"] == prior[1] and settings["prior_oracle"] == prior[0]
    assert out["prior_oracle"].mean() > out["prior_best_on_dev"].mean() and out["prior_mean"].shape == (2,)


def test_the_shrink_settings_are_the_cross_validated_choice_and_its_pool_never_saw_the_held_out_halves():
    from retriever.profile import load_profile
    from retriever.stages.shrink import Shrink

    profile = load_profile("lite")
    record = json.loads((REPO / "bench" / "results" / "lite-blend-cv.json").read_text())
    assert not {"heldout.csv", "sd-dev-heldout.csv"} & {t.rsplit("/", 1)[-1] for t in record["dump"].split(", ")}
    for decision in ("photo", "other"):  # the profile holds what the search chose, nothing tuned by hand
        chosen, shipped = record["chosen"][decision], getattr(profile.shrink, decision).model_dump()
        assert chosen["pool"] == "prior+dev" and chosen["uncertainty"] == "subject"
        assert all(shipped[k] == chosen[k] for k in ("regressor_weight", "base", "extra", "medium_centroid"))
        assert shipped["neighbours"] == chosen["neighbours"]
        assert not chosen["neighbours"] or shipped["temperature"] == chosen["temperature"]
    meta = json.loads((REPO / "retriever" / "data" / "centroids.json").read_text())
    assert set(meta["sources"]) == {"retriever/data/prior_prompts.txt", "data_manifests/devset/dev.csv"}
    shrink = Shrink.load(profile.shrink, profile.metric_model, 1.0, "lite")
    assert shrink is not None and len(shrink.pool) == meta["prompts"] and "photo" in shrink.by_medium


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_shrinkage_grows_with_uncertainty_and_follows_the_medium_decision():
    from retriever.stage_configs import ShrinkConfig, ShrinkSetting
    from retriever.stages.shrink import Shrink

    pool = np.eye(4, dtype=np.float32)  # four pool prompts: a photo, a painting and two of digital art
    config = ShrinkConfig(centroids="x.npz", photo=ShrinkSetting(regressor_weight=0, base=0, extra=4, neighbours=1,
                                                                 temperature=0.05),
                          other=ShrinkSetting(regressor_weight=1, base=0, extra=4, medium_centroid=1))
    shrink = Shrink(config, pool, ["photo", "painting", "digital art", "digital art"], text_weight=1.0)
    prompt, reg = _unit([1, 0.2, 0, 0]), _unit([1, 0, 0, 0])
    sure = shrink.final(prompt, reg, "photo", None, confidence=1.0)
    unsure = shrink.final(prompt, reg, "photo", None, confidence=0.0)
    assert np.allclose(sure, prompt, atol=1e-6)  # sure subject: the answer itself (the photo setting: no regressor)
    assert np.isclose(np.linalg.norm(unsure), 1) and unsure[0] > 0.99  # toward the pool prompt nearest the answer
    render = shrink.final(prompt, reg, "digital art", {"digital art": 0.9, "photo": 0.1}, confidence=0.0)
    assert render[2] == pytest.approx(render[3]) and render[2] > render[0] > 0  # the medium's pool mean pulls
    assert shrink.setting("photo") is config.photo and shrink.setting("anime") is config.other


def test_bad_shrink_settings_and_centroids_are_profile_errors(tmp_path):
    from pydantic import ValidationError

    from retriever.errors import ProfileError
    from retriever.stage_configs import ShrinkConfig, ShrinkSetting
    from retriever.stages.shrink import Shrink

    with pytest.raises(ValidationError, match="must not exceed 1"):
        ShrinkSetting(regressor_weight=1, base=0, extra=1, medium_centroid=0.75, neighbours=0.5)
    with pytest.raises(ValidationError, match="needs both"):
        ShrinkConfig(centroids="c.npz")
    setting = ShrinkSetting(regressor_weight=1, base=0, extra=1)
    for name, content in (("garbage.npz", b"not an npz"), ("other-model.npz", None)):
        path = tmp_path / name
        if content is None:
            np.savez(path, embeddings=np.eye(3, dtype=np.float32), mediums=np.array(["photo"] * 3),
                     model=np.array("some/other-model"))
        else:
            path.write_bytes(content)
        config = ShrinkConfig(centroids=str(path), photo=setting, other=setting)
        with pytest.raises(ProfileError, match="shrink.centroids"):
            Shrink.load(config, "sentence-transformers/all-MiniLM-L6-v2", 1.0, "lite")
