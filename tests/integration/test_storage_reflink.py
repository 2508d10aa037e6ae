"""Provisioning on real filesystems: reflink on a loop-mounted XFS, sparse copy on ext4 (root)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcd_storage import disks as disks_mod
from fcd_storage import templates
from fcd_storage.store import Store
from tests.loopfs import MKFS, used_bytes
from tests.loopfs import loop_fs as _loop_fs
from tests.unit.storage_helpers import MiB, ext4_size, have, kernel_file, make_store, mkfs_ext4

pytestmark = pytest.mark.root


@contextlib.contextmanager
def loop_fs(base: Path, fstype: str, size: int = 2 << 30) -> Iterator[Path]:
    """A fresh filesystem of ``fstype`` on a sparse loop image (2 GiB), mounted under ``base``."""
    if not have(MKFS[fstype][0]):
        pytest.skip(f"{MKFS[fstype][0]} not installed")
    with _loop_fs(base, fstype, size) as mnt:
        yield mnt


def template_with_data(store: Store, src: Path, data_mib: int) -> Path:
    """A 256 MiB image with ``data_mib`` of incompressible data at its start."""
    src.mkdir()
    image = src / "rootfs.img"
    with image.open("wb") as f:
        f.truncate(256 * MiB)
        for _ in range(data_mib):
            f.write(os.urandom(MiB))
    templates.import_template(store, "base", str(kernel_file(src / "vmlinux")), str(image))
    return image


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def test_xfs_provision_is_a_reflink(tmp_path: Path) -> None:
    with loop_fs(tmp_path, "xfs") as mnt:
        store = make_store(mnt, import_dir=tmp_path)
        image = template_with_data(store, tmp_path / "src", 64)
        before = used_bytes(mnt)
        disks = [disks_mod.provision(store, f"vm-{i}", "base") for i in range(4)]
        grown = used_bytes(mnt) - before
        assert [d.method for d in disks] == ["reflink"] * 4
        assert grown < 8 * MiB, f"4 clones of 64 MiB data used {grown // MiB} MiB"
        disk = store.layout.disk_rootfs("vm-0")
        assert sha(disk) == sha(image)
        # writing into a clone leaves the template alone (copy on write)
        with disk.open("r+b") as f:
            f.write(b"guest wrote here")
        assert store.template("base").rootfs_sha256 == sha(store.layout.template_rootfs("base"))
        for i in range(4):
            assert disks_mod.release(store, f"vm-{i}")
        assert list(store.layout.tmp.iterdir()) == []


def test_xfs_reflink_then_ext4_resize(tmp_path: Path) -> None:
    if not have("mkfs.ext4"):
        pytest.skip("mkfs.ext4 not installed")
    with loop_fs(tmp_path, "xfs") as mnt:
        store = make_store(mnt, import_dir=tmp_path)
        image = mkfs_ext4(tmp_path / "rootfs.ext4", 64)
        templates.import_template(store, "base", str(kernel_file(tmp_path / "vmlinux")), str(image))
        template_sha = sha(store.layout.template_rootfs("base"))
        d = disks_mod.provision(store, "vm-1", "base", 256)
        assert d.method == "reflink" and d.resized
        assert ext4_size(store.layout.disk_rootfs("vm-1")) == 256 * MiB
        assert sha(store.layout.template_rootfs("base")) == template_sha
        assert ext4_size(store.layout.template_rootfs("base")) == 64 * MiB


def test_ext4_provision_is_a_sparse_copy(tmp_path: Path) -> None:
    with loop_fs(tmp_path, "ext4") as mnt:
        store = make_store(mnt, import_dir=tmp_path)
        image = template_with_data(store, tmp_path / "src", 32)
        before = used_bytes(mnt)
        d = disks_mod.provision(store, "vm-1", "base")
        grown = used_bytes(mnt) - before
        assert d.method == "copy"
        assert 32 * MiB <= grown < 40 * MiB  # the data, not the 256 MiB of holes
        assert sha(store.layout.disk_rootfs("vm-1")) == sha(image)
        assert disks_mod.release(store, "vm-1")


UNPRIVILEGED = 65534  # nobody


def as_nobody(store_root: Path, code: str) -> str:
    prog = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fcd_common.storelayout import StoreLayout\n"
        "from fcd_storage import disks as disks_mod\n"
        "from fcd_storage import templates\n"
        "from fcd_storage.store import Store\n"
        f"store = Store(StoreLayout(Path({str(store_root)!r})), max_disk_mib=1024,"
        f" import_dirs=[{str(store_root.parent / 'src')!r}])\n" + code
    )
    res = subprocess.run(
        [sys.executable, "-c", prog],
        user=UNPRIVILEGED,
        group=UNPRIVILEGED,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_unprivileged_store_survives_jail_chown() -> None:
    """As a plain user: import, provision; root chowns and links the disk; the user releases."""
    base = Path(tempfile.mkdtemp(prefix="fcdt-storage-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        src = base / "src"
        src.mkdir()
        kernel = kernel_file(src / "vmlinux")
        image = src / "rootfs.img"
        with image.open("wb") as f:
            f.truncate(16 * MiB)
            f.write(b"data")
        root = base / "storage"
        root.mkdir()
        os.chown(root, UNPRIVILEGED, UNPRIVILEGED)
        out = as_nobody(
            root,
            "store.ensure_dirs()\n"
            f"templates.import_template(store, 'base', {str(kernel)!r}, {str(image)!r})\n"
            "print(disks_mod.provision(store, 'vm-1', 'base').method)\n",
        )
        assert out.strip() in ("copy", "reflink")
        disk = root / "disks/vm-1/rootfs.ext4"
        assert disk.stat().st_uid == UNPRIVILEGED
        # what fcd-vmm does: hard-link into a root-owned jail, chown to the jail uid
        jail = base / "jail"
        jail.mkdir()
        os.link(disk, jail / "rootfs.ext4")
        os.chown(jail / "rootfs.ext4", 900_001, 900_001)
        os.link(root / "templates/base/vmlinux", jail / "vmlinux")
        as_nobody(
            root,
            "assert disks_mod.release(store, 'vm-1')\n"
            "assert not disks_mod.release(store, 'vm-1')\n",
        )
        assert not (root / "disks/vm-1").exists()
        assert (jail / "rootfs.ext4").stat().st_uid == 900_001
        assert list((root / "tmp").iterdir()) == []
    finally:
        shutil.rmtree(base)
