"""The builder at scale, tested small: remote sources over HTTP, the component split, dataset URLs, the setup
plan, exact GPU search, and model identity by content (GPU placement: test_gpu_choices.py)."""

import shutil

import numpy as np
import polars as pl
import pytest

from conftest import run_cli
from fakes import HashTextEncoder
from http_files import FileServer
from index_build.build import BuildOptions, build_index
from index_build.manifest import load_manifest
from index_build.read import read_manifest
from retriever.index import TextIndex


def test_an_index_from_parquet_parts_and_csv_served_over_http(tmp_path):
    data = tmp_path / "served" / "data"
    data.mkdir(parents=True)
    for i in range(3):
        pl.DataFrame({"prompt": [f"part {i} prompt {j}, oil painting" for j in range(40)] + ["shared prompt"]}) \
            .write_parquet(data / f"part-{i}.parquet")
    pl.DataFrame({"caption": ["a cat on a mat", "shared prompt", "a dog in the snow"]}).write_csv(data / "caps.csv")
    with FileServer(tmp_path / "served") as server:
        (tmp_path / "m.toml").write_text(
            f'name = "remote"\n'
            f'[[sources]]\nname = "prompts"\npath = "{server.url}/data/part-*.parquet"\ncolumn = "prompt"\nkind = "caption"\n'
            f'[[sources]]\nname = "caps"\npath = "{server.url}/data/caps.csv"\ncolumn = "caption"\nkind = "caption"\n')
        report = build_index(load_manifest(tmp_path / "m.toml"), HashTextEncoder(dim=16), tmp_path / "ix",
                             BuildOptions(shard_size=32, progress=False))
    assert report.embedded == {"prompts": 121, "caps": 2}  # 3 x 40 + one "shared prompt"; the CSV's copy dropped
    index = TextIndex.load(tmp_path / "ix")
    texts = pl.read_ipc(tmp_path / "ix" / index.record.files["meta"].path)["text"].to_list()
    assert texts[:2] == ["part 0 prompt 0, oil painting", "part 0 prompt 1, oil painting"]
    assert texts[-2:] == ["a cat on a mat", "a dog in the snow"] and texts.count("shared prompt") == 1
    hit = index.search(HashTextEncoder(dim=16).encode_text(["a dog in the snow"]), 1)[0][0]
    assert hit.text == "a dog in the snow" and hit.score == pytest.approx(1.0, abs=1e-3)


def test_an_unreachable_remote_source_is_a_clear_error(tmp_path):
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "x"\npath = "http://127.0.0.1:9/none-*.parquet"\n'
                                     'kind = "caption"\n')
    res = run_cli("build-index", str(tmp_path / "m.toml"), "--out", str(tmp_path / "ix"))
    assert res.returncode == 2 and "cannot list" in res.stderr and "Traceback" not in res.stderr


def test_the_component_split_keeps_fragments_seen_often_enough(tmp_path):
    prompts = ["a castle, oil painting, trending on artstation", "a dragon, Oil Painting ,  trending on artstation",
               "a ship, watercolor, trending on artstation", "a cat, oil painting"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "fragments"\npath = "p.txt"\nkind = "flavour"\n'
                                     'transform = "components"\nmin_count = 2\n')
    staged = read_manifest(load_manifest(tmp_path / "m.toml"), tmp_path / "staged", 8192)
    # most frequent first; case is kept as written, so "Oil Painting" counts on its own
    assert staged[0].all_texts() == ["trending on artstation", "oil painting"]


def test_a_dataset_source_names_its_revision(tmp_path):
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "cc3m"\ndataset = "google-research-datasets/conceptual_captions"'
                                     '\nrevision = "refs/convert/parquet"\npath = "unlabeled/train/*.parquet"\n'
                                     'column = "caption"\nkind = "caption"\n')
    source = load_manifest(tmp_path / "m.toml").sources[0]
    assert source.location == ("hf://datasets/google-research-datasets/conceptual_captions@refs%2Fconvert%2Fparquet"
                               "/unlabeled/train/*.parquet")


def test_setup_dry_run_lists_what_the_kaggle_profile_would_build():
    res = run_cli("setup", "--profile", "kaggle", "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for needle in ("index captions-bigG", "index components-bigG", "captions.toml", "components-1.6m.toml",
                   "hf://datasets/poloclub/diffusiondb@b8d0f99b3a58f59185e5d8a827c753d5ca5de340/metadata-large.parquet", "rows 14,000,000",
                   "license CC0-1.0", "ViT-bigG-14 (1280-d)", "ViT-H-14 (1024-d)", "GiB; RAM to serve", "min on one H100",
                   "ViT-bigG-14 0.3M tokens/s", "GPU-minutes", "MODELLED"):
        assert needle in out, needle
    captions = out.split("index components-bigG")[0]
    assert "ViT-H-14" not in captions  # captions keep no stored rerank vectors: on demand


def test_exact_torch_search_matches_numpy():
    import torch

    from retriever.search_device import TorchExact

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 32)).astype(np.float16)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    searcher = TorchExact(vectors, torch, device="cpu", block=1024)  # the CUDA path's code, on the CPU
    scores, ids = searcher.search(queries, 10, start=100, end=4900)
    expected = np.argsort(-(queries @ vectors[100:4900].astype(np.float32).T), axis=1)[:, :10] + 100
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, expected)])
    assert overlap >= 0.9 and ids.min() >= 100 and ids.max() < 4900  # float16 rounding may swap near-ties
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_models_are_identified_by_weights_not_path(tiny_clip, tmp_path):
    from retriever.encoders.clip import clip_model_id
    from retriever.profile import ClipSpaceSpec

    a = tiny_clip["unprompt-tiny-a"]["checkpoint"]
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(a, moved)
    spec = lambda p: ClipSpaceSpec(kind="open_clip", model="unprompt-tiny-a", pretrained=str(p))  # noqa: E731
    assert clip_model_id(spec(a)) == clip_model_id(spec(moved))
    assert clip_model_id(spec(a)) != clip_model_id(spec(tiny_clip["unprompt-tiny-b"]["checkpoint"]))
    assert clip_model_id(ClipSpaceSpec(kind="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k")) == \
        "open_clip:ViT-B-32:laion2b_s34b_b79k"
