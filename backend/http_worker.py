"""gunicorn's gthread worker with a buffering front: a thread gets a request only when all of it
has arrived.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives, and
the thread then blocks reading the rest. Four connections that send `GET /health HTTP/1.1` and
a header, and then nothing, held all four threads (THREADS=4): /health failed for as long as
they stayed open. More threads only move the bar; gunicorn has no header or body timeout for
gthread; an async worker (gevent) would be a new dependency, and the model's work is CPU bound
anyway. So this worker does what a buffering proxy (nginx) would, inside gunicorn's own event
loop:

- a new connection's bytes are read by the worker's main loop, without blocking, into a buffer
  until the request is complete: the header block, then `Content-Length` bytes or the chunked
  body up to its last chunk; only then is it queued for a thread, which reads it from the
  buffer (`_PrereadSocket`);
- the header block must arrive within CLIPSEG_HEADER_TIMEOUT seconds of the connection and the
  whole request within CLIPSEG_BODY_TIMEOUT, or the front answers 408 and closes; a header
  block over 64 KiB is 431; a body over MAX_CONTENT_LENGTH (declared, or counted while chunked)
  is 413 without reading it; malformed chunked framing is 400; when the bodies held by the
  front in one worker would pass 4 x MAX_CONTENT_LENGTH, 503 with Retry-After;
- `Expect: 100-continue` is answered by the front (the header is taken out, so gunicorn does
  not answer it a second time);
- a thread's socket has a timeout (CLIPSEG_BODY_TIMEOUT), so a client that stops reading its
  answer cannot hold a thread either;
- keep-alive is off (each connection carries one request; Label Studio opens a connection per
  call anyway), so every request goes through the front.

Slow clients then cost a buffer and a file descriptor each, not a thread; their number is bounded
by gunicorn's `worker_connections` (1000 per worker), and each is dropped at its timeout. TLS is
not handled here (`clipseg-backend` serves plain HTTP): with `certfile` set this worker behaves
like gthread.

`clipseg-backend` uses it (`worker_class`); behind your own gunicorn pass
`-k backend.http_worker.BufferingWorker`.
"""

from __future__ import annotations

import errno
import json
import re
import selectors
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from backend.settings import Settings

#: Longest header block the front reads (gunicorn's own limits are below this).
MAX_HEAD_BYTES = 64 * 1024
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass
class Refusal:
    """An answer the front gives itself, closing the connection."""

    status: int
    message: str
    retry_after: int | None = None

    def response(self) -> bytes:
        body = json.dumps({"status": "error", "error": self.message}).encode()
        head = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if self.retry_after is not None:
            head.append(f"Retry-After: {self.retry_after}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_CHUNK_SIZE_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")


@dataclass
class RequestBuffer:
    """The bytes of one request as they arrive, and whether it is complete yet.

    `feed` returns None while more is needed, True when the request is complete (`data` then
    holds it, with any `Expect: 100-continue` header taken out), or a Refusal. Requests whose
    framing is ambiguous (several Content-Length, Content-Length with Transfer-Encoding, a
    transfer coding other than chunked) count as complete at the end of the header block:
    gunicorn's parser refuses them with 400 before it reads a body.
    """

    max_body: int
    data: bytearray = field(default_factory=bytearray)
    head_end: int | None = None  # index just past the blank line
    length: int | None = None  # Content-Length
    chunked: bool = False
    complete: bool = False
    wants_continue: bool = False  # answer "100 Continue" (once) while the body is awaited
    _cursor: int = 0  # chunked: where the next chunk-size line starts
    _body: int = 0  # chunked: body bytes seen

    def feed(self, chunk: bytes) -> bool | Refusal | None:
        self.data += chunk
        if self.head_end is None:
            found = self.data.find(b"\r\n\r\n", max(0, len(self.data) - len(chunk) - 3))
            if found < 0:
                if len(self.data) > MAX_HEAD_BYTES:
                    return Refusal(431, f"request header block over {MAX_HEAD_BYTES} bytes")
                return None
            refusal = self._read_head(found + 4)
            if refusal is not None or self.complete:
                return refusal or True
        if self.length is not None:
            self.complete = len(self.data) - self.head_end >= self.length
        elif self.chunked:
            refusal = self._read_chunks()
            if refusal is not None:
                return refusal
        return True if self.complete else None

    def _read_head(self, end: int) -> Refusal | None:
        head = bytes(self.data[:end])
        lines = head[:-4].split(b"\r\n")
        lengths, codings, kept = [], [], [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                lengths.append(value.strip())
            elif key == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
            if key == b"expect" and value.strip().lower() == b"100-continue":
                self.wants_continue = True
                continue  # answered here, not again by gunicorn
            kept.append(line)
        if self.wants_continue:
            new_head = b"\r\n".join(kept) + b"\r\n\r\n"
            self.data[:end] = new_head
            end = len(new_head)
        self.head_end = end
        if codings:
            if lengths or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                self.complete = True  # ambiguous: gunicorn answers 400
                return None
            self.chunked, self._cursor = True, end
            return None
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            self.complete = True  # ambiguous or malformed: gunicorn answers 400
            return None
        self.length = int(lengths[0]) if lengths else 0
        if self.length > self.max_body:
            return Refusal(413, f"request body over MAX_CONTENT_LENGTH={self.max_body} bytes")
        self.complete = self.length == 0 or len(self.data) - end >= self.length
        return None

    def _read_chunks(self) -> Refusal | None:
        while True:
            line_end = self.data.find(b"\r\n", self._cursor)
            if line_end < 0:
                if len(self.data) - self._cursor > 4096:
                    return Refusal(400, "malformed chunked body: chunk size line too long")
                return None
            size_text = bytes(self.data[self._cursor : line_end]).split(b";", 1)[0].strip()
            if not _CHUNK_SIZE_RE.fullmatch(size_text):
                return Refusal(400, f"malformed chunked body: chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:  # the last chunk, then trailers up to a blank line
                if self.data.startswith(b"\r\n", line_end + 2):
                    self.complete = True
                    return None
                trailers_end = self.data.find(b"\r\n\r\n", line_end + 2)
                if trailers_end >= 0:
                    self.complete = True
                elif len(self.data) - line_end > MAX_HEAD_BYTES:
                    return Refusal(431, "chunked trailers too long")
                return None
            self._body += size
            if self._body > self.max_body:
                return Refusal(413, f"request body over MAX_CONTENT_LENGTH={self.max_body} bytes")
            chunk_end = line_end + 2 + size
            if len(self.data) < chunk_end + 2:
                return None
            if self.data[chunk_end : chunk_end + 2] != b"\r\n":
                return Refusal(400, "malformed chunked body: chunk not followed by CRLF")
            self._cursor = chunk_end + 2


class _PrereadSocket:
    """A socket whose first bytes were read already: `recv` returns those, then reads on."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self._sock = sock
        self._data = memoryview(data)
        self._pos = 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._pos < len(self._data):
            chunk = bytes(self._data[self._pos : self._pos + size])
            self._pos += len(chunk)
            return chunk
        return self._sock.recv(size, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


#: Seconds a refused connection is read (and discarded) after its answer, so that closing it
#: with unread bytes does not reset it before the client has read the answer.
LINGER = 2.0


@dataclass
class _Reading:
    """A connection the front is still reading (or, refused, draining before it is closed)."""

    conn: TConn
    buffer: RequestBuffer
    header_deadline: float
    body_deadline: float
    received: int = 0  # bytes counted in the worker's total of buffered bytes
    drain_until: float | None = None


class BufferingWorker(ThreadWorker):
    """gthread, with whole requests read by the main loop first (see the module doc)."""

    #: the backend's settings; None: read from the environment when the worker starts
    settings: Settings | None = None

    def init_process(self) -> None:
        settings = self.settings if self.settings is not None else Settings.from_env()
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.max_body = settings.max_content_length
        self.max_buffered = 4 * settings.max_content_length
        self._buffered = 0
        self._reading: dict[int, _Reading] = {}
        if self.cfg.keepalive:  # every request must come through the front
            self.cfg.set("keepalive", 0)
        super().init_process()

    # ---- connections arrive
    def accept(self, server: Any, listener: socket.socket) -> None:
        if self.cfg.is_ssl:
            super().accept(server, listener)
            return
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        conn = TConn(self.cfg, sock, client, server)  # non-blocking
        self.nr_conns += 1
        now = time.monotonic()
        reading = _Reading(
            conn,
            RequestBuffer(self.max_body),
            now + self.header_timeout,
            now + self.body_timeout,
        )
        self._reading[id(reading)] = reading
        with self._lock:
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self._on_readable, reading)
            )

    def _on_readable(self, reading: _Reading, sock: socket.socket) -> None:
        outcome: bool | Refusal | None = None
        while outcome is None:
            try:
                chunk = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(reading)
                return
            if not chunk:  # the client went away (or, draining, has finished sending)
                self._close(reading)
                return
            if reading.drain_until is not None:
                continue  # refused already: read and forget
            reading.received += len(chunk)
            self._buffered += len(chunk)
            if self._buffered > self.max_buffered:
                outcome = Refusal(
                    503, "too many request bodies are being received; try again", retry_after=5
                )
                break
            outcome = reading.buffer.feed(chunk)
            if outcome is None and reading.buffer.wants_continue:
                reading.buffer.wants_continue = False
                self._send(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        if isinstance(outcome, Refusal):
            self._refuse(reading, outcome)
        elif outcome:
            self._hand_over(reading)

    # ---- a request is complete, refused, or too slow
    def _release_buffer(self, reading: _Reading) -> None:
        self._buffered -= reading.received
        reading.received = 0
        reading.buffer.data = bytearray()

    def _forget(self, reading: _Reading) -> None:
        self._reading.pop(id(reading), None)
        self._release_buffer(reading)
        with self._lock:
            try:
                self.poller.unregister(reading.conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _close(self, reading: _Reading) -> None:
        self._forget(reading)
        self.nr_conns -= 1
        reading.conn.close()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)  # small: fits the socket buffer of a fresh connection
        except OSError:
            pass

    def _refuse(self, reading: _Reading, refusal: Refusal) -> None:
        """Answer `refusal`, then read and discard what the client still sends for LINGER
        seconds before closing (see LINGER)."""
        self.log.info("refused %s: %d %s", reading.conn.client, refusal.status, refusal.message)
        self._send(reading.conn.sock, refusal.response())
        try:
            reading.conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(reading)
            return
        self._release_buffer(reading)
        reading.drain_until = time.monotonic() + LINGER

    def _hand_over(self, reading: _Reading) -> None:
        data = bytes(reading.buffer.data)
        self._forget(reading)
        conn = reading.conn
        conn.sock = _PrereadSocket(conn.sock, data)
        conn.init()  # blocking from here on; the parser reads the buffer first
        conn.sock.settimeout(self.body_timeout)  # a client that stops reading its answer
        future = self.tpool.submit(self.handle, conn)
        self._wrap_future(future, conn)

    def murder_keepalived(self) -> None:
        """Called by gunicorn's loop about once a second: also drop the too slow."""
        super().murder_keepalived()
        now = time.monotonic()
        for reading in list(self._reading.values()):
            if reading.drain_until is not None:
                if now > reading.drain_until:
                    self._close(reading)
            elif reading.buffer.head_end is None and now > reading.header_deadline:
                message = f"request header not received within {self.header_timeout:g} s"
                self._refuse(reading, Refusal(408, message + " (CLIPSEG_HEADER_TIMEOUT)"))
            elif now > reading.body_deadline:
                message = f"request not received within {self.body_timeout:g} s"
                self._refuse(reading, Refusal(408, message + " (CLIPSEG_BODY_TIMEOUT)"))


def worker_class(settings: Settings) -> type[BufferingWorker]:
    """BufferingWorker bound to `settings` (gunicorn's `worker_class` takes a class)."""
    return type("BufferingWorker", (BufferingWorker,), {"settings": settings})


__all__ = ["MAX_HEAD_BYTES", "BufferingWorker", "Refusal", "RequestBuffer", "worker_class"]
