"""The service's one error shape, ``{"error": {"code", "message"}}``, for every 4xx and 5xx."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import Metrics
from api.schemas import ErrorOut

# refusal reason -> HTTP status
STATUS = {"empty": 400, "corrupt": 400, "bad_shape": 400, "not_image": 415, "too_many_pixels": 413,
          "too_large": 413, "too_slow": 413, "content_type": 415, "missing_file": 422, "too_many_files": 413,
          "unauthorized": 401, "body_timeout": 408, "not_ready": 503, "busy": 503, "shutting_down": 503,
          "reload_refused": 409, "bad_feedback": 422, "feedback_unavailable": 503}
# what other HTTP errors (routing, multipart parsing, CORS, static files, uvicorn's own) are called in the body
HTTP_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
              413: "too_large", 415: "content_type", 416: "range_not_satisfiable", 422: "invalid_request",
              500: "internal", 503: "unavailable"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 408, 409, 413, 415, 422, 503)
}


class Refused(StarletteHTTPException):
    """A request refused on purpose; ``code`` says why (one of STATUS)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(STATUS.get(code, 400), detail={"code": code, "message": message})


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def error_body(code: str, message: str) -> bytes:
    """The error shape's bytes, for the places that write a response without Starlette (the HTTP protocol)."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Starlette's HTTPException (404, 405, multipart errors) and FastAPI's, validation errors: one shape.

    Unexpected exceptions are answered by the observing middleware, so they are counted and logged too.
    """

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict) and {"code", "message"} <= set(exc.detail):
            code, message = exc.detail["code"], exc.detail["message"]
        else:
            code, message = HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail)
        metrics.errors.labels(code).inc()
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid_request").inc()
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_request", message)
