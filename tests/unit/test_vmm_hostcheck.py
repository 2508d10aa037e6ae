"""fcd-vmm's host checks: each problem names the file and the cause (issue #13)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from fcd_common.config import Config, JailConfig, PathsConfig
from fcd_vmm import hostcheck
from fcd_vmm.service import VmmService


def _cfg(tmp_path: Path, jailer: Path, firecracker: Path) -> Config:
    return Config(
        paths=PathsConfig(state_dir=str(tmp_path / "state"), run_dir=str(tmp_path / "run")),
        jail=JailConfig(jailer=str(jailer), firecracker=str(firecracker)),
    )


def _exe(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_missing_jailer_is_named_with_its_cause(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path / "nope/jailer", _exe(tmp_path / "firecracker"))
    assert hostcheck.binary_problems(cfg) == [
        f"jailer {tmp_path}/nope/jailer: No such file or directory"
    ]


def test_not_executable_and_not_a_file(tmp_path: Path) -> None:
    plain = tmp_path / "jailer"
    plain.write_text("")
    plain.chmod(0o644)
    cfg = _cfg(tmp_path, plain, tmp_path)
    assert hostcheck.binary_problems(cfg) == [
        f"jailer {plain}: not executable",
        f"firecracker {tmp_path}: not a regular file",
    ]


def test_good_binaries_and_devices(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, _exe(tmp_path / "jailer"), _exe(tmp_path / "firecracker"))
    assert hostcheck.problems(cfg, devices=("/dev/null",)) == []
    assert hostcheck.device_problem(str(tmp_path / "kvm")) == (
        f"{tmp_path}/kvm: No such file or directory"
    )


def test_status_line_says_degraded_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostcheck, "DEVICES", ("/dev/null",))
    cfg = _cfg(tmp_path, tmp_path / "jailer", _exe(tmp_path / "firecracker"))
    svc = VmmService(cfg)
    assert svc.status_line() == (
        f"degraded: jailer {tmp_path}/jailer: No such file or directory; 0 VMs running"
    )
    _exe(tmp_path / "jailer")
    assert svc.status_line() == "0 VMs running"  # re-checked: a fix shows without a restart


def test_finding12_jail_uids_overlapping_subids_warn_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """useradd's 13th user gets subuids 886432-951967, inside the default jail range: that user
    could run processes as a VM's jail uid. fcd-vmm says so at start (journald) and in
    its STATUS line for as long as it runs."""
    monkeypatch.setattr(hostcheck, "DEVICES", ("/dev/null",))
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\nnina:886000:65536\n")
    subgid.write_text("nina:886000:65536\n")
    files = (str(subuid), str(subgid), "/nonexistent")
    monkeypatch.setattr(hostcheck, "SUBID_FILES", files, raising=False)
    cfg = Config(
        paths=PathsConfig(
            state_dir=str(tmp_path / "state"),
            run_dir=str(tmp_path / "run"),
            chroot_base=str(tmp_path / "jail"),
        ),
        jail=JailConfig(
            jailer=str(_exe(tmp_path / "jailer")), firecracker=str(_exe(tmp_path / "fc"))
        ),
    )
    svc = VmmService(cfg)
    with caplog.at_level("WARNING", logger="fcd.vmm"):
        svc.start()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"{subuid}:2: nina owns 886000-951535" in "\n".join(warned)
    assert f"{subgid}:1: nina owns 886000-951535" in "\n".join(warned)
    assert "900000-965535" in warned[0] and "reserve the range" in warned[0]
    assert svc.status_line() == (
        f"warning: jail uids overlap subids ({subuid}:2: nina owns 886000-951535;"
        f" {subgid}:1: nina owns 886000-951535); 0 VMs running"
    )
    # a range clear of the subids: no warning
    clear = msgspec.structs.replace(
        cfg, jail=msgspec.structs.replace(cfg.jail, uid_min=2_000_000, uid_max=2_065_535)
    )
    svc = VmmService(clear)
    svc.start()
    assert svc.status_line() == "0 VMs running"
