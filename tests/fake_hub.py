"""A loopback stand-in for the Hugging Face hub's dataset endpoints, serving small files under the real repo
names, revisions, file layouts and column names of the production manifests.

Endpoints answered (as huggingface_hub 2.x calls them, hf_api.py, and as the hub documents them):

* ``GET  /api/datasets/<repo>/tree/<revision>[/<path>]?recursive=..&expand=..``: JSON list of
  ``{"type": "file"|"directory", "oid", "size", "path"[, "lfs"]}``, paginated with a ``Link: <...>; rel="next"``
  header (``PAGE`` entries a page);
* ``POST /api/datasets/<repo>/paths-info/<revision>`` (form ``paths=..``): the entries that exist;
* ``HEAD|GET /datasets/<repo>/resolve/<revision>/<path>``: the bytes, with Range (206); LFS files (parquet,
  zip) answer 302 to ``/cdn/<sha256>`` as the hub redirects to its CDN, which serves them with Range.

A revision is a branch, a commit, or the conversion ``refs/convert/parquet``, also spelled ``~parquet``.
Unknown repos, revisions and files answer 404 with the hub's ``X-Error-Code`` (RepoNotFound,
RevisionNotFound, EntryNotFound), which huggingface_hub turns into its typed errors. Every request is
recorded in ``requests`` as (method, path with query, Range header)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

import polars as pl

PAGE = 50
CONVERSION = "refs/convert/parquet"
ALIASES = {"~parquet": CONVERSION}
LFS_SUFFIXES = (".parquet", ".zip")


@dataclass
class Repo:
    revisions: dict[str, dict[str, bytes]] = field(default_factory=dict)  # revision -> path -> bytes

    def add(self, revisions: tuple[str, ...], path: str, data: bytes) -> None:
        for rev in revisions:
            self.revisions.setdefault(rev, {})[path] = data


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._blobs: dict[str, bytes] = {}
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, repo: str, path: str, data: bytes, revisions: tuple[str, ...] = ("main",)) -> None:
        self.repos.setdefault(repo, Repo()).add(revisions, path, data)
        self._blobs[hashlib.sha256(data).hexdigest()] = data

    def add_parquet(self, repo: str, path: str, frame: pl.DataFrame, revisions: tuple[str, ...] = ("main",)) -> None:
        buf = io.BytesIO()
        frame.write_parquet(buf)
        self.add(repo, path, buf.getvalue(), revisions)

    def files(self, repo: str, revision: str) -> dict[str, bytes] | None:
        r = self.repos.get(repo)
        return None if r is None else r.revisions.get(ALIASES.get(revision, revision))

    def bytes_served(self, path_part: str) -> int:
        return sum(n for p, n in self._served if path_part in p)

    def __enter__(self) -> "FakeHub":
        self._served: list[tuple[str, int]] = []
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_TREE = re.compile(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?")
_PATHS_INFO = re.compile(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)")
_RESOLVE = re.compile(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
_CDN = re.compile(r"/cdn/([0-9a-f]{64})")


def _entry(path: str, data: bytes) -> dict:
    oid = hashlib.sha1(data).hexdigest()
    entry = {"type": "file", "oid": oid, "size": len(data), "path": path}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _folders(paths) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _record(self) -> None:
        self.hub.requests.append((self.command, self.path, self.headers.get("Range")))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
            self.hub._served.append((self.path, len(body)))

    def _error(self, code: str, message: str, head: bool = False) -> None:
        self._send(404, json.dumps({"error": message}).encode(),
                   {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, head)

    def _lookup(self, repo: str, revision: str, head: bool = False) -> dict[str, bytes] | None:
        if repo not in self.hub.repos:
            self._error("RepoNotFound", "Repository not found", head)
            return None
        files = self.hub.files(repo, unquote(revision))
        if files is None:
            self._error("RevisionNotFound", "Invalid rev id", head)
        return files

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._record()
        self._get(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._record()
        self._get(head=True)

    def _get(self, head: bool) -> None:
        url = urlsplit(self.path)
        if m := _TREE.fullmatch(url.path):
            return self._tree(m.group(1), m.group(2), unquote(m.group(3) or ""), parse_qs(url.query))
        if m := _RESOLVE.fullmatch(url.path):
            return self._resolve(m.group(1), m.group(2), unquote(m.group(3)), head)
        if m := _CDN.fullmatch(url.path):
            data = self.hub._blobs.get(m.group(1))
            if data is None:
                return self._send(404, b"", head=head)
            return self._bytes(data, head)
        self._send(404, b"not found", head=head)

    def do_POST(self) -> None:  # noqa: N802
        self._record()
        m = _PATHS_INFO.fullmatch(urlsplit(self.path).path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if not m:
            return self._send(404, b"not found")
        files = self._lookup(m.group(1), m.group(2))
        if files is None:
            return
        wanted = parse_qs(body).get("paths", [])
        if not wanted and body.startswith("{"):
            wanted = json.loads(body).get("paths", [])
        folders = _folders(files)
        out = [_entry(p, files[p]) for p in wanted if p in files]
        out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": p} for p in wanted if p in folders]
        self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"})

    def _tree(self, repo: str, revision: str, prefix: str, query: dict) -> None:
        files = self._lookup(repo, revision)
        if files is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        under = [p for p in sorted(files) if not prefix or p.startswith(prefix.rstrip("/") + "/")]
        if prefix and not under and prefix not in files:
            return self._error("EntryNotFound", f"{prefix} does not exist on {revision}")
        base = prefix.rstrip("/") + "/" if prefix else ""
        entries = []
        for folder in sorted(f for f in _folders(under) if f.startswith(base) and f != prefix.rstrip("/")):
            if recursive or "/" not in folder[len(base):]:
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
        for p in under:
            if recursive or "/" not in p[len(base):]:
                entries.append(_entry(p, files[p]))
        start = int(query.get("cursor", ["0"])[0])
        page, headers = entries[start:start + PAGE], {"Content-Type": "application/json"}
        if start + PAGE < len(entries):
            nxt = f"{self.hub.url}{urlsplit(self.path).path}?recursive={str(recursive).lower()}&cursor={start + PAGE}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._send(200, json.dumps(page).encode(), headers)

    def _resolve(self, repo: str, revision: str, path: str, head: bool) -> None:
        files = self._lookup(repo, revision, head)
        if files is None:
            return
        data = files.get(path)
        if data is None:
            return self._error("EntryNotFound", f"{path} does not exist", head)
        if path.endswith(LFS_SUFFIXES):  # the hub sends LFS files to its CDN
            return self._send(302, b"", {"Location": f"{self.hub.url}/cdn/{hashlib.sha256(data).hexdigest()}",
                                         "X-Linked-Size": str(len(data))}, head)
        self._bytes(data, head)

    def _bytes(self, data: bytes, head: bool) -> None:
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not m:
            return self._send(200, data, headers, head)
        size = len(data)
        if m.group(1):
            start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
        else:
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size:
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"}, head)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, data[start:end + 1], headers, head)


# ---- the production layout -------------------------------------------------------------------------------
# Each entry is written from the publisher's own files (not from data_manifests/), so a manifest that names a
# wrong repo, revision, path or column fails against it:
#   poloclub/diffusiondb: scripts/diffusiondb.py (github poloclub/diffusiondb) and the dataset card: top-level
#     metadata.parquet (2M) and metadata-large.parquet (14M), columns image_name, prompt, part_id, seed, step,
#     cfg, sampler, width, height, user_name, timestamp, image_nsfw, prompt_nsfw; images/part-000001.zip ..
#     part-002000.zip, each 1,000 PNGs and part-<id>.json {image name: {p, se, c, st, sa}}; tree b8d0f99b.
#   google-research-datasets/conceptual_captions: commit 0bb028f2 ("Upload dataset + remove script"):
#     unlabeled/train-0000{0,1}-of-00002.parquet, unlabeled/validation-00000-of-00001.parquet; image_url, caption.
#   phiyodr/coco2017: README dataset_info (commit 036f3f82): data/train-00000-of-00001-0084e041f1902997.parquet,
#     columns license, file_name, coco_url, height, width, date_captured, flickr_url, image_id, ids, captions
#     (a list of strings).
#   kakaobrain/coyo-700m: commit 54ee2d8c ("COYO-700M v1.0.0"): data/part-000NN-17da4908-939c-46e5-91d0-
#     15f256041956-c000.snappy.parquet (128 parts), columns per kakaobrain/coyo-dataset README: id, url, text, ...

DIFFUSIONDB = "poloclub/diffusiondb"
DIFFUSIONDB_REV = "b8d0f99b3a58f59185e5d8a827c753d5ca5de340"
CC3M, CC3M_REV = "google-research-datasets/conceptual_captions", "0bb028f274446e0b102c1253d087a98eeb4519a3"
COCO, COCO_REV = "phiyodr/coco2017", "036f3f8291db64d17faad9b09e59dd30bb65c4d7"
COYO, COYO_REV = "kakaobrain/coyo-700m", "54ee2d8c64d3d80a5e10ef6952a4466551834fc1"
STYLES = ["oil painting", "digital art", "trending on artstation", "highly detailed", "by greg rutkowski",
          "octane render", "concept art", "studio ghibli", "4k", "watercolor"]
SUBJECTS = ["a castle", "a cat", "a robot", "a forest", "an astronaut", "a dragon", "a ship", "a city at night"]


def _prompts(n: int, salt: int) -> list[str]:
    return [f"{SUBJECTS[(i + salt) % len(SUBJECTS)]} number {salt}-{i}, {STYLES[i % len(STYLES)]}, "
            f"{STYLES[(i * 3 + salt) % len(STYLES)]}" for i in range(n)]


def _diffusiondb_meta(n: int, salt: int) -> pl.DataFrame:
    return pl.DataFrame({
        "image_name": [f"{salt:08x}-{i:04d}.png" for i in range(n)], "prompt": _prompts(n, salt),
        "part_id": [1 + i // 1000 for i in range(n)], "seed": list(range(n)), "step": [50] * n,
        "cfg": [7.0] * n, "sampler": [8] * n, "width": [512] * n, "height": [512] * n,
        "user_name": ["u"] * n, "timestamp": [None] * n, "image_nsfw": [0.1] * n, "prompt_nsfw": [0.01] * n,
    }, schema_overrides={"part_id": pl.UInt16, "seed": pl.UInt32, "step": pl.UInt16, "cfg": pl.Float32,
                         "sampler": pl.UInt8, "width": pl.UInt16, "height": pl.UInt16,
                         "timestamp": pl.Datetime("us", "UTC"), "image_nsfw": pl.Float32, "prompt_nsfw": pl.Float32})


def diffusiondb_part(part: int, n: int = 4, size: int = 16, bad: bool = False) -> bytes:
    """A DiffusionDB image part: PNGs and part-<id>.json mapping each image name to its prompt and settings."""
    from PIL import Image

    buf, prompts = io.BytesIO(), {}
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(n):
            name = f"{uuid.UUID(int=part * 100_000 + i)}.png"  # the 2M parts name images by UUID
            img = io.BytesIO()
            Image.new("RGB", (size, size), ((part * 37 + i * 50) % 256, (i * 80) % 256, 90)).save(img, "PNG")
            z.writestr(name, b"not a png" if bad and i == 0 else img.getvalue())
            prompts[name] = {"p": _prompts(n, part)[i], "se": i, "c": 7, "st": 50, "sa": "k_lms"}
        z.writestr(f"part-{part:06d}.json", json.dumps(prompts))
    return buf.getvalue()


def add_production_layout(hub: FakeHub, rows: int = 40) -> None:
    both = ("main", DIFFUSIONDB_REV)
    hub.add_parquet(DIFFUSIONDB, "metadata.parquet", _diffusiondb_meta(rows, 1), both)
    hub.add_parquet(DIFFUSIONDB, "metadata-large.parquet", _diffusiondb_meta(rows, 2), both)
    for part in (1, 2, 3):
        hub.add(DIFFUSIONDB, f"images/part-{part:06d}.zip", diffusiondb_part(part), both)
    hub.add(DIFFUSIONDB, "diffusiondb-large-part-1/part-000001.zip", diffusiondb_part(1), both)
    hub.add(DIFFUSIONDB, "README.md", b"# DiffusionDB\n", both)
    both = ("main", CC3M_REV)
    for i in range(2):
        hub.add_parquet(CC3M, f"unlabeled/train-{i:05d}-of-00002.parquet", pl.DataFrame({
            "image_url": [f"http://img/{i}/{j}.jpg" for j in range(rows)],
            "caption": [f"actor attends the premiere of a film {i}-{j}" for j in range(rows)]}), both)
    hub.add_parquet(CC3M, "unlabeled/validation-00000-of-00001.parquet",
                    pl.DataFrame({"image_url": ["http://img/v.jpg"], "caption": ["validation caption"]}), both)
    hub.add_parquet(CC3M, "labeled/train-00000-of-00003.parquet", pl.DataFrame({
        "image_url": ["u"], "caption": ["labeled caption"], "labels": [["a"]], "MIDs": [["/m/x"]],
        "confidence_scores": [[0.9]]}), both)
    both = ("main", COCO_REV)
    hub.add_parquet(COCO, "data/train-00000-of-00001-0084e041f1902997.parquet", pl.DataFrame({
        "license": [1] * rows, "file_name": [f"{j:012d}.jpg" for j in range(rows)],
        "coco_url": ["http://images.cocodataset.org/x.jpg"] * rows, "height": [480] * rows, "width": [640] * rows,
        "date_captured": ["2013-11-14 16:28:13"] * rows, "flickr_url": ["http://farm.x"] * rows,
        "image_id": list(range(rows)), "ids": [[j * 5 + k for k in range(5)] for j in range(rows)],
        "captions": [[f"a man riding a bike down street {j} view {k}" for k in range(5)] for j in range(rows)]}),
        both)
    hub.add_parquet(COCO, "data/validation-00000-of-00001-e3c37e369512a3aa.parquet", pl.DataFrame({
        "image_id": [1], "captions": [["a validation caption"]]}), both)
    both = ("main", COYO_REV)
    for part in range(3):
        hub.add_parquet(COYO, f"data/part-{part:05d}-17da4908-939c-46e5-91d0-15f256041956-c000.snappy.parquet",
                        pl.DataFrame({"id": list(range(rows)), "url": ["http://x.jpg"] * rows,
                                      "text": [f"Fishing Fleet painting {part}-{j} art print" for j in range(rows)],
                                      "width": [600] * rows, "height": [400] * rows,
                                      "clip_similarity_vitl14": [0.25] * rows}), both)
    hub.add(COYO, "data/_SUCCESS", b"", both)


def resolve_path(repo: str, revision: str, path: str) -> str:
    return f"/datasets/{repo}/resolve/{quote(revision, safe='~')}/{quote(path)}"
