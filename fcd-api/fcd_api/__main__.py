"""fcd-api's composition root: registry + helper clients + flows + uvicorn on the UDS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from fcd_common import logs, runtime

from . import events, listeners, log_routes, logstore
from .app import create_asgi
from .clients import Helpers
from .metrics_collect import Collector
from .prom import Exposition
from .registry import Registry
from .service import Flows
from .supervision import Supervision

log = logging.getLogger("fcd.api")


class _Server(uvicorn.Server):
    """uvicorn's server, woken once a second instead of ten times while it waits.

    ``Server.main_loop`` sleeps 0.1 s between ticks, and only every tenth tick does
    anything (refresh the Date header); an idle fcd-api spent about 2 CPU-ms a second
    on those wakeups. Here the loop ticks once a second, and setting
    ``should_exit`` (``ApiService.close``) ends it at once instead of at the next tick.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def main_loop(self) -> None:
        # tick 0 each time: on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)


async def start_http(
    app: Any, sock: socket.socket | list[socket.socket], *, grace: float = 10.0
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve ``app`` on the listening ``sock`` (or several) with uvicorn inside the
    running loop.

    Returns once the server accepts connections. This is uvicorn's own
    ``Server._serve`` minus its signal handling (fcd_common.runtime owns signals):
    setting ``server.should_exit`` makes the task finish gracefully.
    """
    config = uvicorn.Config(
        app,
        lifespan="off",
        http="httptools",  # not h11 (pure Python): ~10 % of fcd-api's CPU per create+delete
        log_config=None,
        access_log=False,
        server_header=False,
        # no proxy sits in front of a local socket: X-Forwarded-* is never trusted, and
        # uvicorn's ProxyHeadersMiddleware is not wrapped around every request
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    config.load()
    server = _Server(config)
    server.lifespan = config.lifespan_class(config)
    socks = sock if isinstance(sock, list) else [sock]
    for one in socks:
        one.setblocking(False)
    await server.startup(sockets=socks)

    async def serve() -> None:
        try:
            await server.main_loop()
        finally:
            await server.shutdown(sockets=socks)

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
        supervision: Supervision,
        collector: Collector | None = None,
    ) -> None:
        self.registry = registry
        self.helpers = helpers
        self.flows = flows
        self.server = server
        self.task = task
        self.supervision = supervision
        self.collector = collector

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
        await self.supervision.close()
        if self.collector is not None:
            await self.collector.close()
        await self.helpers.close()
        self.registry.close()
        s = events.store()
        if s is not None:
            events.install(None)
            s.close()


async def build(ctx: runtime.Context) -> ApiService:
    cfg = ctx.cfg
    registry = Registry.open(cfg.state("api") / "registry.db")
    events.install(events.EventStore.open(cfg.state("api") / "events.db"))
    log_routes.install(logstore.open_store(cfg.paths.state_dir, logs.to_journal()))
    helpers = Helpers.from_config(cfg)
    flows = Flows(registry, helpers, cfg.limits, cfg.network)
    collector = Collector(flows, cfg.api.metrics_interval_s)
    # VMs left mid-operation by a crash are repaired by the first reconcile round
    supervision = Supervision(flows, cfg.supervision)
    try:
        socks = listeners.api_sockets(cfg)
        app = create_asgi(
            flows,
            exposition=Exposition(registry, collector),
            listeners={listeners.key(s): access for s, access in socks},
        )
        server, task = await start_http(
            app, [s for s, _ in socks], grace=cfg.limits.shutdown_grace_s
        )
    except BaseException:
        await helpers.close()
        registry.close()
        raise
    log.info("serving the API on %s", cfg.socket("api"))
    supervision.start()
    collector.start()
    return ApiService(
        registry=registry,
        helpers=helpers,
        flows=flows,
        server=server,
        task=task,
        supervision=supervision,
        collector=collector,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = runtime.base_parser("fcd-api", "fcd public API (HTTP/JSON on a Unix socket)")
    return runtime.run("fcd-api", build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
