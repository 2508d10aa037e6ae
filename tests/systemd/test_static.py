"""The units pass ``systemd-analyze verify`` silently and score within their exposure budget."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPORT
from .units import DAEMONS, MAX_EXPOSURE, render

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"),
]


def test_verify_prints_nothing(tmp_path: Path) -> None:
    units = render(tmp_path)
    cp = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], check=False, capture_output=True, text=True
    )
    # verify exits 0 even for an unknown directive: any output at all is a failure
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_exposure_within_budget(tmp_path: Path, daemon: str) -> None:
    render(tmp_path)
    cp = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(tmp_path / f"{daemon}.service")],
        check=False,
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", cp.stdout)
    assert m, cp.stdout + cp.stderr
    score = float(m.group(1))
    REPORT.append(f"exposure {daemon}: {score} {m.group(2)} (budget {MAX_EXPOSURE[daemon]})")
    assert score <= MAX_EXPOSURE[daemon]
