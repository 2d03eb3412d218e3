"""build-index --append: new rows searchable, duplicates dropped, no retraining, rollback; a kill -9 during an
append leaves the previous generation committed and serving."""

import hashlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

DIM = 32
OLD = ["a red fox in the snow", "a blue whale", "a green parrot", "an old oak tree"] * 1
NEW = ["a blue whale", "A red fox in the snow", "a purple octopus", "a silver robot"]


class HashEncoder:
    """Deterministic vectors from a text's hash: no model to load, so a subprocess starts in a second."""

    model_id = "test:hash-32"
    dim = DIM

    def encode_text(self, texts):
        out = np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(DIM)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def manifest(root: Path, name: str, texts: list[str], kind: str = "caption", near: bool = False) -> Path:
    (root / f"{name}.txt").write_text("\n".join(texts) + "\n")
    (root / f"{name}.toml").write_text(f'name = "{name}"\n[[sources]]\nname = "{name}"\npath = "{name}.txt"\n'
                                       f'kind = "{kind}"\n[dedup]\nnear = {str(near).lower()}\n')
    return root / f"{name}.toml"


@pytest.fixture()
def base(tmp_path):
    from index_build.build import BuildOptions, build_index
    from index_build.manifest import load_manifest

    (tmp_path / "flav.txt").write_text("soft light\nhighly detailed\n")
    (tmp_path / "base.toml").write_text(
        'name = "base"\n[[sources]]\nname = "old"\npath = "old.txt"\nkind = "caption"\n'
        '[[sources]]\nname = "flav"\npath = "flav.txt"\nkind = "flavour"\n')
    (tmp_path / "old.txt").write_text("\n".join(OLD) + "\n")
    out = tmp_path / "index"
    record = build_index(load_manifest(tmp_path / "base.toml"), HashEncoder(), out, BuildOptions(progress=False)).record
    return tmp_path, out, record


def test_append_adds_rows_drops_duplicates_and_rolls_back(base):
    from index_build.append import append_index
    from index_build.manifest import load_manifest
    from retriever.index import TextIndex
    from retriever.index_files import rollback

    root, out, first = base
    report = append_index(load_manifest(manifest(root, "more", NEW, near=True)), HashEncoder(), out)
    rec = report.record
    assert rec.parent == first.build_id and rec.build_id != first.build_id and rec.factory == first.factory
    assert rec.appended == ["more"] and rec.sources[-1].count == 2  # the whale and the (near-duplicate) fox dropped
    index = TextIndex.load(out, checksums=True)
    assert index.texts.to_list().count("a blue whale") == 1 and "A red fox in the snow" not in index.texts.to_list()
    lo, hi = index.record.kinds["caption"]
    assert index.record.kinds["flavour"] == (hi, hi + 2)  # rows stay grouped by kind: captions, old then new
    for text in ("a purple octopus", "a silver robot", "a green parrot"):
        hits = index.search(HashEncoder().encode_text([text]), 1, kind="caption")[0]
        assert hits[0].text == text and hits[0].score == pytest.approx(1, abs=1e-3)
    assert index.search(HashEncoder().encode_text(["soft light"]), 1, kind="flavour")[0][0].text == "soft light"

    with pytest.raises(Exception, match="already in build"):  # the same texts again: nothing new
        append_index(load_manifest(manifest(root, "again", NEW[2:])), HashEncoder(), out)

    left, restored = rollback(out)
    assert (left.build_id, restored.build_id) == (rec.build_id, first.build_id)
    back = TextIndex.load(out, checksums=True)
    assert back.record.build_id == first.build_id and "a purple octopus" not in back.texts.to_list()
    with pytest.raises(Exception, match="not an append"):
        rollback(out)


def test_append_refuses_another_model(base):
    from index_build.append import append_index
    from index_build.manifest import load_manifest

    root, out, _ = base

    class Other(HashEncoder):
        model_id = "test:other"

    with pytest.raises(Exception, match="needs the same model"):
        append_index(load_manifest(manifest(root, "more", NEW)), Other(), out)


CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_append import HashEncoder
from index_build.append import append_index
from index_build.manifest import load_manifest
from index_build.options import BuildOptions

def stage(name):
    if name == {when!r}:
        os.kill(os.getpid(), signal.SIGKILL)

append_index(load_manifest({manifest!r}), HashEncoder(), {out!r}, BuildOptions(progress=False, on_stage=stage))
"""


@pytest.mark.parametrize("when", ["commit"])  # every file of the new generation written, build.json not yet
def test_kill_9_during_append_leaves_the_previous_generation(base, when):
    from index_build.append import append_index
    from index_build.manifest import load_manifest
    from retriever.index import TextIndex

    root, out, first = base
    more = manifest(root, "more", NEW)
    code = CHILD.format(tests=str(REPO / "tests"), when=when, manifest=str(more), out=str(out))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    index = TextIndex.load(out, checksums=True)  # the previous generation, whole
    assert index.record.build_id == first.build_id and index.record.count == first.count
    rec = append_index(load_manifest(more), HashEncoder(), out).record  # and the append then goes through
    assert rec.parent == first.build_id and TextIndex.load(out, checksums=True).record.count == first.count + 3  # case differs: not a duplicate without near
