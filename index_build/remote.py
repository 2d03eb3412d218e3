"""Remote sources: Hugging Face datasets, HTTP(S) and object stores, read by polars (object_store) with retries.

* ``hf://datasets/<repo>[@<revision>]/<path or glob>``, ``s3://``, ``gs://``, ``az://``: polars reads and globs
  these itself.
* ``https://`` (and ``http://``): polars reads single files with HTTP Range requests; a glob is expanded first
  from the server's listing with fsspec's HTTP file system.
* A source may name a Hugging Face dataset and revision instead of a path: ``dataset = "poloclub/diffusiondb"``,
  ``revision = "main"``, ``path = "metadata.parquet"``.
"""

from __future__ import annotations

import glob as globmod
from typing import Any
from urllib.parse import quote

from retriever.errors import ManifestError

SCHEMES = ("hf://", "http://", "https://", "s3://", "gs://", "gcs://", "az://", "abfs://")
RETRIES = 5  # object_store retries each request with backoff


def is_remote(path: str) -> bool:
    return path.startswith(SCHEMES)


def dataset_url(repo: str, revision: str, path: str) -> str:
    """hf:// URL of a file (or glob) in a dataset at a revision; slashes in the revision are escaped."""
    return f"hf://datasets/{repo}@{quote(revision, safe='')}/{path.lstrip('/')}"


def storage_options(path: str) -> dict[str, Any] | None:
    return {"max_retries": RETRIES} if is_remote(path) else None


def expand(url: str, source_name: str) -> list[str]:
    """The URLs a remote path stands for: itself, or for an HTTP(S) glob the files the server lists."""
    if not globmod.has_magic(url) or not url.startswith(("http://", "https://")):
        return [url]
    import fsspec

    try:
        found = sorted(fsspec.filesystem("http").glob(url))
    except Exception as exc:  # aiohttp and fsspec raise many types for an unreachable or odd server
        raise ManifestError(f"source {source_name!r}: cannot list {url} ({exc.__class__.__name__}: {exc})") from None
    if not found:
        raise ManifestError(f"source {source_name!r}: no files match {url}")
    return found
