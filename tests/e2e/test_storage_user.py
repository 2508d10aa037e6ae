"""``fcd up`` can run fcd-storage as an unprivileged user, as its unit does (#9
finding 2: under ``fcd up`` it read with root's rights). Here as ``nobody``: the
whole lifecycle still works, the daemon really runs as that user, the store is
its own and not world-readable, and a file only root may read cannot be imported
even from inside the import directory."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from fcd_dev import devup

from .harness import api, running_suite

pytestmark = pytest.mark.root


def test_fcd_storage_runs_as_its_own_user() -> None:
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="fcde-user-", dir="/var/tmp"))  # traversable by it
    os.chmod(base, 0o755)
    try:
        with running_suite(base, storage_user="nobody") as suite, api(suite) as c:
            proc = suite.procs["storage"]
            uids = Path(f"/proc/{proc.pid}/status").read_text().split("Uid:")[1].split()[:4]
            assert uids == [str(nobody.pw_uid)] * 4
            devup.import_demo_template(suite, "demo")
            store = suite.cfg.state("storage")
            assert store.stat().st_uid == nobody.pw_uid
            assert stat.S_IMODE(store.stat().st_mode) == 0o750
            root_only = suite.import_dir / "root-only"
            root_only.write_bytes(b"secret")
            os.chmod(root_only, 0o600)
            rootfs = suite.import_dir / "demo-src" / "rootfs.ext4"
            r = c.post(
                "/v1/templates",
                json={"name": "x", "kernel_path": str(root_only), "rootfs_path": str(rootfs)},
            )
            assert r.status_code == 400 and "import directory" in r.text, r.text
            vm = {"id": "u-1", "template": "demo", "vcpu_count": 1, "mem_size_mib": 128}
            r = c.post("/v1/vms", json={**vm, "disk_size_mib": 96})  # grown: e2fsprogs run
            assert r.status_code == 201, r.text
            assert r.json()["state"] == "running"
            disk = store / "disks" / "u-1"
            assert disk.stat().st_uid == nobody.pw_uid
            assert c.post("/v1/vms/u-1/stop").json()["state"] == "stopped"
            assert c.delete("/v1/vms/u-1").status_code in (200, 204)
            assert not disk.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
