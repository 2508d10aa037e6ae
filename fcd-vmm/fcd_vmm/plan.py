"""Pure planning for one jailed Firecracker: paths, the jailer argv, cgroup values
and the Firecracker API requests that configure and boot the VM.

Nothing here touches the system; :mod:`fcd_vmm.launcher` applies it.

Jail layout (FIRECRACKER.md §3, §9), seen from the host::

    <chroot_base>/<basename(firecracker)>/<vm_id>/root/     the chroot ("/" inside)
        <exec_name>            binary copy (the jailer makes it)
        <exec_name>.pid        Firecracker's host pid (the jailer writes it)
        run/firecracker.socket API socket
        vmlinux                hard link of the kernel     -> "/vmlinux"
        rootfs.ext4            hard link of the VM's disk  -> "/rootfs.ext4"
        drive-<id>.ext4        hard link of each extra drive -> "/drive-<id>.ext4"
        firecracker.log        a FIFO made by us, owned by the jail uid (fclog.py)
        metrics.json           created by us, owned by the jail uid
        snapshot.vmstate       while a snapshot is taken, or for a restore: hard link
        snapshot.mem           of the snapshot entry's state / memory file (fcd-storage's),
                               or of the VM's own suspend files (disks/<vm_id>/suspend.*)
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fcd_common.config import Config
from fcd_common.errors import InvalidArgument
from fcd_common.ids import check_vm_id
from fcd_common.proto.storage import DriveInfo
from fcd_common.proto.vmm import Launch

from .limits_plan import balloon_body, with_drive_limiter, with_net_limiters

API_SOCK = "/run/firecracker.socket"
KERNEL = "vmlinux"
ROOTFS = "rootfs.ext4"
LOG_FILE = "firecracker.log"
METRICS_FILE = "metrics.json"
SNAPSHOT_STATE_FILE = "snapshot.vmstate"
SNAPSHOT_MEMORY_FILE = "snapshot.mem"
TRACK_DIRTY_ON_LOAD_SINCE = (1, 13)
"""``track_dirty_pages`` on ``/snapshot/load``; before it ``enable_diff_snapshots``."""
ROOT_DRIVE_ID = "rootfs"
IFACE_ID = "eth0"
BASE_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
CMDLINE_MAX = 2048
MIB = 1 << 20
PIDS_MAX = 256
"""Firecracker needs a main, an API and one thread per vCPU (plus a few helpers)."""

CgroupVersion = Literal[1, 2]
Method = Literal["PUT", "PATCH", "GET"]

_RESOURCE_ID = re.compile(r"[A-Za-z0-9_]+")


def check_resource_id(value: str) -> str:
    """Firecracker API resource ids (drives, network interfaces): ``[A-Za-z0-9_]+``."""
    if not _RESOURCE_ID.fullmatch(value):
        raise InvalidArgument(
            f"invalid Firecracker resource id {value!r}: alphanumerics and '_' only"
        )
    return value


# --- paths -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JailPaths:
    """One VM's paths under the chroot base; each is built once per instance (a launch
    asks for them dozens of times, and pathlib joins are not free)."""

    chroot_base: Path
    exec_name: str
    vm_id: str

    @functools.cached_property
    def jail_dir(self) -> Path:
        """``<base>/<exec>/<vm_id>``: removed whole on teardown."""
        return self.chroot_base / self.exec_name / self.vm_id

    @functools.cached_property
    def root(self) -> Path:
        return self.jail_dir / "root"

    @functools.cached_property
    def run_dir(self) -> Path:
        return self.root / "run"

    @functools.cached_property
    def api_socket(self) -> Path:
        return self.root / API_SOCK.lstrip("/")

    @functools.cached_property
    def pid_file(self) -> Path:
        return self.root / f"{self.exec_name}.pid"

    @functools.cached_property
    def kernel(self) -> Path:
        return self.root / KERNEL

    @functools.cached_property
    def rootfs(self) -> Path:
        return self.root / ROOTFS

    def drive(self, drive_id: str) -> Path:
        return self.root / drive_file(drive_id)

    @functools.cached_property
    def log_file(self) -> Path:
        return self.root / LOG_FILE

    @functools.cached_property
    def metrics_file(self) -> Path:
        return self.root / METRICS_FILE

    @functools.cached_property
    def snapshot_state(self) -> Path:
        return self.root / SNAPSHOT_STATE_FILE

    @functools.cached_property
    def snapshot_memory(self) -> Path:
        return self.root / SNAPSHOT_MEMORY_FILE


def exec_name(cfg: Config) -> str:
    return os.path.basename(cfg.jail.firecracker)


def jail_paths(cfg: Config, vm_id: str) -> JailPaths:
    return _jail_paths(cfg.paths.chroot_base, exec_name(cfg), check_vm_id(vm_id))


@functools.lru_cache(maxsize=2048)
def _jail_paths(chroot_base: str, exec_file: str, vm_id: str) -> JailPaths:
    """The same (immutable) instance for a VM's launch, calls and teardown, so its
    paths are joined once: a create+delete asked for them four times."""
    return JailPaths(Path(chroot_base), exec_file, vm_id)


# --- cgroups ---------------------------------------------------------------------------


def cgroup_settings(
    version: CgroupVersion,
    controllers: frozenset[str],
    vcpu_count: int,
    mem_size_mib: int,
    mem_overhead_mib: int,
    *,
    mem_limit_mib: int | None = None,
) -> list[tuple[str, str]]:
    """``(file, value)`` pairs for ``--cgroup``, limited to the controllers available.
    The memory limit is ``mem_limit_mib`` (default: the VM's memory) plus the overhead."""
    mem_bytes = ((mem_limit_mib or mem_size_mib) + mem_overhead_mib) * MIB
    if version == 1:
        wanted = [
            # never a cpuacct file: the v1 jailer first copies every file's value down
            # from the parent cgroup, and the parent's cpuacct.usage (non-zero once any
            # VM ran) cannot be written (EINVAL: the jailer panics). Where cpuacct is a
            # hierarchy of its own, a VM's CPU time comes from /proc/PID/stat instead.
            ("cpu.shares", str(1024 * vcpu_count)),
            ("memory.limit_in_bytes", str(mem_bytes)),
            ("pids.max", str(PIDS_MAX)),
        ]
    else:
        wanted = [
            ("cpu.weight", str(min(10_000, 100 * vcpu_count))),
            ("memory.max", str(mem_bytes)),
            ("pids.max", str(PIDS_MAX)),
        ]
    return [(f, v) for f, v in wanted if f.split(".", 1)[0] in controllers]


# --- jailer ----------------------------------------------------------------------------


def jailer_argv(
    cfg: Config,
    *,
    vm_id: str,
    uid: int,
    gid: int,
    cgroup_version: CgroupVersion,
    cgroups: list[tuple[str, str]],
    netns: str | None = None,
) -> list[str]:
    """The jailer command line. ``--id`` is given once, before ``--`` (never after)."""
    argv = [
        cfg.jail.jailer,
        "--id",
        check_vm_id(vm_id),
        "--exec-file",
        cfg.jail.firecracker,
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--chroot-base-dir",
        cfg.paths.chroot_base,
        "--cgroup-version",
        str(cgroup_version),
        "--parent-cgroup",
        cfg.jail.parent_cgroup,
    ]
    for name, value in cgroups:
        argv += ["--cgroup", f"{name}={value}"]
    if netns is not None:
        argv += ["--netns", netns]
    if cfg.jail.new_pid_ns:
        # no --daemonize: it would point Firecracker's stdout (the guest console) at
        # /dev/null; fcd-vmm starts the jailer in a session of its own instead and
        # hands it the console FIFO (console.py). The jailer exits once it has forked.
        argv.append("--new-pid-ns")
    else:  # the jailer would exec in place: only --daemonize makes it return
        argv.append("--daemonize")
    argv += ["--", "--api-sock", API_SOCK]
    return argv


# --- Firecracker configuration -----------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """A Launch after every re-check (see :mod:`fcd_vmm.checks`): the request as sent,
    and the names fcd-vmm derives from the VM id itself (the request's must equal them)."""

    req: Launch
    tap: str
    netns: str | None = None

    @property
    def vm_id(self) -> str:
        return self.req.vm_id

    @property
    def drives(self) -> list[DriveInfo]:
        return self.req.disk.drives


def acl_paths(spec: LaunchSpec) -> list[str]:
    """The store files the VM's jail uid reads through an ACL entry of its own for the
    length of its launch: the template's kernel, the shared read-only images and a
    restore's state and memory (its own disk and data drives it owns instead)."""
    out = [spec.req.disk.kernel_path]
    out += [d.path for d in spec.drives if d.read_only]
    if spec.req.restore is not None:
        out += [spec.req.restore.state_path, spec.req.restore.memory_path]
    return list(dict.fromkeys(out))


def drive_file(drive_id: str) -> str:
    return f"drive-{check_resource_id(drive_id)}.ext4"


def drive_body(drive: DriveInfo) -> dict[str, Any]:
    return {
        "drive_id": check_resource_id(drive.name),
        "path_on_host": "/" + drive_file(drive.name),
        "is_root_device": False,
        "is_read_only": drive.read_only,
    }


def netmask(prefix_len: int) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix_len}").netmask)


def ip_arg(ip: str, gateway: str, prefix_len: int, device: str = IFACE_ID) -> str:
    """The kernel's ``ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>``."""
    return f"ip={ip}::{gateway}:{netmask(prefix_len)}::{device}:off"


def boot_args(spec: LaunchSpec) -> str:
    net, kernel_args = spec.req.net, spec.req.kernel_args
    parts = [BASE_BOOT_ARGS, ip_arg(net.ip, net.gateway, net.prefix_len)]
    if kernel_args.strip():
        parts.append(" ".join(kernel_args.split()))
    args = " ".join(parts)
    if len(args.encode()) > CMDLINE_MAX:
        raise InvalidArgument(
            f"kernel command line is {len(args.encode())} bytes, over {CMDLINE_MAX}",
            details={"field": "kernel_args"},
        )
    return args


@dataclass(frozen=True)
class ApiCall:
    method: Method
    path: str
    body: dict[str, Any] | None = None


FcLogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace"]


def logger_body(level: FcLogLevel = "Warning") -> dict[str, Any]:
    # show_level: fclog maps the level tag onto the journal priority
    return {"log_path": "/" + LOG_FILE, "level": level, "show_level": True}


def metrics_body() -> dict[str, Any]:
    return {"metrics_path": "/" + METRICS_FILE}


def machine_config_body(spec: LaunchSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "vcpu_count": spec.req.vcpu_count,
        "mem_size_mib": spec.req.mem_size_mib,
    }
    if spec.req.track_dirty_pages:
        body["track_dirty_pages"] = True
    return body


def boot_source_body(spec: LaunchSpec) -> dict[str, Any]:
    return {"kernel_image_path": "/" + KERNEL, "boot_args": boot_args(spec)}


def root_drive_body() -> dict[str, Any]:
    return {
        "drive_id": check_resource_id(ROOT_DRIVE_ID),
        "path_on_host": "/" + ROOTFS,
        "is_root_device": True,
        "is_read_only": False,
    }


def network_body(spec: LaunchSpec) -> dict[str, Any]:
    return {
        "iface_id": check_resource_id(IFACE_ID),
        "host_dev_name": spec.tap,
        "guest_mac": spec.req.net.mac,
    }


def snapshot_load_body(spec: LaunchSpec, firecracker_version: str) -> dict[str, Any]:
    """Load the snapshot linked into the jail; dirty page tracking is not saved in a
    snapshot, so it is asked again, in the field this Firecracker version knows."""
    body: dict[str, Any] = {
        "snapshot_path": "/" + SNAPSHOT_STATE_FILE,
        "mem_backend": {"backend_type": "File", "backend_path": "/" + SNAPSHOT_MEMORY_FILE},
        "resume_vm": spec.req.resume,
    }
    if spec.req.track_dirty_pages:
        if version_tuple(firecracker_version) >= TRACK_DIRTY_ON_LOAD_SINCE:
            body["track_dirty_pages"] = True
        else:
            body["enable_diff_snapshots"] = True
    return body


def snapshot_create_body(snapshot_type: Literal["full", "diff"]) -> dict[str, Any]:
    return {
        "snapshot_path": "/" + SNAPSHOT_STATE_FILE,
        "mem_file_path": "/" + SNAPSHOT_MEMORY_FILE,
        "snapshot_type": "Full" if snapshot_type == "full" else "Diff",
    }


def configure_calls(
    spec: LaunchSpec, firecracker_version: str = "1.7.0", log_level: FcLogLevel = "Warning"
) -> list[ApiCall]:
    """Every API call from a fresh Firecracker to a booted (or restored) VM, in order.

    A restore configures nothing a snapshot load forbids (FIRECRACKER.md §2): only
    the logger and metrics sinks (never restored), then the load; the disk and TAP
    are the ones the snapshot recorded, at the same jail path and name.
    """
    if spec.req.restore is not None:
        return [
            ApiCall("PUT", "/logger", logger_body(log_level)),
            ApiCall("PUT", "/metrics", metrics_body()),
            ApiCall("PUT", "/snapshot/load", snapshot_load_body(spec, firecracker_version)),
        ]
    balloon = balloon_body(spec.req)

    def with_limits(body: dict[str, Any]) -> dict[str, Any]:
        return with_drive_limiter(body, spec.req.rate_limits, ROOT_DRIVE_ID)

    return [
        ApiCall("PUT", "/logger", logger_body(log_level)),
        ApiCall("PUT", "/metrics", metrics_body()),
        ApiCall("PUT", "/machine-config", machine_config_body(spec)),
        ApiCall("PUT", "/boot-source", boot_source_body(spec)),
        ApiCall("PUT", f"/drives/{ROOT_DRIVE_ID}", with_limits(root_drive_body())),
        *(ApiCall("PUT", f"/drives/{d.name}", with_limits(drive_body(d))) for d in spec.drives),
        ApiCall(
            "PUT",
            f"/network-interfaces/{IFACE_ID}",
            with_net_limiters(network_body(spec), spec.req.rate_limits),
        ),
        *([ApiCall("PUT", "/balloon", balloon)] if balloon is not None else []),
        ApiCall("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]


_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.+-]*)?")


def parse_version(output: str) -> str:
    """``Firecracker v1.7.0`` / ``v1.0.0`` (``--version``, ``--snapshot-version``) -> ``1.7.0``."""
    for word in output.split():
        m = _VERSION.fullmatch(word)
        if m is not None:
            return word.removeprefix("v")
    raise ValueError(f"no version in {output.strip()[:200]!r}")


def version_tuple(version: str) -> tuple[int, int, int]:
    m = _VERSION.fullmatch(version)
    if m is None:
        raise ValueError(f"{version!r} is not a version")
    return int(m[1]), int(m[2]), int(m[3])


def vm_state_body(paused: bool) -> dict[str, Any]:
    return {"state": "Paused" if paused else "Resumed"}


CTRL_ALT_DEL = ApiCall("PUT", "/actions", {"action_type": "SendCtrlAltDel"})

FC_STATES: dict[str, Literal["running", "paused", "not_started"]] = {
    "Running": "running",
    "Paused": "paused",
    "Not started": "not_started",
}
