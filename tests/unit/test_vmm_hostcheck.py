"""fcd-vmm's host checks: each problem names the file and the cause (issue #13)."""

from __future__ import annotations

from pathlib import Path

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
