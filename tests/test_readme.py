"""Every command and snippet of README.md, as written, from a fresh working directory.

Picked up from README.md itself: each line of a ```bash block (continuation lines joined, `a && b` run in turn)
and each ```python block, in order. The rule for what cannot run here (stated in the README too):
- `unprompt` commands run in this process (the loaded lite models are reused); exit status 0 expected.
- `unprompt` commands needing CLIP weights and a GPU (`--profile kaggle` or UNPROMPT_PROFILE=kaggle, unless
  `--dry-run`) or the network (build-index/setup on a manifest with remote sources) are parsed by unprompt's
  own parser (their subcommand and flags must exist), not run.
- `unprompt serve` is parsed and its settings validated; a live lite server stands in for it, and every `curl`
  goes to that server (curl's own binary, failing on an HTTP error).
- `docker`, `pip`, `bash .ci/...` and the test suite itself (`python -m pytest`) are skipped.
- Anything else (cp, printf, python -c) runs in a shell in the fresh directory.
Each skipped or parsed-only command is printed with its reason (pytest -s shows them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_cli

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
SKIP = {"docker": "needs Docker (tests/test_dockerfile.py checks the Dockerfile)",
        "pip": "installs packages", "bash": "CI's own set-up script (this test runs after it)"}
SHELL_OPERATORS = {"|", ">", ">>", "<", ";", "||"}
LINKED_OUT = {".git", ".venv", "test-artifacts", "build", "dist"}


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def shell_commands(body: str) -> list[str]:
    """A bash block's commands: comments dropped, continuation lines joined, `a && b` split in turn (each part
    re-quoted for the shell, redirections and pipes kept)."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        group: list[str] = []
        for token in [*lex, "&&"]:
            if token != "&&":
                group.append(token)
            elif group:
                out.append(" ".join(t if t in SHELL_OPERATORS else shlex.quote(t) for t in group))
                group = []
    return out


def _unprompt_args(words: list[str]) -> tuple[dict, list[str]] | None:
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words and Path(words[0]).name == "unprompt":
        return env, words[1:]
    return None


def _needs_what_is_missing(env: dict, args: list[str]) -> str | None:
    """Why this unprompt command cannot run here, or None."""
    profile = args[args.index("--profile") + 1] if "--profile" in args else env.get("UNPROMPT_PROFILE", "lite")
    if profile != "lite" and "--dry-run" not in args and _needs_clip_weights(profile):
        return f"needs CLIP weights and a GPU (profile {profile})"
    if args and args[0] == "fetch-pairs":
        return "needs the network (pairs are downloaded from the hub)"
    if args and args[0] in ("build-index", "setup", "check-sources") and len(args) > 1 \
            and args[1].endswith((".toml", ".yaml")):
        from index_build.manifest import load_manifest
        from index_build.remote import is_remote

        if any(s.dataset or is_remote(s.path) for s in load_manifest(args[1]).sources):
            return "needs the network (the manifest's sources are remote)"
    return None


def _needs_clip_weights(profile: str) -> bool:
    """A profile that retrieves with open_clip (kaggle, sd15, sd2, sdxl), or one the README writes on a GPU machine."""
    from retriever.errors import UnpromptError
    from retriever.profile import load_profile

    try:
        return load_profile(profile).retrieve.space.kind == "open_clip"
    except UnpromptError:
        return True


@pytest.fixture()
def fresh(tmp_path, monkeypatch):
    """A fresh working directory: the repository's files linked in, nothing else; outputs land here."""
    for entry in REPO.iterdir():
        if entry.name not in LINKED_OUT and not entry.name.startswith(".pytest"):
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def live(lite_interrogator):
    from api.app import create_app
    from api.settings import Settings
    from server import LiveServer

    with LiveServer(create_app(Settings(), lite_interrogator)) as server:
        yield server


def test_every_readme_command_runs_as_written(fresh, live, lite_interrogator, monkeypatch):
    from api.cli import build_parser
    from retriever.pipeline import Interrogator

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    load = Interrogator.load.__func__
    monkeypatch.setattr(Interrogator, "load", classmethod(  # the Python snippets reuse the loaded lite models
        lambda cls, profile=None, checksums=False: lite_interrogator if profile in (None, "lite")
        else load(cls, profile, checksums)))
    ran, notes = 0, []
    for lang, body in readme_blocks((REPO / "README.md").read_text(encoding="utf-8")):
        if lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})
            ran += 1
            continue
        if lang not in ("bash", "sh", "shell"):
            continue
        for command in shell_commands(body):
            words = shlex.split(command)
            head = Path(words[0]).name
            if head in SKIP or (head == "python" and words[1:3] == ["-m", "pytest"]):
                notes.append(f"skipped: {command}  ({SKIP.get(head, 'the test suite itself')})")
                continue
            unprompt = _unprompt_args(list(words))
            if unprompt is not None:
                env, args = unprompt
                why = "the live test server stands in for it" if args[:1] == ["serve"] else \
                    _needs_what_is_missing(env, args)
                if why:
                    parsed = build_parser().parse_args(args)  # the subcommand and its flags exist
                    if args[:1] == ["serve"]:
                        from api.cli.serve import settings_from

                        settings_from(parsed)
                    notes.append(f"parsed, not run: {command}  ({why})")
                    continue
                res = run_cli(*args, env=env)
                assert res.returncode == 0, f"README command failed: {command}\n{res.stderr[-2000:]}"
                ran += 1
                continue
            if head == "curl":
                command = command.replace("http://127.0.0.1:8000", live.url)
                command = "curl -sS --fail-with-body " + command[len("curl "):]
            # the README's .venv is the repository's: the fresh directory has none of its own
            command = re.sub(r"(^|[\s;&|(])\.venv/bin/", lambda m: m.group(1) + str(REPO / ".venv" / "bin") + "/", command)
            proc = subprocess.run(command, shell=True, cwd=fresh, capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"})
            assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}"
            ran += 1
    print("\n".join(notes))
    assert ran >= 20  # the README's commands were found and run, not silently skipped
    assert (fresh / "my-dataset" / "more" / "cat.txt").is_file() and (fresh / "report" / "report.html").is_file()
