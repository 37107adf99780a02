"""The daemon's HTTP port: /metrics, /healthz, /readyz, GET /versions and the admin POST /rollback.

A WSGI app (/metrics is prometheus_client's WSGI app) behind a small server on the
standard library: one thread reads every connection's request through a selector, with
a deadline, and a fixed pool of workers answers complete requests, so clients that send
slowly hold a socket each, never a thread, and cannot starve the probes.
Mutating endpoints need ``Authorization: Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, make_wsgi_app

from lifelong.errors import LifelongError, NotReady, VersionNotFoundError
from lifelong.http.server import MAX_BODY_BYTES

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a refused request while the daemon starts is told to wait

# Deeper than any request the API takes; json.loads raises RecursionError near 1,000.
MAX_JSON_DEPTH = 32
# Longer integers are no version number, and int() of thousands of digits costs CPU.
MAX_INT_DIGITS = 20

StartResponse = Callable[..., Any]


class Admin(Protocol):
    """What the HTTP endpoints ask of the daemon."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive, and details."""
        ...

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready to serve (model loaded, partitions assigned, broker reachable), and why not."""
        ...

    def versions(self) -> dict[str, Any]:
        """The champion and every version."""
        ...

    def rollback(self, version: int | None, reason: str) -> dict[str, Any]:
        """Roll back (to ``version``, or the previous champion); what serves now."""
        ...


class DeferredAdmin:
    """The daemon's stand-in while it is built: alive and not ready; then everything goes to ``target``."""

    def __init__(self) -> None:
        self.target: Admin | None = None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive (starting) until the daemon answers."""
        return self.target.health() if self.target is not None else (True, {"state": "starting"})

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Not ready until the daemon answers."""
        if self.target is None:
            return False, {"state": "starting", "checks": {"running": False}}
        return self.target.readiness()

    def versions(self) -> dict[str, Any]:
        """The daemon's versions (none listed while it starts)."""
        if self.target is None:
            return {"serving": None, "champion": None, "versions": [], "state": "starting"}
        return self.target.versions()

    def rollback(self, version: int | None, reason: str) -> dict[str, Any]:
        """The daemon's rollback; refused while it starts."""
        if self.target is None:
            raise NotReady("the daemon is starting: try the rollback again in a moment")
        return self.target.rollback(version, reason)


class HttpApi:
    """The WSGI application behind the port.

    Example::

        api = HttpApi(admin=daemon, registry=metrics.registry, token="s3cret")
        server = HttpServer(app=api, host="127.0.0.1", port=9464)
        server.start()
    """

    def __init__(
        self, *, admin: Admin, registry: CollectorRegistry, token: str | None, admin_enabled: bool = True
    ) -> None:
        if admin_enabled and not token:
            raise ValueError("the admin API needs a token (or admin_enabled=False)")
        self.admin = admin
        self.token = token
        self.admin_enabled = admin_enabled
        self._metrics = make_wsgi_app(registry)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics" and method == "GET":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        try:
            status, body = self._route(method, path, environ)
        except Exception as error:  # an endpoint must answer, never take the server down
            log.exception("HTTP %s %s failed", method, path)
            status, body = 500, {"error": f"{type(error).__name__}: {error}"}
        headers = [("Content-Type", "application/json")]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="lifelong"'))
        if status == 503 and "retry_after_s" in body:
            headers.append(("Retry-After", str(body["retry_after_s"])))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [json.dumps(body, allow_nan=False, default=str).encode() + b"\n"]

    def _route(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        routes: dict[str, tuple[str, Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]]] = {
            "/healthz": ("GET", lambda _: _probe(self.admin.health())),
            "/readyz": ("GET", lambda _: _probe(self.admin.readiness())),
            "/versions": ("GET", lambda _: (200, self.admin.versions())),
            "/rollback": ("POST", self._rollback),
        }
        if path not in routes:
            return 404, {"error": f"no endpoint {path!r}", "endpoints": ["/metrics", *routes]}
        allowed, handler = routes[path]
        if method != allowed:
            return 405, {"error": f"{path} takes {allowed}, not {method}"}
        return handler(environ)

    def _rollback(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not self.admin_enabled:
            return 403, {"error": "the admin API is disabled ([http] admin_enabled = false)"}
        if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return 401, {"error": "missing or wrong bearer token"}
        try:
            request = _json_body(environ)
        except ValueError as error:
            return 400, {"error": str(error)}
        version = request.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            return 400, {"error": f"version must be an integer, got {version!r}"}
        reason = request.get("reason", "rollback through the admin API")
        if not isinstance(reason, str):
            return 400, {"error": f"reason must be a string, got {reason!r}"}
        try:
            return 200, self.admin.rollback(version, reason)
        except VersionNotFoundError as error:
            return 404, {"error": str(error)}
        except NotReady as error:  # starting: the same request succeeds in a moment
            return 503, {"error": str(error), "retry_after_s": RETRY_AFTER_S}
        except LifelongError as error:  # nothing to roll back to, a damaged target, learning off
            return 409, {"error": str(error)}

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given or self.token is None:
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())


def _probe(result: tuple[bool, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    ok, details = result
    return (200 if ok else 503), {"ok": ok, **details}


def _json_body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ValueError("Content-Length is not a number") from None
    if length > MAX_BODY_BYTES:
        raise ValueError(f"body larger than {MAX_BODY_BYTES} bytes")
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    if _nesting(text) > MAX_JSON_DEPTH:
        raise ValueError(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_short_int)
    except (ValueError, RecursionError) as error:  # RecursionError: unreachable past _nesting, kept as a net
        raise ValueError(f"body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in JSON ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(text)
