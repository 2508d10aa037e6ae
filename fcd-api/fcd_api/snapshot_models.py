"""Public API bodies for taking snapshots of a VM and restoring VMs from them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from fcd_common.proto.common import PortMapping
from fcd_common.schema import Record
from fcd_common.types import Name, NetMode, VmId

from .models import Annotations, Labels

__all__ = ["RestoreRequest", "SnapshotRequest"]


class SnapshotRequest(Record):
    """``POST /v1/vms/{id}/snapshots``: pause (if running), snapshot, then go where
    ``then`` says. A failure leaves the VM as it was and no partial snapshot."""

    name: Name
    type: Literal["full", "diff"] = "full"
    """diff: only the pages written since this VM's last snapshot (the VM needs
    ``track_dirty_pages``); restorable on its own like a full one."""
    then: Literal["resume", "pause", "stop"] = "resume"


class RestoreRequest(Record):
    """``POST /v1/snapshots/{name}/restore``: a new VM from the snapshot.

    It gets its own copy (reflink) of the snapshot's disk and shares the memory
    file read-only; it keeps the guest's IP, MAC and TAP name, so it runs in a
    network namespace of its own (netns mode), with its own port mappings.
    """

    id: VmId | None = None
    sandbox_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    labels: Labels = {}
    annotations: Annotations = {}
    port_mappings: Annotated[list[PortMapping], msgspec.Meta(max_length=64)] = []
    network_mode: NetMode | None = None
    """None or netns; bridge cannot hold two guests with the same address."""
    resume: bool = True
    """False: the restored VM stays paused."""
