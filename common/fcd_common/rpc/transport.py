"""Thin asyncio server and client over Unix sockets for the sans-IO codec.

Server: checks the peer's uid with ``SO_PEERCRED`` against its table of
callers before reading a byte, checks each request's ``access`` rule against
what that peer is (:class:`~fcd_common.rpc.codec.Caller`), runs each call in
its own task (so one slow call does not block the connection) and answers
every failure with a coded error.
Nothing a peer sends can crash the daemon: a malformed or unknown call gets
an error reply, an oversized frame closes that one connection.

Client: one connection, many concurrent calls matched by id, a timeout per
call, errors re-raised as the typed :mod:`fcd_common.errors` exceptions;
``call(req)`` returns the reply type ``req`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import reqid
from ..errors import (
    DeadlineExceeded,
    FcdError,
    Internal,
    PermissionDenied,
    ProtocolError,
    Unavailable,
)
from ..oserrors import from_os_error
from .codec import (
    RID_MAX,
    Call,
    Caller,
    Failure,
    FrameDecoder,
    FrameError,
    Protocol,
    Reply,
    Request,
    Result,
    decode_envelope,
    method_of,
)

log = logging.getLogger("fcd.rpc")

R = TypeVar("R", bound=Reply)
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


Handler = Callable[[Any, Peer], Awaitable[Reply]]


def check_table(protocol: Protocol, table: Mapping[type[Request[Any]], Handler]) -> None:
    """A server's table must answer every request of its Protocol and nothing else."""
    missing = set(protocol.requests) - set(table)
    extra = set(table) - set(protocol.requests)
    if missing or extra:
        raise ValueError(
            f"{protocol.name}: no handler for {sorted(t.__name__ for t in missing)};"
            f" not in the protocol: {sorted(t.__name__ for t in extra)}"
        )


class RpcServer:
    """Serve one Protocol on a listening Unix socket."""

    def __init__(
        self,
        protocol: Protocol,
        handlers: Mapping[type[Request[Any]], Handler],
        *,
        peers: Mapping[int, Caller],
        max_inflight_per_conn: int = 64,
    ) -> None:
        check_table(protocol, handlers)
        self.protocol = protocol
        self.handlers = dict(handlers)
        self.peers = dict(peers)
        """uid -> what that peer is; any other uid is refused at connect."""
        self._sem_size = max_inflight_per_conn
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._polls: set[asyncio.Task[None]] = set()
        """Running calls of long-poll requests: cancelled at once on close."""

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._on_connect, sock=sock, limit=_READ_SIZE
        )

    async def close(self, grace: float) -> None:
        """Stop accepting, cancel long polls, give the other running calls ``grace``
        seconds, then cancel the rest."""
        if self._server is not None:
            self._server.close()
        for t in list(self._polls):
            t.cancel()
        if self._calls:
            _, pending = await asyncio.wait(set(self._calls), timeout=grace)
            for t in pending:
                t.cancel()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._calls, *self._conns, return_exceptions=True)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve_conn(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in the transport must not take the daemon down
            log.exception("rpc connection failed")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        peer = peer_credentials(sock)
        caller = self.peers.get(peer.uid)
        if caller is None:
            log.warning(
                "refused %s connection from uid %d pid %d",
                self.protocol.name,
                peer.uid,
                peer.pid,
                extra={"FCD_PEER_UID": peer.uid, "FCD_PEER_PID": peer.pid},
            )
            err = PermissionDenied(f"uid {peer.uid} may not use the {self.protocol.name} socket")
            writer.write(self.protocol.encode_failure(0, err))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return
        mine: set[asyncio.Task[None]] = set()
        try:
            await self._read_calls(reader, writer, peer=peer, caller=caller, mine=mine)
        finally:
            for t in mine:  # the peer is gone: nobody will read these answers
                t.cancel()

    async def _read_calls(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: Peer,
        caller: Caller,
        mine: set[asyncio.Task[None]],
    ) -> None:
        """Read frames and start a task per call until the peer closes."""
        decoder = FrameDecoder()
        sem = asyncio.Semaphore(self._sem_size)
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except ProtocolError as e:
                log.warning("closing %s connection: %s", self.protocol.name, e.message)
                writer.write(self.protocol.encode_failure(0, e))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return
            for payload in frames:
                try:
                    env = decode_envelope(payload)
                except FrameError as e:  # answered to its call (if known); connection kept
                    log.warning("%s: bad frame: %s", self.protocol.name, e.message)
                    writer.write(self.protocol.encode_failure(e.call_id, e))
                    continue
                if not isinstance(env, Call):
                    writer.write(
                        self.protocol.encode_failure(env.id, ProtocolError("expected a call"))
                    )
                    continue
                await sem.acquire()
                t = asyncio.create_task(self._run_call(env, peer, caller, writer))
                self._calls.add(t)
                mine.add(t)
                t.add_done_callback(self._calls.discard)
                t.add_done_callback(mine.discard)
                t.add_done_callback(lambda _t: sem.release())
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _run_call(
        self, call: Call, peer: Peer, caller: Caller, writer: asyncio.StreamWriter
    ) -> None:
        if call.rid:  # this task's own context: the handler's log records carry it
            reqid.request_id.set(call.rid[:RID_MAX])
        try:
            req = self.protocol.decode_request(call.body)
            if type(req).long_poll:
                task = asyncio.current_task()
                assert task is not None
                self._polls.add(task)
                task.add_done_callback(self._polls.discard)
            if not type(req).access & caller:
                raise PermissionDenied(
                    f"{type(req).method()} may not be called by uid {peer.uid}"
                    f" ({caller.name}); it is for {type(req).access.name}",
                    details={"method": type(req).method(), "uid": peer.uid},
                )
            result = await self.handlers[type(req)](req, peer)
            out = self.protocol.encode_result(call.id, result)
        except FcdError as e:
            out = self.protocol.encode_failure(call.id, e)
        except asyncio.CancelledError:
            out = self.protocol.encode_failure(call.id, Unavailable("daemon is shutting down"))
        except OSError as e:  # the log keeps the path; the caller gets a stable code
            log.warning("%s handler failed: %s", self.protocol.name, e, exc_info=True)
            out = self.protocol.encode_failure(call.id, from_os_error(e, _method_name(call)))
        except Exception as e:
            log.exception("%s handler failed", self.protocol.name)
            err = Internal(f"{type(e).__name__} in {_method_name(call)} (see the daemon's log)")
            out = self.protocol.encode_failure(call.id, err)
        if not writer.is_closing():
            writer.write(out)
            with contextlib.suppress(ConnectionError):
                await writer.drain()


def _method_name(call: Call) -> str:

    return method_of(call.body) or "call"


class RpcClient:
    """Calls one daemon over its Unix socket; safe for concurrent use."""

    def __init__(self, path: str | Path, protocol: Protocol, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.protocol = protocol
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Result]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=_READ_SIZE)
            except OSError as e:
                raise Unavailable(
                    f"cannot connect to {self.protocol.name} at {self.path}: {e.strerror or e}",
                    details={"sent": False},
                ) from None
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_loop(reader))
            return writer

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        error: FcdError = Unavailable(f"{self.protocol.name} closed the connection")
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                for payload in decoder.feed(data):
                    try:
                        env = decode_envelope(payload)
                    except FrameError as e:
                        if not e.call_id:
                            raise
                        env = Failure(e.call_id, e.code, e.message)  # that call only
                    self._deliver(env)
        except FcdError as e:
            error = e
        except (OSError, asyncio.IncompleteReadError) as e:
            error = Unavailable(f"{self.protocol.name} connection lost: {e}")
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()

    def _deliver(self, env: Call | Result | Failure) -> None:
        """Complete the pending call ``env`` answers; FcdError for a connection-level
        refusal (permission, bad frame), which fails every call on the connection."""
        if isinstance(env, Failure) and env.id == 0:
            raise env.to_exception()
        fut = self._pending.pop(env.id, None)
        if fut is None or fut.done():
            return  # late reply to a call that timed out
        if isinstance(env, Result):
            fut.set_result(env)
        elif isinstance(env, Failure):
            fut.set_exception(env.to_exception())

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R:
        """Send ``request`` and return its reply, decoded as the type the request names."""
        call_id = next(self._ids)
        data = self.protocol.encode_call(call_id, request, reqid.current())  # ProtocolError
        writer = await self._connect()
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        try:
            writer.write(data)
            await writer.drain()
        except (OSError, RuntimeError) as e:
            self._pending.pop(call_id, None)
            raise Unavailable(f"{self.protocol.name} connection lost: {e}") from None
        limit = self.timeout if timeout is None else timeout
        try:
            res = await asyncio.wait_for(fut, limit)
        except TimeoutError:
            self._pending.pop(call_id, None)
            raise DeadlineExceeded(
                f"{self.protocol.name} did not answer {type(request).__name__} within {limit:g}s"
            ) from None
        return self.protocol.decode_reply(request, res.body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._writer = None


def bind_unix(
    path: str | Path, *, mode: int = 0o600, uid: int = -1, gid: int = -1
) -> socket.socket:
    """Bind a listening Unix socket, replacing a stale one, with the given owner and mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    os.chmod(path, mode)
    sock.listen(128)
    return sock
