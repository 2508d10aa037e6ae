"""Netlink applier (pyroute2): the bridge and the per-VM TAP devices.

The only module of fcd-net that talks rtnetlink. Every method is synchronous:
pyroute2's asyncio core cannot run on uvloop (it needs an AF_NETLINK datagram
endpoint uvloop does not offer), so the service calls these from one
dedicated worker thread. A ``Links`` keeps one ``IPRoute`` socket for the
thread that uses it (opening one costs more than the request it serves: 13% of
fcd-net's CPU when each call had its own) and drops it after a failure that
is not the kernel's answer to a request, so a broken socket is never reused.

TAPs are created persistent with ``TUNSETOWNER``/``TUNSETGROUP`` set to the
VM's jail uid/gid (the ioctls on /dev/net/tun that pyroute2's ``kind="tuntap"``
issues, with its constants), so the jailed Firecracker can attach to its TAP without
CAP_NET_ADMIN -- and no other unprivileged user can. The common case of attaching
a fresh TAP to the bridge and deleting an idle one also goes by the classic
interface ioctls (``brctl``'s and ``ip tuntap``'s), a quarter of the CPU of a
pyroute2 request; anything unusual falls back to netlink.
"""

from __future__ import annotations

import array
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFT_TAP, tuntap

from fcd_common.errors import Conflict, FailedPrecondition, FcdError, Internal

log = logging.getLogger("fcd.net.links")

IFF_UP = 0x1
TUN_TYPE_TAP = 2
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True, slots=True)
class Link:
    """What fcd-net needs to know about one interface."""

    index: int
    name: str
    kind: str | None
    up: bool
    master: int | None
    tun_type: int | None = None
    owner: int | None = None
    group: int | None = None

    @property
    def is_tap(self) -> bool:
        return self.kind == "tun" and self.tun_type == TUN_TYPE_TAP


def _parse(msg: Any) -> Link:
    info: dict[str, Any] = {}
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = None
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND")
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if data is not None and hasattr(data, "get_attr"):
            for key in ("IFLA_TUN_TYPE", "IFLA_TUN_OWNER", "IFLA_TUN_GROUP"):
                info[key] = data.get_attr(key)
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=kind,
        up=bool(msg["flags"] & IFF_UP),
        master=msg.get_attr("IFLA_MASTER"),
        tun_type=info.get("IFLA_TUN_TYPE"),
        owner=info.get("IFLA_TUN_OWNER"),
        group=info.get("IFLA_TUN_GROUP"),
    )


_SIOCGIFINDEX = 0x8933
_IFREQ = struct.Struct("16si20x")  # struct ifreq: name, then ifr_ifindex in the union


def _ifname(name: str, action: str) -> bytes:
    """``name`` as the kernel takes it; a name it would cut (IFNAMSIZ) or reject is an
    FcdError, as from netlink."""
    raw = name.encode()
    if not 0 < len(raw) < 16:
        raise _err(f"{action} {name!r}", OSError(errno.EINVAL, "invalid interface name"))
    return raw


def _index(name: str) -> int | None:
    """The interface's index in this thread's namespace, None if there is none by that
    name (ENODEV); any other failure is an FcdError, as from netlink. One ioctl."""
    raw = _ifname(name, "look up")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            out = fcntl.ioctl(s.fileno(), _SIOCGIFINDEX, _IFREQ.pack(raw, 0))
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        raise _err(f"look up {name}", e) from None
    return int(_IFREQ.unpack(out)[1])


_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags
_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_LEN = 196  # struct ethtool_drvinfo
_IFREQ_DATA = struct.Struct("16sP16x")  # struct ifreq: name, then ifr_data (a pointer)


def _tun_type(name: str) -> str | None:
    """``"tap"`` or ``"tun"`` if ``name`` is a tun-driver device of this thread's
    namespace, ``""`` for any other interface, None if there is none by that name.

    One ``ETHTOOL_GDRVINFO`` ioctl (what ``ethtool -i`` prints): the tun driver names
    itself ``tun`` and puts the device type in ``bus_info``. The same answer as
    decoding ``IFLA_LINKINFO`` from an ``RTM_GETLINK``, at a fortieth of the CPU."""
    raw = _ifname(name, "look up")
    buf = array.array("B", struct.pack("I", _ETHTOOL_GDRVINFO) + bytes(_DRVINFO_LEN - 4))
    addr, _ = buf.buffer_info()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, _IFREQ_DATA.pack(raw, addr))
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        if e.errno == errno.EOPNOTSUPP:  # no ethtool ops (lo): not a tun device
            return ""
        raise _err(f"look up {name}", e) from None
    data = buf.tobytes()
    driver = data[4:36].split(b"\0", 1)[0]
    bus_info = data[100:132].split(b"\0", 1)[0]
    if driver != b"tun":
        return ""
    return bus_info.decode(errors="replace")


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCBRADDIF = 0x89A2


def _ioctl_socket() -> socket.socket:
    """A socket to issue interface ioctls on, in this thread's namespace."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)


@contextmanager
def _tun_attached(raw: bytes) -> Iterator[int]:
    """A /dev/net/tun descriptor attached (``TUNSETIFF``, IFF_TAP) to TAP ``raw``, which
    the kernel creates if it does not exist; closed on the way out. OSError as the
    kernel gives it (EBUSY: a process holds the TAP)."""
    if tuntap.TUNSETIFF is None:  # pyroute2 knows no tun ioctls for this machine
        raise OSError(errno.EOPNOTSUPP, "no tun ioctls here")
    fd = os.open(tuntap.TUNDEV, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, tuntap.TUNSETIFF, _IFREQ_FLAGS.pack(raw, IFT_TAP))
        yield fd
    finally:
        os.close(fd)


def _drop_tap(name: str) -> bool:
    """Remove the persistent TAP ``name`` through /dev/net/tun; False, with the TAP
    left as it was, if that way is closed: a process holds it (EBUSY), it is not a
    single-queue TAP (EINVAL), or this machine has no tun ioctls. The caller has seen
    ``name`` is a TAP."""
    raw = _ifname(name, "delete")
    try:
        with _tun_attached(raw) as fd:
            # not persistent any more: the kernel unregisters it when fd closes
            fcntl.ioctl(fd, tuntap.TUNSETPERSIST, 0)
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise _err(f"delete {name}", e) from None
    return True


def _err(action: str, e: NetlinkError | OSError) -> FcdError:
    code = e.code if isinstance(e, NetlinkError) else e.errno
    text = errno.errorcode.get(code or 0, str(code))
    msg = f"{action}: {text} ({e})"
    if code == errno.EBUSY:
        return FailedPrecondition(msg)
    if code == errno.EEXIST:
        return Conflict(msg)
    return Internal(msg)


class Links:
    """Bridge and TAP operations, each idempotent where the caller needs it.

    Each thread that calls it gets its own netlink socket (fcd-net has one worker
    thread), kept for the next call."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        """This thread's netlink socket. A failure other than the kernel's answer to
        a request (NetlinkError, or the FcdError made of one) closes it, so the next
        call opens a fresh one instead of reusing a socket in an unknown state."""
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = IPRoute()
        try:
            yield ipr
        except (NetlinkError, FcdError):
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close this thread's socket (the next call opens a new one)."""
        ipr = getattr(self._local, "ipr", None)
        self._local.ipr = None
        if ipr is not None:
            with suppress(Exception):
                ipr.close()

    def get(self, name: str) -> Link | None:
        if _index(name) is None:  # absent (a new VM's TAP): no netlink round trip to learn it
            return None
        with self._ipr() as ipr:
            return self._get(ipr, name)

    def is_tap(self, name: str) -> bool | None:
        """True if ``name`` is a TAP, False if it is another interface, None if absent."""
        kind = _tun_type(name)
        return None if kind is None else kind == "tap"

    @staticmethod
    def _get(ipr: Any, name: str) -> Link | None:
        try:
            msgs = ipr.link("get", ifname=name)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise _err(f"look up {name}", e) from None
        for msg in msgs:
            return _parse(msg)
        return None

    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface) -> Link:
        """The bridge exists, is up and carries ``gateway`` (address/prefix)."""
        with self._ipr() as ipr:
            link = self._get(ipr, name)
            if link is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge")
                except NetlinkError as e:
                    raise _err(f"create bridge {name}", e) from None
                log.info("created bridge %s", name)
                link = self._get(ipr, name)
                assert link is not None
            if link.kind != "bridge":
                raise Conflict(f"{name} exists and is not a bridge (kind {link.kind})")
            # no multicast snooping (also on a bridge an older fcd made): guests need no
            # IGMP/MLD state on the bridge (their L2 traffic is what the bridge table
            # allows), and with it every port change re-arms a timer on every port
            try:
                ipr.link("set", index=link.index, kind="bridge", br_mcast_snooping=0)
            except NetlinkError as e:
                raise _err(f"turn off multicast snooping on {name}", e) from None
            have = {
                (a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.addr("dump", index=link.index, family=socket.AF_INET)
            }
            want = (str(gateway.ip), gateway.network.prefixlen)
            if want not in have:
                try:
                    ipr.addr("add", index=link.index, address=want[0], prefixlen=want[1])
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise _err(f"add {gateway} to {name}", e) from None
                log.info("bridge %s has address %s", name, gateway)
            if not link.up:
                ipr.link("set", index=link.index, state="up")
            link = self._get(ipr, name)
            assert link is not None
            return link

    def create_tap(self, name: str, uid: int, gid: int) -> None:
        """Create a persistent TAP owned by uid/gid.

        On an existing, idle TAP the same ioctls re-set its owner; on one a
        process holds open they fail with EBUSY (FailedPrecondition).

        The ioctls pyroute2 issues for ``link("add", kind="tuntap", mode="tap",
        uid=, gid=)`` (its tuntap module: TUNSETIFF with IFF_TAP, TUNSETOWNER,
        TUNSETGROUP, TUNSETPERSIST on /dev/net/tun; its constants), without the
        netlink message pyroute2 builds and runs through its event loop only to
        hand the ioctls these fields: 0.8 -> 0.3 CPU-ms per TAP.
        """
        raw = _ifname(name, "create TAP")
        try:
            with _tun_attached(raw) as fd:
                fcntl.ioctl(fd, tuntap.TUNSETOWNER, uid)
                fcntl.ioctl(fd, tuntap.TUNSETGROUP, gid)
                fcntl.ioctl(fd, tuntap.TUNSETPERSIST, 1)
        except OSError as e:
            raise _err(f"create TAP {name}", e) from None

    def attach(self, name: str, bridge: str) -> None:
        """Make ``name`` a port of ``bridge`` and bring it up -- without IPv6 of its own
        (:func:`disable_ipv6`), set before it comes up.

        Two ioctls for a fresh TAP (``SIOCBRADDIF``, what ``brctl addif`` issues, then
        ``SIOCSIFFLAGS``; the kernel runs the same ``br_add_if`` and ``dev_change_flags``
        as for an ``RTM_NEWLINK`` with ``IFLA_MASTER`` and ``IFF_UP``) instead of a
        pyroute2 request through its event loop: 0.8 -> 0.2 CPU-ms. A TAP that is a
        port already (of this bridge or another: EBUSY) goes the netlink way, which
        keeps or moves it."""
        # indexes by name (SIOCGIFINDEX in this thread's namespace): the same answer as
        # an RTM_GETLINK without decoding every attribute of two full link messages
        br = _index(bridge)
        if br is None:
            raise Internal(f"bridge {bridge} is missing")
        tap = _index(name)
        if tap is None:
            raise Internal(f"{name} vanished while attaching it to {bridge}")
        disable_ipv6(name)
        try:
            with _ioctl_socket() as s:
                fcntl.ioctl(s, _SIOCBRADDIF, _IFREQ.pack(_ifname(bridge, "attach to"), tap))
                raw = _ifname(name, "bring up")
                flags = _IFREQ_FLAGS.unpack(
                    fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ_FLAGS.pack(raw, 0))
                )[1]
                if not flags & IFF_UP:
                    fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ_FLAGS.pack(raw, flags | IFF_UP))
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise _err(f"attach {name} to {bridge}", e) from None
        with self._ipr() as ipr:
            try:
                ipr.link("set", index=tap, master=br, state="up")
            except NetlinkError as e:
                raise _err(f"attach {name} to {bridge}", e) from None

    def names(self) -> list[str]:
        """The name of every interface of this thread's namespace (no attributes decoded)."""
        return [name for _index, name in socket.if_nameindex()]

    def list(self) -> list[Link]:
        """Every interface of this namespace."""
        with self._ipr() as ipr:
            return [_parse(m) for m in ipr.link("dump")]

    def stats(self, name: str) -> dict[str, int] | None:
        """rx/tx bytes, packets, dropped, errors of ``name`` (IFLA_STATS64), None if it is gone."""
        with self._ipr() as ipr:
            try:
                msgs = ipr.link("get", ifname=name)
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    return None
                raise _err(f"read counters of {name}", e) from None
            for msg in msgs:
                st = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
                if st is None:
                    return None
                keys = (
                    "rx_bytes",
                    "rx_packets",
                    "rx_dropped",
                    "rx_errors",
                    "tx_bytes",
                    "tx_packets",
                    "tx_dropped",
                    "tx_errors",
                )
                return {k: int(st[k]) for k in keys}
            return None

    def addresses(self) -> tuple[str, ...]:
        """Every IPv4 address of this namespace (the host's own addresses)."""
        with self._ipr() as ipr:
            out: set[str] = set()
            for a in ipr.addr("dump", family=socket.AF_INET):
                addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                if addr:
                    out.add(str(addr))
            return tuple(sorted(out))

    def set_route_localnet(self, iface: str, on: bool) -> bool:
        """Set ``route_localnet`` of ``iface``; True if it changed. False if the
        interface is gone (nothing to set)."""
        return set_route_localnet(iface, on)

    def delete(self, name: str) -> bool:
        """Delete interface ``name``; False if it did not exist.

        A TAP no process holds goes as ``ip tuntap del`` removes it: attach to it on
        /dev/net/tun, clear ``TUNSETPERSIST``, close (the kernel unregisters it there,
        as for an ``RTM_DELLINK``): 0.9 -> 0.3 CPU-ms against a pyroute2 request.
        Anything else -- another kind of interface, a TAP a process still holds (EBUSY)
        -- goes by netlink."""
        kind = _tun_type(name)
        if kind is None:
            return False
        if kind == "tap" and _drop_tap(name):
            return True
        with self._ipr() as ipr:
            try:
                ipr.link("del", ifname=name)
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    return False
                raise _err(f"delete {name}", e) from None
            return True


def set_route_localnet(iface: str, on: bool) -> bool:
    """``route_localnet`` lets the host reach guests through port mappings on 127.0.0.1
    (DNAT from loopback) -- and lets a guest address the host's loopback, which only
    fcd's nft input chain then stops. True if the value changed; False also if the
    interface is gone."""
    path = Path(f"/proc/sys/net/ipv4/conf/{iface}/route_localnet")
    want = "1" if on else "0"
    try:
        if path.read_text().strip() == want:
            return False
        path.write_text(want + "\n")
    except FileNotFoundError:
        return False
    return True


def disable_ipv6(iface: str) -> bool:
    """No IPv6 on a bridge port: True if it is now off, False if the kernel has no IPv6
    or the interface is gone.

    A port's own addresses are never used (its frames go to the bridge), but the
    kernel gives each one a link-local address and three routes, sends DAD and MLD
    into the guest, and walks the whole IPv6 routing table when the port goes away:
    with 1,000 TAPs on the bridge, half of the kernel's CPU in attaching and deleting
    one (bench/create_delete.py --scale). Guests' own IPv6 is dropped by the bridge
    table anyway (fcd_net.ruleset)."""
    path = Path(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6")
    try:
        with path.open("w") as f:
            f.write("1\n")
    except FileNotFoundError:
        return False
    except OSError as e:
        # a cost and some noise, not a safety matter: the VM still gets its port
        if not _warned_ipv6:
            _warned_ipv6.append(True)
            log.warning("cannot turn off IPv6 on bridge ports (%s): %s", path, e)
        return False
    return True


_warned_ipv6: list[bool] = []


def enable_ipv4_forwarding(path: Path = IP_FORWARD) -> bool:
    """Turn on IPv4 forwarding (needed for guest egress); True if it was off."""
    if path.read_text().strip() == "1":
        return False
    path.write_text("1\n")
    return True
