"""Build a vmm.Launch from the flat fields tests think in (kernel_path, tap, mac ...).

The contract nests them as the helpers answered them (``disk: DiskInfo``,
``net: NetInfo``); tests that probe one field at a time stay readable.
"""

from __future__ import annotations

from typing import Any

from fcd_common.proto.net import NetInfo
from fcd_common.proto.storage import DiskInfo, DriveInfo
from fcd_common.proto.vmm import Launch

DISK_FIELDS = ("kernel_path", "rootfs_path", "drives")
NET_FIELDS = ("tap", "mac", "ip", "gateway", "prefix_len", "netns", "mode", "bridge", "host_ip")


def drive(path: str, drive_id: str = "data", read_only: bool = False) -> DriveInfo:
    return DriveInfo(name=drive_id, path=path, size_bytes=0, read_only=read_only)


def make_launch(**flat: Any) -> Launch:
    vm_id = flat["vm_id"]
    disk: dict[str, Any] = {k: flat.pop(k) for k in DISK_FIELDS if k in flat}
    net: dict[str, Any] = {k: flat.pop(k) for k in NET_FIELDS if k in flat}
    net.setdefault("bridge", "fcbr0")
    if net.get("netns") is not None:
        net.setdefault("mode", "netns")
    return Launch(
        disk=DiskInfo(vm_id=vm_id, template="t1", size_bytes=0, method="reflink", **disk),
        net=NetInfo(vm_id=vm_id, uid=900_000, gid=900_000, **net),
        **flat,
    )
