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
VNET_HDR_LEN = 12
"""The TAPs are opened with IFF_VNET_HDR: every frame read starts with virtio_net_hdr_v1."""


@dataclass
class Tap:
    """A booted VM's TAP: frames the host sends reach the guest's rx queue."""

    iface_id: str
    fd: int


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
        self.taps: dict[int, Tap] = {}

    def serve(self) -> int:
        """Run until the guest shuts down (0) or a restore fails (1)."""
        while True:
            timeout = self._timeout()
            self._watch_taps()
            for key, events in self.sel.select(timeout):
                if key.data is None:
                    self._accept()
                    continue
                if isinstance(key.data, Tap):
                    self._guest_rx(key.data)
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

    def _watch_taps(self) -> None:
        """After boot the net device polls its TAP (the guest has posted rx buffers)."""
        if self.vmm.state == "Not started":
            return
        for iface_id, fd in self.vmm.tap_fds.items():
            if fd not in self.taps:
                self.taps[fd] = Tap(iface_id, fd)
                self.sel.register(fd, selectors.EVENT_READ, self.taps[fd])

    def _guest_rx(self, tap: Tap) -> None:
        """Deliver every queued frame to the (absent) guest, counting it like the net device:
        ``rx_bytes_count``/``rx_packets_count`` per frame (vnet header excluded)."""
        m = self.vmm.metrics
        m.inc_device("net", tap.iface_id, "rx_tap_event_count")
        while True:
            try:
                frame = os.read(tap.fd, 65536 + VNET_HDR_LEN)
            except BlockingIOError:
                return
            except OSError:
                m.inc_device("net", tap.iface_id, "tap_read_fails")
                self.sel.unregister(tap.fd)
                return
            if not frame:
                return
            m.inc_device("net", tap.iface_id, "rx_bytes_count", len(frame) - VNET_HDR_LEN)
            m.inc_device("net", tap.iface_id, "rx_packets_count")
            m.inc_device("net", tap.iface_id, "rx_count")

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
