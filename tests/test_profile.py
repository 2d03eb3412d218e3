import pytest

from retriever.errors import ProfileError
from retriever.profile import BridgeSpaceSpec, ClipSpaceSpec, builtin_profiles, load_profile


def test_builtin_profiles_load():
    assert {"lite", "kaggle"} <= set(builtin_profiles())
    lite = load_profile("lite")
    assert isinstance(lite.retrieve.space, BridgeSpaceSpec)
    assert lite.rerank_space == lite.retrieve.space
    kaggle = load_profile("kaggle")
    assert kaggle.retrieve.space == ClipSpaceSpec(kind="open_clip", model="ViT-bigG-14", pretrained="laion2b_s39b_b160k")
    assert kaggle.rerank_space.model == "ViT-H-14" and kaggle.rerank_space.pretrained == "laion2b_s32b_b79k"
    assert kaggle.retrieve.k == 60 and kaggle.rerank.floor == 0.29
    assert (kaggle.blend.text_weight, kaggle.blend.regressor_weight) == (0.25, 0.75)


def test_default_is_lite_and_env_selects(monkeypatch):
    monkeypatch.delenv("UNPROMPT_PROFILE", raising=False)
    assert load_profile().name == "lite"
    monkeypatch.setenv("UNPROMPT_PROFILE", "kaggle")
    assert load_profile().name == "kaggle"
    assert load_profile("lite").name == "lite"  # an explicit choice wins over the environment


def test_profile_from_path(tmp_path):
    text = (load_profile("lite").source and open(load_profile("lite").source).read())
    path = tmp_path / "mine.toml"
    path.write_text(text.replace("k = 60", "k = 7"))
    profile = load_profile(str(path))
    assert profile.name == "mine" and profile.retrieve.k == 7


@pytest.mark.parametrize(
    "body, expected",
    [
        ("this is = = not toml", "not valid TOML"),
        ('[retrieve]\nk = 5\n', "retrieve.space"),
        ('surprise = 1\n', "surprise"),
    ],
)
def test_bad_profile_is_a_clear_error(tmp_path, body, expected):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_bad_values_name_the_field(tmp_path):
    text = open(load_profile("lite").source).read().replace("k = 60", "k = -3")
    path = tmp_path / "neg.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=r"retrieve\.k"):
        load_profile(str(path))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="lite"):
        load_profile("no-such-profile")
    with pytest.raises(ProfileError, match="not found"):
        load_profile("./missing.toml")
