import time

import numpy as np
import pytest
import torch
from PIL import Image

from retriever.encoders.clip import ClipSpace, clip_model_id
from retriever.errors import MissingWeightsError, ProfileError
from retriever.profile import ClipSpaceSpec


def spec_for(tiny, name="unprompt-tiny-a", **kw):
    return ClipSpaceSpec(kind="open_clip", model=name, pretrained=str(tiny[name]["checkpoint"]),
                         model_config_file=str(tiny[name]["config"]), **kw)


def test_tiny_checkpoint_loads_through_the_pretrained_path(tiny_clip):
    import open_clip

    space = ClipSpace(spec_for(tiny_clip))
    reference = open_clip.create_model("unprompt-tiny-a")
    reference.load_state_dict(torch.load(tiny_clip["unprompt-tiny-a"]["checkpoint"])["state_dict"])
    reference.eval()
    texts = ["a cat", "a cup of espresso on a table, studio lighting"]
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer("unprompt-tiny-a")(texts)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = space.encode_text(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert space.dim == 32 and got.shape == (2, 32)
    img = space.encode_images([Image.new("RGB", (50, 40), (200, 10, 10))])
    assert img.shape == (1, 32) and np.isclose(np.linalg.norm(img), 1, atol=1e-5)
    assert space.model_id == clip_model_id(space.spec) and space.model_id.startswith("open_clip:unprompt-tiny-a:sha256-")


def test_two_checkpoints_give_different_models(tiny_clip):
    a = ClipSpace(spec_for(tiny_clip, "unprompt-tiny-a")).encode_text(["x"])
    b = ClipSpace(spec_for(tiny_clip, "unprompt-tiny-b")).encode_text(["x"])
    assert not np.allclose(a, b)


def test_missing_checkpoint_file(tmp_path, tiny_clip):
    spec = ClipSpaceSpec(kind="open_clip", model="unprompt-tiny-a", pretrained=str(tmp_path / "nope.pt"),
                         model_config_file=str(tiny_clip["unprompt-tiny-a"]["config"]))
    with pytest.raises(MissingWeightsError, match="not found"):
        ClipSpace(spec)


def test_missing_hub_weights_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    t = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        ClipSpace(ClipSpaceSpec(kind="open_clip", model="ViT-bigG-14", pretrained="laion2b_s39b_b160k"))
    msg = str(err.value)
    assert "ViT-bigG-14" in msg and "laion2b_s39b_b160k" in msg and "pretrained =" in msg
    assert time.perf_counter() - t < 10


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ProfileError, match="laion2b_s32b_b79k"):
        ClipSpace(ClipSpaceSpec(kind="open_clip", model="ViT-H-14", pretrained="no-such-tag"))
