"""Deciding resource changes (pure): validation naming the field, merging an update into
a VM's spec, and what fcd-vmm is asked at launch and while the VM runs."""

from __future__ import annotations

from typing import Any

import msgspec

from fcd_common.config import LimitsConfig
from fcd_common.errors import FailedPrecondition, InvalidArgument
from fcd_common.proto import vmm as pvmm
from fcd_common.proto.vmm import NetRateLimits, RateLimit, RateLimits, TokenBucket

from .models import CreateVMRequest
from .resources_models import ResourcesUpdate

__all__ = [
    "check_resource_spec",
    "launch_resources",
    "merge_limits",
    "merge_update",
    "normalized",
    "size_change_refused",
    "update_request",
]


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", details={"field": field})


def _check_bucket(b: TokenBucket | None, field: str) -> None:
    if b is None:
        return
    if (b.size == 0) != (b.refill_time_ms == 0):
        raise _bad(
            field,
            "size and refill_time_ms must both be > 0 (a limit) or both 0 (no limit);"
            f" got size={b.size}, refill_time_ms={b.refill_time_ms}",
        )


def _check_limit(rl: RateLimit | None, field: str) -> None:
    if rl is not None:
        _check_bucket(rl.bandwidth, f"{field}.bandwidth")
        _check_bucket(rl.ops, f"{field}.ops")


def check_rate_limits(limits: RateLimits | None, drive_names: list[str], field: str) -> None:
    if limits is None:
        return
    _check_limit(limits.root, f"{field}.root")
    for name, rl in limits.drives.items():
        if name not in drive_names:
            raise _bad(
                f"{field}.drives.{name}",
                f"the VM has no drive {name!r} (its drives: {', '.join(drive_names) or 'none'})",
            )
        _check_limit(rl, f"{field}.drives.{name}")
    if limits.net is not None:
        _check_limit(limits.net.rx, f"{field}.net.rx")
        _check_limit(limits.net.tx, f"{field}.net.tx")


def check_resource_spec(spec: CreateVMRequest, limits: LimitsConfig) -> None:
    """The resource fields of a spec (create, or after an update), errors naming the field."""
    check_rate_limits(spec.rate_limits, [d.name for d in spec.drives], "rate_limits")
    if spec.mem_target_mib is not None:
        if spec.balloon is None:
            raise _bad("mem_target_mib", "a memory target needs a balloon (create with balloon)")
        if spec.mem_target_mib > spec.mem_size_mib:
            raise _bad(
                "mem_target_mib",
                f"{spec.mem_target_mib} is more than the VM's {spec.mem_size_mib} MiB",
            )
    if spec.mem_limit_mib is not None and spec.mem_limit_mib > limits.max_mem_mib:
        raise _bad(
            "mem_limit_mib", f"{spec.mem_limit_mib} exceeds the limit of {limits.max_mem_mib}"
        )
    if spec.cpu_quota is not None and spec.cpu_quota > limits.max_vcpu:
        raise _bad("cpu_quota", f"{spec.cpu_quota} is more than {limits.max_vcpu} CPUs")


def balloon_mib(spec: CreateVMRequest) -> int:
    return 0 if spec.mem_target_mib is None else spec.mem_size_mib - spec.mem_target_mib


def launch_resources(spec: CreateVMRequest) -> dict[str, Any]:
    """The resource fields of a ``vmm.Launch`` for this spec."""
    return {
        "rate_limits": spec.rate_limits,
        "balloon": spec.balloon,
        "balloon_mib": balloon_mib(spec) if spec.balloon is not None else 0,
        "cpu_quota": spec.cpu_quota,
        "mem_limit_mib": spec.mem_limit_mib,
    }


def _merge_bucket(old: TokenBucket | None, new: TokenBucket | None) -> TokenBucket | None:
    if new is None:
        return old
    if not new.enabled:
        return None
    # Firecracker keeps no burst of 0 (it shows null): neither does the spec
    return msgspec.structs.replace(new, one_time_burst=new.one_time_burst or None)


def _merge_limit(old: RateLimit | None, new: RateLimit | None) -> RateLimit | None:
    if new is None:
        return old
    o = old or RateLimit()
    bw = _merge_bucket(o.bandwidth, new.bandwidth)
    ops = _merge_bucket(o.ops, new.ops)
    return RateLimit(bandwidth=bw, ops=ops) if (bw or ops) else None


def merge_limits(old: RateLimits | None, upd: RateLimits | None) -> RateLimits | None:
    """Firecracker's own PATCH rule: a bucket given replaces, size 0 removes, absent stays."""
    if upd is None:
        return old
    o = old or RateLimits()
    drives = dict(o.drives)
    for name, rl in upd.drives.items():
        merged = _merge_limit(drives.get(name), rl)
        if merged is None:
            drives.pop(name, None)
        else:
            drives[name] = merged
    net = o.net
    if upd.net is not None:
        on = o.net or NetRateLimits()
        rx, tx = _merge_limit(on.rx, upd.net.rx), _merge_limit(on.tx, upd.net.tx)
        net = NetRateLimits(rx=rx, tx=tx) if (rx or tx) else None
    root = _merge_limit(o.root, upd.root)
    if root is None and not drives and net is None:
        return None
    return RateLimits(root=root, drives=drives, net=net)


def normalized(spec: CreateVMRequest) -> CreateVMRequest:
    """The spec as Firecracker will hold it: disabled buckets and zero bursts dropped (a
    create's spec, so that what is asked and what is in force read the same)."""
    if spec.rate_limits is None:
        return spec
    return msgspec.structs.replace(spec, rate_limits=merge_limits(None, spec.rate_limits))


def size_change_refused(spec: CreateVMRequest, upd: ResourcesUpdate, state: str) -> None:
    """vCPUs and memory size are fixed once Firecracker has booted (or saved memory)."""
    changed = [
        f
        for f in ("vcpu_count", "mem_size_mib")
        if getattr(upd, f) is not None and getattr(upd, f) != getattr(spec, f)
    ]
    if changed:
        raise FailedPrecondition(
            f"{' and '.join(changed)} cannot change while the VM is {state}: Firecracker fixes"
            " them at boot. Stop the VM, change them, and they apply at its next start",
            details={"field": changed[0], "state": state},
        )


def merge_update(spec: CreateVMRequest, upd: ResourcesUpdate) -> CreateVMRequest:
    changes: dict[str, Any] = {}
    for f in ("vcpu_count", "mem_size_mib", "mem_limit_mib", "mem_target_mib"):
        if getattr(upd, f) is not None:
            changes[f] = getattr(upd, f)
    if upd.cpu_quota is not None:
        changes["cpu_quota"] = upd.cpu_quota or None
    if upd.rate_limits is not None:
        changes["rate_limits"] = merge_limits(spec.rate_limits, upd.rate_limits)
    return msgspec.structs.replace(spec, **changes)


def update_request(vm_id: str, new: CreateVMRequest, upd: ResourcesUpdate) -> pvmm.UpdateResources:
    """What a running VM is asked to change (only what the update names)."""
    return pvmm.UpdateResources(
        vm_id=vm_id,
        rate_limits=upd.rate_limits,
        balloon_mib=balloon_mib(new) if upd.mem_target_mib is not None else None,
        cpu_quota=upd.cpu_quota,
        mem_limit_mib=upd.mem_limit_mib,
    )
