"""FastAPI dependencies: settings, readiness, the API key, and reading and admitting uploaded images."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Header, Request
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.batcher import MicroBatcher
from api.errors import Refused
from api.settings import MAX_JSON_DEPTH, Settings
from retriever.decode_pool import DecodePool
from retriever.images import ImageLimits, ImageRejected
from retriever.metadata import GenerationMetadata, read_metadata
from retriever.pipeline import Interrogator


class _BadJson(ValueError):
    """A refusal of ours, raised from inside json.loads: its message is the answer."""


def _no_constant(name: str) -> float:
    raise _BadJson(f"the body is not valid JSON: {name} is not a number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJson(f"the body holds a number out of range ({text[:40]})")
    return value


def parse_json(body: bytes) -> Any:
    """A request body's JSON, or a ValueError saying why not: broken, not UTF-8, nested deeper than
    MAX_JSON_DEPTH, or a number that is not finite (NaN, Infinity, 1e400) or has more digits than Python
    converts. Every JSON body the service reads goes through it."""
    deep = f"the body is nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(deep) from None
    except _BadJson:
        raise
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, int's digit limit
        raise ValueError("the body is not valid JSON") from None
    todo = [(value, 1)]
    while todo:  # the depth, without recursion
        item, level = todo.pop()
        if isinstance(item, dict | list):
            if level > MAX_JSON_DEPTH:
                raise ValueError(deep)
            todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


@dataclass
class Service:
    """What a request needs once the models are loaded."""

    interrogator: Interrogator
    batcher: MicroBatcher
    decoder: DecodePool  # worker processes: at most settings.decode_workers images decode at once, each timed
    limits: ImageLimits


def ready(request: Request) -> Service:
    service = request.app.state.service
    if service is None:
        raise Refused("not_ready", "models are still loading")
    return service


def require_key(settings: Settings = Depends(get_settings), x_api_key: str | None = Header(None),
                authorization: str | None = Header(None)) -> None:
    if settings.api_key is None:
        return
    given = x_api_key or (authorization[7:] if authorization and authorization.lower().startswith("bearer ") else "")
    if not secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Refused("unauthorized", "missing or wrong API key (X-API-Key header or Authorization: Bearer)")


async def read_uploads(request: Request, settings: Settings, many: bool) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each uploaded image: multipart parts, or (single endpoint) the raw body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        most = settings.max_batch_images if many else 1
        try:
            form = await request.form(max_files=most, max_fields=20, max_part_size=settings.max_upload_bytes)
        except HTTPException as exc:  # Starlette stops parsing at the first part over max_files
            if "too many files" in str(exc.detail).lower():
                raise Refused("too_many_files", f"at most {most} file(s) per request") from None
            raise
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            field = "'files', one part per image" if many else "'file'"
            raise Refused("missing_file", f"multipart request has no file part (use the field {field})")
        return [(f.filename or "upload", await f.read()) for f in files]
    if many:
        raise Refused("content_type", "the batch endpoint takes multipart/form-data with one part per image")
    if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise Refused("content_type", f"content type {ctype or '(none)'} is not an image; send image/* or multipart")
    return [("body", await request.body())]


async def admit(service: Service, name: str, data: bytes) -> Image.Image:
    """Decode in the worker processes, under the time and memory limits; a refusal becomes the matching 4xx.
    A request cancelled meanwhile (shutdown) cancels its decode, which stops that worker."""
    try:
        image, _, _ = await asyncio.wrap_future(service.decoder.submit(data, service.limits, name))
        return image
    except ImageRejected as exc:
        raise Refused(exc.reason, str(exc)) from None


async def read_recorded(data: bytes) -> GenerationMetadata | None:
    """The prompt an upload's file records (bounded by ``MetadataLimits``: milliseconds, off the event loop);
    nothing usable is None (the image is interrogated), never an error."""
    return await asyncio.to_thread(read_metadata, data)


async def read_feedback(request: Request, settings: Settings) -> tuple[dict, bytes | None, str]:
    """A feedback request's fields, and its image when one was sent as the multipart part ``file``."""
    from pathlib import PurePath

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            fields = parse_json(await request.body())
        except ValueError as exc:
            raise Refused("bad_feedback", str(exc)) from None
        if not isinstance(fields, dict):
            raise Refused("bad_feedback", "the body must be a JSON object")
        return fields, None, ""
    if ctype == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=10, max_part_size=settings.max_upload_bytes)
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not files:
            return fields, None, ""
        return fields, await files[0].read(), PurePath(files[0].filename or "").suffix.lower()
    raise Refused("content_type", "send feedback as application/json, or multipart/form-data with the image")
