"""The Dockerfile, parsed (no Docker engine runs here); built and run where one does."""

import shlex
import shutil
import subprocess
import time
import urllib.request

import pytest
from dockerfile_parse import DockerfileParser

from conftest import REPO


def instructions() -> list[dict]:
    return DockerfileParser(path=str(REPO / "Dockerfile")).structure


def stage_of(structure: list[dict], line: int) -> str:
    froms = [i for i in structure if i["instruction"] == "FROM" and i["startline"] <= line]
    return froms[-1]["value"].split()[-1]


def test_dockerignore_keeps_local_environments_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored and "**/__pycache__/" in ignored


def test_multi_stage_cpu_torch_and_a_cuda_variant():
    structure = instructions()
    froms = [i["value"] for i in structure if i["instruction"] == "FROM"]
    assert "python:3.11-slim AS base-cpu" in froms and any(f.startswith("nvidia/cuda:") for f in froms)
    assert "base-${VARIANT} AS build" in froms and "base-${VARIANT} AS runtime" in froms
    text = (REPO / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "download.pytorch.org/whl/cpu" in text
    assert "FAISS_PACKAGE=faiss-gpu-cu12==1.14.1.post1" in text  # pinned: `pip index versions faiss-gpu-cu12`
    copies = [i["value"] for i in structure if i["instruction"] == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copies and "--from=build /var/lib/unprompt /var/lib/unprompt" in copies
    assert not any(c.startswith(". ") for c in copies)  # never the whole checkout


def test_installs_unprompt_and_builds_the_lite_index_at_build_time():
    structure = instructions()
    runs = [(i["value"], stage_of(structure, i["startline"])) for i in structure if i["instruction"] == "RUN"]
    assert any("pip install" in r and "-c .ci/constraints.txt ." in r and s == "build" for r, s in runs)
    assert ("/opt/venv/bin/unprompt setup", "build") in runs
    envs = " ".join(i["value"] for i in structure if i["instruction"] == "ENV")
    assert "UNPROMPT_HOME=/var/lib/unprompt" in envs


def test_serves_as_non_root_with_a_health_check_that_waits_for_start_up():
    structure = instructions()
    users = [i for i in structure if i["instruction"] == "USER"]
    assert users and users[-1]["value"] not in ("root", "0") and stage_of(structure, users[-1]["startline"]) == "runtime"
    health = [i["value"] for i in structure if i["instruction"] == "HEALTHCHECK"]
    assert health and "--start-period=" in health[0] and "/readyz" in health[0]
    assert [i["value"] for i in structure if i["instruction"] == "EXPOSE"] == ["8000"]
    cmd = [i for i in structure if i["instruction"] == "CMD"][-1]
    assert cmd["startline"] > users[-1]["startline"]
    argv = shlex.split(cmd["value"].strip("[]").replace(",", " "))
    assert argv[:2] == ["unprompt", "serve"] and "0.0.0.0" in argv and "8000" in argv


def _docker_daemon() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon here (the docker client alone cannot build)")
def test_image_builds_and_answers(tmp_path):
    tag = "unprompt-test:latest"
    subprocess.run(["docker", "build", "-t", tag, str(REPO)], check=True, timeout=3600)
    container = subprocess.run(["docker", "run", "-d", "-p", "18000:8000", tag], check=True, capture_output=True,
                               text=True).stdout.strip()
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen("http://127.0.0.1:18000/readyz", timeout=5)
                break
            except OSError:
                time.sleep(3)
        cat = (REPO / "data_manifests" / "examples" / "images" / "cat.jpg").read_bytes()
        req = urllib.request.Request("http://127.0.0.1:18000/v1/interrogate", data=cat,
                                     headers={"content-type": "image/jpeg"})
        assert b"prompt" in urllib.request.urlopen(req, timeout=60).read()
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
