import numpy as np
import pytest

from retriever.encoders.base import l2_normalize
from retriever.encoders.bridge import BridgeSpace, bridge_probabilities


class FakeText:
    model_id = "fake-text"
    dim = 4

    def __init__(self):
        self.calls = 0

    def encode_text(self, texts):
        self.calls += 1
        table = {"cat": [1, 0, 0, 0], "dog": [0, 1, 0, 0], "cup": [0, 0, 1, 1]}
        return l2_normalize(np.array([table[t] for t in texts], dtype=np.float32))


class FakeClassifier:
    model_id = "fake-cls"

    def __init__(self, proba):
        self.proba = np.asarray(proba, dtype=np.float32)

    def predict_proba(self, images):
        return self.proba[: len(images)]


def make(proba, home, **kw):
    return BridgeSpace(FakeClassifier(proba), FakeText(), classes=["cat", "dog", "cup"], **kw)


def test_one_hot_maps_to_the_class_phrase(home):
    space = make([[0, 1, 0]], home)
    emb = space.encode_images([None])
    np.testing.assert_allclose(emb[0], [0, 1, 0, 0], atol=1e-6)


def test_probability_weighted_mean(home):
    space = make([[0.5, 0.25, 0.25]], home)
    expected = l2_normalize(0.5 * np.array([1, 0, 0, 0]) + 0.25 * np.array([0, 1, 0, 0])
                            + 0.25 * np.array([0, 0, 1, 1]) / np.sqrt(2))
    np.testing.assert_allclose(space.encode_images([None])[0], expected, atol=1e-6)
    assert space.dim == 4 and space.text_model_id == "fake-text"


def test_top_classes_and_temperature():
    p = np.array([[0.6, 0.3, 0.1]])
    top1 = bridge_probabilities(p, top_classes=1)
    np.testing.assert_allclose(top1, [[1, 0, 0]])
    sharp = bridge_probabilities(p, temperature=0.5)
    np.testing.assert_allclose(sharp.sum(), 1, rtol=1e-6)
    assert sharp[0, 0] > 0.6 and sharp[0, 2] < 0.1
    np.testing.assert_allclose(bridge_probabilities(p), p, rtol=1e-6)


def test_class_embeddings_are_cached_on_disk(home):
    make([[1, 0, 0]], home)
    text = FakeText()
    BridgeSpace(FakeClassifier([[1, 0, 0]]), text, classes=["cat", "dog", "cup"])
    assert text.calls == 0  # read from $UNPROMPT_HOME/cache
    assert list((home / "cache").glob("class-embeddings-*.npy"))


def test_real_bridge_points_a_cat_photo_at_cats(lite_interrogator):
    from PIL import Image
    from conftest import EXAMPLES

    space = lite_interrogator.retrieval_space
    cat = space.encode_images([Image.open(EXAMPLES / "cat.jpg").convert("RGB")])[0]
    texts = space.encode_text(["a cat", "a cup of coffee", "a truck"])
    scores = texts @ cat
    assert scores[0] > scores[1] and scores[0] > scores[2]
    assert np.isclose(np.linalg.norm(cat), 1.0, atol=1e-5)


def test_lite_prior_comes_from_the_most_used_flavours(lite_interrogator):
    prior = lite_interrogator.prior.metric
    assert prior is not None and np.isclose(np.linalg.norm(prior), 1.0, atol=1e-5)
    pool = [c.text for c in lite_interrogator.prior.style]
    assert pool[:3] == ["highly detailed", "sharp focus", "intricate"]  # the top of clip-interrogator's flavours
    style = lite_interrogator.metric.encode_text(["highly detailed digital painting, trending on artstation"])[0]
    plain = lite_interrogator.metric.encode_text(["a dog"])[0]
    assert style @ prior > plain @ prior


def test_a_prior_kind_missing_from_the_index_is_a_profile_error(lite_profile):
    from retriever.errors import ProfileError
    from retriever.pipeline import Interrogator

    bad = lite_profile.model_copy(update={"prior": lite_profile.prior.model_copy(update={"kind": "caption"})})
    with pytest.raises(ProfileError, match="prior.kind 'caption'"):
        Interrogator.from_profile(bad, checksums=False)
