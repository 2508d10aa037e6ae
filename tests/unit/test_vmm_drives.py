"""fcd-vmm's re-check of extra drives, their API calls, and their placement into the jail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fcd_common.errors import InvalidArgument
from fcd_vmm import checks, jailfs, plan

from ..launches import drive
from .test_vmm_plan import VM, launch_req, make_cfg


def test_drives_accepted_and_configured(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    st = cfg.state("storage")
    drives = [
        drive(f"{st}/disks/{VM}/drive-data.ext4"),
        drive(f"{st}/templates/t1/rootfs.ext4", "shared", read_only=True),
    ]
    spec = checks.check_launch(launch_req(cfg, drives=drives), cfg)
    assert [d.name for d in spec.drives] == ["data", "shared"]
    calls = plan.configure_calls(spec)
    paths = [c.path for c in calls]
    assert paths.index("/drives/data") == paths.index("/drives/rootfs") + 1
    body = {c.path: c.body for c in calls}
    assert body["/drives/data"] == {
        "drive_id": "data",
        "path_on_host": "/drive-data.ext4",
        "is_root_device": False,
        "is_read_only": False,
    }
    assert body["/drives/shared"]["is_read_only"] is True


@pytest.mark.parametrize(
    ("drive_id", "path", "read_only", "field"),
    [
        ("data", "{st}/disks/vm-2/drive-data.ext4", False, "drives[0].path"),  # another VM's
        ("other", "{st}/disks/vm-1/drive-data.ext4", False, "drives[0].path"),  # name mismatch
        ("data", "{st}/disks/vm-1/rootfs.ext4", False, "drives[0].path"),  # the root disk again
        ("data", "{st}/templates/t1/rootfs.ext4", False, "drives[0].read_only"),  # writable
        ("data", "{st}/templates/t1/vmlinux", True, "drives[0].path"),
        ("data", "{st}/snapshots/s/memory", True, "drives[0].path"),
        ("data", "{st}/disks/vm-1/../vm-2/drive-data.ext4", False, "drives[0].path"),
        ("data", "/etc/shadow", True, "drives[0].path"),
        ("rootfs", "{st}/disks/vm-1/drive-rootfs.ext4", False, "drives[0].drive_id"),
    ],
)
def test_drives_refused(
    tmp_path: Path, drive_id: str, path: str, read_only: bool, field: str
) -> None:
    cfg = make_cfg(tmp_path)
    p = path.replace("{st}", str(cfg.state("storage")))
    with pytest.raises(InvalidArgument) as e:
        checks.check_launch(launch_req(cfg, drives=[drive(p, drive_id, read_only)]), cfg)
    assert e.value.details == {"field": field}


def test_duplicate_and_too_many_drives(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    d = drive(f"{cfg.state('storage')}/disks/{VM}/drive-data.ext4")
    with pytest.raises(InvalidArgument):
        checks.check_launch(launch_req(cfg, drives=[d, d]), cfg)
    with pytest.raises(InvalidArgument):
        checks.check_launch(launch_req(cfg, drives=[d] * 9), cfg)


def test_prepare_jail_links_drives(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to the jail uid needs root")
    cfg = make_cfg(tmp_path)
    st = cfg.state("storage")
    files = {
        "kernel": st / "templates/t1/vmlinux",
        "rootfs": st / f"disks/{VM}/rootfs.ext4",
        "data": st / f"disks/{VM}/drive-data.ext4",
        "shared": st / "templates/t1/rootfs.ext4",
    }
    for p in files.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    files["kernel"].chmod(0o644)
    files["shared"].chmod(0o644)
    opened = {k: checks.open_storage_file(str(p), str(st), k) for k, p in files.items()}
    try:
        paths = plan.jail_paths(cfg, VM)
        jailfs.prepare_jail(
            paths,
            900_001,
            900_001,
            opened["kernel"],
            opened["rootfs"],
            drives=[("data", opened["data"], False), ("shared", opened["shared"], True)],
        )
    finally:
        for f in opened.values():
            f.close()
    data, shared = paths.drive("data"), paths.drive("shared")
    assert data.stat().st_ino == files["data"].stat().st_ino
    assert data.stat().st_uid == 900_001
    assert shared.stat().st_ino == files["shared"].stat().st_ino
    assert shared.stat().st_uid == 0  # the shared template image is never chowned
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    jailfs.remove_jail_dir(paths)
