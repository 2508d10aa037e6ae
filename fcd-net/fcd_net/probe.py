"""TCP health probes of a guest, from where a client reaches it (``net.probe_tcp``).

fcd-api has no network at all (``PrivateNetwork=yes``), and in netns mode the
guest sits in a namespace of its own: fcd-net, which owns every VM's network
and already enters VM namespaces (CAP_SYS_ADMIN for ``setns``, see
:mod:`fcd_net.netns`), makes the connection. Where to connect comes from the
VM's lease only -- bridge mode: the guest's address from fcd-net's own
namespace; netns mode: the guest's address inside the VM's namespace -- never
an address or path from the caller; the caller names only the port.

The socket is created on the worker thread (a socket stays bound to the
namespace it was made in, and ``setns`` moves only that thread, which returns
home at once); the connect itself then runs on the event loop, so a slow guest
never holds the worker that serves every other request.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from dataclasses import dataclass

from pyroute2 import netns as pnetns

from fcd_common.errors import NotFound
from fcd_common.proto.common import ProbeResult

from .plan import Lease, netns_path

__all__ = ["Target", "connect", "open_socket", "target"]


@dataclass(frozen=True)
class Target:
    ip: str
    netns: str | None
    """netns mode: the namespace name the socket is made in."""


def target(lease: Lease | None, vm_id: str) -> Target:
    """Where the guest of ``lease`` is reached (pure)."""
    if lease is None:
        raise NotFound(f"VM {vm_id} has no network lease", details={"id": vm_id})
    if lease.mode == "netns" and lease.netns:
        return Target(ip=lease.ip, netns=lease.netns)
    return Target(ip=lease.ip, netns=None)


def open_socket(t: Target) -> socket.socket:
    """A non-blocking TCP socket in the target's namespace (call on the worker thread)."""
    if t.netns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    else:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(netns_path(t.netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            pnetns.setns(fd)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            finally:
                pnetns.setns(home)
        finally:
            os.close(fd)
            os.close(home)
    sock.setblocking(False)
    return sock


async def connect(sock: socket.socket, ip: str, port: int, timeout_s: float) -> ProbeResult:
    """Connect (and close at once); the outcome as a ProbeResult, never an exception."""
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), timeout_s)
        ok, detail = True, f"{ip}:{port} accepted the connection"
    except TimeoutError:
        ok, detail = False, f"{ip}:{port}: no answer within {timeout_s:g}s"
    except OSError as e:  # uvloop words it "Connect call failed": say the errno's text
        text = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.EPERM:  # the unit's IPAddressDeny= (systemd/install allows pools)
            text += " (is the guest pool in fcd-net.service's IPAddressAllow=?)"
        ok, detail = False, f"{ip}:{port}: {text}"
    finally:
        sock.close()
    took = round((time.monotonic() - t0) * 1000, 3)
    return ProbeResult(ok=ok, detail=detail, took_ms=took)
