"""What users install: the wheel, in a fresh virtualenv outside the checkout, run from another directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import EXAMPLES, REPO

VENV = Path(os.environ.get("UNPROMPT_WHEEL_VENV") or Path(os.environ.get("TMPDIR", "/tmp")) / "unprompt-wheel-venv")


@pytest.fixture(scope="module")
def wheel_venv() -> Path:
    """Made by `.ci/setup --test`; made here (about a minute, from pip's cache) when it is missing."""
    if not (VENV / "bin" / "unprompt").exists():
        subprocess.run(["bash", str(REPO / ".ci" / "wheel-venv"), str(VENV)], check=True, timeout=900)
    return VENV


def unprompt(venv: Path, cwd: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if home:
        env["UNPROMPT_HOME"] = str(home)
    return subprocess.run([str(venv / "bin" / "unprompt"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_is_what_runs(wheel_venv, tmp_path):
    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c",
                            "import retriever.evaluation, api.cli, index_build, data_manifests; "
                            "print(retriever.evaluation.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(wheel_venv)) and not where.startswith(str(REPO)), where
    res = unprompt(wheel_venv, tmp_path, "--version")
    assert res.returncode == 0 and res.stdout.strip().startswith("unprompt ")


def test_score_predict_and_submit_from_another_directory(wheel_venv, tmp_path, session_home):
    (tmp_path / "imgs").mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        (tmp_path / "imgs" / name).write_bytes((EXAMPLES / name).read_bytes())
    pl.DataFrame({"imgId": ["cat", "coffee"], "prompt": ["a cat on a sofa", "a cup of coffee"]}).write_csv(
        tmp_path / "truth.csv")

    res = unprompt(wheel_venv, tmp_path, "score", "--truth", "truth.csv", "--predictions", "truth.csv", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["mean"] == pytest.approx(1.0, abs=1e-5)

    res = unprompt(wheel_venv, tmp_path, "predict", "imgs", "--format", "csv", home=session_home)
    assert res.returncode == 0, res.stderr
    rows = list(pl.read_csv(res.stdout.encode()).iter_rows(named=True))
    assert [Path(r["image"]).name for r in rows] == ["cat.jpg", "coffee.jpg"] and "cat" in rows[0]["prompt"].lower()

    res = unprompt(wheel_venv, tmp_path, "submit", "imgs", "--out", "submission.csv", "--prompts-out", "prompts.csv",
                   home=session_home)
    assert res.returncode == 0, res.stderr
    assert pl.read_csv(tmp_path / "submission.csv").height == 2 * 384
    res = unprompt(wheel_venv, tmp_path, "score", "--truth", "truth.csv", "--predictions", "submission.csv")
    assert res.returncode == 0 and res.stdout.startswith("score "), res.stderr


def test_the_wheel_declares_what_it_imports(wheel_venv):
    """pip check: every declared requirement is installed at a fitting version in the wheel's environment."""
    res = subprocess.run([str(wheel_venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_help_and_version_import_no_model_library():
    code = ("import sys, api.cli; api.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'sentence_transformers', 'faiss') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
