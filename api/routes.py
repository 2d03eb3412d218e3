"""The HTTP endpoints. Readiness, the API key and settings come in through dependencies."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from importlib import resources

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from api.deps import Service, admit, get_settings, read_feedback, read_recorded, read_uploads, ready, require_key
from api.errors import ERROR_RESPONSES, Refused
from api.schemas import BatchOut, ErrorOut, FeedbackOut, InterrogateOut
from api.settings import Settings
from retriever import __version__
from retriever.images import ImageRejected
from retriever.pipeline import Interrogation
from retriever.profile import Mode
from retriever.stages.recorded import ImageWithMetadata
from retriever.encoders.runtime import runtimes
from retriever.threads import in_force as threads_in_force

UPLOAD_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}
BATCH_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}
FEEDBACK_FIELDS = {"image_sha256": {"type": "string", "description": "SHA-256 (hex) of the image, as "
                                                                  "/v1/interrogate returned it"},
                   "prompt": {"type": "string", "description": "the prompt the service gave"},
                   "corrected_prompt": {"type": "string", "description": "the prompt it should have given"},
                   "rating": {"type": "integer", "minimum": 1, "maximum": 5}}
FEEDBACK_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": FEEDBACK_FIELDS,
                                     "required": ["image_sha256", "corrected_prompt"]}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        **FEEDBACK_FIELDS, "file": {"type": "string", "format": "binary"}}}},
}}}
DOCS_ASSETS = "/docs-assets"
EMBEDDING = Query(False, description="include the 384-d embedding")
TOP = Query(10, ge=0, le=100, description="candidates to return")
MODE = Query(None, description="fast (retrieval only), classic, best (full assembly; the default) or negative "
                               "(the answer is the negative prompt)")
FLAVOURS = Query(None, ge=0, le=32, description="most components the assembly may chain (default: the profile's)")
METADATA = Query(True, description="answer the prompt the file records (A1111 parameters, ComfyUI graph, InvokeAI, "
                                   "NovelAI, EXIF, XMP) when it has one; false: always interrogate")

router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)


def _models(service: Service) -> dict[str, str]:
    it = service.interrogator
    return {"retrieval": it.retrieval_space.model_id, "rerank": it.rerank_space.model_id, "metric": it.metric.model_id}


def _result_out(result: Interrogation, service: Service, embedding: bool, top: int, data: bytes = b"") -> dict:
    out = result.as_dict(embeddings=False, top=top)
    if data:  # what POST /v1/feedback names the image by
        out["image_sha256"] = hashlib.sha256(data).hexdigest()
    out.pop("prompt_candidates", None)
    if embedding:
        out["embedding"] = [round(float(x), 7) for x in result.embedding]
    out["profile"] = service.interrogator.profile.name
    out["models"] = _models(service)
    out["index_ids"] = dict(result.index_ids)  # the builds that answered (a reload may have swapped since)
    return out


async def _admitted(service: Service, name: str, data: bytes, metadata: bool) -> ImageWithMetadata:
    image = await admit(service, name, data)
    return ImageWithMetadata(image, await read_recorded(data) if metadata else None)


async def _interrogate(service: Service, image: ImageWithMetadata, mode: Mode | None,
                       flavours: int | None) -> Interrogation:
    """One image through the micro-batcher; an image the model cannot take alone is refused, not a 500."""
    try:
        return await service.batcher.submit(image, (mode, flavours))
    except MemoryError:
        raise Refused("too_large", "the image needs too much memory to process") from None
    except ImageRejected as exc:
        raise Refused(exc.reason, str(exc)) from None


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse((resources.files("api") / "static" / "index.html").read_text(encoding="utf-8"))


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the swagger-ui-bundle package, so /docs works with no network."""
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="unprompt API",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url="data:,")


@router.get("/healthz", summary="alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="models and index loaded", responses={503: {"model": ErrorOut}})
async def readyz(service: Service = Depends(ready)) -> dict:
    return {"status": "ready", "profile": service.interrogator.profile.name}


@router.get("/metrics", summary="Prometheus metrics")
async def metrics_endpoint(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


@v1.get("/info", summary="profile, models and index build records")
async def info(service: Service = Depends(ready), settings: Settings = Depends(get_settings)) -> dict:
    it = service.interrogator
    return {
        "version": __version__,
        "profile": it.profile.model_dump(),
        "models": _models(service),
        "indexes": {name: {**ix.record.model_dump(), "loaded_at": round(ix.loaded_at, 3), "load_s": round(ix.load_s, 3)}
                    for name, ix in it.indexes.items()},
        "search": {name: ix.where for name, ix in it.indexes.items()},  # where each is searched: what happened
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
                   "max_aspect": settings.max_aspect, "max_batch_images": settings.max_batch_images},
        "batching": {"enabled": settings.batching, "max_batch_size": service.batcher.max_batch_size,
                     "max_wait_ms": settings.max_wait_ms},
        "threads": {**threads_in_force(), "decode_workers_running": service.decoder.workers},
        "runtimes": runtimes(it.retrieval_space, it.rerank_space, it.metric),  # ONNX Runtime or torch, per model
    }


@v1.post("/interrogate", response_model=InterrogateOut, response_model_exclude_none=True, openapi_extra=UPLOAD_DOC,
         summary="interrogate one image (multipart field 'file', or the raw image as the body)")
async def interrogate(request: Request, embedding: bool = EMBEDDING, top: int = TOP, mode: Mode | None = MODE,
                      flavours: int | None = FLAVOURS, metadata: bool = METADATA, service: Service = Depends(ready),
                      settings: Settings = Depends(get_settings)) -> dict:
    (name, data), = await read_uploads(request, settings, many=False)
    image = await _admitted(service, name, data, metadata)
    return _result_out(await _interrogate(service, image, mode, flavours), service, embedding, top, data)


@v1.post("/interrogate/batch", response_model=BatchOut, response_model_exclude_none=True, openapi_extra=BATCH_DOC,
         summary="interrogate several images (multipart, one part per image); bad images get per-item errors")
async def interrogate_batch(request: Request, embedding: bool = EMBEDDING, top: int = TOP, mode: Mode | None = MODE,
                            flavours: int | None = FLAVOURS, metadata: bool = METADATA,
                            service: Service = Depends(ready), settings: Settings = Depends(get_settings)) -> dict:
    items: list[dict] = []
    for name, data in await read_uploads(request, settings, many=True):
        item: dict = {"filename": name}
        try:
            image = await _admitted(service, name, data, metadata)
            item["result"] = _result_out(await _interrogate(service, image, mode, flavours), service, embedding, top,
                                         data)
        except Refused as exc:
            item["error"] = {**exc.detail, "status": exc.status_code}
        items.append(item)
    return {"results": items}


@v1.post("/feedback", summary="send a corrected prompt for an image (JSON, or multipart with the image)",
         response_model=FeedbackOut, openapi_extra=FEEDBACK_DOC)
async def feedback(request: Request, service: Service = Depends(ready), settings: Settings = Depends(get_settings)
                   ) -> dict:
    """Stored in SQLite under $UNPROMPT_HOME/feedback; the image itself only when the operator enabled
    UNPROMPT_FEEDBACK_KEEP_IMAGES (then send it as the multipart part ``file``)."""
    from retriever.feedback import Feedback, FeedbackError

    fields, image, suffix = await read_feedback(request, settings)
    try:
        row = Feedback(image_sha256=_text(fields, "image_sha256"), prompt=_text(fields, "prompt"),
                       corrected_prompt=_text(fields, "corrected_prompt"), rating=_rating(fields.get("rating")),
                       profile=service.interrogator.profile.name)
        store = request.app.state.feedback
        row_id = await run_in_threadpool(store.add, row, image, suffix)
    except FeedbackError as exc:
        raise Refused("bad_feedback", str(exc)) from None
    except (sqlite3.Error, OSError) as exc:  # a full disk, a read-only home: the request says so, nothing else breaks
        raise Refused("feedback_unavailable", f"the feedback store cannot be written ({exc})") from None
    return {"id": row_id, "image_kept": image is not None and store.keep_images}


def _text(fields: dict, name: str) -> str:
    """A text field as sent (missing or null: empty), never stringified: Feedback.checked refuses a non-string."""
    value = fields.get(name)
    return "" if value is None else value


def _rating(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
        return int(number) if not isinstance(value, bool) and math.isfinite(number) and number == int(number) else -1
    except (TypeError, ValueError, OverflowError):  # 1e400 as a string is inf; a 5000-digit int overflows float
        return -1  # refused by the check, with its message


@v1.post("/admin/reload", summary="take up committed rebuilds of the indexes without a restart",
         responses={409: {"model": ErrorOut}})
async def admin_reload(request: Request, _: Service = Depends(ready)) -> dict:
    """Each index whose directory has committed a new build is loaded beside the serving one, checked and
    warmed; then all are swapped at once. A build that fails is refused (409) and the old one keeps serving."""
    result = await run_in_threadpool(request.app.state.reloader.reload)
    if result.refused:
        raise Refused("reload_refused", "; ".join(f"{name}: {why}" for name, why in result.refused.items())
                      + " (the previous build keeps serving)")
    serving = request.app.state.service.interrogator.indexes
    return {"loaded": result.loaded, "unchanged": result.unchanged,
            "indexes": {name: ix.record.build_id for name, ix in serving.items()}}


router.include_router(v1)
