"""Remote sources: Hugging Face datasets, HTTP(S) and object stores, read by polars (object_store) with retries.

* A dataset source (``dataset = "poloclub/diffusiondb"``, ``revision``, ``path``) or an
  ``hf://datasets/<org>/<name>[@<revision>]/<path or glob>`` path is resolved here, through the hub's HTTP API
  at ``$HF_ENDPOINT`` (default https://huggingface.co; huggingface_hub reads the same variable): a glob is
  listed with the tree API, a single file is checked with paths-info, and polars reads the files' ``resolve``
  URLs with Range requests. polars' own ``hf://`` reader is not used: it is hard-wired to
  https://huggingface.co (crates/polars-io/src/path_utils/hugging_face.rs) and reads no endpoint variable, so
  it could neither be pointed at a mirror nor tested; and polars >= 1.36 encodes a revision that is already
  percent-encoded a second time (``refs%252Fconvert%252Fparquet``).
* The revision ``~parquet`` is the hub's alias of ``refs/convert/parquet`` (the dataset viewer's parquet
  conversion); either spelling works, the slashes are encoded once.
* ``https://`` (and ``http://``): polars reads files with HTTP Range requests. A server that ignores Range
  (Python's ``http.server``, many static hosts) is detected with one probe, and its files are downloaded into
  ``$UNPROMPT_HOME/downloads`` first: resumable (a partial file continues where the server allows it, and
  finished files are kept), checksummed (SHA-256 recorded, checked again before a cached file is used). A glob
  is expanded from the server's listing with fsspec's HTTP file system.
* ``s3://``, ``gs://``, ``az://``: polars reads and globs these itself.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from retriever.errors import ManifestError

SCHEMES = ("hf://", "http://", "https://", "s3://", "gs://", "gcs://", "az://", "abfs://")
RETRIES = 5  # object_store retries each request with backoff; downloads resume this many times
ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 60
_CHUNK = 256 << 10  # bytes a read: a killed download loses at most this much


def is_remote(path: str) -> bool:
    return path.startswith(SCHEMES)


def hub_endpoint() -> str:
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class HubPath:
    """A file or glob in a Hugging Face dataset at a revision."""

    repo: str
    revision: str
    path: str

    @property
    def url(self) -> str:
        """The hf:// spelling (slashes in the revision encoded once, as the hf:// grammar needs)."""
        return f"hf://datasets/{self.repo}@{quote(self.revision, safe='~')}/{self.path}"

    def resolve_url(self, file: str) -> str:
        """Where the hub serves a file's bytes (with Range requests; LFS files redirect to its CDN)."""
        return f"{hub_endpoint()}/datasets/{self.repo}/resolve/{quote(self.revision, safe='~')}/{quote(file)}"


_HF_URL = re.compile(r"hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.*)")


def parse_hf_url(url: str, source_name: str) -> HubPath:
    """``hf://datasets/<org>/<name>[@<revision>]/<path>``; a revision with slashes is written encoded
    (``refs%2Fconvert%2Fparquet``) or as ``~parquet``."""
    m = _HF_URL.fullmatch(url)
    if not m or not m.group("path"):
        raise ManifestError(f"source {source_name!r}: {url} is not hf://datasets/<org>/<name>[@<revision>]/<path>")
    return HubPath(m.group("repo"), unquote(m.group("rev") or "main"), m.group("path"))


def dataset_url(repo: str, revision: str, path: str) -> str:
    """hf:// URL of a file (or glob) in a dataset at a revision."""
    return HubPath(repo, revision, path.lstrip("/")).url


def storage_options(path: str) -> dict[str, Any] | None:
    return {"max_retries": RETRIES} if is_remote(path) else None


def _hub_error(exc: Exception, where: HubPath, source_name: str) -> ManifestError:
    from huggingface_hub import errors

    what = f"source {source_name!r}: {where.url}"
    if isinstance(exc, errors.RepositoryNotFoundError):
        why = f"no dataset {where.repo} on {hub_endpoint()} (or it is private or disabled)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        why = f"dataset {where.repo} has no revision {where.revision!r}"
    elif isinstance(exc, errors.GatedRepoError):
        why = f"dataset {where.repo} is gated: accept its terms on the hub and set HF_TOKEN"
    elif isinstance(exc, errors.EntryNotFoundError):
        why = f"no folder {where.path.rsplit('/', 1)[0]!r} in {where.repo}@{where.revision}"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        why = f"cannot reach the hub at {hub_endpoint()} ({exc.__class__.__name__}: {first})"
    return ManifestError(f"{what}: {why}")


def hub_files(where: HubPath, source_name: str) -> list[tuple[str, int]]:
    """(path, size) of every file the path or glob names, sorted; a clear error when there is none."""
    from fsspec.utils import glob_translate
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=hub_endpoint())
    try:
        if globmod.has_magic(where.path):
            parts = where.path.split("/")
            fixed = next(i for i, p in enumerate(parts) if globmod.has_magic(p))
            prefix = "/".join(parts[:fixed]) or None
            pattern = re.compile(glob_translate(where.path))
            entries = api.list_repo_tree(where.repo, prefix, recursive=True, revision=where.revision,
                                         repo_type="dataset")
            found = [(e.path, e.size) for e in entries if isinstance(e, RepoFile) and pattern.match(e.path)]
        else:
            infos = api.get_paths_info(where.repo, [where.path], revision=where.revision, repo_type="dataset")
            found = [(e.path, e.size) for e in infos if isinstance(e, RepoFile)]
            if not found and infos:  # a folder: every file under it
                entries = api.list_repo_tree(where.repo, where.path, recursive=True, revision=where.revision,
                                             repo_type="dataset")
                found = [(e.path, e.size) for e in entries if isinstance(e, RepoFile)]
    except Exception as exc:  # huggingface_hub's errors, httpx's connection errors
        raise _hub_error(exc, where, source_name) from None
    if not found:
        raise ManifestError(f"source {source_name!r}: no files match {where.path} in dataset "
                            f"{where.repo}@{where.revision}")
    return sorted(found)


def accepts_ranges(url: str, source_name: str) -> bool:
    """Whether the server answers a Range request with 206 (partial content); one small probe."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status == 206
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # an empty file: nothing to range over, nothing lost by downloading it
            return False
        raise ManifestError(f"source {source_name!r}: {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ManifestError(f"source {source_name!r}: cannot reach {url} ({reason})") from None


def downloads_dir() -> Path:
    from retriever.paths import home

    return home() / "downloads"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_download(url: str, source_name: str, root: Path | None = None) -> Path:
    """The file at ``url`` in the download cache, fetched if needed. A finished file has a ``.sha256`` record
    beside it and is checked against it before use; a killed download leaves ``<name>.part``, continued with a
    Range request where the server honours one, else started again; a short or failed transfer is retried."""
    root = root or downloads_dir()
    name = re.sub(r"[^\w.-]", "_", unquote(url.rstrip("/").rsplit("/", 1)[-1].split("?")[0])).lstrip(".") or "file"
    folder = root / hashlib.sha256(url.encode()).hexdigest()[:16]
    dest, record = folder / name, folder / f"{name}.sha256"
    if dest.is_file() and record.is_file():
        if _sha256_file(dest) == record.read_text().split()[0]:
            return dest
        dest.unlink()  # damaged in the cache: fetch it again
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{name}.part"
    last_error = ""
    for _ in range(RETRIES):
        try:
            digest = _fetch(url, part)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise ManifestError(f"source {source_name!r}: {url}: HTTP {exc.code} {exc.reason}") from None
            last_error = f"{exc.__class__.__name__}: {getattr(exc, 'reason', exc)}"
            continue
        record.write_text(f"{digest}  {part.stat().st_size}\n")
        os.replace(part, dest)
        return dest
    raise ManifestError(f"source {source_name!r}: cannot download {url} after {RETRIES} tries ({last_error}); "
                        f"run again to resume")


def _fetch(url: str, part: Path) -> str:
    """Append the rest of ``url`` to ``part`` (all of it when the server ignores the Range); the SHA-256 of
    the whole file. ValueError when the transfer ends short of the announced length."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
        resumed = have and response.status == 206
        digest = hashlib.sha256()
        if resumed:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(block)
        expected = response.headers.get("Content-Length")
        got = 0
        with open(part, "ab" if resumed else "wb") as out:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
                got += len(block)
            out.flush()
            os.fsync(out.fileno())
    if expected is not None and got != int(expected):
        raise ValueError(f"got {got} of {expected} bytes")
    return digest.hexdigest()


def _http_glob(url: str, source_name: str) -> list[str]:
    import fsspec

    try:
        found = sorted(fsspec.filesystem("http").glob(url))
    except Exception as exc:  # aiohttp and fsspec raise many types for an unreachable or odd server
        raise ManifestError(f"source {source_name!r}: cannot list {url} ({exc.__class__.__name__}: {exc})") from None
    if not found:
        raise ManifestError(f"source {source_name!r}: no files match {url}")
    return found


def expand(url: str, source_name: str) -> list[str]:
    """What polars reads for a remote path: hub files as resolve URLs; HTTP(S) files (a glob listed first) as
    URLs, or as local copies when the server ignores Range; object-store paths as they are."""
    if url.startswith("hf://"):
        where = parse_hf_url(url, source_name)
        return [where.resolve_url(path) for path, _ in hub_files(where, source_name)]
    if not url.startswith(("http://", "https://")):
        return [url]
    urls = _http_glob(url, source_name) if globmod.has_magic(url) else [url]
    if accepts_ranges(urls[0], source_name):
        return urls
    return [str(cached_download(u, source_name)) for u in urls]
