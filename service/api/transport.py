"""Connection-level bounds of `semid serve`: request head size, response send deadline, open connections.

These live in the HTTP protocol (uvicorn's httptools protocol, subclassed) because an ASGI middleware
sees a request only once its head is parsed and cannot see the socket's write buffer:

- **Head size.** Bytes are counted before they reach the parser, which buffers a header until it
  ends: a 100 MB ``If-None-Match`` would otherwise be read and held whole. Once the request line and
  headers pass ``max_header_bytes`` the client gets 431 and the connection is closed; at most
  ``2 x max_header_bytes`` of a head is ever fed to the parser.
- **Send deadline.** A response must be written out within ``send_timeout`` seconds of its first
  byte. A client that reads slowly (or not at all) would otherwise hold the connection, and the
  response's bytes in memory, for as long as it likes; past the deadline the connection is reset
  and its bytes dropped, those the kernel holds included.
- **Open connections.** At most ``max_connections`` in all and ``max_connections_per_client`` from one
  client address; a connection beyond either gets 503 with ``Retry-After`` and is closed.

A refused client (431, 503) is answered, then what it still sends is read and dropped for
``LINGER_SECONDS`` before the connection closes, so that it reads the answer rather than a reset.

A client going away is normal: it, and every connection cut here, logs one debug line at most.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import socket
import struct
import termios
from collections import Counter
from typing import Any

from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from semid.service.api.http_guard import guarded_http_protocol
from semid.service.api.settings import ServiceSettings

log = logging.getLogger(__name__)
LINGER_SECONDS = 1.0  # a refused client's bytes are read and dropped this long before the connection closes


def _raw_response(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 error response with a JSON body, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
        + body
    )


def _kernel_unsent(transport: Any) -> int:
    """Bytes the kernel holds for the client, not yet acknowledged (Linux; 0 where it cannot tell).

    On loopback the kernel's send buffer grows to megabytes: a slow reader's response can sit there
    whole, invisible to the transport's own buffer."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def _reset(transport: Any) -> None:
    """Close with a TCP reset, dropping what is buffered in the process and in the kernel."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, ValueError):
            pass
    transport.abort()


def transport_protocol(
    *,
    header_timeout: float,
    max_header_bytes: int,
    send_timeout: float,
    max_connections: int,
    max_connections_per_client: int,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the head deadline (:mod:`http_guard`) and the bounds above.

    Connection counts are per server process (one event loop): the class keeps its own counter.
    """
    base = guarded_http_protocol(header_timeout)
    per_client: Counter[str] = Counter()
    too_large = _raw_response(
        b"431 Request Header Fields Too Large",
        "headers_too_large",
        f"request line and headers over {max_header_bytes} bytes",
    )
    busy = _raw_response(
        b"503 Service Unavailable",
        "too_many_connections",
        "too many open connections; retry later",
        b"retry-after: 1\r\n",
    )

    class TransportGuardProtocol(base):  # type: ignore[misc, valid-type]
        _head_open = True  # between the start of a request and the end of its headers
        _head_bytes = 0
        _host: str | None = None  # the client address counted in per_client
        _send_deadline: asyncio.TimerHandle | None = None
        _close_when_delivered = False
        _lost = False
        _discarding = False  # answered and closing: what the client still sends is dropped

        # --- open connections -----------------------------------------------------------------

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else ""
            if len(self.connections) > max_connections or per_client[host] >= max_connections_per_client:
                log.debug("refused a connection from %s: too many open connections", host)
                self._finish(busy)
                return
            per_client[host] += 1
            self._host = host

        def connection_lost(self, exc: Exception | None) -> None:
            self._lost = True
            if self._host is not None:
                per_client[self._host] -= 1
                if per_client[self._host] <= 0:
                    del per_client[self._host]
                self._host = None
            self._cancel_send_deadline()
            super().connection_lost(exc)

        def _finish(self, response: bytes) -> None:
            """Answer and close, reading (and dropping) what the client still sends for up to a second, so that
            it gets the answer rather than a reset for the bytes left unread."""
            if self.transport.is_closing() or self._discarding:
                return
            self._discarding = True
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(LINGER_SECONDS, self._close_now)
            else:
                self.transport.close()

        def _close_now(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        # --- head size ------------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            while data and not self.transport.is_closing():
                if self._head_open:
                    room = max_header_bytes - self._head_bytes
                    if room <= 0:
                        log.debug("refused a request from %s: head over %d bytes", self._host, max_header_bytes)
                        self._finish(too_large)
                        return
                    piece, data = data[:room], data[room:]
                    self._head_bytes += len(piece)
                else:  # body bytes; a next request may start inside this piece (at most one cap uncounted)
                    piece, data = data[:max_header_bytes], data[max_header_bytes:]
                super().data_received(piece)
                if self.transport.get_protocol() is not self:  # upgraded: the rest is the new protocol's
                    return

        def on_message_begin(self) -> None:
            self._head_open = True
            self._head_bytes = 0
            self._close_when_delivered = False  # the client is active again: not idle any more
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._head_bytes = 0
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # the request's own cycle (not an upgrade)
                original = cycle.send

                async def send(message: Any) -> None:
                    if self.flow.write_paused and not cycle.disconnected:
                        await self.flow.drain()  # here, so that nothing awaits between the check below and the write
                    if self.transport.is_closing():
                        # the connection is going away (reset, cut, refused): drop the response as uvicorn does
                        # once it knows; writing to a closed uvloop transport raises a RuntimeError per message
                        cycle.disconnected = True
                    elif message["type"] == "http.response.start":
                        self._arm_send_deadline()
                    await original(message)

                cycle.send = send  # type: ignore[method-assign]

        # --- send deadline --------------------------------------------------------------------

        def _arm_send_deadline(self) -> None:
            """At a response's start: its deadline, unless an earlier response is still on its way (pipelined
            requests), whose deadline then stands for both."""
            if self._lost:
                return
            if self._send_deadline is not None:
                if self._bytes_in_flight():
                    return
                self._send_deadline.cancel()
            self._send_deadline = self.loop.call_later(send_timeout, self._send_timed_out)

        def _cancel_send_deadline(self) -> None:
            if self._send_deadline is not None:
                self._send_deadline.cancel()
                self._send_deadline = None

        def _bytes_in_flight(self) -> bool:
            return self.transport.get_write_buffer_size() > 0 or _kernel_unsent(self.transport) > 0

        def _delivered(self) -> bool:
            """No response is half sent, and the client has acknowledged every byte written to it (a request
            still being worked on, its response not started, does not count)."""
            cycle = self.cycle
            sending = cycle is not None and cycle.response_started and not cycle.response_complete
            return not sending and not self._bytes_in_flight()

        def _holding(self) -> bool:
            """A response is still on its way: closing now would leave it to the kernel, past any deadline."""
            return self._send_deadline is not None and not self._delivered()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._delivered():
                self._cancel_send_deadline()

        def timeout_keep_alive_handler(self) -> None:
            if self._holding():
                self._close_when_delivered = True  # the send deadline closes it
                return
            super().timeout_keep_alive_handler()

        def _head_timed_out(self) -> None:
            if self._holding():
                self._close_when_delivered = True
                return
            super()._head_timed_out()

        def _send_timed_out(self) -> None:
            self._send_deadline = None
            if self._lost:
                return
            if self._delivered():
                if self._close_when_delivered and not self.transport.is_closing():
                    self.transport.close()
                return
            log.debug("cut a connection from %s: response not read within %g s", self._host, send_timeout)
            _reset(self.transport)

    return TransportGuardProtocol


class QuietDisconnects(logging.Filter):
    """An error logged because the client went away (a body cut short, a reset, a broken pipe) becomes one
    debug line, or nothing with ``drop``: a disconnect is normal, and tracebacks per disconnect flood the log
    (uvicorn and the app's own 500 handler each logged one for every client that left mid-body)."""

    GONE = (ClientDisconnect, ConnectionResetError, BrokenPipeError)
    CLOSED = "the handler is closed"  # uvloop's RuntimeError for a write to a transport already closed

    def __init__(self, *, drop: bool = False) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        gone = isinstance(exc, self.GONE) or isinstance(exc, RuntimeError) and self.CLOSED in str(exc)
        if not gone:
            return True
        if self.drop:
            return False
        record.msg, record.args = "client went away: %s", (type(exc).__name__,)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_disconnects() -> None:
    """Install :class:`QuietDisconnects` on the loggers that log an application's exceptions: uvicorn's keeps
    one debug line per disconnect, the app's 500 handler (which also sees them) none."""
    logging.getLogger("uvicorn.error").addFilter(QuietDisconnects())
    logging.getLogger("semid.service.api.error_handlers").addFilter(QuietDisconnects(drop=True))


def serve_protocol(settings: ServiceSettings) -> type[HttpToolsProtocol]:
    """The protocol `semid serve` runs, with its bounds from the settings."""
    return transport_protocol(
        header_timeout=settings.header_timeout,
        max_header_bytes=settings.max_header_bytes,
        send_timeout=settings.send_timeout,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
    )
