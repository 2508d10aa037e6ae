"""Firecracker API client over the jail's Unix socket (httptools, :mod:`fcd_vmm.fchttp`).

The one seam where Firecracker's answers become fcd errors:

- 204 (PUT/PATCH) and 200 (GET) are success;
- 400 (or 413) with ``{"fault_message": ...}`` — or micro-http's ``{"error": ...}``
  for HTTP-level failures — becomes :class:`FirecrackerError` carrying the fault
  text, the method and the path;
- a socket that cannot be reached becomes :class:`Unavailable`, a request
  that takes too long :class:`DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from fcd_common.errors import DeadlineExceeded, FirecrackerError, Internal, Unavailable

from . import fchttp, jailopen
from .plan import ApiCall, JailPaths

DEFAULT_TIMEOUT = 10.0
NEVER_PATCH = "/balloon/statistics"
SUN_PATH_MAX = 108


def fault_text(status: int, content: bytes) -> str:
    """The error text of a non-success Firecracker reply."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("fault_message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    text = content.decode(errors="replace").strip()
    return text or f"HTTP {status} without a body"


class FirecrackerClient:
    """``async with FirecrackerClient(sock) as fc: await fc.put("/logger", {...})``."""

    def __init__(
        self, socket_path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, _sock_fd: int = -1
    ) -> None:
        self.socket_path = str(socket_path)
        if _sock_fd >= 0:  # from in_jail(): the checked inode, through its O_PATH fd
            self._dir_fd, self._connect_path = _sock_fd, f"/proc/self/fd/{_sock_fd}"
        else:
            self._dir_fd, self._connect_path = _short_path(self.socket_path)
        self.timeout = timeout
        # plain HTTP/1.1 over the Unix socket, one keep-alive connection (fchttp.py)
        self._conn = fchttp.Connection(self._connect_path)

    @classmethod
    def in_jail(
        cls, paths: JailPaths, uid: int, *, timeout: float = DEFAULT_TIMEOUT
    ) -> FirecrackerClient:
        """A client of VM ``paths.vm_id``'s Firecracker: the socket is opened inside the
        jail without following symlinks (:mod:`fcd_vmm.jailopen`), must be a socket owned
        by the jail ``uid``, and is connected to through its pinned descriptor, so a
        jail that swaps its socket for a link to another VM's reaches nothing."""
        rel = str(paths.api_socket.relative_to(paths.root))
        try:
            fd = jailopen.open_socket(paths.root, rel, uid)
        except (OSError, ValueError) as e:
            raise Unavailable(
                f"Firecracker API socket of VM {paths.vm_id} is not usable: "
                f"{getattr(e, 'strerror', None) or e}",
                details={"path": str(paths.api_socket)},
            ) from None
        return cls(paths.api_socket, timeout=timeout, _sock_fd=fd)

    async def __aenter__(self) -> FirecrackerClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            self._conn.close()
        finally:
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if method == "PATCH" and path.rstrip("/") == NEVER_PATCH:
            # v1.7.0 aborts on it after boot (FIRECRACKER.md §9): the VM would be gone
            raise Internal(f"refusing PATCH {NEVER_PATCH}: the interval is set at create only")
        data = None if body is None else msgspec.json.encode(body)
        try:
            async with asyncio.timeout(self.timeout):
                status, content = await self._conn.request(method, path, data)
        except TimeoutError:
            raise DeadlineExceeded(
                f"Firecracker API {method} {path}: no answer on {self.socket_path}",
                details={"path": path},
            ) from None
        except fchttp.BadRequest as e:  # fcd's own paths: a bug, not Firecracker's fault
            raise Internal(f"Firecracker API: {e}") from None
        except (fchttp.ProtocolError, fchttp.TooLarge, OSError) as e:
            raise Unavailable(
                f"Firecracker API {method} {path}: cannot reach {self.socket_path}: {e}",
                details={"path": path},
            ) from None
        if status in (200, 204):
            if status == 200 and content:
                try:
                    return json.loads(content)
                except ValueError:
                    raise FirecrackerError(
                        f"Firecracker API {method} {path}: reply is not JSON",
                        details={"path": path, "status": status},
                    ) from None
            return None
        fault = fault_text(status, content)
        raise FirecrackerError(
            f"Firecracker API {method} {path}: {fault}",
            details={
                "path": path,
                "method": method,
                "status": status,
                "fault_message": fault,
            },
        )

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def put(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PUT", path, body)

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PATCH", path, body)

    async def call(self, call: ApiCall) -> Any:
        return await self.request(call.method, call.path, call.body)

    async def wait_ready(self, attempts: int = 20) -> dict[str, Any]:
        """``GET /`` once the socket file exists.

        Firecracker binds and then listens, so a connect can meet the socket in
        the microseconds between the two (ECONNREFUSED). Only that case is
        retried, a bounded number of times; the socket's *appearance* is awaited
        by inotify, never polled.
        """
        for i in range(attempts):
            try:
                info = await self.get("/")
            except Unavailable:
                if i == attempts - 1 or not await _refused(self._connect_path):
                    raise
                await asyncio.sleep(0.005 * (i + 1))
                continue
            return info if isinstance(info, dict) else {}
        raise AssertionError("unreachable")


def _short_path(path: str) -> tuple[int, str]:
    """A connectable name for ``path`` that fits in ``sun_path`` (108 bytes).

    Jail sockets are deep (``<base>/<exec>/<64-char id>/root/run/...``), so the
    client connects through ``/proc/self/fd/<dir fd>/<name>`` with the socket's
    directory held open for the client's lifetime.
    """
    if len(os.fsencode(path)) < SUN_PATH_MAX:
        return -1, path
    parent, name = os.path.split(path)
    try:
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1, path  # connecting will fail and say so
    return fd, f"/proc/self/fd/{fd}/{name}"


async def _refused(path: str) -> bool:
    """True if connecting to ``path`` is refused right now (bound, not yet listening)."""
    try:
        _r, w = await asyncio.open_unix_connection(path)
    except ConnectionRefusedError:
        return True
    except OSError as e:
        return e.errno == errno.ECONNREFUSED
    w.close()
    return True  # it listens now: worth another try
