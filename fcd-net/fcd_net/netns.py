"""netns-mode applier: one network namespace per VM (pyroute2 + libnftables).

Capabilities. Creating a namespace (``unshare(CLONE_NEWNET)`` plus the bind
mount on ``/run/netns/<name>`` that keeps it alive) and entering one
(``setns``) need CAP_SYS_ADMIN; everything done inside it (veth, TAP, owner
ioctls, addresses, routes, nftables) needs only CAP_NET_ADMIN there. fcd-net
is the daemon that owns every network object, so it holds both: handing the
namespaces to fcd-vmm (which already has CAP_SYS_ADMIN for the jailer) would
force fcd-vmm to also take CAP_NET_ADMIN and a second copy of the network
logic. fcd-net uses CAP_SYS_ADMIN only here, for namespaces under its own
prefix, derived from the VM id -- never a name or path from a caller. The
jailer (run by fcd-vmm) only *joins* the namespace with ``--netns``.

``setns`` changes the namespace of the calling *thread* only: fcd-net runs
every kernel operation on its single worker thread, which enters a VM
namespace, opens fresh netlink/nftables sockets there (a socket stays bound
to the namespace it was created in) and always returns to the daemon's own
namespace before the next request.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pnetns
from pyroute2.netlink.exceptions import NetlinkError

from fcd_common.config import NetworkConfig
from fcd_common.errors import Internal

from . import ns_rules
from .links import set_route_localnet
from .plan import NETNS_DIR, NETNS_VETH, Lease, netns_guest, netns_path, netns_tap

log = logging.getLogger("fcd.net.netns")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_freer = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fcd-net-free")


class Namespaces:
    """Create, configure, enter and remove VM namespaces (call from one thread only)."""

    def __init__(self, net: NetworkConfig) -> None:
        self.net = net
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._home)

    # --- observation -------------------------------------------------------------
    def list(self) -> list[str]:
        """Names under /run/netns with fcd-net's prefix."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.net.netns_prefix))

    def exists(self, name: str) -> bool:
        return Path(netns_path(name)).exists()

    @contextmanager
    def inside(self, name: str) -> Iterator[None]:
        """Run the block with this thread in namespace ``name``."""
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            pnetns.setns(fd)
            try:
                yield
            finally:
                pnetns.setns(self._home)
        finally:
            os.close(fd)

    # --- changes -----------------------------------------------------------------
    def _create(self, name: str) -> None:
        """A new namespace bound at ``/run/netns/<name>``, made by this thread.

        ``unshare(CLONE_NEWNET)`` moves only the calling thread; the bind mount of
        ``/proc/thread-self/ns/net`` keeps the namespace alive, and the thread goes
        back to the daemon's namespace whatever happens. (pyroute2's ``netns.create``
        forks the whole daemon to do the same: ~8 ms of CPU per VM.)"""
        self._check(name)
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            pnetns.attach(name, "thread-self")
        finally:
            pnetns.setns(self._home)

    def _check(self, name: str) -> None:
        if not name.startswith(self.net.netns_prefix) or "/" in name:
            raise Internal(f"refusing namespace {name!r}: not under fcd-net's prefix")

    def build(self, lease: Lease) -> None:
        """Namespace, veth pair, TAP (owned by the jail uid), addresses, routes, NAT: idempotent."""
        assert lease.netns and lease.veth and lease.host_ip and lease.veth_gateway
        self._check(lease.netns)
        if not self.exists(lease.netns):
            self._create(lease.netns)
            log.info("created namespace %s", lease.netns)
        gw, _ = netns_guest(self.net)
        tap_net = ipaddress.IPv4Network(self.net.netns_subnet)
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=lease.veth):
                ipr.link(
                    "add",
                    ifname=lease.veth,
                    kind="veth",
                    peer={"ifname": NETNS_VETH, "net_ns_fd": netns_path(lease.netns)},
                )
            (idx,) = ipr.link_lookup(ifname=lease.veth)
            _addr(ipr, idx, lease.veth_gateway, 31)
            ipr.link("set", index=idx, state="up")
        # Only with localhost_port_mappings (the base table, whose input chain stops a
        # guest from addressing the host's loopback, exists since fcd-net's start).
        set_route_localnet(lease.veth, self.net.localhost_port_mappings)
        with self.inside(lease.netns):
            with IPRoute() as ipr:
                (lo,) = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=lo, state="up")
                tap = netns_tap(self.net)
                try:
                    ipr.link(
                        "add", ifname=tap, kind="tuntap", mode="tap", uid=lease.uid, gid=lease.gid
                    )
                except (NetlinkError, OSError) as e:
                    code = e.code if isinstance(e, NetlinkError) else e.errno
                    if code != errno.EBUSY:  # held open by Firecracker: keep it
                        raise
                (t,) = ipr.link_lookup(ifname=tap)
                _addr(ipr, t, str(gw), tap_net.prefixlen)
                ipr.link("set", index=t, state="up")
                (v,) = ipr.link_lookup(ifname=NETNS_VETH)
                _addr(ipr, v, lease.host_ip, 31)
                ipr.link("set", index=v, state="up")
                try:
                    ipr.route("replace", dst="0.0.0.0/0", gateway=lease.veth_gateway, oif=v)
                except NetlinkError as e:
                    raise Internal(f"default route in {lease.netns}: {e}") from None
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            _nft_run(ns_rules.ns_ruleset(self.net, lease), f"rules in {lease.netns}")
        log.info("namespace %s: %s via %s", lease.netns, lease.host_ip, lease.veth)

    def remove(self, name: str, veth: str | None = None) -> bool:
        """Delete the host end of the veth (its peer goes with it) and the namespace."""
        self._check(name)
        if veth is not None:
            with IPRoute() as ipr:
                try:
                    ipr.link("del", ifname=veth)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise Internal(f"delete {veth}: {e}") from None
        if not self.exists(name):
            return False
        pnetns.remove(name)
        log.info("removed namespace %s", name)
        return True


def _addr(ipr: Any, index: int, address: str, prefixlen: int) -> None:
    try:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise Internal(f"add {address}/{prefixlen}: {e}") from None


def _nft_run(cmd: dict[str, Any], what: str) -> None:
    import nftables

    nft = nftables.Nftables()  # a new context: its netlink socket lives in this namespace
    nft.set_json_output(True)
    rc, _, err = nft.json_cmd(cmd)
    # freeing the context closes its socket, which waits in the kernel (3-15 ms of wall
    # time, ~0.1 ms of CPU): done on a thread of its own, not on fcd-net's only worker
    box = [nft]
    del nft
    _freer.submit(box.clear)
    if rc != 0:
        raise Internal(f"nftables refused {what}: {str(err).strip() or f'rc {rc}'}")
