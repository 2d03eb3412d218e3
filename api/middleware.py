"""ASGI middleware: a request-head size limit; a request-body limit and deadline enforced while streaming; a
limit on requests in progress; and one observer that counts, times and logs every response (500s, client
disconnects and requests cut by shutdown included) and puts every error response in the error shape."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import HTTP_CODES, error_response
from api.metrics import Metrics

DISCONNECTED = 499  # nginx's code for "client closed the request": counted, never sent
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # cheap: answered even when busy


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class BodySizeLimit:
    """Refuse bodies over the limit with 413, by Content-Length or while streaming, before parsing; and bodies
    that do not arrive in full within ``timeout_s`` of the request's start with 408 (a trickling upload)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 30.0) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen = 0
        started = False
        complete = False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:  # after the body: a wait for the client's disconnect, not an upload
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
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
        except _TooSlow:
            if not started:
                await error_response(408, "body_timeout", f"the request body did not arrive within "
                                                          f"{self.timeout_s:g} s")({"type": "http"}, _empty_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = error_response(413, "too_large", f"request body is over {self.limit} bytes")
        await body({"type": "http"}, _empty_receive, send)


def head_bytes(scope: Scope) -> int:
    """The size of a request's head as it came: request line (method, target, version) and header lines."""
    target = len(scope.get("raw_path") or scope.get("path", "").encode()) + len(scope.get("query_string", b""))
    target += 1 if scope.get("query_string") else 0  # the "?"
    line = len(scope.get("method", "")) + 1 + target + len(" HTTP/1.1\r\n")
    return line + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", [])) + 2


class HeadSizeLimit:
    """Refuse a request whose request line and headers are over ``limit`` bytes with 400, before routing.
    uvicorn (h11's max_incomplete_event_size) counts only a head still arriving; one that arrives whole in a
    single read passes it, and is caught here."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (size := head_bytes(scope)) > self.limit:
            refused = error_response(400, "bad_request", f"the request line and headers are {size} bytes, over the "
                                                         f"limit of {self.limit}", headers={"connection": "close"})
            return await refused(scope, _empty_receive, send)
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """At most ``limit`` requests in progress; the next ones get 503 busy at once (health and metrics exempt).
    Unlike uvicorn's own limit_concurrency, the answer is in the error shape and is counted."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            busy = error_response(503, "busy", f"{self.active} requests in progress, the most this server takes; "
                                               f"retry shortly", headers={"retry-after": "1"})
            return await busy(scope, _empty_receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and b"json" in v.lower() for k, v in headers)


class Observe:
    """Outermost: request id, latency and status metrics, one JSON log line per request.

    An exception no handler took becomes a 500 in the error shape here (so it is counted and logged,
    with its traceback in the log only); a client that went away is logged as such, not as an error; a
    request cancelled by the server's shutdown (past its graceful timeout) gets a 503 in the error shape,
    and is logged and counted. An error response someone else wrote in another shape (Starlette's CORS
    refusals and static-file ranges are text/plain) is rewritten into the error shape, its text kept as
    the message.
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
        rewrite: dict | None = None  # a non-JSON error response being replaced: its start message and text

        async def observed_send(message: Message) -> None:
            nonlocal status, rewrite
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
                if status >= 400 and not _is_json(headers) and scope.get("method") != "HEAD":
                    rewrite = {"start": {**message, "headers": headers}, "text": b""}
                    return
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and rewrite is not None:
                rewrite["text"] = (rewrite["text"] + message.get("body", b""))[:1000]
                if not message.get("more_body", False):
                    await self._send_rewritten(rewrite, send)
                return
            await send(message)

        fields: dict = {}
        try:
            await self.app(scope, receive, observed_send)
        except ClientDisconnect:
            status = status or DISCONNECTED
        except asyncio.CancelledError:
            fields["error"] = "cancelled"
            self.metrics.errors.labels("shutting_down").inc()
            self.log.warning("request cut by shutdown", extra={"fields": {"id": request_id, "path": scope.get("path")}})
            if not status:
                try:
                    await error_response(503, "shutting_down", "the server is shutting down; retry on another "
                                                               "instance or shortly")(scope, _empty_receive, observed_send)
                except Exception:  # the connection is already gone
                    pass
            status = status or 503
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

    @staticmethod
    async def _send_rewritten(rewrite: dict, send: Send) -> None:
        start = rewrite["start"]
        status = start["status"]
        text = rewrite["text"].decode("utf-8", "replace").strip() or f"HTTP {status}"
        body = json.dumps({"error": {"code": HTTP_CODES.get(status, "http_error"), "message": text}}).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
