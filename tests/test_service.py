import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from api.app import create_app
from api.settings import Settings
from conftest import EXAMPLES
from server import LiveServer

CAT = (EXAMPLES / "cat.jpg").read_bytes()
COFFEE = (EXAMPLES / "coffee.jpg").read_bytes()


def png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(lite_interrogator):
    settings = Settings(max_upload_bytes=2_000_000, max_pixels=4_000_000, max_batch_size=16, max_wait_ms=20)
    with LiveServer(create_app(settings, lite_interrogator)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_health_ready_info_metrics_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/info").json()
    assert info["profile"]["name"] == "lite" and "components-lite" in info["indexes"]
    assert info["indexes"]["components-lite"]["count"] > 100_000 and info["models"]["metric"].endswith("all-MiniLM-L6-v2")
    threads = info["threads"]  # the plan in force (retriever/threads.py) and what torch runs with
    assert 1 <= threads["intra_op"] <= threads["usable"] or threads["source"] != "auto"
    assert threads["torch_intra_op"] >= 1 and threads["inter_op"] == 1
    assert threads["decode_workers_running"] == max(2, threads["decode"])  # the plan's share, at least 2
    assert info["runtimes"] == {"retrieval": "onnx", "rerank": "onnx", "metric": "onnx"}  # the exports' runtime
    assert "unprompt_requests_total" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/interrogate", "/v1/interrogate/batch", "/v1/info", "/healthz", "/readyz"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "Drag images here" in page.text


def test_interrogate_multipart_and_raw(client):
    r = client.post("/v1/interrogate", files={"file": ("cat.jpg", CAT, "image/jpeg")}, params={"embedding": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "cat" in body["prompt"].lower() and len(body["embedding"]) == 384
    assert body["candidates"] and {"image_encode", "retrieve", "rerank", "assemble", "blend"} <= set(body["timings_ms"])
    assert body["index_ids"]["components-lite"] and body["models"]["retrieval"].startswith("bridge:")
    r = client.post("/v1/interrogate", content=COFFEE, headers={"content-type": "image/jpeg"}, params={"top": 3})
    assert r.status_code == 200
    body = r.json()
    assert any(w in body["prompt"].lower() for w in ("coffee", "espresso", "cup"))
    assert len(body["candidates"]) == 3 and "embedding" not in body


def test_batch_with_a_bad_item(client):
    files = [("files", ("cat.jpg", CAT, "image/jpeg")), ("files", ("junk.png", b"not an image", "image/png")),
             ("files", ("coffee.jpg", COFFEE, "image/jpeg"))]
    r = client.post("/v1/interrogate/batch", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["cat.jpg", "junk.png", "coffee.jpg"]
    assert "cat" in results[0]["result"]["prompt"].lower()
    assert results[1]["error"]["status"] == 415 and "result" not in results[1]
    assert results[2]["result"]["prompt"]


BIG = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"files": {"file": ("big.png", png(Image.fromarray(BIG)), "image/png")}}, 413, "too_large"),
        ({"content": png(Image.new("L", (3000, 3000))), "headers": {"content-type": "image/png"}}, 413, "too_many_pixels"),
        ({"files": {"file": ("notes.txt", b"hello, plain text", "text/plain")}}, 415, "not_image"),
        ({"files": {"file": ("cut.jpg", CAT[: len(CAT) // 2], "image/jpeg")}}, 400, "corrupt"),
        ({"files": {"file": ("empty.jpg", b"", "image/jpeg")}}, 400, "empty"),
        ({"content": CAT, "headers": {"content-type": "text/plain"}}, 415, "content_type"),
        ({"content": CAT, "headers": {}}, 415, "content_type"),
        ({"data": {"note": "a url-encoded form, not an image"}}, 415, "content_type"),
        ({"files": [("file", ("a.jpg", CAT, "image/jpeg")), ("file", ("b.jpg", CAT, "image/jpeg"))]}, 413, "too_many_files"),
        ({"params": {"top": "-4"}, "content": CAT, "headers": {"content-type": "image/jpeg"}}, 422, "invalid_request"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, kwargs, status, code):
    r = client.post("/v1/interrogate", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200


def test_multipart_without_a_file_part_is_422(client):
    r = client.post("/v1/interrogate", files={"note": (None, "just a field")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_file"
    assert "the field 'file')" in r.json()["error"]["message"]
    r = client.post("/v1/interrogate/batch", files={"note": (None, "just a field")})
    assert r.status_code == 422 and "the field 'files', one part per image" in r.json()["error"]["message"]


def _gif() -> bytes:
    frames = [Image.open(io.BytesIO(CAT)).convert("RGB"), Image.new("RGB", (320, 213), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _sixteen_bit() -> bytes:
    grey = np.asarray(Image.open(io.BytesIO(CAT)).convert("L"), dtype=np.uint16) * 257
    return png(Image.fromarray(grey))


@pytest.mark.parametrize(
    "name, data",
    [
        ("animated.gif", _gif()),
        ("cmyk.jpg", png(Image.open(io.BytesIO(CAT)).convert("CMYK"), "JPEG")),
        ("grey16.png", _sixteen_bit()),
        ("alpha.png", png(Image.open(io.BytesIO(CAT)).convert("RGBA"))),
    ],
)
def test_unusual_modes_are_converted_not_refused(client, name, data):
    r = client.post("/v1/interrogate", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    if name != "grey16.png":  # colour survives: the cat is still a cat
        assert "cat" in r.json()["prompt"].lower()


def _batch_sizes(client) -> tuple[float, float]:
    lines = client.get("/metrics").text.splitlines()
    value = lambda key: float(next(l.split()[-1] for l in lines if l.startswith(key)))
    return value("unprompt_batch_size_count"), value("unprompt_batch_size_sum")


def test_fifty_concurrent_requests_are_batched(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        batches_before, images_before = _batch_sizes(c)

    def one(i: int) -> str:
        data = CAT if i % 2 else COFFEE
        with httpx.Client(base_url=server.url, timeout=120) as c:
            r = c.post("/v1/interrogate", files={"file": (f"{i}.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            return r.json()["prompt"].lower()

    with ThreadPoolExecutor(50) as pool:
        prompts = list(pool.map(one, range(50)))
    for i, p in enumerate(prompts):
        assert ("cat" in p) if i % 2 else any(w in p for w in ("coffee", "espresso", "cup")), (i, p)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        batches, images = _batch_sizes(c)
        metrics = c.get("/metrics").text
    assert images - images_before == 50
    assert batches - batches_before < 50  # some batches held more than one image
    assert 'unprompt_batch_size_bucket{le="1.0"}' in metrics
    assert 'unprompt_stage_seconds_count{stage="image_encode"}' in metrics


def test_api_key_on_and_off(lite_interrogator, client):
    assert client.post("/v1/interrogate", content=CAT, headers={"content-type": "image/jpeg"}).status_code == 200
    with LiveServer(create_app(Settings(api_key="s3cret"), lite_interrogator)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            r = c.post("/v1/interrogate", content=CAT, headers={"content-type": "image/jpeg"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert c.get("/v1/info").status_code == 401
            assert c.post("/v1/interrogate", content=CAT,
                          headers={"content-type": "image/jpeg", "x-api-key": "wrong"}).status_code == 401
            assert c.post("/v1/interrogate", content=CAT,
                          headers={"content-type": "image/jpeg", "x-api-key": "s3cret"}).status_code == 200
            assert c.post("/v1/interrogate", content=CAT,
                          headers={"content-type": "image/jpeg", "authorization": "Bearer s3cret"}).status_code == 200
            assert c.get("/healthz").status_code == 200  # probes stay open


def test_cors_when_configured(lite_interrogator):
    with LiveServer(create_app(Settings(cors_origins=["https://example.org"]), lite_interrogator)) as live:
        r = httpx.options(f"{live.url}/v1/interrogate", headers={
            "origin": "https://example.org", "access-control-request-method": "POST"})
        assert r.headers.get("access-control-allow-origin") == "https://example.org"


