"""Remote sources through loopback stand-ins of the real services: every production manifest against a fake
hub (same hf:// resolution, same polars reads a user's build makes), check-sources, a server without Range
support (the standard library's http.server), a download killed with SIGKILL and resumed, and DiffusionDB
pairs from zip parts."""

import base64
import functools
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import REPO, run_cli
from fake_hub import (COCO, COCO_REV, DIFFUSIONDB, DIFFUSIONDB_REV, FakeHub, add_production_layout,
                      diffusiondb_part, resolve_path)
from fakes import HashTextEncoder
from index_build.build import BuildOptions, build_index
from index_build.manifest import load_manifest
from index_build.remote import cached_download, expand

MANIFESTS = sorted(p for p in (REPO / "data_manifests").glob("*.toml") if not p.stem.endswith("-pairs"))
ROW_LIMIT = 12


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as fake:
        add_production_layout(fake)
        yield fake


@pytest.fixture()
def endpoint(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.requests.clear()
    return hub.url


def _limited(manifest, limit: int):
    return manifest.model_copy(update={"sources": [
        s.model_copy(update={"limit": min(s.limit or limit, limit)}) for s in manifest.sources]})


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_every_production_manifest_builds_against_the_fake_hub(path, endpoint, tmp_path):
    manifest = _limited(load_manifest(path), ROW_LIMIT)
    report = build_index(manifest, HashTextEncoder(dim=8), tmp_path / "ix",
                         BuildOptions(shard_size=64, progress=False))
    assert set(report.embedded) == {s.name for s in manifest.sources}
    for s in manifest.sources:  # every source gave texts: its repo, revision, path and column are all there
        assert report.embedded[s.name] > 0, s.name


def test_the_exact_requests_of_a_hub_source(endpoint, hub, tmp_path):
    """What a build of diffusiondb-2m asks the hub: huggingface_hub's paths-info check, then polars' Range
    reads of the resolve URL (the revision encoded once), which redirects to the CDN as the hub's does."""
    manifest = _limited(load_manifest("diffusiondb-2m.toml"), ROW_LIMIT)
    build_index(manifest, HashTextEncoder(dim=8), tmp_path / "ix", BuildOptions(shard_size=64, progress=False))
    seen = [(m, p, r) for m, p, r in hub.requests if "/datasets/" in p or p.startswith("/cdn/")]
    print("\n".join(f"{m} {p} {r or ''}" for m, p, r in seen))
    data = hub.files(DIFFUSIONDB, "main")["metadata.parquet"]
    resolve, cdn = resolve_path(DIFFUSIONDB, DIFFUSIONDB_REV, "metadata.parquet"), f"/cdn/{hashlib.sha256(data).hexdigest()}"
    assert seen[0][:2] == ("POST", f"/api/datasets/{DIFFUSIONDB}/paths-info/{DIFFUSIONDB_REV}")
    assert {(m, p) for m, p, _ in seen[1:]} == {("GET", resolve), ("GET", cdn)}  # polars: resolve, then CDN
    assert all(r and r.startswith("bytes=") for _, _, r in seen[1:])  # Range reads only, never a whole GET


def test_revision_spellings_reach_the_parquet_conversion_encoded_once(endpoint, hub):
    hub.add_parquet("org/converted", "default/train/0000.parquet", pl.DataFrame({"text": ["a", "b"]}),
                    ("refs/convert/parquet",))
    for url in ("hf://datasets/org/converted@~parquet/default/train/*.parquet",
                "hf://datasets/org/converted@refs%2Fconvert%2Fparquet/default/train/*.parquet"):
        (file,) = expand(url, "conv")
        assert "%25" not in file and ("/resolve/~parquet/" in file or "/resolve/refs%2Fconvert%2Fparquet/" in file)
        assert pl.read_parquet(file)["text"].to_list() == ["a", "b"]
    blob = hub.files("org/converted", "~parquet")["default/train/0000.parquet"]
    for i in range(120):  # more than a page of the tree listing: huggingface_hub follows the Link header
        hub.add("org/many", f"data/{i:04d}.parquet", blob)
    hub.requests.clear()
    assert len(expand("hf://datasets/org/many/data/*.parquet", "many")) == 120
    assert sum("/tree/" in p for _, p, _ in hub.requests) == 3


def test_check_sources_lists_files_columns_rows_and_names_a_wrong_column(endpoint, hub, tmp_path):
    res = run_cli("check-sources", "captions.toml")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "train-00000-of-00001-0084e041f1902997.parquet  40 rows" in out
    assert "captions (List(String))" in out and "column 'text' String; 3 files, 120 rows" in out
    assert "column 'caption' String; 2 files, 80 rows (manifest states 3,318,333)" in out
    bad = (REPO / "data_manifests" / "captions.toml").read_text().replace('column = "captions"', 'column = "caption"')
    (tmp_path / "bad.toml").write_text(bad)
    res = run_cli("check-sources", str(tmp_path / "bad.toml"))
    errors = [line for line in res.stderr.splitlines() if line.startswith("unprompt: error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr
    assert "source 'coco': no column 'caption' in http" in errors[0] and "(columns: license, file_name" in errors[0]
    gone = bad.replace(COCO_REV, "0" * 40).replace('column = "caption"', 'column = "captions"')
    (tmp_path / "gone.toml").write_text(gone)
    res = run_cli("check-sources", str(tmp_path / "gone.toml"))
    assert res.returncode == 2 and f"dataset {COCO} has no revision '{'0' * 40}'" in res.stderr


def test_check_sources_reads_footers_not_data(endpoint, hub, tmp_path):
    words = [base64.b64encode(os.urandom(192)).decode() for _ in range(20_000)]  # hardly compressible: ~4 MB
    hub.add_parquet("org/big", "big.parquet", pl.DataFrame({"text": words}))
    size = len(hub.files("org/big", "main")["big.parquet"])
    (tmp_path / "m.toml").write_text('[[sources]]\nname = "big"\ndataset = "org/big"\npath = "big.parquet"\n'
                                     'kind = "caption"\n')
    before = hub.bytes_served("/cdn/")
    res = run_cli("check-sources", str(tmp_path / "m.toml"))
    assert res.returncode == 0 and "big.parquet  20,000 rows" in res.stdout, res.stderr
    assert size > 3_000_000 and hub.bytes_served("/cdn/") - before < 600_000  # the footer's tail, not the file


class _Plain(http.server.SimpleHTTPRequestHandler):
    """The standard library's file server (no Range support), counting GETs of each file."""

    gets: dict

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):  # noqa: N802
        self.gets[self.path] = self.gets.get(self.path, 0) + 1
        return super().do_GET()


def _serve(root: Path, handler=_Plain):
    handler = type("H", (handler,), {"gets": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}", handler.gets


def test_a_build_from_a_server_without_range_support(tmp_path, home):
    served = tmp_path / "served"
    served.mkdir()
    for i in range(3):
        pl.DataFrame({"caption": [f"plain server caption {i}-{j}" for j in range(30)]}).write_parquet(
            served / f"part-{i}.parquet")
    httpd, url, gets = _serve(served)
    try:
        (tmp_path / "m.toml").write_text(f'[[sources]]\nname = "plain"\npath = "{url}/part-*.parquet"\n'
                                         f'column = "caption"\nkind = "caption"\n')
        options = BuildOptions(shard_size=64, progress=False)
        report = build_index(load_manifest(tmp_path / "m.toml"), HashTextEncoder(dim=8), tmp_path / "ix", options)
        assert report.embedded == {"plain": 90}
        records = sorted((home / "downloads").rglob("*.sha256"))
        assert len(records) == 3 and not list((home / "downloads").rglob("*.part"))
        for r in records:
            digest = hashlib.sha256(r.with_suffix("").read_bytes()).hexdigest()
            assert r.read_text().split()[0] == digest
        files = lambda: {k: v for k, v in gets.items() if k != "/"}  # noqa: E731 ("/": fsspec's listing)
        assert files() == {"/part-0.parquet": 2, "/part-1.parquet": 1, "/part-2.parquet": 1}  # a probe, then each
        build_index(load_manifest(tmp_path / "m.toml"), HashTextEncoder(dim=8), tmp_path / "ix2", options)
        assert files() == {"/part-0.parquet": 3, "/part-1.parquet": 1, "/part-2.parquet": 1}  # a probe; the cache
    finally:
        httpd.shutdown()


class _Slow(_Plain):
    """http.server sending its files slowly, so a download can be killed half way."""

    def copyfile(self, source, outputfile):
        while block := source.read(32 << 10):
            outputfile.write(block)
            time.sleep(0.02)


def test_a_download_killed_with_sigkill_resumes(tmp_path):
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    blobs = {name: os.urandom(size) for name, size in (("a.bin", 40_000), ("b.bin", 1_000_000))}
    for name, data in blobs.items():
        (served / name).write_bytes(data)
    httpd, url, gets = _serve(served, _Slow)
    code = ("import sys; from pathlib import Path; from index_build.remote import cached_download\n"
            "for u in sys.argv[2:]: cached_download(u, 'x', Path(sys.argv[1]))\n")
    urls = [f"{url}/{name}" for name in blobs]
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, str(cache), *urls], cwd=REPO)
        deadline = time.time() + 30
        while not any(p.stat().st_size > 0 for p in cache.rglob("b.bin.part")) and time.time() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert list(cache.rglob("a.bin.sha256")) and list(cache.rglob("b.bin.part"))  # one done, one half way
        paths = [cached_download(u, "x", cache) for u in urls]
        assert [p.read_bytes() for p in paths] == list(blobs.values())
        assert gets == {"/a.bin": 1, "/b.bin": 2}  # the finished file is not fetched again
        paths[0].write_bytes(b"damaged")  # a damaged cache entry fails its checksum and is fetched again
        assert cached_download(urls[0], "x", cache).read_bytes() == blobs["a.bin"] and gets["/a.bin"] == 2
    finally:
        httpd.shutdown()


def test_a_partial_download_continues_with_a_range_request(tmp_path, hub):
    data = os.urandom(300_000)
    hub.add("org/blob", "blob.zip", data)
    url = f"{hub.url}/cdn/{hashlib.sha256(data).hexdigest()}"
    folder = tmp_path / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir()
    (folder / f"{url.rsplit('/', 1)[-1]}.part").write_bytes(data[:120_000])
    hub.requests.clear()
    assert cached_download(url, "x", tmp_path).read_bytes() == data
    assert hub.requests == [("GET", url[len(hub.url):], "bytes=120000-")]


def test_diffusiondb_pairs_from_zip_parts_resume_and_train_the_head(endpoint, hub, tmp_path, tiny_clip):
    from test_kaggle_tiny import tiny_profile

    import io
    import json
    import zipfile

    buf = io.BytesIO()  # part 3: a traversal name, an image that does not decode, a record without a prompt
    with zipfile.ZipFile(buf, "w") as z, zipfile.ZipFile(io.BytesIO(diffusiondb_part(3))) as good:
        records = json.loads(good.read("part-000003.json"))
        for name in records:
            z.writestr(name, good.read(name))
        z.writestr("../evil.png", good.read(next(iter(records))))
        z.writestr("broken.png", b"\x89PNG not really")
        z.writestr("silent.png", good.read(next(iter(records))))
        records.update({"../evil.png": {"p": "evil"}, "broken.png": {"p": "broken"}, "silent.png": {"se": 1}})
        z.writestr("part-000003.json", json.dumps(records))
    hub.add(DIFFUSIONDB, "images/part-000003.zip", buf.getvalue(), ("main", DIFFUSIONDB_REV))
    out = tmp_path / "ddb"
    res = run_cli("fetch-pairs", "diffusiondb-2m-pairs.toml", "--out", str(out), "--parts", "1-2", "--limit", "6",
                  "--quiet")
    assert res.returncode == 0, res.stderr
    table = pl.read_parquet(out / "pairs.parquet")
    assert table.height == 6 and table["part"].to_list() == [1] * 4 + [2] * 2
    assert table["prompt"][0].startswith("a cat number 1-0") and (out / table["image"][0]).is_file()
    hub.requests.clear()
    res = run_cli("fetch-pairs", "diffusiondb-2m-pairs.toml", "--out", str(out), "--parts", "1-3", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "12 pairs from parts 1-3 (1 fetched, 2 already there, 3 images skipped)" in res.stdout
    fetched = [p for m, p, _ in hub.requests if "/resolve/" in p]
    assert fetched == [resolve_path(DIFFUSIONDB, DIFFUSIONDB_REV, "images/part-000003.zip")]  # parts 1-2 kept
    assert not (out / "images" / "evil.png").exists() and not list(out.rglob("broken.png"))
    assert not list((out / ".downloads").rglob("*.zip"))  # zips go once their images are out
    hub.add(DIFFUSIONDB, "images/part-000004.zip", b"PK not a zip", ("main", DIFFUSIONDB_REV))
    res = run_cli("fetch-pairs", "diffusiondb-2m-pairs.toml", "--out", str(out), "--parts", "1-4", "--quiet")
    assert res.returncode == 1 and "part 4 failed (BadZipFile" in res.stderr and "Traceback" not in res.stderr
    assert pl.read_parquet(out / "pairs.parquet").height == 12  # the good parts stay
    bad = run_cli("fetch-pairs", "diffusiondb-2m-pairs.toml", "--out", str(out), "--parts", "0-9999")
    assert bad.returncode == 2 and "has parts 1-2000" in bad.stderr
    profile = tiny_profile(tmp_path, tiny_clip)
    res = run_cli("train-regressor", "--profile", str(profile), "--pairs", str(out / "pairs.parquet"),
                  "--epochs", "2", "--out", str(tmp_path / "head.pt"))
    assert res.returncode == 0, res.stderr
    assert "pairs: " in res.stdout and (tmp_path / "head.pt").is_file()
