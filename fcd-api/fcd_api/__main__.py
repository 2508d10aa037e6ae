"""fcd-api's composition root: registry + helper clients + flows + uvicorn on the UDS."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from fcd_common import logs, runtime
from fcd_common.rpc import bind_unix

from . import events, log_routes, logstore, states
from .app import create_asgi
from .clients import Helpers
from .registry import Registry
from .service import Flows
from .storage_routes import reclaim_at_start
from .supervise import ExitWatcher

log = logging.getLogger("fcd.api")

INTERRUPTED = "interrupted by an fcd-api restart"


async def start_http(
    app: Any, sock: socket.socket, *, grace: float = 10.0
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve ``app`` on the listening ``sock`` with uvicorn inside the running loop.

    Returns once the server accepts connections. This is uvicorn's own
    ``Server._serve`` minus its signal handling (fcd_common.runtime owns signals):
    setting ``server.should_exit`` makes the task finish gracefully.
    """
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    sock.setblocking(False)
    await server.startup(sockets=[sock])

    async def serve() -> None:
        try:
            await server.main_loop()
        finally:
            await server.shutdown(sockets=[sock])

    return server, asyncio.create_task(serve(), name="uvicorn")


class ApiService:
    def __init__(
        self,
        *,
        registry: Registry,
        helpers: Helpers,
        flows: Flows,
        server: uvicorn.Server,
        task: asyncio.Task[None],
        watcher: ExitWatcher,
    ) -> None:
        self.registry = registry
        self.helpers = helpers
        self.flows = flows
        self.server = server
        self.task = task
        self.watcher = watcher

    def status(self) -> str:
        return self.flows.status()

    async def close(self, grace: float) -> None:
        log_routes.shutdown()  # follow streams end: they must not hold the shutdown up
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        await self.watcher.close()
        await self.helpers.close()
        self.registry.close()
        s = events.store()
        if s is not None:
            events.install(None)
            s.close()


def api_socket(ctx: runtime.Context) -> socket.socket:
    """The activated socket if systemd passed one, else bound 0660 with the API group."""
    socks = runtime.inherited_sockets()
    if socks:
        log.info("using socket passed by systemd")
        return socks[0]
    gid = -1
    try:
        gid = grp.getgrnam(ctx.cfg.security.api_group).gr_gid
    except KeyError:
        log.warning(
            "group %s does not exist: %s is usable by its owner only",
            ctx.cfg.security.api_group,
            ctx.cfg.socket("api"),
        )
    return bind_unix(ctx.cfg.socket("api"), mode=0o660, gid=gid)


async def build(ctx: runtime.Context) -> ApiService:
    cfg = ctx.cfg
    registry = Registry.open(cfg.state("api") / "registry.db")
    events.install(events.EventStore.open(cfg.state("api") / "events.db"))
    log_routes.install(logstore.open_store(cfg.paths.state_dir, logs.to_journal()))
    interrupted = registry.mark_interrupted(states.TRANSIENT, INTERRUPTED)
    for vm_id in interrupted:
        log.warning("VM %s was left mid-operation; marked error", vm_id, extra={"FCD_VM_ID": vm_id})
    helpers = Helpers.from_config(cfg)
    flows = Flows(registry, helpers, cfg.limits, cfg.network)
    try:
        server, task = await start_http(
            create_asgi(flows), api_socket(ctx), grace=cfg.limits.shutdown_grace_s
        )
    except BaseException:
        await helpers.close()
        registry.close()
        raise
    log.info("serving the API on %s", cfg.socket("api"))
    reclaim_at_start(registry, helpers.storage)
    watcher = ExitWatcher(flows)
    watcher.start()
    return ApiService(
        registry=registry, helpers=helpers, flows=flows, server=server, task=task, watcher=watcher
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = runtime.base_parser("fcd-api", "fcd public API (HTTP/JSON on a Unix socket)")
    return runtime.run("fcd-api", build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
