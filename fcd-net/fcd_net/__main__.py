"""Composition root of the ``fcd-net`` daemon."""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

from fcd_common import runtime
from fcd_common.config import Config
from fcd_common.errors import FcdError, Internal
from fcd_common.proto.net import PROTOCOL
from fcd_common.service import serve_rpc

from .firewall import Firewall
from .leases import LeaseStore
from .links import Links, enable_ipv4_forwarding
from .listeners import Listeners
from .netns import Namespaces
from .reserved_ports import reserve
from .service import NetCore, NetService

log = logging.getLogger("fcd.net")


def make_core(cfg: Config) -> NetCore:
    """Build and start the core (runs on the worker thread that will own it)."""
    net = cfg.network
    # The host-port range is never handed out as ephemeral ports (issue #9, finding 1).
    try:
        reserve(net.port_min, net.port_max)
    except OSError as e:
        raise Internal(f"cannot reserve host ports {net.port_min}-{net.port_max}: {e}") from None
    core = NetCore(
        cfg,
        LeaseStore(cfg.state("net")),
        Links(),
        Firewall(net),
        Namespaces(net),
        listeners=Listeners(),
    )
    # route_localnet (only with network.localhost_port_mappings) is set by the core
    # once its nft tables exist.
    core.start()
    # Routed guest traffic (egress, port mappings, netns mode) needs forwarding.
    if enable_ipv4_forwarding():
        log.info("enabled IPv4 forwarding for guest traffic")
    return core


async def build(ctx: runtime.Context) -> runtime.Service:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcd-net")
    try:
        core = await asyncio.get_running_loop().run_in_executor(executor, make_core, ctx.cfg)
    except FcdError as e:
        executor.shutdown(wait=False)
        log.error("cannot start: %s", e)
        raise SystemExit(1) from None
    except BaseException:
        executor.shutdown(wait=False)
        raise
    svc = NetService(core, executor)
    return await serve_rpc(ctx, "net", PROTOCOL, svc, status=svc.status, on_close=svc.close)


def main(argv: list[str] | None = None) -> int:
    parser = runtime.base_parser(
        "fcd-net", "fcd network helper: bridge, TAPs, address pool, nftables"
    )
    return runtime.run("fcd-net", build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
