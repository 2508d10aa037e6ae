"""The units pass ``systemd-analyze verify`` silently and score within their exposure budget."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPORT
from .units import DAEMONS, MAX_EXPOSURE, MAX_EXPOSURE_NETNS, render

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"),
]


@pytest.mark.parametrize("extra", [(), ("--netns-mode",)], ids=["default", "netns-mode"])
def test_verify_prints_nothing(tmp_path: Path, extra: tuple[str, ...]) -> None:
    units = render(tmp_path, *extra)
    cp = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], check=False, capture_output=True, text=True
    )
    # verify exits 0 even for an unknown directive: any output at all is a failure
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")


def _exposure(unit: Path) -> tuple[float, str]:
    cp = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        check=False,
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", cp.stdout)
    assert m, cp.stdout + cp.stderr
    return float(m.group(1)), m.group(2)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_exposure_within_budget(tmp_path: Path, daemon: str) -> None:
    render(tmp_path)
    score, word = _exposure(tmp_path / f"{daemon}.service")
    REPORT.append(f"exposure {daemon}: {score} {word} (budget {MAX_EXPOSURE[daemon]})")
    assert score <= MAX_EXPOSURE[daemon]


def test_netns_dropin_exposure(tmp_path: Path) -> None:
    # the unit plus its fcd-net.service.d/ drop-in, as `systemd/install --netns-mode` puts them
    render(tmp_path, "--netns-mode")
    assert (tmp_path / "fcd-net.service.d/20-fcd-netns.conf").is_file()
    score, word = _exposure(tmp_path / "fcd-net.service")
    REPORT.append(
        f"exposure fcd-net + netns drop-in: {score} {word} (at most {MAX_EXPOSURE_NETNS})"
    )
    assert score <= MAX_EXPOSURE_NETNS
    render(tmp_path / "plain")
    plain, _ = _exposure(tmp_path / "plain/fcd-net.service")
    assert plain < score  # the drop-in is what costs, and it was read


def test_target_stop_waits_for_every_daemon() -> None:
    # stop runs in reverse start order: the target must be Before= each service
    # it pulls in, or `systemctl stop fcd.target` returns while they still stop
    text = (Path(__file__).parents[2] / "systemd/fcd.target").read_text()

    def units(key: str) -> set[str]:
        return {u for line in text.splitlines() if line.startswith(f"{key}=")
                for u in line.split("=", 1)[1].split()}  # fmt: skip

    services = {f"{d}.service" for d in DAEMONS}
    assert services <= units("Wants") and services <= units("Before")
    assert not services & units("After")
