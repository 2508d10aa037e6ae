"""The API socket event loop: one thread, selectors, micro-http framing, timers."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from dataclasses import dataclass, field

from .http import Connection, ParseError, parse_error_response, response
from .vmm import Reply, Vmm

METRICS_PERIOD = 60.0


@dataclass
class Client:
    sock: socket.socket
    conn: Connection
    out: bytearray = field(default_factory=bytearray)
    close_after: bool = False
    fatal: Reply | None = None


class ApiServer:
    def __init__(self, listener: socket.socket, vmm: Vmm, max_payload: int) -> None:
        self.listener = listener
        self.vmm = vmm
        self.max_payload = max_payload
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, None)
        self.next_metrics: float | None = None

    def serve(self) -> int:
        """Run until the guest shuts down (0) or a restore fails (1)."""
        while True:
            timeout = self._timeout()
            for key, events in self.sel.select(timeout):
                if key.data is None:
                    self._accept()
                    continue
                client: Client = key.data
                if events & selectors.EVENT_READ:
                    self._read(client)
                if events & selectors.EVENT_WRITE and client.sock.fileno() >= 0:
                    self._write(client)
                if client.fatal is not None and not client.out:
                    self.vmm.log.error("Failed to restore from snapshot. Firecracker exiting.")
                    return 1
            code = self._timers()
            if code is not None:
                return code

    def _timeout(self) -> float | None:
        deadlines = [d for d in (self.vmm.exit_at, self.next_metrics) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _timers(self) -> int | None:
        now = time.monotonic()
        if self.vmm.state != "Not started" and self.next_metrics is None:
            self.next_metrics = now + METRICS_PERIOD
        if self.next_metrics is not None and now >= self.next_metrics:
            self.vmm.metrics.write()
            self.next_metrics = now + METRICS_PERIOD
        if self.vmm.exit_at is not None and now >= self.vmm.exit_at:
            self.vmm.log.info("Vmm is stopping.")
            self.vmm.metrics.write()
            self.vmm.log.info("Firecracker exiting successfully. exit_code=0")
            return 0
        return None

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        client = Client(sock, Connection(self.max_payload))
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: Client) -> None:
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._close(client)
            return
        if not data:
            self._close(client)
            return
        if client.close_after or client.fatal is not None:
            return
        try:
            requests = client.conn.feed(data)
        except ParseError as e:
            client.out += parse_error_response(e)
            client.close_after = True
            requests = []
        client.out += b"".join(client.conn.interim)
        client.conn.interim.clear()
        for req in requests:
            reply = self.vmm.handle(req.method, req.path, req.body)
            client.out += response(reply.status, reply.body, reply.deprecation)
            if reply.fatal:
                client.fatal = reply
                break
        self._write(client)

    def _write(self, client: Client) -> None:
        while client.out:
            try:
                n = client.sock.send(client.out)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.EINTR:
                    client.out.clear()
                    self._close(client)
                    return
                continue
            del client.out[:n]
        if client.out:
            self.sel.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        elif client.close_after:
            self._close(client)
        else:
            try:
                self.sel.modify(client.sock, selectors.EVENT_READ, client)
            except (KeyError, ValueError):
                pass


def bind(path: str) -> socket.socket:
    """UnixListener::bind: fails if the path exists."""
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.listen(128)
    sock.setblocking(False)
    return sock
