"""The HTTP service: a FastAPI app factory over the interrogator.

    uvicorn --factory api.app:create_app        # settings from UNPROMPT_* environment variables
    unprompt serve --profile lite --port 8000
"""

from __future__ import annotations

import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.batcher import MicroBatcher
from api.logs import configure
from api.metrics import Metrics
from api.schemas import BatchOut, ErrorOut, InterrogateOut
from api.settings import Settings
from retriever import __version__
from retriever.images import ImageRejected, decode_image
from retriever.pipeline import Interrogation, Interrogator

# refusal reason -> HTTP status
STATUS = {"empty": 400, "corrupt": 400, "not_image": 415, "too_many_pixels": 413, "too_large": 413,
          "content_type": 415, "missing_file": 422, "too_many_files": 413, "unauthorized": 401}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 413, 415, 422, 503)
}
UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
BATCH_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
    }
}


class Refused(HTTPException):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(STATUS.get(code, 400), detail={"code": code, "message": message})


class BodySizeLimit:
    """Refuse bodies over the limit with 413, by Content-Length or while streaming, before parsing."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        self.metrics.errors.labels("too_large").inc()
        body = JSONResponse({"error": {"code": "too_large", "message": f"request body is over {self.limit} bytes"}},
                            status_code=413)
        await body({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _result_out(result: Interrogation, interrogator: Interrogator, embedding: bool, top: int) -> dict:
    out = result.as_dict(embeddings=False, top=top)
    out.pop("prompt_candidates", None)
    if embedding:
        out["embedding"] = [round(float(x), 7) for x in result.embedding]
    out["profile"] = interrogator.profile.name
    out["models"] = {"retrieval": interrogator.retrieval_space.model_id, "rerank": interrogator.rerank_space.model_id,
                     "metric": interrogator.metric.model_id}
    out["index_ids"] = {name: ix.record.build_id for name, ix in interrogator.indexes.items()}
    return out


def default_batch_size() -> int:
    import torch

    return 32 if torch.cuda.is_available() else 4


def create_app(settings: Settings | None = None, interrogator: Interrogator | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    log = configure(settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal interrogator
        if interrogator is None:
            from retriever.profile import load_profile

            interrogator = await run_in_threadpool(
                Interrogator.from_profile, load_profile(settings.profile), settings.verify_checksums)

        def run(images):
            results = interrogator.interrogate(images)
            for result in results:  # per image, as the histogram says
                for stage, ms in result.timings_ms.items():
                    metrics.stage.labels(stage).observe(ms / 1000)
            return results

        batcher = MicroBatcher(run, settings.max_batch_size or default_batch_size(), settings.max_wait_ms,
                               on_batch=metrics.batch_size.observe, enabled=settings.batching)
        batcher.start()
        app.state.batcher, app.state.interrogator = batcher, interrogator
        log.info("ready", extra={"fields": {"profile": interrogator.profile.name, "batching": settings.batching}})
        yield
        await batcher.stop()

    app = FastAPI(title="unprompt", version=__version__, lifespan=lifespan,
                  description="Recover the prompt behind an image. POST an image to /v1/interrogate.")
    app.state.settings, app.state.metrics = settings, metrics
    app.state.batcher = app.state.interrogator = None
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes, metrics=metrics)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - start
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        response.headers["x-request-id"] = request_id
        log.info("request", extra={"fields": {"id": request_id, "method": request.method, "path": request.url.path,
                                              "status": response.status_code, "ms": round(elapsed * 1000, 2)}})
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, dict) else {"code": "http_error", "message": str(exc.detail)}
        if exc.status_code >= 400 and isinstance(exc, Refused):
            metrics.errors.labels(detail["code"]).inc()
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        metrics.errors.labels("invalid_request").inc()
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": {"code": "invalid_request", "message": message}}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        metrics.errors.labels("internal").inc()
        log.error("unexpected error", exc_info=exc, extra={"fields": {"path": request.url.path}})
        return JSONResponse({"error": {"code": "internal", "message": "internal error; see the server log"}},
                            status_code=500)

    def require_key(x_api_key: str | None = Header(None), authorization: str | None = Header(None)) -> None:
        if settings.api_key is None:
            return
        given = x_api_key or (authorization[7:] if authorization and authorization.lower().startswith("bearer ") else "")
        if not secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
            raise Refused("unauthorized", "missing or wrong API key (X-API-Key header or Authorization: Bearer)")

    def ready() -> tuple[Interrogator, MicroBatcher]:
        if app.state.interrogator is None:
            raise HTTPException(503, detail={"code": "not_ready", "message": "models are still loading"})
        return app.state.interrogator, app.state.batcher

    async def uploads(request: Request, many: bool) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=settings.max_batch_images + 1, max_fields=20,
                                      max_part_size=settings.max_upload_bytes)
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise Refused("missing_file", "multipart request has no file part (use the field 'file')")
            if len(files) > (settings.max_batch_images if many else 1):
                raise Refused("too_many_files", f"at most {settings.max_batch_images if many else 1} file(s) per request")
            return [(f.filename or "upload", await f.read()) for f in files]
        if many:
            raise Refused("content_type", "the batch endpoint takes multipart/form-data with one part per image")
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise Refused("content_type", f"content type {ctype or '(none)'} is not an image; send image/* or multipart")
        return [("body", await request.body())]

    async def decode(name: str, data: bytes):
        try:
            return await run_in_threadpool(decode_image, data, settings.max_pixels, name)
        except ImageRejected as exc:
            raise Refused(exc.reason, str(exc)) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((resources.files("api") / "static" / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz", summary="alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="models and index loaded", responses={503: {"model": ErrorOut}})
    async def readyz() -> dict:
        interrogator, _ = ready()
        return {"status": "ready", "profile": interrogator.profile.name}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info", summary="profile, models and index build records", dependencies=[Depends(require_key)])
    async def info() -> dict:
        interrogator, _ = ready()
        return {
            "version": __version__,
            "profile": interrogator.profile.model_dump(),
            "models": {"retrieval": interrogator.retrieval_space.model_id,
                       "rerank": interrogator.rerank_space.model_id, "metric": interrogator.metric.model_id},
            "indexes": {name: ix.record.model_dump() for name, ix in interrogator.indexes.items()},
            "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
                       "max_batch_images": settings.max_batch_images},
            "batching": {"enabled": settings.batching,
                         "max_batch_size": settings.max_batch_size or default_batch_size(),
                         "max_wait_ms": settings.max_wait_ms},
        }

    @app.post("/v1/interrogate", response_model=InterrogateOut, response_model_exclude_none=True,
              summary="interrogate one image (multipart field 'file', or the raw image as the body)",
              responses=ERROR_RESPONSES, openapi_extra=UPLOAD_DOC, dependencies=[Depends(require_key)])
    async def interrogate(request: Request, embedding: bool = Query(False, description="include the 384-d embedding"),
                          top: int = Query(10, ge=0, le=100, description="candidates to return")) -> dict:
        interrogator, batcher = ready()
        (name, data), = await uploads(request, many=False)
        image = await decode(name, data)
        return _result_out(await batcher.submit(image), interrogator, embedding, top)

    @app.post("/v1/interrogate/batch", response_model=BatchOut, response_model_exclude_none=True,
              summary="interrogate several images (multipart, one part per image); bad images get per-item errors",
              responses=ERROR_RESPONSES, openapi_extra=BATCH_DOC, dependencies=[Depends(require_key)])
    async def interrogate_batch(request: Request, embedding: bool = Query(False),
                                top: int = Query(10, ge=0, le=100)) -> dict:
        interrogator, batcher = ready()
        items: list[dict] = []
        images, slots = [], []
        for name, data in await uploads(request, many=True):
            try:
                images.append(await decode(name, data))
                slots.append(len(items))
                items.append({"filename": name})
            except Refused as exc:
                items.append({"filename": name, "error": {**exc.detail, "status": exc.status_code}})
        for slot, result in zip(slots, await batcher.submit_many(images)):
            items[slot]["result"] = _result_out(result, interrogator, embedding, top)
        return {"results": items}

    return app
