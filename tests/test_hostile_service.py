"""Hostile input against the HTTP service: no 5xx for bad bytes, one error shape, no harm to other requests."""

import asyncio
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from api.app import create_app
from api.batcher import MicroBatcher
from api.settings import Settings
from conftest import EXAMPLES
from hostile_images import mutations, wide_png
from server import LiveServer

CAT = (EXAMPLES / "cat.jpg").read_bytes()
COFFEE = (EXAMPLES / "coffee.jpg").read_bytes()
ROCKET = (EXAMPLES / "rocket.jpg").read_bytes()


def assert_error_shape(r: httpx.Response, status: int | None = None) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    if status is not None:
        assert r.status_code == status, r.text
    return body["error"]


@pytest.fixture(scope="module")
def live(lite_interrogator):
    settings = Settings(max_batch_size=8, max_wait_ms=300)
    with LiveServer(create_app(settings, lite_interrogator)) as server:
        yield server


def test_fuzzed_images_never_cost_a_5xx(live):
    """Seeded mutations of PNG (SD text chunks), JPEG and WebP (EXIF, ICC) and GIF: 200 or a 4xx in the shape."""
    statuses = {}
    with httpx.Client(base_url=live.url, timeout=60) as c:
        for name, data in mutations():
            r = c.post("/v1/interrogate", files={"file": (name, data, "application/octet-stream")})
            statuses[name] = r.status_code
            assert r.status_code < 500, (name, r.text)
            if r.status_code != 200:
                assert_error_shape(r)
            else:
                assert r.json()["prompt"]
        batch = [("files", (name, data, "image/png")) for name, data in mutations()[:32]]
        r = c.post("/v1/interrogate/batch", files=batch)
        assert r.status_code == 200 and len(r.json()["results"]) == 32
        assert c.get("/healthz").status_code == 200
    assert sum(s == 200 for s in statuses.values()) > 20 and sum(400 <= s < 500 for s in statuses.values()) > 150


def test_the_200000x1_png_fails_alone_and_its_batch_neighbours_succeed(live):
    def post(name_data):
        name, data = name_data
        with httpx.Client(base_url=live.url, timeout=60) as c:
            return name, c.post("/v1/interrogate", files={"file": (name, data, "image/png")})

    with ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(post, [("cat.jpg", CAT), ("wide.png", wide_png()), ("coffee.jpg", COFFEE),
                                       ("rocket.jpg", ROCKET)]))
    assert assert_error_shape(results["wide.png"], 400)["code"] == "bad_shape"
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        assert results[name].status_code == 200, results[name].text


class _FailsOnMarker:
    """The real interrogator, except that a batch holding a 13x7 image raises what a huge image would."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def interrogate_batch(self, images, mode=None, flavours=None):
        if any(im.image.size == (13, 7) for im in images):  # the service hands on ImageWithMetadata
            raise MemoryError("simulated: the image needs 40 GB")
        return self.real.interrogate_batch(images, mode, flavours)


def test_a_failing_micro_batch_is_retried_image_by_image(lite_interrogator):
    marker = io.BytesIO()
    Image.new("RGB", (13, 7), (200, 10, 10)).save(marker, "PNG")
    settings = Settings(max_batch_size=8, max_wait_ms=500)
    app = create_app(settings, _FailsOnMarker(lite_interrogator))
    with LiveServer(app) as server:
        def post(data):
            with httpx.Client(base_url=server.url, timeout=60) as c:
                return c.post("/v1/interrogate", content=data, headers={"content-type": "image/png"})

        with ThreadPoolExecutor(4) as pool:
            cat, bad, coffee, rocket = pool.map(post, [CAT, marker.getvalue(), COFFEE, ROCKET])
        metrics = httpx.get(server.url + "/metrics").text
    assert assert_error_shape(bad, 413)["code"] == "too_large"
    assert cat.status_code == coffee.status_code == rocket.status_code == 200
    assert "cat" in cat.json()["prompt"].lower()
    assert 'unprompt_requests_total{endpoint="/v1/interrogate",status="413"} 1.0' in metrics


def test_batcher_retry_keeps_order_and_isolates_the_failure():
    def run(items, options):
        if "bad" in items:
            raise ValueError("boom")
        return [f"ok:{x}" for x in items]

    async def scenario():
        sizes = []
        batcher = MicroBatcher(run, max_batch_size=8, max_wait_ms=200, on_batch=sizes.append)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(x) for x in ["a", "bad", "b", "c"]), return_exceptions=True)
        await batcher.stop()
        return out, sizes

    out, sizes = asyncio.run(scenario())
    assert out[0] == "ok:a" and out[2] == "ok:b" and out[3] == "ok:c"
    assert isinstance(out[1], ValueError) and sizes[0] == 4  # one batch of four, then each alone


def _peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def test_a_16_bit_7000x7000_png_costs_under_300_mb(live):
    arr = np.zeros((7000, 7000), np.uint16)
    arr[::7, ::3] = 40000
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    data = buf.getvalue()
    del arr
    assert len(data) < 200_000
    try:
        with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS
            f.write("5")
    except OSError:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    before = _peak_rss_kb()
    t = time.perf_counter()
    r = httpx.post(live.url + "/v1/interrogate", content=data, headers={"content-type": "image/png"}, timeout=60)
    seconds = time.perf_counter() - t
    grown_mb = (_peak_rss_kb() - before) / 1024
    assert r.status_code == 200, r.text
    print(f"16-bit 7000x7000 upload: peak RSS +{grown_mb:.0f} MB in {seconds:.2f} s")
    assert grown_mb < 300, grown_mb
    assert seconds < 4, seconds


def test_every_error_has_one_shape_and_every_response_is_counted(lite_interrogator):
    class Broken:
        def __getattr__(self, name):
            return getattr(lite_interrogator, name)

        def interrogate_batch(self, images, mode=None, flavours=None):
            raise RuntimeError("a bug, not bad input")

    with LiveServer(create_app(Settings(), Broken())) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        assert assert_error_shape(c.get("/no/such/page"), 404)["code"] == "not_found"
        assert assert_error_shape(c.get("/v1/interrogate"), 405)["code"] == "method_not_allowed"
        broken_multipart = c.post("/v1/interrogate", content=b"--xyz\r\nContent-Disposition: form-data; name=\"f",
                                  headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert 400 <= broken_multipart.status_code < 500
        assert_error_shape(broken_multipart)
        internal = c.post("/v1/interrogate", content=CAT, headers={"content-type": "image/jpeg"})
        assert assert_error_shape(internal, 500)["code"] == "internal"
        assert "Traceback" not in internal.text and internal.headers["x-request-id"]
        metrics = c.get("/metrics").text
    for line in ('endpoint="unmatched",status="404"', 'endpoint="/v1/interrogate",status="405"',
                 'endpoint="/v1/interrogate",status="500"', 'unprompt_errors_total{reason="internal"} 1.0'):
        assert line in metrics, line


def test_an_empty_api_key_is_refused_at_start_up():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set but empty"):
        Settings(api_key="")
    from conftest import run_cli

    res = run_cli("serve", env={"UNPROMPT_API_KEY": ""})
    assert res.returncode == 2 and "UNPROMPT_API_KEY is set but empty" in res.stderr and "Traceback" not in res.stderr


def test_a_port_in_use_is_refused_before_anything_loads(monkeypatch, capsys):
    import socket

    from conftest import run_cli
    from retriever.pipeline import Interrogator

    def no_load(*args, **kwargs):
        raise AssertionError("the models were loaded before the port was bound")

    monkeypatch.setattr(Interrogator, "from_profile", no_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("serve", "--port", str(port))
    assert res.returncode == 2 and res.stdout == "" and "ready" not in capsys.readouterr().err
    assert res.stderr == f"unprompt: error: cannot listen on 127.0.0.1:{port}: the port is already in use\n"
    res = run_cli("serve", "--host", "no-such-host.invalid", "--port", "8000")
    assert res.returncode == 2 and "does not resolve" in res.stderr and "Traceback" not in res.stderr


def test_a_stalled_upload_does_not_hold_shutdown(lite_interrogator):
    server = LiveServer(create_app(Settings(), lite_interrogator), timeout_graceful_shutdown=1)
    with server:
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(b"POST /v1/interrogate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        b"Content-Length: 1000000\r\n\r\n" + b"\x89PNG" * 100)
        time.sleep(0.3)
        t = time.perf_counter()
        server.server.should_exit = True
        server.thread.join(15)
        took = time.perf_counter() - t
        stalled.close()
    assert not server.thread.is_alive() and took < 5, took
