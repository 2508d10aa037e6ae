"""Which listener a request came in on decides what it may do.

fcd-api serves one ASGI app on several listeners: the API socket (everything),
the read-only socket ``api-ro.sock`` (group ``security.readers_group``: GET
routes and ``/metrics`` -- for monitoring agents that must not manage VMs) and,
if configured, a TCP listener for Prometheus (``GET /metrics`` only). uvicorn
puts the listening socket's own address in the ASGI scope (``scope["server"]``),
so :class:`ListenerPolicy` looks the request's listener up by that address;
a listener it does not know gets the strictest policy. A refused request is
``403 permission_denied`` in the API's one error shape, before any route runs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from .models import ErrorBody, ErrorDetail

__all__ = ["Access", "ListenerPolicy", "listener_key"]


class Access(enum.Enum):
    FULL = "full"
    READ = "read"
    SCRAPE = "scrape"


_READ_METHODS = frozenset({"GET", "HEAD"})
SCRAPE_PATHS = frozenset({"/metrics", "/_ping"})


def listener_key(sockname: Any) -> str:
    """The key of a listening socket: its path (Unix) or ``host:port`` (TCP), as
    uvicorn reports it in ``scope["server"]``."""
    if isinstance(sockname, str):
        return sockname
    if isinstance(sockname, bytes):
        return sockname.decode(errors="replace")
    return f"{sockname[0]}:{sockname[1]}"


def _scope_key(scope: Mapping[str, Any]) -> str | None:
    server = scope.get("server")
    if not server:
        return None
    host, port = server[0], server[1]
    return str(host) if port is None else f"{host}:{port}"


def allowed(access: Access, method: str, path: str) -> bool:
    if access is Access.FULL:
        return True
    if method not in _READ_METHODS:
        return False
    return access is Access.READ or path in SCRAPE_PATHS


def _refusal(access: Access, method: str, path: str) -> bytes:
    why = (
        "this listener serves GET /metrics only"
        if access is Access.SCRAPE
        else "the read-only API socket serves GET requests only"
    )
    body = ErrorBody(
        error=ErrorDetail(
            code="permission_denied",
            message=f"{method} {path}: {why}",
            details={"listener": access.value},
        )
    )
    return msgspec.json.encode(body)


class ListenerPolicy:
    """ASGI layer: FULL on the listeners named so, READ/SCRAPE on the others."""

    def __init__(self, app: Any, listeners: Mapping[str, Access], *, default: Access) -> None:
        self.app = app
        self.listeners = dict(listeners)
        self.default = default

    def access(self, scope: Mapping[str, Any]) -> Access:
        key = _scope_key(scope)
        return self.listeners.get(key, self.default) if key is not None else self.default

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = self.access(scope)
        method, path = scope.get("method", "GET"), scope.get("path", "/")
        if allowed(access, method, path):
            await self.app(scope, receive, send)
            return
        body = _refusal(access, method, path)
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
