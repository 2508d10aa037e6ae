"""Pure decisions: disk sizes, idempotency and conflicts, free-space rule."""

from __future__ import annotations

import pytest

from fcd_common.errors import Conflict, InvalidArgument, ResourceExhausted
from fcd_storage import plan
from fcd_storage.manifest import DiskManifest, TemplateManifest

MiB = plan.MiB


def tm(**over: object) -> TemplateManifest:
    base: dict[str, object] = dict(
        name="base",
        kernel_size=10,
        rootfs_size=64 * MiB,
        kernel_sha256="k" * 64,
        rootfs_sha256="r" * 64,
        kernel_args="console=ttyS0",
        created_at="2026-01-01T00:00:00Z",
    )
    base.update(over)
    return TemplateManifest(**base)  # type: ignore[arg-type]


def dm(**over: object) -> DiskManifest:
    base: dict[str, object] = dict(
        vm_id="vm-1",
        template="base",
        template_rootfs_sha256="r" * 64,
        size_bytes=64 * MiB,
        method="copy",
        resized=False,
        created_at="2026-01-01T00:00:00Z",
    )
    base.update(over)
    return DiskManifest(**base)  # type: ignore[arg-type]


def test_decide_import() -> None:
    assert plan.decide_import(None, tm()) is True
    assert plan.decide_import(tm(), tm(created_at="2027-01-01T00:00:00Z")) is False
    for change in ({"rootfs_sha256": "x" * 64}, {"kernel_sha256": "y" * 64}, {"kernel_args": ""}):
        with pytest.raises(Conflict):
            plan.decide_import(tm(), tm(**change))


def test_disk_size() -> None:
    assert plan.disk_size(64 * MiB, None, 1024) == 64 * MiB
    assert plan.disk_size(64 * MiB, 64, 1024) == 64 * MiB
    assert plan.disk_size(64 * MiB, 128, 1024) == 128 * MiB
    assert plan.disk_size(64 * MiB + 1, None, 1024) == 64 * MiB + 1
    with pytest.raises(InvalidArgument, match="smaller") as e:
        plan.disk_size(64 * MiB + 1, 64, 1024)
    assert e.value.details["min"] == 65
    with pytest.raises(InvalidArgument, match="limit"):
        plan.disk_size(64 * MiB, 2048, 1024)


def test_existing_disk() -> None:
    assert plan.existing_disk(None, "vm-1", "base", 64 * MiB) is None
    d = dm()
    assert plan.existing_disk(d, "vm-1", "base", 64 * MiB) is d
    with pytest.raises(Conflict, match="template"):
        plan.existing_disk(d, "vm-1", "other", 64 * MiB)
    with pytest.raises(Conflict, match="bytes"):
        plan.existing_disk(d, "vm-1", "base", 128 * MiB)


def test_space_needed_and_check() -> None:
    r = plan.RESERVE_BYTES
    assert plan.space_needed(64 * MiB, 5 * MiB, 64 * MiB, "reflink") == r
    assert plan.space_needed(64 * MiB, 5 * MiB, 64 * MiB, "copy") == 5 * MiB + r
    assert plan.space_needed(64 * MiB, 5 * MiB, 100 * MiB, "copy") == 41 * MiB + r
    plan.check_space(100 * MiB, 100 * MiB, "x")
    with pytest.raises(ResourceExhausted, match="need 101 MiB, 100 MiB free"):
        plan.check_space(100 * MiB, 101 * MiB, "x")


@pytest.mark.parametrize("args", ["a\nb", "a\0", "a\tb", "é", "x" * 1025])
def test_kernel_args_refused(args: str) -> None:
    with pytest.raises(InvalidArgument):
        plan.check_kernel_args(args)


def test_kernel_args_accepted() -> None:
    args = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw"
    assert plan.check_kernel_args(args) == args
    assert plan.check_kernel_args("x" * 1024) == "x" * 1024
