"""No Docker engine runs here: parse the Dockerfile and check what it would do."""

import re
import shlex

from dockerfile_parse import DockerfileParser

from conftest import REPO


def instructions():
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    return parser.structure, parser


def readme_setup_command() -> str:
    readme = (REPO / "README.md").read_text()
    command1 = next(line for line in readme.splitlines() if line.startswith("bash .ci/setup &&"))
    return command1.split("&&")[0].strip()


def test_installs_with_the_readme_command_and_builds_the_lite_index():
    structure, _ = instructions()
    runs = [i["value"] for i in structure if i["instruction"] == "RUN"]
    setup = readme_setup_command()
    assert setup == "bash .ci/setup"
    assert any(r.strip() == setup for r in runs)
    # that command ends by building the lite component index
    script = (REPO / ".ci" / "setup").read_text()
    assert re.search(r"^\.venv/bin/unprompt setup\b", script, re.M)
    envs = " ".join(i["value"] for i in structure if i["instruction"] == "ENV")
    assert "UNPROMPT_HOME=/var/lib/unprompt" in envs  # the index is built into the image, where serve reads it


def test_exposes_the_port_and_serves_as_non_root():
    structure, parser = instructions()
    assert [i["value"] for i in structure if i["instruction"] == "EXPOSE"] == ["8000"]
    users = [i["value"] for i in structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    user_line = max(i["startline"] for i in structure if i["instruction"] == "USER")
    cmd = [i for i in structure if i["instruction"] == "CMD"][-1]
    assert cmd["startline"] > user_line
    argv = shlex.split(cmd["value"].strip("[]").replace(",", " "))
    assert argv[:2] == [".venv/bin/unprompt", "serve"] and "8000" in argv and "0.0.0.0" in argv


def test_cuda_variant_selects_a_cuda_base_with_faiss_gpu():
    structure, parser = instructions()
    froms = [i["value"] for i in structure if i["instruction"] == "FROM"]
    assert any(f.startswith("python:3.11") for f in froms)
    assert any("nvidia/cuda" in f for f in froms)
    assert froms[-1] == "base-${VARIANT}"
    text = (REPO / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "faiss-gpu" in text
