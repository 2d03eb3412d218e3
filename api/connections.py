"""What uvicorn does before the app sees a request: its HTTP protocol with a request-head deadline, and its
own error answers in the service's error shape; and the uvicorn settings that come from ``Settings``.

uvicorn answers some requests itself, before any ASGI middleware runs: a malformed request (a NUL in a
header, a bad Content-Length, an unknown method, a head longer than ``max_header_bytes``) gets its
``400 text/plain``. :class:`GuardedH11Protocol` writes those in the error shape instead, and closes a
connection that has not sent a complete request head within ``header_timeout_s`` of opening (or of its last
response) with a 408 in the error shape: idle and trickling connections cannot pile up. Keep-alive idle
connections close after ``keep_alive_s`` (uvicorn's own timer). What remains outside the error shape: a
connection closed by the keep-alive timer gets no answer at all (HTTP allows that), and TLS or protocol
errors below HTTP get none either.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from api.errors import error_body
from api.settings import Settings

log = logging.getLogger("unprompt.http")


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = error_body(code, message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and JSON for its own 400s."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._served = self._started_head = False
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        self._started_head = True
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._served, self._started_head = True, False
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        waiting = self.cycle is None or self.cycle.response_complete  # no request in progress: still in the head
        if not waiting or self.transport.is_closing():
            return
        if self._served and not self._started_head:  # an idle keep-alive connection: closed without a word
            self.transport.close()
        else:
            log.warning("request head timeout", extra={"fields": {"client": self.client, "s": self.header_timeout_s}})
            self.transport.write(_raw_response(408, "Request Timeout", "header_timeout",
                                               f"no complete request head within {self.header_timeout_s:g} s"))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_response(400, "Bad Request", "bad_request", msg))
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.Config keywords for the connection limits in ``settings`` (the concurrency limit is the
    app's own middleware, so that its 503 is in the error shape)."""
    protocol = type("GuardedH11", (GuardedH11Protocol,), {"header_timeout_s": settings.header_timeout_s})
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_s,
            "h11_max_incomplete_event_size": settings.max_header_bytes,
            "timeout_graceful_shutdown": int(max(1, round(settings.shutdown_timeout_s)))}
