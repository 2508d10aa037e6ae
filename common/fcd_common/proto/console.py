"""fcd-vmm's console reader: the guest serial console lines of one VM (``vmm.console``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..rpc import Reply, Request
from ..schema import Record
from ..types import VmId


class ConsoleLine(Record):
    seq: int
    """1, 2, ... per VM within one fcd-vmm epoch."""
    time: float
    """When fcd-vmm read it (seconds since the epoch)."""
    text: str


class ConsoleLines(Reply):
    vm_id: str
    epoch: str
    """fcd-vmm's run: seq numbers restart with a new one (pass it back as ``epoch``)."""
    lines: list[ConsoleLine]
    next_after: int
    """The ``after`` of the next call (the last seq returned, or the one given)."""
    missed: int = 0
    """Lines after ``after`` no longer held (the ring keeps the last ``RING`` lines)."""
    dropped: int = 0
    """Bytes dropped by the rate limit since the VM's console was first read."""
    capturing: bool = False
    """True while fcd-vmm reads the VM's console (its Firecracker runs)."""


class ConsoleRead(Request[ConsoleLines], tag="vmm.console"):
    """Long poll: the VM's console lines after ``after`` (0: every line still held),
    at once if there are any, else as soon as one is read, or none after ``wait_s``.
    A VM fcd-vmm has no console for gives an empty list, not an error."""

    long_poll = True
    vm_id: VmId
    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    epoch: str | None = None
    """The caller's last epoch: another one makes ``after`` count from 0."""
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0
    max_lines: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
