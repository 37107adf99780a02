"""The HTTP server under the daemon's port: a selector reads requests, a fixed pool of workers answers them.

One thread reads every connection's request through a selector, with a deadline,
and a fixed pool of workers answers complete requests (a WSGI app), so clients
that send slowly hold a socket each, never a thread, and cannot starve the probes.
The standard library's servers hold a thread per connection; WSGI servers that
read asynchronously (waitress) time out per byte and stop accepting at their
connection limit, which starves probes as surely.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from itertools import islice
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024


class HttpServer:
    """Serves a WSGI app on background threads; ``port`` 0 picks a free one (see :attr:`port`).

    One thread reads requests for every connection; ``workers`` threads answer the
    complete ones. A request's head and body must arrive within ``read_timeout``
    seconds of the connection opening, in total (a client trickling bytes is cut off
    too), or the connection is answered 408 and closed. At most ``max_connections``
    are open: at the limit a new connection pushes out the oldest one still sending
    its request, so slow clients cannot lock the probes out. A body over
    ``max_body_bytes`` is answered 413 without being read. Each connection carries
    one request (``Connection: close``).

    Example::

        server = HttpServer(app=api, host="127.0.0.1", port=9464, read_timeout=10.0)
        server.start()
        server.close()
    """

    def __init__(
        self,
        *,
        app: Callable[..., Iterable[bytes]],
        host: str,
        port: int,
        read_timeout: float = 10.0,
        workers: int = 4,
        max_connections: int = 512,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be positive, got {read_timeout!r}")
        for name, value in (("workers", workers), ("max_connections", max_connections)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must not be negative, got {max_body_bytes!r}")
        self.app = app
        self.host = host
        self.read_timeout = read_timeout
        self.workers = workers
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=256)
        self._listener.setblocking(False)
        self._port = int(self._listener.getsockname()[1])
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._listen_again_at: float | None = None  # accepting paused: out of file descriptors
        self._reading: dict[int, _Incoming] = {}  # by file descriptor, oldest first
        self._answering = 0  # handed to the workers, not yet closed
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[_Incoming, dict[str, Any]] | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_loop, name="lifelong-http", daemon=True),
            *(
                threading.Thread(target=self._work, name=f"lifelong-http-{n}", daemon=True)
                for n in range(workers)
            ),
        ]

    @property
    def port(self) -> int:
        """The port listened on."""
        return self._port

    def start(self) -> None:
        """Start answering (once; later calls do nothing)."""
        if self._threads[0].is_alive() or self._closing.is_set():
            return
        for thread in self._threads:
            thread.start()
        log.info("HTTP on http://%s:%d (/metrics /healthz /readyz /versions /rollback)", self.host, self.port)

    def close(self, *, grace: float = 5.0) -> None:
        """Stop answering, drop every connection and release the port (workers get ``grace`` s to finish)."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake()
        for _ in range(self.workers):
            self._requests.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        for connection in list(self._reading.values()):  # the loop never started
            connection.sock.close()
        self._selector.close()
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the pipe is full: the loop wakes anyway
            self._wake_writer.send(b"x")

    def _read_loop(self) -> None:
        try:
            while not self._closing.is_set():
                for key, _ in self._selector.select(self._wait()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_reader:
                        self._wake_reader.recv(4096)
                    else:
                        self._read(key.data)
                self._expire(time.monotonic())
        except Exception:  # a bug here would silence the port: say so
            log.exception("the HTTP read loop failed")
        finally:
            for connection in list(self._reading.values()):
                self._drop(connection)

    def _wait(self) -> float | None:
        """Seconds until the oldest read deadline or the end of an accept pause (None: no bound)."""
        due = [incoming.deadline for incoming in islice(self._reading.values(), 1)]
        if self._listen_again_at is not None:
            due.append(self._listen_again_at)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, so open connections keep being read
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as error:  # out of file descriptors: make room, or pause accepting
                log.warning("HTTP accept failed (%s): dropping the oldest unfinished request", error)
                if not self._drop_oldest():
                    self._selector.unregister(self._listener)
                    self._listen_again_at = time.monotonic() + 0.1
                return
            with self._lock:
                full = len(self._reading) + self._answering >= self.max_connections
            if full and not self._drop_oldest():  # every open connection is being answered
                sock.close()
                continue
            sock.setblocking(False)
            incoming = _Incoming(sock=sock, address=address, deadline=time.monotonic() + self.read_timeout)
            self._reading[sock.fileno()] = incoming
            self._selector.register(sock, selectors.EVENT_READ, incoming)

    def _drop_oldest(self) -> bool:
        oldest = next(iter(self._reading.values()), None)
        if oldest is None:
            return False
        log.debug("HTTP connection limit (%d): dropping %s", self.max_connections, oldest.address)
        self._drop(oldest)
        return True

    def _expire(self, now: float) -> None:
        if self._listen_again_at is not None and now >= self._listen_again_at:
            self._listen_again_at = None
            self._selector.register(self._listener, selectors.EVENT_READ)
        while self._reading:
            incoming = next(iter(self._reading.values()))
            if incoming.deadline > now:
                break  # deadlines follow the accept order
            if (incoming.buffer or incoming.environ is not None) and not incoming.refused:
                self._refuse(incoming, 408, f"the request did not arrive within {self.read_timeout:g} s")
            self._drop(incoming)

    def _read(self, incoming: _Incoming) -> None:
        try:
            data = incoming.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(incoming)
            return
        if incoming.refused:
            return  # what a refused client still sends is read and dropped (see _refuse)
        incoming.buffer += data
        try:
            environ = self._parse(incoming)
        except _Refusal as refusal:
            self._refuse(incoming, refusal.status, str(refusal))
            return
        if environ is not None:
            self._forget(incoming)
            with self._lock:
                self._answering += 1
            self._requests.put((incoming, environ))

    def _parse(self, incoming: _Incoming) -> dict[str, Any] | None:
        """Parse what has arrived; the request's environ once it is complete."""
        if incoming.environ is None:
            end = incoming.buffer.find(b"\r\n\r\n")
            if end < 0 and len(incoming.buffer) <= MAX_HEAD_BYTES:
                return None
            if end < 0 or end > MAX_HEAD_BYTES:
                raise _Refusal(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            incoming.environ = _environ(bytes(incoming.buffer[:end]), self, incoming.address)
            del incoming.buffer[: end + 4]
            incoming.length = _content_length(incoming.environ)
            if incoming.length > self.max_body_bytes:
                raise _Refusal(413, f"body larger than {self.max_body_bytes} bytes")
            expects = incoming.environ.get("HTTP_EXPECT", "").lower() == "100-continue"
            if expects and len(incoming.buffer) < incoming.length:
                _send_quietly(incoming.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(incoming.buffer) < incoming.length:
            return None
        incoming.environ["wsgi.input"] = io.BytesIO(bytes(incoming.buffer[: incoming.length]))
        return incoming.environ

    def _refuse(self, incoming: _Incoming, status: int, reason: str) -> None:
        """Answer an error and stop sending; read on until the client closes or the deadline passes.

        Closing at once with a body still arriving would reset the connection, and the
        client could lose the answer.
        """
        log.debug("HTTP %d for %s: %s", status, incoming.address, reason)
        _send_quietly(incoming.sock, _error_response(status, reason))
        incoming.refused = True
        incoming.buffer.clear()
        try:
            incoming.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(incoming)

    def _forget(self, incoming: _Incoming) -> None:
        self._reading.pop(incoming.sock.fileno(), None)
        self._selector.unregister(incoming.sock)

    def _drop(self, incoming: _Incoming) -> None:
        self._forget(incoming)
        incoming.sock.close()

    def _work(self) -> None:
        while (request := self._requests.get()) is not None:
            incoming, environ = request
            try:
                if not self._closing.is_set():
                    self._answer(incoming, environ)
            except Exception:  # a worker must outlive a bad answer (say, a header that is not latin-1)
                log.exception(
                    "HTTP %s %s: the answer failed", environ["REQUEST_METHOD"], environ["PATH_INFO"]
                )
            finally:
                incoming.sock.close()
                with self._lock:
                    self._answering -= 1

    def _answer(self, incoming: _Incoming, environ: dict[str, Any]) -> None:
        status, headers, body = _call(self.app, environ)
        head_only = environ["REQUEST_METHOD"] == "HEAD"
        try:
            incoming.sock.settimeout(self.read_timeout)  # writing the answer is bounded too
            incoming.sock.sendall(_response(status, headers, b"" if head_only else body, len(body)))
        except OSError as error:
            log.debug("HTTP client %s went away: %s", incoming.address, error)


@dataclass(slots=True)
class _Incoming:
    """A connection whose request is still arriving."""

    sock: socket.socket
    address: Any
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    environ: dict[str, Any] | None = None  # once the head has arrived
    length: int = 0
    refused: bool = False  # answered with an error; what still arrives is dropped


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _environ(head: bytes, server: HttpServer, address: Any) -> dict[str, Any]:
    """The WSGI environ of a request head (without its body)."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Refusal(400, f"not an HTTP/1 request line: {request_line[:100]!r}")
    method, target, protocol = parts
    url = urlsplit(target)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(url.path, "latin-1"),
        "QUERY_STRING": url.query,
        "SERVER_NAME": server.host,
        "SERVER_PORT": str(server.port),
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": str(address[0]) if isinstance(address, tuple) else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise _Refusal(400, f"malformed header line: {line[:100]!r}")
        if "_" in name:  # it would pass for a dash: drop it, as nginx and waitress do
            continue
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
        value = value.strip(" \t")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _content_length(environ: dict[str, Any]) -> int:
    if "HTTP_TRANSFER_ENCODING" in environ:
        raise _Refusal(411, "send the body with a Content-Length (no Transfer-Encoding)")
    value = environ.get("CONTENT_LENGTH", "0")
    if not (value.isascii() and value.isdigit()):
        raise _Refusal(400, f"Content-Length is not a number: {value[:40]!r}")
    return int(value)


def _call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> tuple[str, list[Any], bytes]:
    """Run the app on one request: its status, headers and whole body."""
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]  # nothing is sent before the app returns, so a later call wins
        return chunks.append

    try:
        result = app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the app returned without calling start_response")
    except Exception:
        log.exception("HTTP %s %s failed", environ["REQUEST_METHOD"], environ["PATH_INFO"])
        body = _error_body("internal error")
        return "500 Internal Server Error", [("Content-Type", "application/json")], body
    return started[0], started[1], b"".join(chunks)


# Framing is the server's: an app's own say on these is dropped.
_SERVER_HEADERS = frozenset({"connection", "content-length", "date", "keep-alive", "transfer-encoding"})


def _response(status: str, headers: list[tuple[str, str]], body: bytes, length: int) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        *(f"{name}: {value}" for name, value in headers if name.lower() not in _SERVER_HEADERS),
        f"Content-Length: {length}",
        f"Date: {formatdate(usegmt=True)}",
        "Connection: close",
    ]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


def _error_body(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode() + b"\n"


def _error_response(status: int, reason: str) -> bytes:
    body = _error_body(reason)
    return _response(
        f"{status} {HTTPStatus(status).phrase}", [("Content-Type", "application/json")], body, len(body)
    )


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what fits now, from the read loop, which never waits on a client."""
    with contextlib.suppress(OSError):
        sock.send(data)
