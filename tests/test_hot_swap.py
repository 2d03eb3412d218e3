"""Hot swap: a committed rebuild is taken up by a running server under load, without a failed request; a
corrupted build is refused while the old one keeps answering; the watcher takes up a commit by itself."""

import io
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.app import create_app
from api.settings import Settings
from conftest import EXAMPLES, REPO
from server import LiveServer

CLIENTS = 32
AFTER = 8  # answers to requests sent after a reload (or a refused one) that the test waits for
SUBJECTS_OLD = ["a zebra", "a tractor", "a lighthouse", "a violin", "a mountain lake", "a teapot"]
SUBJECTS_NEW = ["a tabby cat", "a kitten", "a cup of coffee", "an espresso", "a rocket", "a galaxy"]
CAT = (EXAMPLES / "cat.jpg").read_bytes()


def _small_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(CAT)).convert("RGB").resize((96, 96)).save(buf, "JPEG")
    return buf.getvalue()


def write_manifest(root: Path, name: str, subjects: list[str]) -> Path:
    (root / f"{name}.txt").write_text("\n".join(subjects) + "\n")
    lists = REPO / "data_manifests" / "clip_interrogator"
    (root / f"{name}.toml").write_text(f'''name = "swap"
[[sources]]
name = "subjects"
path = "{root / f"{name}.txt"}"
kind = "subject"
[[sources]]
name = "mediums"
path = "{lists / "mediums.txt"}"
kind = "medium"
limit = 20
[[sources]]
name = "flavours"
path = "{lists / "flavors.txt"}"
kind = "flavour"
limit = 120
''')
    return root / f"{name}.toml"


@pytest.fixture()
def swap_env(tmp_path, home, lite_interrogator):
    """A lite-space profile over a small index "swap" built here, and an interrogator over it that shares the
    session's loaded lite models."""
    from index_build.build import BuildOptions, build_index
    from index_build.manifest import load_manifest
    from retriever.encoders import text_tower
    from retriever.paths import index_dir
    from retriever.pipeline import Interrogator, load_indexes
    from retriever.profile import load_profile

    text = (REPO / "retriever" / "profiles" / "lite.toml").read_text()
    text = text.replace('indexes = [{ name = "components-lite", manifest = "components.toml" }]',
                        f'indexes = [{{ name = "swap", manifest = "{write_manifest(tmp_path, "old", SUBJECTS_OLD)}" }}]')
    (tmp_path / "swap.toml").write_text(text)
    profile = load_profile(str(tmp_path / "swap.toml"))
    tower = text_tower(lite_interrogator.retrieval_space)

    def build(name: str, subjects: list[str]):
        manifest = load_manifest(write_manifest(tmp_path, name, subjects))
        return build_index(manifest, tower, index_dir("swap"), BuildOptions(progress=False)).record

    first = build("old", SUBJECTS_OLD)
    it = Interrogator(profile, lite_interrogator.retrieval_space, lite_interrogator.rerank_space,
                      load_indexes(profile, lite_interrogator.retrieval_space), lite_interrogator.regressor)
    return it, build, first


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_reload_under_load_swaps_without_a_failed_request(swap_env):
    it, build, first = swap_env
    image = _small_jpeg()
    stop = threading.Event()
    answers: list[tuple[float, float, int, str, list[str]]] = []  # (sent, answered, status, build id, subjects)

    with LiveServer(create_app(Settings(max_batch_size=8, max_wait_ms=5), it)) as live:
        def client() -> None:
            with httpx.Client(base_url=live.url, timeout=120) as c:
                while not stop.is_set():
                    sent = time.monotonic()
                    r = c.post("/v1/interrogate?top=50", files={"file": ("cat.jpg", image, "image/jpeg")})
                    body = r.json()
                    subjects = [x["text"] for x in body.get("candidates", []) if x["kind"] == "subject"]
                    answers.append((sent, time.monotonic(), r.status_code, body.get("index_ids", {}).get("swap", ""),
                                    subjects))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            with httpx.Client(base_url=live.url, timeout=120) as admin:
                while len(answers) < CLIENTS:
                    time.sleep(0.05)
                second = build("new", SUBJECTS_NEW)  # the rebuild commits while the old build serves
                assert second.build_id != first.build_id
                rss_before, peak = _rss_bytes(), [0]
                sampling = threading.Event()

                def sample() -> None:
                    while not sampling.is_set():
                        peak[0] = max(peak[0], _rss_bytes())
                        time.sleep(0.005)

                sampler = threading.Thread(target=sample)
                sampler.start()
                r = admin.post("/v1/admin/reload")
                swapped = time.monotonic()
                sampling.set()
                sampler.join()
                assert r.status_code == 200, r.text
                assert r.json()["loaded"] == {"swap": second.build_id}
                info = admin.get("/v1/info").json()["indexes"]["swap"]
                assert info["build_id"] == second.build_id and info["load_s"] > 0 and info["loaded_at"] > 0
                metrics = admin.get("/metrics").text
                assert f'unprompt_index_loaded_timestamp_seconds{{build_id="{second.build_id}",index="swap"}}' in metrics
                assert first.build_id not in metrics
                while sum(a[0] > swapped for a in answers) < AFTER:  # all 32 clients still sending
                    time.sleep(0.05)

                # a corrupted rebuild: its FAISS file damaged after the commit, same size
                third = build("third", SUBJECTS_OLD + ["a windmill"])
                from retriever.paths import index_dir

                faiss_file = index_dir("swap") / third.files["index"].path
                data = bytearray(faiss_file.read_bytes())
                data[-64:] = bytes(64)
                faiss_file.write_bytes(bytes(data))
                r = admin.post("/v1/admin/reload")
                refused_at = time.monotonic()
                assert r.status_code == 409 and r.json()["error"]["code"] == "reload_refused", r.text
                assert "SHA-256" in r.json()["error"]["message"]
                assert admin.get("/v1/info").json()["indexes"]["swap"]["build_id"] == second.build_id
                while sum(a[0] > refused_at for a in answers) < AFTER:
                    time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(60)

    assert [a for a in answers if a[2] != 200] == []  # 0 failed requests
    after = [a for a in answers if a[0] > swapped]
    assert after and all(a[3] == second.build_id for a in after)  # right after the swap: the new build answers
    assert all(set(a[4]) <= set(SUBJECTS_NEW) and a[4] for a in after)
    before = [a for a in answers if a[1] < swapped - 1.0]
    assert before and all(a[3] == first.build_id and set(a[4]) <= set(SUBJECTS_OLD) for a in before)
    new_bytes = sum(f.bytes for f in second.files.values())
    print(f"reload under {CLIENTS} clients: {len(answers)} answers, 0 failed; RSS rose {(peak[0] - rss_before) / 2**20:.1f}"
          f" MiB during the reload (new build {new_bytes / 2**20:.2f} MiB on disk)")
    assert peak[0] - rss_before <= new_bytes + 150 * 2**20, (peak[0] - rss_before, new_bytes)


def test_watcher_takes_up_a_commit(swap_env):
    it, build, first = swap_env
    with LiveServer(create_app(Settings(watch_indexes=True, watch_interval_s=0.1), it)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            second = build("new", SUBJECTS_NEW)
            deadline = time.monotonic() + 30
            while c.get("/v1/info").json()["indexes"]["swap"]["build_id"] != second.build_id:
                assert time.monotonic() < deadline, "the watcher did not take up the new build"
                time.sleep(0.05)
            r = c.post("/v1/interrogate", content=CAT, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["index_ids"]["swap"] == second.build_id
