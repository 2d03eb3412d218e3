import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fakes import HashTextEncoder
from index_build.build import BuildOptions, build_index
from index_build.choose import choose_index
from index_build.manifest import load_manifest
from index_build.read import read_manifest
from retriever.errors import IndexIntegrityError, ManifestError
from retriever.index import TextIndex
from retriever.index_files import RECORD_NAME, read_record

HERE = Path(__file__).resolve().parent


def words(n: int, seed: int, prefix: str) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = ["red", "blue", "castle", "forest", "portrait", "city", "night", "oil", "detailed", "cat", "ship", "storm"]
    return [f"{prefix} {i} " + " ".join(rng.choice(vocab, 4)) for i in range(n)]


def corpus(tmp_path: Path, n_captions: int = 3000, n_flavours: int = 500) -> Path:
    (tmp_path / "caps").mkdir(exist_ok=True)
    (tmp_path / "caps" / "a.txt").write_text("\n".join(words(n_captions // 2, 1, "caption")) + "\n")
    (tmp_path / "caps" / "b.txt").write_text("\n".join(words(n_captions - n_captions // 2, 2, "scene")) + "\n")
    (tmp_path / "flavours.csv").write_text("name\n" + "\n".join(words(n_flavours, 3, "flavour")) + "\n")
    (tmp_path / "m.toml").write_text(
        'name = "test"\n'
        '[[sources]]\nname = "captions"\npath = "caps/*.txt"\nkind = "caption"\n'
        '[[sources]]\nname = "flavours"\npath = "flavours.csv"\ncolumn = "name"\nkind = "flavour"\ntemplate = "{}, art"\n'
    )
    return tmp_path / "m.toml"


# ---------------------------------------------------------------- manifests
def test_manifest_parsing_toml_and_yaml(tmp_path):
    m = load_manifest(corpus(tmp_path))
    assert m.name == "test" and [s.name for s in m.sources] == ["captions", "flavours"]
    assert m.sources[1].template == "{}, art" and m.sources[1].column == "name"
    (tmp_path / "m.yaml").write_text(
        "name: y\nsources:\n  - {name: c, path: caps/a.txt, kind: caption, blocked_words: [castle]}\n")
    y = load_manifest(tmp_path / "m.yaml")
    texts = read_manifest(y, tmp_path / "staged", 8192)[0].all_texts()
    assert texts and not any("castle" in t for t in texts)
    assert load_manifest("components.toml").sources[0].path.startswith("pkg:")  # shipped manifest by name


@pytest.mark.parametrize(
    "body, message",
    [
        ("name = 'x'\n", "sources"),
        ("[[sources]]\nname = 'a'\npath = 'x.txt'\n", "kind"),
        ("[[sources]]\nname = 'a'\npath = 'x.txt'\nkind = 'caption'\ntemplate = 'by'\n", "exactly one '{}'"),
        ("[[sources]]\nname = 'a'\npath = 'x.txt'\nkind = 'caption'\ncolour = 'red'\n", "colour"),
        ("[[sources]]\nname = 'a'\npath = 'x.txt'\nkind = 'caption'\n[[sources]]\nname = 'a'\npath = 'y.txt'\nkind = 'caption'\n",
         "unique"),
        ("this is not = = toml", "cannot be parsed"),
    ],
)
def test_manifest_errors(tmp_path, body, message):
    (tmp_path / "bad.toml").write_text(body)
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path / "bad.toml")


def test_missing_source_files_and_packages(tmp_path):
    (tmp_path / "m.toml").write_text("[[sources]]\nname = 'a'\npath = 'nothing/*.txt'\nkind = 'caption'\n")
    with pytest.raises(ManifestError, match="no files match"):
        read_manifest(load_manifest(tmp_path / "m.toml"), tmp_path / "staged", 8192)
    (tmp_path / "p.toml").write_text("[[sources]]\nname = 'a'\npath = 'pkg:no_such_pkg/x.txt'\nkind = 'caption'\n")
    with pytest.raises(ManifestError, match="not installed"):
        read_manifest(load_manifest(tmp_path / "p.toml"), tmp_path / "staged", 8192)
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "absent.toml")


# ---------------------------------------------------------------- dedup
def test_dedup_exact_and_near(tmp_path):
    (tmp_path / "a.txt").write_text("A red  fox\nA red fox\na red fox!\n  \nA Red Fox\nblue sky\n")
    (tmp_path / "b.txt").write_text("blue sky\nnew text\n")
    body = "[[sources]]\nname = 'a'\npath = 'a.txt'\nkind = 'caption'\n[[sources]]\nname = 'b'\npath = 'b.txt'\nkind = 'caption'\n"
    (tmp_path / "m.toml").write_text(body)
    exact = read_manifest(load_manifest(tmp_path / "m.toml"), tmp_path / "staged", 8192)
    assert exact[0].all_texts() == ["A red fox", "a red fox!", "A Red Fox", "blue sky"]  # whitespace normalised first
    assert exact[1].all_texts() == ["new text"]  # "blue sky" already came from source a
    (tmp_path / "n.toml").write_text(body + "[dedup]\nnear = true\n")
    near = read_manifest(load_manifest(tmp_path / "n.toml"), tmp_path / "staged", 8192)
    assert near[0].all_texts() == ["A red fox", "blue sky"]


# ---------------------------------------------------------------- kill -9 and resume
def _run(manifest, out, sleep, factory=None):
    args = [sys.executable, str(HERE / "slow_build.py"), str(manifest), str(out), "200", str(sleep)]
    return subprocess.Popen(args + ([factory] if factory else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("factory", [None, "IVF16,PQ8"])
def test_kill_and_resume_gives_identical_vectors_and_index(tmp_path, factory):
    manifest = corpus(tmp_path)
    reference = _run(manifest, tmp_path / "ref", 0.0, factory)
    assert reference.wait(120) == 0, reference.stderr.read()
    victim = _run(manifest, tmp_path / "out", 0.15, factory)
    shards = tmp_path / "out" / ".shards"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(shards.rglob("*.npy"))) < 5:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    written = len(list(shards.rglob("*.npy")))
    assert 5 <= written < 18  # 3500 texts / 200 = 18 shards: killed part-way
    assert not (tmp_path / "out" / RECORD_NAME).exists()  # nothing half-written is visible
    resumed = _run(manifest, tmp_path / "out", 0.0, factory)
    assert resumed.wait(120) == 0, resumed.stderr.read()
    embedded = json.loads(resumed.stdout.read())
    assert sum(embedded.values()) <= 3500 - written * 200 + 200  # only what was missing
    ref, out = TextIndex.load(tmp_path / "ref"), TextIndex.load(tmp_path / "out")
    assert ref.record.files["index"].sha256 == out.record.files["index"].sha256
    assert ref.record.files["meta"].sha256 == out.record.files["meta"].sha256
    for a, b in zip(sorted((tmp_path / "ref" / ".shards").rglob("*.npy")), sorted(shards.rglob("*.npy"))):
        assert np.array_equal(np.load(a), np.load(b))


# ---------------------------------------------------------------- incremental
def test_incremental_rebuild_reembeds_only_the_changed_source(tmp_path):
    manifest = corpus(tmp_path)
    enc = HashTextEncoder()
    first = build_index(load_manifest(manifest), enc, tmp_path / "ix", BuildOptions(progress=False))
    assert first.embedded == {"captions": 3000, "flavours": 500}
    again = build_index(load_manifest(manifest), enc, tmp_path / "ix", BuildOptions(progress=False))
    assert again.embedded == {"captions": 0, "flavours": 0}
    (tmp_path / "flavours.csv").write_text("name\n" + "\n".join(words(650, 9, "flavour")) + "\n")
    changed = build_index(load_manifest(manifest), enc, tmp_path / "ix", BuildOptions(progress=False))
    assert changed.embedded == {"captions": 0, "flavours": 650}
    index = TextIndex.load(tmp_path / "ix")
    assert len(index) == 3650 and index.record.kinds == {"caption": (0, 3000), "flavour": (3000, 3650)}
    # old build files and unused shards are gone
    assert len(list((tmp_path / "ix").glob("index-*.faiss"))) == 1
    assert len([d for d in (tmp_path / "ix" / ".shards").rglob("*") if d.is_dir() and d.name.startswith("flavours")]) == 1


# ---------------------------------------------------------------- integrity
@pytest.fixture()
def built(tmp_path):
    build_index(load_manifest(corpus(tmp_path, 400, 100)), HashTextEncoder(), tmp_path / "ix", BuildOptions(progress=False))
    return tmp_path / "ix"


def test_truncated_index_file_is_refused(built):
    path = built / read_record(built).files["index"].path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexIntegrityError, match="truncated"):
        TextIndex.load(built)


def test_corrupt_index_file_is_refused_by_verify(built):
    from conftest import run_cli

    assert run_cli("verify", str(built)).returncode == 0
    path = built / read_record(built).files["index"].path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="SHA-256"):
        TextIndex.load(built, checksums=True)
    res = run_cli("verify", str(built))
    assert res.returncode == 2 and "fails its SHA-256 check" in res.stderr
    assert TextIndex.load(built).record.count  # a plain start checks sizes only: a same-size flip needs verify


@pytest.mark.parametrize("where", ["absolute", "parent", "dotdot_inside"])
def test_a_record_naming_files_outside_its_folder_is_refused(built, tmp_path, where):
    """A build must hold its own files: verify once vouched for another folder's (sizes and SHA-256 matched)."""
    import shutil

    from conftest import run_cli

    other = tmp_path / "other"
    shutil.copytree(built, other)
    record = json.loads((built / RECORD_NAME).read_text())
    for role in ("index", "meta"):
        name = record["files"][role]["path"]
        record["files"][role]["path"] = {"absolute": str(other / name), "parent": f"../other/{name}",
                                         "dotdot_inside": f"sub/../../other/{name}"}[where]
        (built / name).unlink()
    (built / RECORD_NAME).write_text(json.dumps(record))
    res = run_cli("verify", str(built))
    assert res.returncode == 2 and "is not inside the index folder" in res.stderr and "match" not in res.stdout
    with pytest.raises(IndexIntegrityError, match="not inside the index folder"):
        TextIndex.load(built)
    assert run_cli("verify", str(other)).returncode == 0  # the folder that holds them is fine


def test_corrupt_record_and_mismatched_counts_are_refused(built):
    record = json.loads((built / RECORD_NAME).read_text())
    record["count"] += 1
    (built / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(IndexIntegrityError, match="does not match its build record"):
        TextIndex.load(built)
    (built / RECORD_NAME).write_text("{not json")
    with pytest.raises(IndexIntegrityError, match="corrupt"):
        TextIndex.load(built)
    with pytest.raises(IndexIntegrityError, match="unprompt setup"):
        TextIndex.load(built.parent / "nowhere")


# ---------------------------------------------------------------- index choice and IVF
def test_index_choice_follows_count_and_budget():
    small = choose_index(100_000, 384)
    assert small.exact and small.factory == "SQfp16"
    big = choose_index(56_000_000, 1280, memory_budget=8 << 30)
    assert not big.exact and big.factory.startswith("IVF8192_HNSW32,PQ") and big.factory.endswith("x4fs")
    assert choose_index(56_000_000, 1280, memory_budget=8 << 30, reduce_to=768).factory.startswith("PCAR768,")
    assert choose_index(2_000_000, 384, exact_max=500_000).exact is False
    assert choose_index(10, 384, factory="HNSW32").factory == "HNSW32"


def test_ivf_returns_the_exact_top1_for_texts_in_the_corpus(tmp_path):
    manifest = corpus(tmp_path, 6000, 1000)
    enc = HashTextEncoder(dim=64)
    report = build_index(load_manifest(manifest), enc, tmp_path / "ivf", BuildOptions(exact_max=1000, progress=False))
    assert report.choice.factory.startswith("IVF") and not report.record.exact
    index = TextIndex.load(tmp_path / "ivf")
    rng = np.random.default_rng(0)
    rows = rng.choice(len(index), 200, replace=False)
    texts = [index.text(int(r)) for r in rows]
    hits = index.search(enc.encode_text(texts), k=5)
    assert [h[0].text for h in hits] == texts
    assert all(abs(h[0].score - 1.0) < 2e-3 for h in hits)
    kind_hits = index.search(enc.encode_text(texts[:20]), k=3, kind="flavour")
    assert all(h.kind == "flavour" for hs in kind_hits for h in hs)


def test_shipped_example_manifests_parse():
    from conftest import REPO

    for path in sorted((REPO / "data_manifests" / "examples").glob("*.*")):
        if path.suffix in (".toml", ".yaml", ".yml"):
            manifest = load_manifest(path)
            assert manifest.sources and all(s.kind in ("caption", "medium") for s in manifest.sources)  # coco, mediums


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "IVF16,PQ8x4", "IVF16,Flat", "OPQ8,IVF16,PQ8x4", "HNSW16", "PQ8x4"])
def test_the_first_read_flags_of_each_factory_map_the_file_and_search_the_same(tmp_path, factory):
    """The flags ``read_flags`` tries first work for the factory (no silent fallback): IndexFlatCodes-derived and
    HNSW indices map their codes, IVF ones their lists; the search answers as a plain read's do."""
    import faiss

    from retriever.index import _read_faiss, read_flags

    rng = np.random.default_rng(0)
    x = rng.random((3000, 32), dtype=np.float32)
    built = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    built.train(x)
    built.add(x)
    path = tmp_path / "index.faiss"
    faiss.write_index(built, str(path))
    flags = read_flags(faiss, factory, mmap=True)
    assert flags[-1] == 0 and (flags[0] & faiss.IO_FLAG_MMAP_IFC) == (0 if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC)
    mapped, plain = faiss.read_index(str(path), flags[0]), faiss.read_index(str(path))
    for a, b in zip(mapped.search(x[:20], 5), plain.search(x[:20], 5)):
        assert np.array_equal(a, b)
    assert read_flags(faiss, factory, mmap=False) == [0]
    del mapped  # a mapped file is never rewritten in place (generations are new files, renamed into place)
    truncated = tmp_path / "truncated.faiss"
    truncated.write_bytes(path.read_bytes()[:100])  # every flag fails, and the error says so
    with pytest.raises(IndexIntegrityError, match="FAISS cannot read the index file"):
        _read_faiss(faiss, truncated, flags, tmp_path)
