"""Re-checks of every Launch argument: fcd-vmm trusts its caller for nothing.

The jailer trusts *its* caller completely (it runs as root and links what it
is told into a chroot), so everything that reaches it is validated here first:
limits, the TAP name (recomputed from the VM id), MAC and addresses, the kernel
command line, and the two files, which must be regular files inside
fcd-storage's directory reached without any symlink.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from typing import Literal

from fcd_common import storelayout
from fcd_common.config import Config
from fcd_common.errors import InvalidArgument
from fcd_common.ids import check_vm_id, netns_path, netns_tap, tap_name
from fcd_common.proto.storage import DriveInfo
from fcd_common.proto.vmm import Launch, SnapshotFiles
from fcd_common.types import KERNEL_ARGS_MAX, KERNEL_ARGS_PATTERN, fullmatch

from .plan import LaunchSpec

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", details={"field": field})


def check_limits(vcpu_count: int, mem_size_mib: int, cfg: Config) -> None:
    if not 1 <= vcpu_count <= cfg.limits.max_vcpu:
        raise _bad("vcpu_count", f"{vcpu_count} is outside [1, {cfg.limits.max_vcpu}]")
    if not 1 <= mem_size_mib <= cfg.limits.max_mem_mib:
        raise _bad("mem_size_mib", f"{mem_size_mib} is outside [1, {cfg.limits.max_mem_mib}]")


def check_netns(netns: str | None, vm_id: str, cfg: Config) -> str | None:
    """netns mode: only this VM's own namespace under fcd-net's prefix (derived, not trusted)."""
    if netns is None:
        return None
    expected = netns_path(vm_id, cfg.network.netns_prefix)
    if netns != expected:
        raise _bad("netns", f"{netns!r} is not this VM's namespace (expected {expected!r})")
    return netns


def check_tap(tap: str, vm_id: str, cfg: Config, netns: str | None = None) -> str:
    # netns mode: every VM's TAP has the same name, inside its own namespace
    prefix = cfg.network.tap_prefix
    expected = netns_tap(prefix) if netns else tap_name(vm_id, prefix)
    if tap != expected:
        raise _bad("tap", f"{tap!r} is not this VM's TAP (expected {expected!r})")
    return tap


def check_mac(mac: str) -> str:
    if not _MAC.fullmatch(mac):
        raise _bad("mac", f"{mac!r} is not a lower-case xx:xx:xx:xx:xx:xx address")
    first = int(mac[:2], 16)
    if first & 1:
        raise _bad("mac", f"{mac!r} is a multicast address")
    if mac == "00:00:00:00:00:00":
        raise _bad("mac", "the all-zero address is not usable")
    return mac


def check_addresses(ip: str, gateway: str, prefix_len: int) -> None:
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise _bad("ip", f"{ip!r} is not an IPv4 address") from None
    try:
        gw = ipaddress.IPv4Address(gateway)
    except ValueError:
        raise _bad("gateway", f"{gateway!r} is not an IPv4 address") from None
    if not 1 <= prefix_len <= 30:
        raise _bad("prefix_len", f"{prefix_len} is outside [1, 30]")
    net = ipaddress.IPv4Interface(f"{ip}/{prefix_len}").network
    if addr in (net.network_address, net.broadcast_address):
        raise _bad("ip", f"{ip} is the network or broadcast address of {net}")
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise _bad("gateway", f"{gateway} is not a host address of {net}")
    if gw == addr:
        raise _bad("ip", "the guest address equals the gateway")
    if addr.is_loopback or addr.is_multicast or addr.is_unspecified:
        raise _bad("ip", f"{ip} is not a unicast host address")


def check_kernel_args(args: str) -> str:
    if len(args) > KERNEL_ARGS_MAX:
        raise _bad("kernel_args", f"longer than {KERNEL_ARGS_MAX} characters")
    if not fullmatch(KERNEL_ARGS_PATTERN, args):
        raise _bad("kernel_args", "only printable ASCII is allowed (no control characters)")
    return args


def check_storage_path(path: str, storage_root: str, field: str) -> str:
    """String-level check: an absolute, normalized path strictly below ``storage_root``."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise _bad(field, f"{path!r} is not an absolute path")
    if os.path.normpath(path) != path or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise _bad(field, f"{path!r} is not a normalized path")
    root = os.path.normpath(storage_root)
    if os.path.commonpath([root, path]) != root or path == root:
        raise _bad(field, f"{path!r} is outside the storage directory {root}")
    return path


def check_drives(req: Launch, vm_id: str, cfg: Config) -> None:
    """Extra drives: each is this VM's own data drive named by its id, or a template's
    rootfs attached read-only. Nothing else of the store (another VM's disk, a
    snapshot, a template kernel) is ever accepted."""
    drives = req.disk.drives
    if len(drives) > cfg.limits.max_drives:
        raise _bad("drives", f"{len(drives)} drives, at most {cfg.limits.max_drives}")
    storage = str(cfg.state("storage"))
    lay = storelayout.layout(cfg)
    seen: list[DriveInfo] = []
    for i, d in enumerate(drives):
        field = f"drives[{i}]"
        if not storelayout.is_drive_name(d.name):
            raise _bad(f"{field}.drive_id", f"{d.name!r} is not a drive name")
        if d.name in {o.name for o in seen}:
            raise _bad(f"{field}.drive_id", f"{d.name!r} is used twice")
        check_storage_path(d.path, storage, f"{field}.path")
        if lay.drive_of(vm_id, d.path) == d.name:
            pass
        elif storelayout.is_template_rootfs(cfg, d.path):
            if not d.read_only:
                raise _bad(f"{field}.read_only", "a template image is attached read-only only")
        else:
            raise _bad(
                f"{field}.path",
                f"{d.path} is neither drive {d.name!r} of VM {vm_id} nor a template image",
            )
        seen.append(d)


def check_launch(req: Launch, cfg: Config) -> LaunchSpec:
    """Everything about a Launch that needs no filesystem access."""
    vm_id = check_vm_id(req.vm_id)
    disk, net = req.disk, req.net
    if disk.vm_id != vm_id or net.vm_id != vm_id:
        raise _bad("vm_id", f"the disk ({disk.vm_id}) and network ({net.vm_id}) are not {vm_id}'s")
    check_limits(req.vcpu_count, req.mem_size_mib, cfg)
    storage = str(cfg.state("storage"))
    check_storage_path(disk.kernel_path, storage, "kernel_path")
    check_storage_path(disk.rootfs_path, storage, "rootfs_path")
    # Not just "inside the store": the kernel must be a template's kernel and the
    # disk this VM's own disk, so no caller can boot VM a on VM b's disk.
    if not storelayout.is_template_kernel(cfg, disk.kernel_path):
        raise _bad("kernel_path", f"{disk.kernel_path} is not a template kernel")
    if not storelayout.is_vm_disk(cfg, vm_id, disk.rootfs_path):
        raise _bad("rootfs_path", f"{disk.rootfs_path} is not the disk of VM {vm_id}")
    check_addresses(net.ip, net.gateway, net.prefix_len)
    check_kernel_args(req.kernel_args)
    check_mac(net.mac)
    check_drives(req, vm_id, cfg)
    netns = check_netns(net.netns, vm_id, cfg)
    if req.restore is not None:
        check_snapshot_files(req.restore, cfg, "restore", vm_id=vm_id, stage="ready")
    return LaunchSpec(req=req, tap=check_tap(net.tap, vm_id, cfg, netns), netns=netns)


@dataclass
class StorageFile:
    """An ``O_PATH`` handle on a checked file; link from ``proc_path`` to avoid races."""

    fd: int
    st: os.stat_result
    path: str

    @property
    def proc_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@functools.lru_cache(maxsize=8)
def _real_root(storage_root: str) -> str:
    """The storage directory's real path, resolved once per process (an lstat per
    component, three times per launch, before). It comes from fcd's configuration
    and only root can move it; if it ever were, every file's real location would
    lie outside the cached one and be refused, never accepted."""
    return os.path.realpath(storage_root)


def open_storage_file(path: str, storage_root: str, field: str) -> StorageFile:
    """Open ``path`` without following symlinks and prove it is a regular file
    whose real location is the same path below the real ``storage_root``.

    The returned handle pins the inode that was checked, so a later swap of the
    name cannot make us link another file into the jail.
    """
    check_storage_path(path, storage_root, field)
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _bad(field, f"{path} does not exist") from None
    except OSError as e:
        raise _bad(field, f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise _bad(field, f"{path} is a symlink")
        if not stat.S_ISREG(st.st_mode):
            raise _bad(field, f"{path} is not a regular file")
        real = os.readlink(f"/proc/self/fd/{fd}")
        real_root = _real_root(storage_root)
        rel_asked = os.path.relpath(path, os.path.normpath(storage_root))
        if os.path.commonpath([real_root, real]) != real_root or (
            os.path.relpath(real, real_root) != rel_asked
        ):
            raise _bad(field, f"{path} reaches {real} through a symlink")
    except BaseException:
        os.close(fd)
        raise
    return StorageFile(fd, st, path)


SnapshotStage = Literal["pending", "ready"]


def check_snapshot_files(
    files: SnapshotFiles, cfg: Config, field: str, *, vm_id: str, stage: SnapshotStage
) -> SnapshotFiles:
    """Lexical: the two paths are exactly fcd-storage's files of snapshot ``files.name``
    (nothing else of the store, and no other snapshot's files, is ever accepted), or
    (``kind="suspend"``) the suspend files in the disk directory of ``vm_id`` itself,
    pending (``*.pending``) for a create and committed for a restore: their stage is
    in their names."""
    lay = storelayout.layout(cfg)
    storage = str(cfg.state("storage"))
    check_storage_path(files.state_path, storage, f"{field}.state_path")
    check_storage_path(files.memory_path, storage, f"{field}.memory_path")
    if files.kind == "suspend":
        if files.name != vm_id:
            raise _bad(
                f"{field}.name", f"{files.name!r} is not this VM: suspend files are {vm_id}'s own"
            )
        pending = stage == "pending"
        state = lay.suspend_state(vm_id, pending=pending)
        memory = lay.suspend_memory(vm_id, pending=pending)
        want = "pending suspend" if pending else "committed suspend"
        why = "" if pending else ": pending files cannot be restored"
        if files.state_path != str(state):
            raise _bad(
                f"{field}.state_path",
                f"{files.state_path} is not the {want} state file of VM {vm_id}{why}",
            )
        if files.memory_path != str(memory):
            raise _bad(
                f"{field}.memory_path",
                f"{files.memory_path} is not the {want} memory file of VM {vm_id}{why}",
            )
        return files
    try:
        state, memory = lay.snapshot_state(files.name), lay.snapshot_memory(files.name)
    except InvalidArgument:
        raise _bad(f"{field}.name", f"{files.name!r} is not a snapshot name") from None
    if files.state_path != str(state):
        raise _bad(
            f"{field}.state_path", f"{files.state_path} is not the state file of {files.name!r}"
        )
    if files.memory_path != str(memory):
        raise _bad(
            f"{field}.memory_path",
            f"{files.memory_path} is not the memory file of {files.name!r}",
        )
    return files


def check_snapshot_stage(
    files: SnapshotFiles, cfg: Config, want: SnapshotStage, field: str
) -> None:
    """The entry's manifest says ``want``: ``pending.json`` only (being written) or
    ``snapshot.json`` (committed, read-only). Read without following symlinks.
    Suspend files carry their stage in their names (:func:`check_snapshot_files`)."""
    if files.kind == "suspend":
        return
    d = storelayout.layout(cfg).snapshot_dir(files.name)

    def present(leaf: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(d / leaf).st_mode)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _bad(field, f"{d / leaf}: {e.strerror}") from None

    ready = present(storelayout.SNAPSHOT_MANIFEST)
    pending = present(storelayout.SNAPSHOT_PENDING)
    if want == "ready" and not ready:
        what = "still pending" if pending else "not a snapshot"
        raise _bad(field, f"snapshot {files.name!r} is {what}: it cannot be restored")
    if want == "pending" and (ready or not pending):
        what = "already committed" if ready else "not a prepared snapshot"
        raise _bad(field, f"snapshot {files.name!r} is {what}: nothing may write it")
