"""Deciding, for the flows: pure functions from a spec and the helpers' answers.

Nothing here does I/O; :mod:`fcd_api.service` calls these and applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from fcd_common.config import LimitsConfig
from fcd_common.errors import FailedPrecondition, Internal, InvalidArgument
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm
from fcd_common.types import KERNEL_ARGS_MAX

from .models import CreateVMRequest, VmRecord
from .resources_plan import launch_resources
from .snapshot_models import RestoreRequest

__all__ = [
    "Restore",
    "check_kernel_args",
    "check_limits",
    "check_restorable",
    "check_same_guest_network",
    "join_kernel_args",
    "launch_request",
    "restored_spec",
    "snapshot_files",
    "snapshot_loadable",
    "snapshot_origin",
]


def join_kernel_args(template_args: str, request_args: str) -> str:
    return " ".join(a for a in (template_args.strip(), request_args.strip()) if a)


def check_kernel_args(template_args: str, request_args: str) -> str:
    """The joined command line, or InvalidArgument if it exceeds fcd-vmm's limit."""
    args = join_kernel_args(template_args, request_args)
    if len(args) > KERNEL_ARGS_MAX:
        raise InvalidArgument(
            f"kernel_args: the template's and the request's together are {len(args)}"
            f" characters, more than {KERNEL_ARGS_MAX}",
            details={"field": "kernel_args", "max": KERNEL_ARGS_MAX},
        )
    return args


def launch_request(
    rec: VmRecord, restore: pvmm.SnapshotFiles | None = None, *, resume: bool = True
) -> pvmm.Launch:
    """The vmm.launch request for a VM whose jail, disk and network exist (pure):
    the disk and network records go on to fcd-vmm as the helpers answered them.
    With ``restore`` the VM starts from that snapshot instead of booting."""
    r, s = rec.runtime, rec.spec
    if r.disk is None or r.net is None:
        missing = [name for name in ("disk", "net") if getattr(r, name) is None]
        raise Internal(f"VM {rec.id} lacks runtime fields {missing}; delete and recreate it")
    return pvmm.Launch(
        vm_id=rec.id,
        vcpu_count=s.vcpu_count,
        mem_size_mib=s.mem_size_mib,
        kernel_args=join_kernel_args(r.template_kernel_args or "", s.kernel_args),
        disk=r.disk,
        net=r.net,
        track_dirty_pages=s.track_dirty_pages,
        restore=restore,
        resume=resume,
        **launch_resources(s),
    )


def check_limits(spec: CreateVMRequest, limits: LimitsConfig) -> None:
    """Limits from the configuration (the static ones are in the request's types)."""
    if spec.vcpu_count > limits.max_vcpu:
        raise InvalidArgument(
            f"vcpu_count {spec.vcpu_count} exceeds the limit of {limits.max_vcpu}",
            details={"field": "vcpu_count", "max": limits.max_vcpu},
        )
    if spec.mem_size_mib > limits.max_mem_mib:
        raise InvalidArgument(
            f"mem_size_mib {spec.mem_size_mib} exceeds the limit of {limits.max_mem_mib}",
            details={"field": "mem_size_mib", "max": limits.max_mem_mib},
        )
    if spec.disk_size_mib is not None and spec.disk_size_mib > limits.max_disk_mib:
        raise InvalidArgument(
            f"disk_size_mib {spec.disk_size_mib} exceeds the limit of {limits.max_disk_mib}",
            details={"field": "disk_size_mib", "max": limits.max_disk_mib},
        )
    if spec.wait_timeout_s is not None and spec.wait_timeout_s > limits.max_wait_timeout_s:
        raise InvalidArgument(
            f"wait_timeout_s {spec.wait_timeout_s:g} exceeds the limit of "
            f"{limits.max_wait_timeout_s:g}",
            details={"field": "wait_timeout_s", "max": limits.max_wait_timeout_s},
        )


# --- snapshots ---------------------------------------------------------------------


def snapshot_loadable(written: str, binary: str) -> bool:
    """Firecracker loads a snapshot of the same major format version whose minor is not
    newer than its own (FIRECRACKER.md §4); ``"1.0.0"``-style strings."""
    try:
        w = [int(x) for x in written.split(".")[:2]]
        b = [int(x) for x in binary.split(".")[:2]]
    except ValueError:
        return False
    return len(w) == len(b) == 2 and w[0] == b[0] and w[1] <= b[1]


def check_restorable(snap: pstorage.SnapshotInfo, vmm: pvmm.VmmInfo) -> pstorage.SnapshotOrigin:
    """The snapshot's origin record, or FailedPrecondition (409) saying why it cannot
    be restored here: pending, taken without fcd-api's record, or a snapshot format
    this Firecracker cannot load."""
    details = {"snapshot": snap.name}
    if snap.state != "ready":
        raise FailedPrecondition(f"snapshot {snap.name!r} is still pending", details=details)
    o = snap.origin
    if o is None:
        raise FailedPrecondition(
            f"snapshot {snap.name!r} has no record of its VM (not taken through the API)",
            details=details,
        )
    if not snapshot_loadable(o.snapshot_version, vmm.snapshot_version):
        raise FailedPrecondition(
            f"snapshot {snap.name!r} was written by Firecracker {o.firecracker_version}"
            f" (snapshot format {o.snapshot_version}); this host's Firecracker"
            f" {vmm.firecracker_version} loads format {vmm.snapshot_version} only",
            details={**details, "written_by": o.firecracker_version},
        )
    return o


def restored_spec(
    vm_id: str, origin: pstorage.SnapshotOrigin, body: RestoreRequest
) -> CreateVMRequest:
    """The spec a VM restored from a snapshot is recorded with: the snapshot VM's
    shape (its whole command line goes into the template part of the runtime), the
    caller's identity, labels and port mappings, and netns networking."""
    mode = body.network_mode or "netns"
    if mode != "netns":
        raise InvalidArgument(
            "network_mode: a restored VM keeps the guest's address, MAC and TAP name,"
            " so it needs a network namespace of its own (netns)",
            details={"field": "network_mode"},
        )
    return CreateVMRequest(
        id=vm_id,
        sandbox_id=body.sandbox_id,
        template=origin.template,
        vcpu_count=origin.vcpu_count,
        mem_size_mib=origin.mem_size_mib,
        port_mappings=list(body.port_mappings),
        network_mode=mode,
        labels=dict(body.labels),
        annotations=dict(body.annotations),
        track_dirty_pages=origin.track_dirty_pages,
    )


@dataclass(frozen=True)
class Restore:
    """Where a VM being created starts from instead of its template: a ready snapshot."""

    files: pvmm.SnapshotFiles
    origin: pstorage.SnapshotOrigin
    resume: bool = True


def check_same_guest_network(origin: pstorage.SnapshotOrigin, net: pnet.NetInfo) -> None:
    """A restored guest keeps the address, MAC and TAP name it was snapshotted with:
    fcd-net must have given the new VM exactly those (netns mode does, for every VM
    with the same netns configuration)."""
    got = (net.ip, net.mac, net.tap)
    want = (origin.guest_ip, origin.guest_mac, origin.tap)
    if got != want:
        raise FailedPrecondition(
            f"the snapshot's guest network {want} differs from this VM's {got}"
            " (was fcd-net's netns configuration changed since the snapshot?)",
            details={"field": "network_mode"},
        )


def snapshot_files(snap: pstorage.SnapshotInfo) -> pvmm.SnapshotFiles:
    return pvmm.SnapshotFiles(
        name=snap.name, state_path=snap.state_path, memory_path=snap.memory_path
    )


def snapshot_origin(
    rec: VmRecord, taken: pvmm.SnapshotTaken, parent: str | None = None
) -> pstorage.SnapshotOrigin:
    """What a restore of ``rec``'s snapshot needs and checks (pure)."""
    r, s = rec.runtime, rec.spec
    if r.net is None:
        raise Internal(f"VM {rec.id} has no network record")
    return pstorage.SnapshotOrigin(
        vm_id=rec.id,
        type=taken.type,
        parent=parent,
        vcpu_count=s.vcpu_count,
        mem_size_mib=s.mem_size_mib,
        template=s.template,
        kernel_args=join_kernel_args(r.template_kernel_args or "", s.kernel_args),
        network_mode=r.net.mode,
        guest_ip=r.net.ip,
        guest_mac=r.net.mac,
        tap=r.net.tap,
        port_mappings=list(r.net.ports),
        track_dirty_pages=s.track_dirty_pages,
        firecracker_version=taken.firecracker_version,
        snapshot_version=taken.snapshot_version,
    )
