"""Hostile input against the command line and the builder: `unprompt: error: ...`, never a traceback, nothing lost."""

import json

import polars as pl
import pytest

from conftest import EXAMPLES, run_cli
from fakes import HashTextEncoder
from hostile_images import mutations
from index_build.build import BuildOptions, build_index
from index_build.manifest import load_manifest
from index_build.read import read_manifest
from retriever.errors import IndexIntegrityError, ManifestError
from retriever.images import ImageRejected, load_image
from retriever.index import TextIndex
from retriever.index_files import read_record


def clean_error(res, code: int = 2) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert any(line.startswith("unprompt") and ": error: " in line for line in lines), res.stderr
    progress = lambda line: "%|" in line or "/s]" in line  # noqa: E731  (tqdm's bars are allowed on stderr)
    assert all(line.startswith(("unprompt", "usage:", " ")) or progress(line) for line in lines), res.stderr
    return res.stderr


def test_fuzzed_images_through_predict(tmp_path, lite_profile):
    paths = []
    for name, data in mutations():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    res = run_cli("predict", *paths, str(EXAMPLES / "cat.jpg"), "--json", "--no-embedding", "--top", "1")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["image"] for r in rows] == [*paths, str(EXAMPLES / "cat.jpg")]  # every image answered, in order
    errors = [r for r in rows if "error" in r]
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("predict: ")]  # progress lines
    assert len(errors) == len(lines) > 150
    assert all(line.startswith("unprompt: error:") for line in lines)
    assert "cat" in rows[-1]["prompt"].lower()


def test_load_image_refuses_devices_folders_and_huge_files(tmp_path):
    for path, reason in (("/dev/zero", "not_image"), (tmp_path, "not_image"), (tmp_path / "none.png", "missing")):
        with pytest.raises(ImageRejected) as err:
            load_image(path)
        assert err.value.reason == reason
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(30 << 20)
    with pytest.raises(ImageRejected, match="over the limit") as err:
        load_image(big)
    assert err.value.reason == "too_large"


# ---------------------------------------------------------------- builder
def small_manifest(tmp_path, n: int = 60, extra: str = "") -> str:
    (tmp_path / "texts.txt").write_text("\n".join(f"prompt number {i}, oil painting" for i in range(n)) + "\n")
    (tmp_path / "m.toml").write_text(f'name = "small"\n[[sources]]\nname = "t"\npath = "texts.txt"\nkind = "caption"\n{extra}')
    return str(tmp_path / "m.toml")


def test_a_truncated_shard_is_embedded_again(tmp_path):
    manifest = load_manifest(small_manifest(tmp_path, 300))
    enc = HashTextEncoder(dim=16)
    build_index(manifest, enc, tmp_path / "out", BuildOptions(shard_size=64, progress=False))
    shard = sorted((tmp_path / "out" / ".shards").rglob("000002.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # cut inside its data
    (sorted((tmp_path / "out" / ".shards").rglob("000003.npy"))[0]).write_bytes(b"\x93NUMPY garbage")
    report = build_index(manifest, enc, tmp_path / "out", BuildOptions(shard_size=64, progress=False))
    assert report.embedded == {"t": 128}  # the two damaged shards, nothing else
    assert TextIndex.load(tmp_path / "out").record.count == 300


def test_build_index_cli_refusals(tmp_path, lite_profile):
    manifest = small_manifest(tmp_path)
    (tmp_path / "a-file").write_text("x")
    assert "is not a folder" in clean_error(run_cli("build-index", manifest, "--out", str(tmp_path / "a-file")))
    assert "must be at least 1" in clean_error(run_cli("build-index", manifest, "--out", str(tmp_path / "o"),
                                                      "--shard-size", "0"))
    assert "FAISS cannot make index 'NotAnIndex99'" in clean_error(
        run_cli("build-index", manifest, "--out", str(tmp_path / "o"), "--factory", "NotAnIndex99"))
    assert "cannot train an IVF index of 256 lists" in clean_error(
        run_cli("build-index", manifest, "--out", str(tmp_path / "o"), "--factory", "IVF256,Flat"))
    assert not list((tmp_path / "o").glob(".shards/*/*/*.npy"))  # refused before any embedding
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    assert "not UTF-8" in clean_error(run_cli("build-index", str(tmp_path / "latin1.toml"), "--out", str(tmp_path / "o")))


def test_pkg_paths_stay_inside_their_package(tmp_path):
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "x"\npath = "pkg:retriever/../../../etc/passwd"\nkind = "caption"\n')
    with pytest.raises(ManifestError, match="outside the package"):
        read_manifest(load_manifest(tmp_path / "m.toml"), tmp_path / "staged", 8192)


def test_a_unit_separator_in_a_text_source_keeps_the_line(tmp_path):
    (tmp_path / "t.txt").write_text("hello\nwor\x1fld\nfoo\n")
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "t"\npath = "t.txt"\nkind = "caption"\n')
    assert read_manifest(load_manifest(tmp_path / "m.toml"), tmp_path / "staged", 8192)[0].all_texts() == ["hello", "wor\x1fld", "foo"]


def test_a_damaged_vectors_header_is_refused_with_checksums_off(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(f"text {i}" for i in range(400)) + "\n")
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "t"\npath = "t.txt"\nkind = "caption"\n')
    build_index(load_manifest(tmp_path / "m.toml"), HashTextEncoder(dim=16), tmp_path / "ix",
                BuildOptions(factory="IVF4,PQ4x4fs", progress=False))
    vectors = tmp_path / "ix" / read_record(tmp_path / "ix").files["vectors"].path
    data = bytearray(vectors.read_bytes())
    data[10:20] = b"\x00" * 10  # same size, broken header
    vectors.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="vectors file is unreadable"):
        TextIndex.load(tmp_path / "ix", checksums=False)


# ---------------------------------------------------------------- scoring commands
def test_score_on_header_only_files_and_jsonl_with_integer_ids(tmp_path):
    (tmp_path / "t.csv").write_text("imgId,prompt\n")
    assert "no rows" in clean_error(run_cli("score", "--truth", str(tmp_path / "t.csv"), "--predictions",
                                            str(tmp_path / "t.csv")))
    (tmp_path / "t.jsonl").write_text('{"imgId": 1, "prompt": "a cat"}\n{"imgId": 2, "prompt": "a dog"}\n')
    (tmp_path / "p.jsonl").write_text('{"imgId": 2, "prompt": "a dog"}\n{"imgId": 1, "prompt": "a cat"}\n')
    res = run_cli("score", "--truth", str(tmp_path / "t.jsonl"), "--predictions", str(tmp_path / "p.jsonl"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["mean"] == pytest.approx(1.0, abs=1e-5)


def test_submit_checks_its_output_before_any_work(tmp_path, monkeypatch):
    import retriever.pipeline

    def no_models(*a, **k):
        raise AssertionError("models loaded before the output was checked")

    monkeypatch.setattr(retriever.pipeline.Interrogator, "from_profile", no_models)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "cat.jpg").write_bytes((EXAMPLES / "cat.jpg").read_bytes())
    missing = clean_error(run_cli("submit", str(tmp_path / "imgs"), "--out", str(tmp_path / "nope" / "s.csv")))
    assert "does not exist" in missing
    assert "is a folder" in clean_error(run_cli("submit", str(tmp_path / "imgs"), "--out", str(tmp_path)))
    assert not list(tmp_path.rglob("*.tmp"))


def test_submit_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, lite_profile):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "cat.jpg").write_bytes((EXAMPLES / "cat.jpg").read_bytes())
    out = tmp_path / "sub.csv"
    out.write_text("the previous submission\n")

    def disk_full(self, path, **kw):
        with open(path, "w") as f:
            f.write("imgId_eId,val\n")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pl.DataFrame, "write_csv", disk_full)
    res = run_cli("submit", str(tmp_path / "imgs"), "--out", str(out))
    assert f"No space left on device: {out}" in clean_error(res, 1)
    assert out.read_text() == "the previous submission\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "sub.csv"]  # no temporary file left


def test_eval_and_train_refuse_bad_outputs_and_tables(tmp_path, lite_profile):
    (tmp_path / "f").write_text("x")
    assert "is not a folder" in clean_error(run_cli("eval", str(EXAMPLES.parent / "eval.csv"), "--out",
                                                    str(tmp_path / "f" / "report")))
    (tmp_path / "empty.csv").write_text("image,prompt\n")
    assert "no rows" in clean_error(run_cli("eval", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "r")))
    assert "give --prompts (text-only initialisation), --pairs" in clean_error(run_cli("train-regressor"))


def test_dedup_near_key_is_one_polars_expression():
    from index_build.read import near_key

    frame = pl.DataFrame({"t": ["A red, fox!", "a red fox", "blue  sky"]})
    assert frame.select(near_key(pl.col("t")))["t"].to_list() == ["a red fox", "a red fox", "blue sky"]
