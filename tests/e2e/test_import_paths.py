"""#9 findings 2 and 9 through the public API, against the four real daemons: the
audit's request (``POST /v1/templates`` naming ``/etc/shadow``) and its variants
are refused, nothing is published, and every refusal of what is on the
filesystem reads the same, whether the path exists or not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fcd_dev import devup

from .harness import api, running_suite

pytestmark = pytest.mark.root


def test_finding2_api_import_of_host_files_is_refused(tmp_path: Path) -> None:
    with running_suite(tmp_path) as suite, api(suite) as c:
        devup.import_demo_template(suite, "ok")  # below the import dir: still works
        imp = suite.import_dir
        rootfs = imp / "demo-src" / "rootfs.ext4"
        r = c.post(
            "/v1/templates",
            json={"name": "shadow", "kernel_path": "/etc/shadow", "rootfs_path": "/etc/shadow"},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_argument"
        assert "import directories" in r.json()["error"]["message"]
        (imp / "shadow").symlink_to("/etc/shadow")
        (imp / "etc").symlink_to("/etc")
        os.mkfifo(imp / "fifo")
        os.mknod(imp / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        bodies = set()
        for name in ("shadow", "etc/shadow", "fifo", "zero", "missing", "demo-src"):
            r = c.post(
                "/v1/templates",
                json={"name": "x", "kernel_path": str(imp / name), "rootfs_path": str(rootfs)},
            )
            assert r.status_code == 400, (name, r.text)
            bodies.add(r.text)
        assert len(bodies) == 1, f"the answers tell paths apart: {bodies}"
        names = [t["name"] for t in c.get("/v1/templates").json()]
        assert names == ["ok"]
        store = suite.cfg.state("storage")
        assert stat.S_IMODE(store.stat().st_mode) == 0o750
