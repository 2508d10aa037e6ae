"""``OPTIONS`` answers with every method its path takes (#9 finding 15: 405s and
OPTIONS without a true ``Allow``).

Litestar answers ``OPTIONS`` itself, but writes ``Allow`` from the methods its
route had when that answer was made, before handlers from other routers joined
the same path (``OPTIONS /v1/vms`` said ``OPTIONS, POST``, leaving out GET).
This middleware, for the whole app, replaces that header with the methods the
path really has (the same set a 405 names), so a route added later is right
without a word.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AllowHeader", "allowed_methods"]


def allowed_methods(app: Litestar, path_template: str) -> list[str]:
    """Every method of the routes at ``path_template`` (``/v1/vms/{vm_id}``), sorted."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute) and path_template in (route.path, route.path_format):
            methods |= set(route.methods)
    return sorted(methods)


class AllowHeader:
    """Litestar middleware: a true ``Allow`` on every ``OPTIONS`` answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        template = scope.get("path_template")
        if scope.get("method") != "OPTIONS" or not template:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(allowed_methods(Litestar.from_scope(scope), template)).encode()

        async def send_allow(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allow)]}
            await send(message)

        await self.app(scope, receive, send_allow)
