"""Connection limits for ``reasondistill serve`` that hold whichever HTTP implementation uvicorn runs.

uvicorn times out neither a connection that never sends a request nor one that sends its headers a
byte at a time (slowloris), caps header size only under h11 (``h11_max_incomplete_event_size``),
and its ``limit_concurrency`` answers plain-text 503s after accepting the request. So the protocol
class uvicorn picks (``httptools`` or ``h11``) is wrapped here, at the byte level, before any
parser sees the data: a header deadline (armed when a connection opens and when the first byte of
each keep-alive request arrives), a header size limit (431), and a connection cap (503 at
connect). Each refusal is a JSON body in the server's error shape, then the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("reasondistill")
_END = b"\r\n\r\n"


def refusal(status: int, reason: str, phrase: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written without a parser."""
    body = json.dumps({"error": reason}).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class HeadGuard:
    """Mixed in before one of uvicorn's protocol classes: enforces the connection limit and the
    request head's size and read time (the limits are class attributes set by :func:`guarded_protocol`)."""

    _rd_header_timeout_s: float
    _rd_max_header_bytes: int
    _rd_max_connections: int
    _rd_timer: asyncio.TimerHandle | None = None
    _rd_seen = 0  # bytes of the current request's head received so far; None once complete
    _rd_tail = b""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self._rd_max_connections:
            self._rd_refuse(503, f"too many connections (max_connections {self._rd_max_connections})",
                            "Service Unavailable")
            return
        self._rd_wait_for_head()

    def _rd_wait_for_head(self) -> None:
        self._rd_seen, self._rd_tail = 0, b""
        self._rd_timer = asyncio.get_running_loop().call_later(self._rd_header_timeout_s, self._rd_too_slow)

    def _rd_too_slow(self) -> None:
        self._rd_timer = None
        self._rd_refuse(408, f"request headers not received within {self._rd_header_timeout_s:g} s", "Request Timeout")

    def _rd_refuse(self, status: int, reason: str, phrase: str) -> None:
        self._rd_cancel()
        self._rd_seen = None
        if not self.transport.is_closing():
            self.transport.write(refusal(status, reason, phrase))
            self.transport.close()

    def _rd_cancel(self) -> None:
        if self._rd_timer is not None:
            self._rd_timer.cancel()
            self._rd_timer = None

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # refused: nothing more reaches the parser
            return
        if self._rd_seen is None and self._rd_timer is None and self._rd_between_requests():
            self._rd_wait_for_head()  # the first byte of the next request on a kept-alive connection
        if self._rd_seen is not None and self._rd_timer is not None:
            window = self._rd_tail + data
            end = window.find(_END)
            head = self._rd_seen - len(self._rd_tail) + (end + len(_END) if end >= 0 else len(window))
            if head > self._rd_max_header_bytes:
                self._rd_refuse(431, f"request headers larger than max_header_bytes {self._rd_max_header_bytes}",
                                "Request Header Fields Too Large")
                return
            if end >= 0:
                self._rd_cancel()
                self._rd_seen = None
            else:
                self._rd_seen += len(data)
                self._rd_tail = window[-3:]
        super().data_received(data)

    def _rd_between_requests(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and getattr(cycle, "response_complete", False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._rd_cancel()
        super().connection_lost(exc)


def guarded_protocol(base: type, header_timeout_s: float, max_header_bytes: int, max_connections: int) -> type:
    """A subclass of uvicorn's protocol class ``base`` enforcing the three limits."""
    name = f"Guarded{base.__name__}"
    return type(name, (HeadGuard, base), {"__qualname__": name, "_rd_header_timeout_s": header_timeout_s,
                                          "_rd_max_header_bytes": max_header_bytes, "_rd_max_connections": max_connections})


def protocol_class(http: str) -> type:
    """The class uvicorn would use for ``--http`` (``auto``: httptools where installed, else h11)."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    return import_from_string(HTTP_PROTOCOLS[http])
