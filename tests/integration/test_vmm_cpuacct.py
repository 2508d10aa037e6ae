"""fcd-vmm puts a VM's process into its own cpuacct cgroup where v1 mounts cpuacct apart
(the jailer cannot be asked to: it would copy the parent's non-zero usage down)."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from pathlib import Path

import pytest

from fcd_common.errors import InvalidArgument
from fcd_vmm import cgroups, cpuacct

pytestmark = pytest.mark.root


def test_process_joins_the_vms_cpuacct_cgroup_and_is_accounted() -> None:
    mounts = cgroups.read_mounts()
    mount = cpuacct.cpuacct_mount(mounts)
    if mount is None:
        pytest.skip("cpuacct is not a v1 hierarchy of its own here")
    parent = f"fcdt-{secrets.token_hex(3)}"
    vm = mount.path / parent / "vm1"
    proc = subprocess.Popen(
        ["sh", "-c", "read x; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"],
        stdin=subprocess.PIPE,
    )
    try:
        assert cpuacct.join_cpuacct(mounts, parent, "vm1", proc.pid) is None
        assert str(proc.pid) in (vm / "cgroup.procs").read_text().split()
        line = [
            x for x in Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines() if "cpuacct" in x
        ]
        assert line and line[0].endswith(f"/{parent}/vm1")
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        assert int((vm / "cpuacct.usage").read_text()) > 0
        # joining again (a restart of fcd-vmm, say) is harmless; a gone pid is no problem
        assert cpuacct.join_cpuacct(mounts, parent, "vm1", proc.pid) is None
        # a parent path that climbs out is refused before anything is made
        with pytest.raises(InvalidArgument):
            cpuacct.join_cpuacct(mounts, "../x", "vm1", proc.pid)
    finally:
        proc.kill()
        proc.wait()
        for d in (vm, vm.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
