"""Messages every helper answers, and records more than one contract uses."""

from __future__ import annotations

from ..rpc import Reply, Request
from ..schema import Record
from ..types import HostPort, Port, PortProtocol


class Pong(Reply):
    daemon: str
    version: str
    pid: int
    status: str


class Ping(Request[Pong], tag="ping"):
    pass


class PortMapping(Record):
    """One port mapping: ``protocol`` traffic to the host's ``host_port`` goes to the guest.

    The API's body, fcd-net's request and lease, and the VM as returned all use this.
    """

    host_port: HostPort
    guest_port: Port
    protocol: PortProtocol = "tcp"


class ProbeResult(Reply):
    """One health probe of a VM (``vmm.probe``, ``net.probe_tcp``): did it answer in time."""

    ok: bool
    detail: str = ""
    """Why not (``connection refused``, ``timed out after 2.0s`` ...), or what answered."""
    took_ms: float = 0.0
