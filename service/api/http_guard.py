"""Connection-level guards: header and body read deadlines, and the request body size limit.

uvicorn closes an idle keep-alive connection, but a connection that never sends a request, or
sends its headers one byte at a time, is kept open forever (every byte re-arms nothing): a few
hundred such sockets exhaust the server's file descriptors. :func:`guarded_http_protocol` returns
uvicorn's httptools protocol with a deadline for the request head; :class:`BodyGuardMiddleware`
bounds the body by size (413) and by the time between its chunks and in total (408).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def guarded_http_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request head is not complete in time.

    The deadline runs from the moment the connection opens (or the previous response ends) to the end
    of the request headers; bytes arriving slowly do not extend it.
    """

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            self._head_deadline = self.loop.call_later(header_timeout, self._head_timed_out)

        def _cancel_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_timed_out(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._cancel_head_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class BodyGuardMiddleware:
    """413 for bodies over the limit (by Content-Length, or while a chunked body streams in); 408 and
    a closed connection when the body stalls for ``idle_timeout`` or takes longer than ``total_timeout``.

    ``max_bytes`` may be a callable, read per request (the limit can depend on the loaded checkpoint).
    """

    def __init__(self, app: ASGIApp, max_bytes: Any, *, idle_timeout: float = 30.0, total_timeout: float = 120.0):
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = int(self.max_bytes() if callable(self.max_bytes) else self.max_bytes)
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _answer(send, 413, "body_too_large", f"request body over {limit} bytes")
                    return
        seen = {"bytes": 0, "failed": None, "started": False, "answered": False}
        deadline = time.monotonic() + self.total_timeout

        async def guarded_receive() -> Message:
            wait = min(self.idle_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.001))
            except TimeoutError:
                seen["failed"] = "timeout"
                raise BodyTimeout from None
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit:
                    seen["failed"] = "size"
                    raise BodyTooLarge
            return message

        async def answer_failure() -> None:
            seen["answered"] = True
            if seen["failed"] == "timeout":
                await _answer(send, 408, "body_timeout", "request body not received in time", close=True)
            else:
                await _answer(send, 413, "body_too_large", f"request body over {limit} bytes", close=True)

        async def guarded_send(message: Message) -> None:
            if seen["failed"] and not seen["started"]:
                # the app caught our exception and answers with its own error: answer ours instead
                if not seen["answered"]:
                    await answer_failure()
                return
            if message["type"] == "http.response.start":
                seen["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except (BodyTooLarge, BodyTimeout):
            if not seen["started"] and not seen["answered"]:
                await answer_failure()


async def _answer(send: Send, status: int, code: str, message: str, *, close: bool = False) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "field": "body"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
