"""The one place that owns a daemon's life: event loop, signals, readiness, shutdown.

``run(name, factory)`` installs uvloop, sets up logging, builds the service
(``await factory(ctx)``), reports ``READY=1`` to systemd, and waits for
SIGTERM/SIGINT. On a signal it reports ``STOPPING=1`` and gives the service
``limits.shutdown_grace_s`` to close; past that it exits non-zero. While
running it refreshes ``STATUS=`` from the service and pings the watchdog at
half of ``WATCHDOG_USEC`` from the event loop, so a stuck loop gets restarted.

Sockets come from systemd (``LISTEN_FDS``) when it passed them, else are
bound here with the owner and mode asked for.

Before anything else a daemon takes an exclusive ``flock`` on ``<its state
dir>/lock`` and writes its pid there; a second copy on the same state dir (an
orphan of a killed ``fcd up``, a second suite) refuses to start, naming the
holder, instead of serving beside it and overwriting its records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pwd
import signal
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from . import config as config_mod
from . import logs
from .rpc import Caller, bind_unix

log = logging.getLogger("fcd.runtime")

SD_LISTEN_FDS_START = 3
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

_DAEMONS: dict[str, Literal["api", "net", "storage", "vmm"]] = {
    "fcd-api": "api",
    "fcd-net": "net",
    "fcd-storage": "storage",
    "fcd-vmm": "vmm",
}
# Owner-only except fcd-storage's, which fcd-vmm reads (the units' StateDirectoryMode=).
_STATE_MODES = {"storage": 0o750}  # fcd-vmm (root) reads it; nobody else (#9 finding 6)


class StateLocked(Exception):
    """Another process holds this daemon's state-dir lock."""


def lock_state_dir(directory: Path, mode: int = 0o700) -> int:
    """Take the exclusive lock on ``directory/lock`` and write our pid in it.

    Returns the fd (close-on-exec: no child, no Firecracker, ever holds it); the
    lock lasts as long as it is open. Raises ``StateLocked`` naming the file and
    the holder's pid when another process has it, ``OSError`` when the file
    cannot be opened.
    """
    directory.mkdir(mode=mode, parents=True, exist_ok=True)
    path = directory / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process (pid not yet written)"
        raise StateLocked(f"{path} is held by {who}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def notify(*states: str) -> bool:
    """sd_notify; a no-op (False) without ``NOTIFY_SOCKET``."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    from systemd.daemon import notify as sd_notify

    try:
        return bool(sd_notify("\n".join(states)))
    except OSError as e:  # the manager went away: readiness is advisory, never fatal
        log.debug("sd_notify failed: %s", e)
        return False


def inherited_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation for this process (consumed once)."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return []
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.set_inheritable(fd, False)
            socks.append(socket.socket(fileno=fd))
    return socks


def listen(path: Path, *, mode: int = 0o600, uid: int = -1, gid: int = -1) -> socket.socket:
    """The daemon's listening socket: the activated one if any, else bound at ``path``."""
    socks = inherited_sockets()
    if socks:
        log.info("using socket passed by systemd (%d fd)", len(socks))
        return socks[0]
    return bind_unix(path, mode=mode, uid=uid, gid=gid)


def helper_peers(cfg: config_mod.Config) -> dict[int, Caller]:
    """Who may use a helper socket: root (ADMIN) and the fcd-api user (API), if it exists.

    When fcd-api runs as root (``security.api_user = "root"``, as under ``fcd up``)
    uid 0 is both.
    """
    peers = {0: Caller.ADMIN}
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(cfg.security.api_user).pw_uid
        peers[uid] = peers.get(uid, Caller.API) | Caller.API
    return peers


class Service(Protocol):
    async def close(self, grace: float) -> None: ...

    def status(self) -> str: ...


@dataclass
class Context:
    name: str
    cfg: config_mod.Config
    args: argparse.Namespace
    stop: asyncio.Event = field(default_factory=asyncio.Event)


Factory = Callable[[Context], Awaitable[Service]]


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=name, description=description)
    p.add_argument(
        "--config", help=f"config file (default $FCD_CONFIG or {config_mod.DEFAULT_PATH})"
    )
    return p


async def _watch(ctx: Context, service: Service, period: float | None) -> None:
    last = ""
    while True:
        status = service.status()
        states = ["WATCHDOG=1"] if period else []
        if status != last:
            states.append(f"STATUS={status}")
            last = status
        if states:
            notify(*states)
        await asyncio.sleep(period or 5.0)


async def _amain(ctx: Context, factory: Factory) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stop.set)
    service = await factory(ctx)
    wd_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    period = wd_usec / 2e6 if wd_usec else None
    notify("READY=1", f"STATUS={service.status()}")
    log.info("%s ready: %s", ctx.name, service.status())
    watcher = asyncio.create_task(_watch(ctx, service, period))
    await ctx.stop.wait()
    notify("STOPPING=1")
    log.info("%s stopping", ctx.name)
    watcher.cancel()
    grace = ctx.cfg.limits.shutdown_grace_s
    try:
        await asyncio.wait_for(asyncio.shield(service.close(grace)), grace + 1.0)
    except TimeoutError:
        log.error("%s did not stop within %.1fs", ctx.name, grace)
        return 1
    return 0


def run(
    name: str, factory: Factory, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> int:
    args = parser.parse_args(argv)
    logs.setup(name)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        log.error("invalid configuration: %s", e)
        return EX_CONFIG
    short = _DAEMONS[name]
    state = cfg.state(short)
    try:
        logs.use_vm_store(Path(cfg.paths.state_dir) / "logs")
    except OSError as e:  # the daemon's work does not depend on it
        log.error("%s: no per-VM log files: %s", name, e)
    try:
        lock_fd = lock_state_dir(state, _STATE_MODES.get(short, 0o700))
    except StateLocked as e:
        log.error("%s: another %s runs on this state dir: %s", name, name, e)
        return EX_TEMPFAIL
    except OSError as e:
        log.error("%s: cannot lock state dir %s: %s", name, state, e)
        return EX_CANTCREAT
    ctx = Context(name=name, cfg=cfg, args=args)
    import uvloop

    try:
        return uvloop.run(_amain(ctx, factory))
    except KeyboardInterrupt:
        return 130
    finally:
        os.close(lock_fd)
