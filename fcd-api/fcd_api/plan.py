"""Deciding, for the flows: pure functions from a spec and the helpers' answers.

Nothing here does I/O; :mod:`fcd_api.flows` calls these and applies the result.
"""

from __future__ import annotations

import msgspec

from fcd_common.config import LimitsConfig
from fcd_common.errors import Internal, InvalidArgument
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import vmm as pvmm

from .models import (
    KERNEL_ARGS_MAX,
    CreateVMRequest,
    PortMapping,
    Runtime,
    RuntimeDrive,
    VmRecord,
)

__all__ = [
    "check_kernel_args",
    "check_limits",
    "join_kernel_args",
    "launch_request",
    "port_mappings",
    "port_specs",
    "with_resources",
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


def launch_request(rec: VmRecord) -> pvmm.Launch:
    """The vmm.launch request for a VM whose jail, disk and network exist (pure)."""
    r, s = rec.runtime, rec.spec
    missing = [
        name
        for name in ("kernel_path", "rootfs_path", "tap", "mac", "ip", "gateway", "prefix_len")
        if getattr(r, name) is None
    ]
    if missing:
        raise Internal(f"VM {rec.id} lacks runtime fields {missing}; delete and recreate it")
    assert r.kernel_path and r.rootfs_path and r.tap and r.mac and r.ip and r.gateway
    assert r.prefix_len is not None
    return pvmm.Launch(
        vm_id=rec.id,
        vcpu_count=s.vcpu_count,
        mem_size_mib=s.mem_size_mib,
        kernel_path=r.kernel_path,
        rootfs_path=r.rootfs_path,
        kernel_args=join_kernel_args(r.template_kernel_args or "", s.kernel_args),
        tap=r.tap,
        mac=r.mac,
        ip=r.ip,
        gateway=r.gateway,
        prefix_len=r.prefix_len,
        netns=r.netns,
        drives=[
            pvmm.LaunchDrive(drive_id=d.name, path=d.path, read_only=d.read_only) for d in r.drives
        ],
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


def storage_drives(spec: CreateVMRequest) -> list[pstorage.DriveSpec]:
    return [
        pstorage.DriveSpec(name=d.name, size_mib=d.size_mib, template=d.template)
        for d in spec.drives
    ]


def with_resources(rt: Runtime, disk: pstorage.DiskInfo, net: pnet.NetInfo) -> Runtime:
    return msgspec.structs.replace(
        rt,
        kernel_path=disk.kernel_path,
        rootfs_path=disk.rootfs_path,
        disk_method=disk.method,
        tap=net.tap,
        mac=net.mac,
        ip=net.ip,
        gateway=net.gateway,
        prefix_len=net.prefix_len,
        bridge=net.bridge,
        port_mappings=port_mappings(net.ports),
        network_mode=net.mode,
        netns=net.netns,
        host_ip=net.host_ip,
        drives=[RuntimeDrive(name=d.name, path=d.path, read_only=d.read_only) for d in disk.drives],
    )


def port_specs(mappings: list[PortMapping]) -> list[pnet.PortSpec]:
    return [
        pnet.PortSpec(host_port=m.host_port, guest_port=m.guest_port, protocol=m.protocol)
        for m in mappings
    ]


def port_mappings(ports: list[pnet.PortSpec]) -> list[PortMapping]:
    return [
        PortMapping(host_port=p.host_port, guest_port=p.guest_port, protocol=p.protocol)
        for p in ports
    ]
