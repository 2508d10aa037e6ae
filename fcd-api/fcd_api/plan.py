"""Deciding, for the flows: pure functions from a spec and the helpers' answers.

Nothing here does I/O; :mod:`fcd_api.service` calls these and applies the result.
"""

from __future__ import annotations

from fcd_common.config import LimitsConfig
from fcd_common.errors import Internal, InvalidArgument
from fcd_common.proto import vmm as pvmm
from fcd_common.types import KERNEL_ARGS_MAX

from .models import CreateVMRequest, VmRecord

__all__ = ["check_kernel_args", "check_limits", "join_kernel_args", "launch_request"]


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
    """The vmm.launch request for a VM whose jail, disk and network exist (pure):
    the disk and network records go on to fcd-vmm as the helpers answered them."""
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
