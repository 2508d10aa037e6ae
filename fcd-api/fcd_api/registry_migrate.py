"""Registry schema migrations (pure: an old row's JSON in, the current record out).

Version 1 kept the helpers' answers flattened into ``runtime`` (``ip``, ``tap``,
``kernel_path`` ...). Version 2 keeps each helper's record as it answered
(``jail``, ``disk``, ``net``): one definition of each, embedded. A VM created
by a version-1 fcd-api stays manageable: its runtime is rebuilt from the old
fields and the spec (sizes it did not record are 0; nothing reads them back).
"""

from __future__ import annotations

from typing import Any

import msgspec

from fcd_common.proto.common import PortMapping
from fcd_common.proto.net import NetInfo, PolicySpec
from fcd_common.proto.storage import DiskInfo, DriveInfo
from fcd_common.proto.vmm import JailInfo

from .models import CreateVMRequest, Runtime

__all__ = ["runtime_from_v1"]


def runtime_from_v1(vm_id: str, old: dict[str, Any], spec: CreateVMRequest) -> Runtime:
    jail = disk = net = None
    if old.get("uid") is not None and old.get("gid") is not None:
        jail = JailInfo(
            vm_id=vm_id, uid=old["uid"], gid=old["gid"], chroot_dir=old.get("chroot_dir") or ""
        )
    if old.get("kernel_path") and old.get("rootfs_path"):
        disk = DiskInfo(
            vm_id=vm_id,
            template=spec.template,
            kernel_path=old["kernel_path"],
            rootfs_path=old["rootfs_path"],
            size_bytes=0,
            method="reflink" if old.get("disk_method") == "reflink" else "copy",
            drives=[
                DriveInfo(name=d["name"], path=d["path"], size_bytes=0, read_only=d["read_only"])
                for d in old.get("drives") or []
            ],
        )
    if jail is not None and all(old.get(k) for k in ("tap", "mac", "ip", "gateway", "prefix_len")):
        old_ports = old.get("port_mappings")
        ports = (
            spec.port_mappings
            if old_ports is None
            else msgspec.convert(old_ports, list[PortMapping])
        )
        net = NetInfo(
            vm_id=vm_id,
            tap=old["tap"],
            mac=old["mac"],
            ip=old["ip"],
            gateway=old["gateway"],
            prefix_len=old["prefix_len"],
            bridge=old.get("bridge") or "",
            uid=jail.uid,
            gid=jail.gid,
            ports=spec.port_mappings
            if ports is None
            else msgspec.convert(ports, list[PortMapping]),
            policy=spec.network_policy or PolicySpec(),
            mode="netns" if old.get("network_mode") == "netns" else "bridge",
            netns=old.get("netns"),
            host_ip=old.get("host_ip"),
        )
    return Runtime(
        jail=jail,
        disk=disk,
        net=net,
        template_kernel_args=old.get("template_kernel_args"),
        pid=old.get("pid"),
    )
