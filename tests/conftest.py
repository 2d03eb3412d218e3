from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import retriever  # noqa: F401  (torchvision import fix first)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "data_manifests" / "examples" / "images"

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def lite_profile():
    """The lite profile with its component index built (`unprompt setup` builds it before the tests)."""
    from index_build.setup import ensure_indexes
    from retriever.profile import load_profile

    profile = load_profile("lite")
    ensure_indexes(profile)
    return profile


@pytest.fixture(scope="session")
def lite_interrogator(lite_profile):
    from retriever.pipeline import Interrogator

    return Interrogator.from_profile(lite_profile)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> dict[str, Path]:
    """A tiny open_clip model with random weights, saved as a config file and a checkpoint."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("tiny-clip")
    out = {}
    for name, seed in (("unprompt-tiny-a", 0), ("unprompt-tiny-b", 1)):
        config = root / f"{name}.json"
        config.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(config)
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
        checkpoint = root / f"{name}.pt"
        torch.save({"state_dict": model.state_dict()}, checkpoint)
        out[name] = {"config": config, "checkpoint": checkpoint}
    return out


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A private $UNPROMPT_HOME for tests that write indexes or heads."""
    monkeypatch.setenv("UNPROMPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_cli(*args: str, env: dict | None = None):
    import subprocess
    import sys

    exe = shutil.which("unprompt", path=str(Path(sys.executable).parent)) or "unprompt"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env, timeout=600)
