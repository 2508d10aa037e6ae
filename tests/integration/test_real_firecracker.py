"""Only with real release binaries (FCD_FIRECRACKER/FCD_JAILER): the minimal guest really boots.

The e2e suite already runs against the real binaries when those variables are
set; this adds the one thing the double cannot show: the guest kernel the tests
build runs under KVM and prints its line on the serial console (Firecracker's
stdout until a logger is configured).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from fakes import guest_kernel

pytestmark = [pytest.mark.root, pytest.mark.realfc]


def _accepts(path: Path) -> bool:
    """The socket exists and takes a connection (not only bound: ECONNREFUSED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def test_minimal_guest_prints_on_serial(tmp_path: Path) -> None:
    fc = os.environ["FCD_FIRECRACKER"]
    kernel = guest_kernel.build(tmp_path / "vmlinux")
    sock = tmp_path / "fc.sock"
    out = (tmp_path / "stdout").open("wb")
    proc = subprocess.Popen([fc, "--api-sock", str(sock), "--id", "realfc-1"], stdout=out)
    try:
        deadline = time.monotonic() + 5
        while not _accepts(sock):  # Firecracker binds, then listens (FIRECRACKER.md)
            assert time.monotonic() < deadline, "no API socket within 5 s"
            time.sleep(0.01)  # polls a foreign binary's socket in a test, not in fcd
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock), verify=False), base_url="http://localhost"
        ) as c:
            assert (
                c.put("/machine-config", json={"vcpu_count": 1, "mem_size_mib": 128}).status_code
                == 204
            )
            r = c.put(
                "/boot-source",
                json={"kernel_image_path": str(kernel), "boot_args": "console=ttyS0"},
            )
            assert r.status_code == 204, r.text
            r = c.put("/actions", json={"action_type": "InstanceStart"})
            assert r.status_code == 204, r.text
            deadline = time.monotonic() + 5
            while b"fcd-guest: hello" not in (tmp_path / "stdout").read_bytes():
                assert time.monotonic() < deadline, (tmp_path / "stdout").read_bytes()[-2000:]
                time.sleep(0.05)
            assert c.get("/").json()["state"] == "Running"
    finally:
        proc.kill()
        proc.wait()
        out.close()
