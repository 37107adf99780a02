"""The HTTP port (lifelong/http/api.py): probes, versions, metrics, and the token-guarded rollback."""

from __future__ import annotations

import gzip
import json
import logging
import resource
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from lifelong.errors import StateError, VersionNotFoundError
from lifelong.http.api import DeferredAdmin, HttpApi
from lifelong.http.server import HttpServer

TOKEN = "s3cret-token"


class FakeAdmin:
    def __init__(self) -> None:
        self.ready = True
        self.champion = 2
        self.rollbacks: list[tuple[int | None, str]] = []

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"state": "running"}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"checks": {"broker_reachable": self.ready}}

    def versions(self) -> dict[str, Any]:
        return {"champion": self.champion, "versions": [{"version": 1}, {"version": 2}]}

    def rollback(self, version: int | None, reason: str) -> dict[str, Any]:
        if version == 99:
            raise VersionNotFoundError("No model version 99")
        if version == 0:
            raise StateError("nothing to roll back to")
        self.rollbacks.append((version, reason))
        self.champion = version or 1
        return {"champion": self.champion}


@pytest.fixture
def served() -> Iterator[tuple[str, FakeAdmin, Counter]]:
    registry = CollectorRegistry()
    counter = Counter("lifelong_test", "A metric the test can see.", registry=registry)
    admin = FakeAdmin()
    server = HttpServer(app=HttpApi(admin=admin, registry=registry, token=TOKEN), host="127.0.0.1", port=0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", admin, counter
    finally:
        server.close()


def call(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_probes_versions_and_metrics(served: tuple[str, FakeAdmin, Counter]) -> None:
    base, admin, counter = served
    counter.inc(3)
    assert call(f"{base}/healthz")[0] == 200
    status, _, body = call(f"{base}/readyz")
    assert status == 200 and json.loads(body)["ok"] is True
    admin.ready = False
    status, _, body = call(f"{base}/readyz")
    assert status == 503 and json.loads(body)["checks"] == {"broker_reachable": False}
    assert json.loads(call(f"{base}/versions")[2])["champion"] == 2
    status, headers, text = call(f"{base}/metrics")
    assert status == 200 and b"lifelong_test_total 3.0" in text
    assert headers["Content-Type"].startswith("text/plain")
    status, headers, text = call(f"{base}/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"lifelong_test_total 3.0" in gzip.decompress(text)


def test_rollback_needs_the_bearer_token(served: tuple[str, FakeAdmin, Counter]) -> None:
    base, admin, _ = served
    for token in (None, "wrong", ""):
        status, headers, _ = call(f"{base}/rollback", method="POST", body=b"{}", token=token)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert admin.rollbacks == [] and admin.champion == 2
    status, _, body = call(f"{base}/rollback", method="POST", body=b"", token=TOKEN)
    assert status == 200 and json.loads(body) == {"champion": 1}
    assert admin.rollbacks == [(None, "rollback through the admin API")]
    status, _, _ = call(
        f"{base}/rollback", method="POST", body=b'{"version": 2, "reason": "fixed"}', token=TOKEN
    )
    assert status == 200 and admin.rollbacks[-1] == (2, "fixed")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"version": "two"}', 400),
        (b'{"version": true}', 400),
        (b'{"version": 99}', 404),
        (b'{"version": 0}', 409),
    ],
    ids=["not-json", "not-an-object", "version-a-string", "version-a-bool", "no-such-version", "conflict"],
)
def test_bad_rollback_requests_are_refused_with_a_reason(
    served: tuple[str, FakeAdmin, Counter], body: bytes, status: int
) -> None:
    base, admin, _ = served
    got, _, text = call(f"{base}/rollback", method="POST", body=body, token=TOKEN)
    assert got == status and json.loads(text)["error"]
    assert admin.rollbacks == []


def test_wrong_methods_and_paths(served: tuple[str, FakeAdmin, Counter]) -> None:
    base, _, _ = served
    assert call(f"{base}/rollback")[0] == 405
    assert call(f"{base}/versions", method="POST", body=b"{}")[0] == 405
    assert call(f"{base}/nope")[0] == 404


def test_the_admin_api_needs_a_token_unless_disabled() -> None:
    with pytest.raises(ValueError, match="token"):
        HttpApi(admin=FakeAdmin(), registry=CollectorRegistry(), token=None)
    api = HttpApi(admin=FakeAdmin(), registry=CollectorRegistry(), token=None, admin_enabled=False)
    server = HttpServer(app=api, host="127.0.0.1", port=0)
    server.start()
    try:
        assert call(f"http://127.0.0.1:{server.port}/rollback", method="POST", body=b"{}")[0] == 403
    finally:
        server.close()


def test_the_port_answers_while_the_daemon_starts() -> None:
    admin = DeferredAdmin()
    server = HttpServer(
        app=HttpApi(admin=admin, registry=CollectorRegistry(), token=TOKEN), host="127.0.0.1", port=0
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert call(f"{base}/healthz")[0] == 200
        assert call(f"{base}/readyz")[0] == 503
        # Not a conflict but a moment too early: 503 with Retry-After, which clients retry.
        status, headers, body = call(f"{base}/rollback", method="POST", body=b"{}", token=TOKEN)
        assert status == 503 and "starting" in json.loads(body)["error"]
        assert int(headers["Retry-After"]) > 0
        admin.target = FakeAdmin()  # built: everything goes to the daemon now
        assert call(f"{base}/readyz")[0] == 200
        assert call(f"{base}/rollback", method="POST", body=b"{}", token=TOKEN)[0] == 200
    finally:
        server.close()


Server = Callable[..., HttpServer]
Slow = Callable[[int, int], list[socket.socket]]


@pytest.fixture
def serve() -> Iterator[Server]:
    """Start an HttpServer over a FakeAdmin with the given limits; closed after the test."""
    servers: list[HttpServer] = []

    def start(**limits: Any) -> HttpServer:
        api = HttpApi(admin=FakeAdmin(), registry=CollectorRegistry(), token=TOKEN)
        server = HttpServer(app=api, host="127.0.0.1", port=0, **limits)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def slow_clients() -> Iterator[Slow]:
    """Open clients that send part of a request head and then nothing; closed after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < wanted:  # both ends of every connection live here
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    clients: list[socket.socket] = []

    def open_(port: int, count: int) -> list[socket.socket]:
        opened = []
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            opened.append(client)
        return opened

    yield open_
    for client in clients:
        client.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def is_open(client: socket.socket) -> bool:
    """Whether the server still holds the connection open (without waiting)."""
    client.setblocking(False)
    try:
        return client.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    finally:
        client.settimeout(10)


def until_closed(client: socket.socket, *, timeout: float = 20) -> bytes:
    """What the server sends until it closes the connection (a timeout fails the test)."""
    client.settimeout(timeout)
    received = b""
    try:
        while data := client.recv(4096):
            received += data
    except ConnectionResetError:
        pass
    return received


@pytest.mark.timeout(120)
def test_probes_answer_while_hundreds_of_slow_clients_hang(
    serve: Server, slow_clients: Slow, caplog: pytest.LogCaptureFixture
) -> None:
    threads = set(threading.enumerate())
    server = serve(read_timeout=60, workers=2)
    base = f"http://127.0.0.1:{server.port}"
    hanging = slow_clients(server.port, 400)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert call(f"{base}{path}", timeout=2)[0] == 200
    assert len(set(threading.enumerate()) - threads) <= 3  # the read loop and two workers, not one a client
    assert all(is_open(client) for client in hanging)  # accepted before the probes, and still held
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "a-byte-at-a-time"])
def test_a_slow_request_is_cut_off_after_the_read_timeout(
    serve: Server, slow_clients: Slow, trickle: bool
) -> None:
    server = serve(read_timeout=1.0)
    [client] = slow_clients(server.port, 1)
    started = time.monotonic()
    # The bound is on the whole request, not on each read: a byte every 0.1 s does not extend it.
    while trickle and not select.select([client], [], [], 0.1)[0]:
        try:
            client.sendall(b"x")
        except ConnectionError:
            break
    answer = until_closed(client)
    assert time.monotonic() - started < 10
    if not trickle:  # a trickler's own last bytes may reset the connection before the answer is read
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert "within 1 s" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]


@pytest.mark.timeout(60)
def test_at_the_connection_limit_a_new_client_pushes_out_the_oldest_slow_one(
    serve: Server, slow_clients: Slow
) -> None:
    server = serve(read_timeout=60, max_connections=4)
    oldest, *others = slow_clients(server.port, 4)
    assert call(f"http://127.0.0.1:{server.port}/healthz", timeout=5)[0] == 200
    assert until_closed(oldest) == b""
    assert all(is_open(client) for client in others)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 60_000, 400),
        (b'{"reason": ' + b"[" * 2_000 + b"]" * 2_000 + b"}", 400),
        (b"\xff\xfe{\x00}\x00", 400),
        (b'{"reason": "fixed", "weight": NaN}', 400),
        (b'{"reason": "fixed", "weight": 1e400}', 400),
        (b'{"version": ' + b"9" * 4_000 + b"}", 400),
        (b"[" * 100_000, 413),
    ],
    ids=[
        "nested-array",
        "nested-in-an-object",
        "utf-16-not-utf-8",
        "nan",
        "huge-float",
        "huge-int",
        "too-large",
    ],
)
def test_bodies_that_do_not_parse_are_refused_without_an_error_logged(
    served: tuple[str, FakeAdmin, Counter], caplog: pytest.LogCaptureFixture, body: bytes, status: int
) -> None:
    base, admin, _ = served
    got, headers, text = call(f"{base}/rollback", method="POST", body=body, token=TOKEN)
    assert got == status and headers["Content-Type"] == "application/json" and json.loads(text)["error"]
    assert admin.rollbacks == []
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


@pytest.mark.timeout(60)
def test_head_answers_carry_no_body(serve: Server) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _, body = until_closed(client).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"Content-Length: " in head
    assert body == b""


@pytest.mark.timeout(60)
def test_close_drops_slow_clients_stops_threads_and_releases_the_port(
    serve: Server, slow_clients: Slow
) -> None:
    threads = set(threading.enumerate())
    server = serve(read_timeout=60)
    hanging = slow_clients(server.port, 50)
    assert call(f"http://127.0.0.1:{server.port}/healthz", timeout=5)[0] == 200  # all accepted by now
    server.close()
    assert set(threading.enumerate()) <= threads
    assert all(until_closed(client, timeout=5) == b"" for client in hanging)
    socket.create_server(("127.0.0.1", server.port)).close()


def test_limits_are_checked_at_construction() -> None:
    api = HttpApi(admin=FakeAdmin(), registry=CollectorRegistry(), token=TOKEN)
    for limits in ({"read_timeout": 0}, {"workers": 0}, {"max_connections": 0}, {"max_body_bytes": -1}):
        with pytest.raises(ValueError, match=next(iter(limits))):
            HttpServer(app=api, host="127.0.0.1", port=0, **limits)
