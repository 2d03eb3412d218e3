"""One preset per Stable Diffusion version (sd15, sd2, sdxl): their models and tags as open_clip's pretrained.py
names them, their setup plans, and their tiny-CLIP versions end to end; the preprocessing a tag implies; the
setup command a missing index names."""

import json

import pytest

from conftest import EXAMPLES, run_cli
from tiny_profiles import tiny_profile

PRESETS = ("sd15", "sd2", "sdxl")
SMALL = {"imagenet": 30, "mediums": 20, "movements": 20, "artists": 20, "flavours": 40}  # 130 components
# (model, tag) -> the Hugging Face hub repo open_clip 3.3.0's pretrained.py downloads it from
HUB = {("ViT-L-14-quickgelu", "openai"): "timm/vit_large_patch14_clip_224.openai/",
       ("ViT-H-14", "laion2b_s32b_b79k"): "laion/CLIP-ViT-H-14-laion2B-s32B-b79K/",
       ("ViT-bigG-14", "laion2b_s39b_b160k"): "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k/"}


def test_presets_name_open_clip_models_and_tags_that_exist():
    import open_clip
    from open_clip import pretrained

    from retriever.profile import load_profile

    spaces = {}
    for name in PRESETS:
        profile = load_profile(name)
        spaces[name] = (profile.retrieve.space, profile.rerank_space)
        assert {ref.manifest for ref in profile.retrieve.indexes} == {"diffusiondb-2m.toml", "components-1.6m.toml"}
        for spec in spaces[name]:
            cfg = pretrained.get_pretrained_cfg(spec.model, spec.pretrained)
            assert cfg["hf_hub"] == HUB[(spec.model, spec.pretrained)]
            # a tag trained with QuickGELU runs in a model config that has it (open_clip only warns otherwise)
            assert bool(cfg.get("quick_gelu")) == bool(open_clip.get_model_config(spec.model).get("quick_gelu"))
    models = {name: (r.model, k.model) for name, (r, k) in spaces.items()}
    assert models == {"sd15": ("ViT-L-14-quickgelu",) * 2, "sd2": ("ViT-H-14",) * 2,
                      "sdxl": ("ViT-bigG-14", "ViT-L-14-quickgelu")}  # each its own reranker choice


def test_setup_dry_run_prints_each_presets_plan():
    for name in PRESETS:
        res = run_cli("setup", "--profile", name, "--dry-run")
        assert res.returncode == 0, res.stderr
        out = res.stdout
        for needle in (f"index {name}-prompts", f"index {name}-components", "metadata.parquet  rows 2,000,000",
                       "GiB of fp32 checkpoints", "GiB of fp16 weights to build", "GiB to serve", "GPU-minutes",
                       "within the one GPU-hour goal", "MODELLED, not measured", "FLOPs counted on the meta device"):
            assert needle in out, (name, needle)


def test_tiny_presets_run_end_to_end(tmp_path, tiny_clip, home):
    for name in PRESETS:
        folder = tmp_path / name
        folder.mkdir()
        profile = tiny_profile(folder, tiny_clip, name, SMALL)
        res = run_cli("setup", "--profile", str(profile))
        assert res.returncode == 0, res.stderr
        assert f"index {name}-prompts: 12 texts" in res.stdout and f"index {name}-components" in res.stdout
        res = run_cli("predict", "--profile", str(profile), str(EXAMPLES / "cat.jpg"), "--json", "--top", "500",
                      "--mode", "fast")  # retrieval, rerank, one template, blend: every stage, briefly
        assert res.returncode == 0, res.stderr
        assert "retrieval and assembly alone" in res.stderr  # no head trained: optional, and said so
        out = json.loads(res.stdout)
        assert out["prompt"] and {c["index"] for c in out["candidates"]} == {f"{name}-prompts", f"{name}-components"}
    stored = json.loads((home / "indexes" / "sdxl-components" / "build.json").read_text())["rerank_caches"]
    assert list(stored) == [f"open_clip:unprompt-tiny-b:{list(stored)[0].rsplit(':', 1)[1]}"]  # the L-14 stand-in


def test_predict_without_its_index_names_the_profiles_setup(tmp_path, home):
    # (a built-in profile by name: test_predict_cli's missing-index test) a profile file by its path
    copy = tmp_path / "mine.toml"
    from conftest import REPO

    copy.write_text((REPO / "retriever" / "profiles" / "sd2.toml").read_text())
    res = run_cli("predict", "--profile", str(copy), str(EXAMPLES / "cat.jpg"))
    assert res.returncode == 2 and f"`unprompt setup --profile {copy}`" in res.stderr and "Traceback" not in res.stderr


def test_a_tags_preprocessing_applies_to_a_checkpoint_file(tiny_clip, monkeypatch):
    from open_clip import pretrained
    from open_clip.constants import INCEPTION_MEAN, OPENAI_DATASET_MEAN

    from retriever.encoders.clip import ClipSpace, load_settings
    from retriever.errors import ProfileError
    from retriever.profile import ClipSpaceSpec

    def spec(model, pretrained_, **kw):
        return ClipSpaceSpec(kind="open_clip", model=model, pretrained=pretrained_, **kw)

    # read from open_clip's own table: a tag by name, or the tag a checkpoint file came from
    assert load_settings(spec("ViT-L-14", "/w/vitl.bin", tag="laion2b_s32b_b82k"))["image_mean"] == INCEPTION_MEAN
    dfn = load_settings(spec("ViT-H-14", "/w/h.bin", tag="dfn5b"))
    assert dfn["image_resize_mode"] == "squash" and dfn["force_quick_gelu"]
    assert "force_quick_gelu" not in load_settings(spec("ViT-H-14-quickgelu", "dfn5b"))  # the config has it
    assert load_settings(spec("ViT-L-14", "openai"))["force_quick_gelu"]
    assert load_settings(spec("ViT-L-14", "/w/l.bin"))  == {}  # no tag: open_clip's model defaults
    explicit = load_settings(spec("ViT-L-14", "/w/l.bin", tag="openai", image_mean=(0.5, 0.5, 0.5)))
    assert explicit["image_mean"] == (0.5, 0.5, 0.5) and explicit["image_std"] != (0.5, 0.5, 0.5)
    with pytest.raises(ProfileError, match="no pretrained tag 'nope' for ViT-L-14; known tags: openai"):
        load_settings(spec("ViT-L-14", "/w/l.bin", tag="nope"))
    with pytest.raises(ProfileError, match="contradicts"):
        load_settings(spec("ViT-L-14", "openai", tag="laion2b_s32b_b82k"))

    # through open_clip's factory: a checkpoint file with a tag gets the tag's transforms and QuickGELU
    tiny = tiny_clip["unprompt-tiny-a"]
    monkeypatch.setitem(pretrained._PRETRAINED, "unprompt-tiny-a", {"squashed": pretrained._pcfg(
        hf_hub="example/none/", mean=(0.25, 0.5, 0.75), std=(0.5, 0.5, 0.5), resize_mode="squash",
        interpolation="bilinear", quick_gelu=True)})
    base = dict(model_config_file=str(tiny["config"]))
    plain = ClipSpace(spec("unprompt-tiny-a", str(tiny["checkpoint"]), **base), batch_size=8)
    tagged = ClipSpace(spec("unprompt-tiny-a", str(tiny["checkpoint"]), tag="squashed", **base), batch_size=8)
    assert "mean=(0.25, 0.5, 0.75)" in repr(tagged.preprocess) and "bilinear" in repr(tagged.preprocess)
    assert "CenterCrop" in repr(plain.preprocess) and "CenterCrop" not in repr(tagged.preprocess)  # squash
    assert str(OPENAI_DATASET_MEAN[0])[:6] in repr(plain.preprocess)
    assert any(type(m).__name__ == "QuickGELU" for m in tagged.model.modules())
    assert not any(type(m).__name__ == "QuickGELU" for m in plain.model.modules())
