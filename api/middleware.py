"""ASGI middleware: a request-body limit enforced while streaming, and one observer that counts, times and
logs every response (500s and client disconnects included) and answers unexpected errors in the error shape."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.metrics import Metrics

DISCONNECTED = 499  # nginx's code for "client closed the request": counted, never sent


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class BodySizeLimit:
    """Refuse bodies over the limit with 413, by Content-Length or while streaming, before parsing."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

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
        body = error_response(413, "too_large", f"request body is over {self.limit} bytes")
        await body({"type": "http"}, _empty_receive, send)


class Observe:
    """Outermost: request id, latency and status metrics, one JSON log line per request.

    An exception no handler took becomes a 500 in the error shape here (so it is counted and logged,
    with its traceback in the log only); a client that went away is logged as such, not as an error.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, log: logging.Logger) -> None:
        self.app, self.metrics, self.log = app, metrics, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = dict(scope.get("headers", []))
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        fields: dict = {}
        try:
            await self.app(scope, receive, observed_send)
        except ClientDisconnect:
            status = status or DISCONNECTED
        except Exception as exc:
            fields["error"] = exc.__class__.__name__
            self.metrics.errors.labels("internal").inc()
            self.log.error("unexpected error", exc_info=exc, extra={"fields": {"id": request_id,
                                                                               "path": scope.get("path")}})
            if not status:
                await error_response(500, "internal", "internal error; see the server log")(
                    scope, _empty_receive, observed_send)
            status = status or 500
        route = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(elapsed)
        self.log.info("client disconnected" if status == DISCONNECTED else "request", extra={"fields": {
            "id": request_id, "method": scope.get("method"), "path": scope.get("path"), "status": status,
            "ms": round(elapsed * 1000, 2), **fields}})
