"""A helper daemon = a Protocol, a service object with ``@handles`` methods, a socket.

``serve_rpc`` binds (or inherits) the daemon's socket, answers ``ping`` for
it, builds the dispatch table from the service's ``@handles`` methods (the
same way in every helper; the server refuses to start unless it covers the
Protocol exactly), and returns a Service the runtime can close. Each helper's
composition root is then a few lines: build state, build the service, call this.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
from collections.abc import Awaitable, Callable

from . import runtime
from .proto.common import Ping, Pong
from .rpc import Peer, Protocol, RpcServer, handler_table, handles
from .version import version

log = logging.getLogger("fcd.service")


class _PingService:
    def __init__(self, name: str, status: Callable[[], str]) -> None:
        self.name = name
        self.status = status

    @handles(Ping)
    async def ping(self, _req: Ping, _peer: Peer) -> Pong:
        return Pong(daemon=self.name, version=version(), pid=os.getpid(), status=self.status())


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
    service: object,
    *,
    status: Callable[[], str] = lambda: "serving",
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> RpcService:
    table = handler_table(_PingService(ctx.name, status), service)
    server = RpcServer(protocol, table, peers=runtime.helper_peers(ctx.cfg))
    gid = -1
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(ctx.cfg.security.api_user).gr_gid
    sock = runtime.listen(ctx.cfg.socket(daemon), mode=0o660, gid=gid)  # type: ignore[arg-type]
    await server.start(sock)
    log.info("%s listening on %s", ctx.name, ctx.cfg.socket(daemon))  # type: ignore[arg-type]
    return RpcService(ctx, server, status, on_close)
