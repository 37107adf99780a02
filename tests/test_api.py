"""The HTTP port (daemon/api.py): probes, versions, metrics, and the token-guarded rollback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from lifelong.daemon.api import DeferredAdmin, HttpApi, HttpServer
from lifelong.errors import StateError, VersionNotFoundError

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
    url: str, *, method: str = "GET", body: bytes | None = None, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
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
        status, _, body = call(f"{base}/rollback", method="POST", body=b"{}", token=TOKEN)
        assert status == 409 and "starting" in json.loads(body)["error"]
        admin.target = FakeAdmin()  # built: everything goes to the daemon now
        assert call(f"{base}/readyz")[0] == 200
        assert call(f"{base}/rollback", method="POST", body=b"{}", token=TOKEN)[0] == 200
    finally:
        server.close()
