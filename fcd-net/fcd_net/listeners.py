"""Which host ports have a local listener: a sock_diag dump of fcd-net's namespace.

A port mapping DNATs every new connection to a local address and port; if a
host service listens there (mongod on 127.0.0.1:27017, a game server on
0.0.0.0:25565) the mapping would take its clients (issue #9, finding 1). So
fcd-net refuses such a port when a mapping is added, naming the listener.

The dump goes through NETLINK_SOCK_DIAG (pyroute2's ``DiagSocket``), i.e.
AF_NETLINK, which fcd-net's unit already allows; it needs no capability and
sees every socket of the namespace, whoever owns it. A listener is a TCP
socket in LISTEN or an unconnected (bound) UDP socket, IPv4 or IPv6.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Any

from pyroute2.netlink.diag import DiagSocket
from pyroute2.netlink.exceptions import NetlinkError

from fcd_common.errors import Internal

TCP_LISTEN = 10
UDP_UNCONNECTED = 7  # TCP_CLOSE: what sock_diag reports for a bound, unconnected UDP socket

Busy = Mapping[tuple[str, int], str]
"""(protocol, port) -> the listener, e.g. ``"tcp 127.0.0.1:27017 (uid 999)"``."""


def describe(proto: str, addr: str, port: int, uid: int) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"{proto} {host}:{port} (uid {uid})"


class Listeners:
    """Every listening socket on a port of ``[lo, hi]`` in this network namespace."""

    def busy(self, lo: int, hi: int) -> Busy:
        out: dict[tuple[str, int], str] = {}
        kinds = (
            ("tcp", socket.IPPROTO_TCP, 1 << TCP_LISTEN),
            ("udp", socket.IPPROTO_UDP, 1 << UDP_UNCONNECTED),
        )
        try:
            with DiagSocket() as ds:
                ds.bind()
                for family in (socket.AF_INET, socket.AF_INET6):
                    for name, proto, states in kinds:
                        for m in _dump(ds, family, proto, states):
                            port = int(m["idiag_sport"])
                            if lo <= port <= hi:
                                text = describe(name, str(m["idiag_src"]), port, m["idiag_uid"])
                                out.setdefault((name, port), text)
        except (OSError, NetlinkError) as e:
            # fail closed: without the list no mapping can be shown to be safe
            raise Internal(f"cannot list the host's listening sockets (sock_diag): {e}") from None
        return out


def _dump(ds: Any, family: int, proto: int, states: int) -> tuple[Any, ...]:
    try:
        return tuple(ds.get_sock_stats(family=family, states=states, protocol=proto))
    except NetlinkError as e:
        # a kernel without IPv6 has no AF_INET6 sockets to find
        if family == socket.AF_INET6 and e.code in (errno.ENOENT, errno.EAFNOSUPPORT):
            return ()
        raise
