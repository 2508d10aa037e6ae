"""fcd-api's listening sockets and the access each grants (:mod:`fcd_api.readonly`).

* ``api.sock`` (group ``security.api_group``): the whole API.
* ``api-ro.sock`` (group ``security.readers_group``; ``api.readonly_socket``):
  GET routes and ``/metrics`` only.
* ``api.metrics_listen`` (``host:port``, off by default): ``GET /metrics`` only.

Under systemd the sockets come from the socket units (told apart by their own
addresses); otherwise fcd-api binds them itself, 0660 with the group named.
"""

from __future__ import annotations

import grp
import logging
import socket
from pathlib import Path

from fcd_common import runtime
from fcd_common.config import Config
from fcd_common.rpc import bind_unix

from .readonly import Access, listener_key

__all__ = ["api_sockets", "key", "parse_hostport"]

log = logging.getLogger("fcd.api")


def key(sock: socket.socket) -> str:
    return listener_key(sock.getsockname())


def parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _gid(group: str, path: Path) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("group %s does not exist: %s is usable by its owner only", group, path)
        return -1


def _tcp(value: str) -> socket.socket:
    host, port = parse_hostport(value)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def classify(sock: socket.socket, cfg: Config) -> Access:
    if sock.family != socket.AF_UNIX:
        return Access.SCRAPE
    return Access.READ if key(sock) == str(cfg.socket("api-ro")) else Access.FULL


def api_sockets(cfg: Config) -> list[tuple[socket.socket, Access]]:
    """Every listener with its access; the full-access API socket first."""
    inherited = runtime.inherited_sockets()
    out: list[tuple[socket.socket, Access]]
    if inherited:
        out = [(s, classify(s, cfg)) for s in inherited]
        log.info("using %d socket(s) passed by systemd", len(out))
    else:
        api = cfg.socket("api")
        out = [(bind_unix(api, mode=0o660, gid=_gid(cfg.security.api_group, api)), Access.FULL)]
        if cfg.api.readonly_socket:
            ro = cfg.socket("api-ro")
            gid = _gid(cfg.security.readers_group, ro)
            out.append((bind_unix(ro, mode=0o660, gid=gid), Access.READ))
    if cfg.api.metrics_listen and not any(a is Access.SCRAPE for _, a in out):
        try:
            out.append((_tcp(cfg.api.metrics_listen), Access.SCRAPE))
        except OSError as e:
            log.error("cannot listen on %s for /metrics: %s", cfg.api.metrics_listen, e)
    out.sort(key=lambda sa: sa[1] is not Access.FULL)
    for s, access in out:
        log.info("listening on %s (%s)", key(s), access.value)
    return out
