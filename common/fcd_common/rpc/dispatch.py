"""How a helper declares what it serves: one decorator per handler, one table per service.

Every helper's RPC face is a class whose handler methods are marked with
``@handles(SomeRequest)``::

    class NetService:
        @handles(NetSetup)
        async def setup(self, req: NetSetup, peer: Peer) -> NetInfo: ...

mypy checks the method's return type against the reply the request names
(``NetSetup`` is a ``Request[NetInfo]``). :func:`handler_table` collects the
marked methods of a service object; the server refuses to start unless the
table covers its Protocol exactly (``transport.check_table``), and enforces
each request's ``access`` rule before a handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from .codec import Reply, Request
from .transport import Handler

__all__ = ["handler_table", "handles"]

P = ParamSpec("P")
R = TypeVar("R", bound=Reply)

_MARK = "__fcd_rpc_request__"


def handles(
    request: type[Request[R]],
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Mark a method as the handler of ``request`` (its reply type is checked by mypy)."""

    def mark(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        setattr(fn, _MARK, request)
        return fn

    return mark


def handler_table(*services: object) -> dict[type[Request[Any]], Handler]:
    """The request type -> bound handler table of every ``@handles`` method of ``services``."""
    table: dict[type[Request[Any]], Handler] = {}
    for service in services:
        for name in dir(type(service)):
            request = getattr(getattr(type(service), name, None), _MARK, None)
            if request is None:
                continue
            if request in table:
                raise ValueError(f"two handlers for {request.__name__}")
            table[request] = getattr(service, name)
    return table
