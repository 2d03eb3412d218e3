from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from retriever._compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before open_clip is imported by any test

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "data_manifests" / "examples" / "images"
LITE_INDEX = "components-lite"

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


# The files that take longest (seconds on the 2-core CI machine, `pytest --durations=0`, summed per file), run
# first: xdist's loadfile hands out whole files as workers free up, so one slow file handed out last would keep
# one worker busy while the other idles (its own default order, by test count, put test_readme.py last).
# pyproject.toml passes --no-loadscope-reorder so that this order is the one used.
SLOW_FILES_FIRST = ("test_readme.py", "test_hot_swap.py", "test_ray_build.py", "test_wheel.py", "test_web_page.py",
                    "test_product.py", "test_hostile_service.py", "test_captioning.py", "test_hostile_round3.py",
                    "test_scoring.py", "test_service.py", "test_index_build.py", "test_kaggle_tiny.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where the file system allows (free, and index files are only ever replaced, never edited)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(".shards", ".lock"))


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """A private $UNPROMPT_HOME holding the lite index and the lite models' ONNX exports, linked from the ones
    `unprompt setup` made (the README's test command runs setup first); what is missing is built here once."""
    from retriever.encoders.onnx_export import ensure_exports
    from retriever.paths import HOME_ENV, home
    from retriever.profile import load_profile

    source = home() / "indexes" / LITE_INDEX
    root = tmp_path_factory.mktemp("unprompt-home")
    if (source / "build.json").is_file():
        _link_tree(source, root / "indexes" / LITE_INDEX)
    if (home() / "onnx").is_dir():
        _link_tree(home() / "onnx", root / "onnx")
    with pytest.MonkeyPatch.context() as mp:  # current ones are read from their records: no model loads
        mp.setenv(HOME_ENV, str(root))
        ensure_exports(load_profile("lite"))
    return root


@pytest.fixture(autouse=True)
def private_home(session_home, tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own $UNPROMPT_HOME; the session's lite index is linked in, read-only by habit."""
    from retriever.paths import HOME_ENV

    own = tmp_path_factory.mktemp("home")
    (own / "indexes").mkdir()
    (own / "indexes" / LITE_INDEX).symlink_to(session_home / "indexes" / LITE_INDEX, target_is_directory=True)
    (own / "onnx").symlink_to(session_home / "onnx", target_is_directory=True)
    monkeypatch.setenv(HOME_ENV, str(own))
    return own


@pytest.fixture()
def home(private_home) -> Path:
    return private_home


@pytest.fixture(scope="session")
def lite_profile(session_home):
    """The lite profile with its component index current in the session home (built there if it is not)."""
    from index_build.setup import ensure_indexes
    from retriever.paths import HOME_ENV
    from retriever.profile import load_profile

    profile = load_profile("lite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(session_home))
        ensure_indexes(profile)
    return profile


@pytest.fixture(scope="session")
def lite_interrogator(lite_profile, session_home):
    from retriever.paths import HOME_ENV
    from retriever.pipeline import Interrogator

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(session_home))
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


def run_cli(*args: str, env: dict | None = None) -> SimpleNamespace:
    """`unprompt ARGS` in this process (models stay loaded between calls): returncode, stdout, stderr."""
    from api.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def run_cli_process(*args: str, env: dict | None = None):
    """The installed `unprompt` in a subprocess, where a real process is the point (signals, exit codes)."""
    import subprocess
    import sys

    exe = shutil.which("unprompt", path=str(Path(sys.executable).parent)) or "unprompt"
    return subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
