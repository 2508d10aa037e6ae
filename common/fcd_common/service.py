"""A helper daemon = a Protocol, a handler table and a listening socket.

``serve_rpc`` binds (or inherits) the daemon's socket, answers ``ping`` for
it, and returns a Service the runtime can close. Each helper's composition
root is then a few lines: build state, build the handler table, call this.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata

from . import runtime
from .proto.common import Ping, Pong
from .rpc import Handler, Peer, Protocol, Request, RpcServer

log = logging.getLogger("fcd.service")


def _version() -> str:
    try:
        return metadata.version("fcd")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class RpcService:
    def __init__(
        self,
        ctx: runtime.Context,
        server: RpcServer,
        status: Callable[[], str],
        on_close: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.ctx = ctx
        self.server = server
        self._status = status
        self._on_close = on_close

    def status(self) -> str:
        return self._status()

    async def close(self, grace: float) -> None:
        await self.server.close(grace)
        if self._on_close is not None:
            await self._on_close()


async def serve_rpc(
    ctx: runtime.Context,
    daemon: str,
    protocol: Protocol,
    handlers: Mapping[type[Request], Handler],
    *,
    status: Callable[[], str] = lambda: "serving",
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> RpcService:
    async def ping(_req: Ping, _peer: Peer) -> Pong:
        return Pong(daemon=ctx.name, version=_version(), pid=os.getpid(), status=status())

    table: dict[type[Request], Handler] = {Ping: ping, **handlers}
    server = RpcServer(protocol, table, allowed_uids=runtime.helper_peers(ctx.cfg))
    gid = -1
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(ctx.cfg.security.api_user).gr_gid
    sock = runtime.listen(ctx.cfg.socket(daemon), mode=0o660, gid=gid)  # type: ignore[arg-type]
    await server.start(sock)
    log.info("%s listening on %s", ctx.name, ctx.cfg.socket(daemon))  # type: ignore[arg-type]
    return RpcService(ctx, server, status, on_close)
