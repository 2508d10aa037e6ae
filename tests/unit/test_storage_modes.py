"""#9 finding 6: nothing in the store is readable by other local users (a template's
image, a VM's disk, a snapshot's guest memory), and a store of an older version is
tightened at start. Real files; the read attempts run as ``nobody``."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcd_common.storelayout import StoreLayout
from fcd_storage import disks, snapshots, templates
from fcd_storage.store import Store

from .storage_helpers import MiB, kernel_file, sparse_image


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A base directory everybody may traverse (pytest's own tmp dirs are 0700, which
    would hide what the store's modes allow)."""
    base = Path(tempfile.mkdtemp(prefix="fcd-modes-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _store(base: Path) -> Store:
    (base / "import").mkdir(exist_ok=True)
    s = Store(
        StoreLayout(base / "storage"), max_disk_mib=1 << 20, import_dirs=(str(base / "import"),)
    )
    s.ensure_dirs()
    return s


def _populate(store: Store, base: Path) -> None:
    kernel = kernel_file(base / "import" / "vmlinux")
    img = sparse_image(base / "import" / "rootfs.img", 8 * MiB)
    templates.import_template(store, "base", str(kernel), str(img))
    disks.provision(store, "vm-1", "base")
    snapshots.prepare(store, "s1", "vm-1")
    for f in (store.layout.snapshot_state("s1"), store.layout.snapshot_memory("s1")):
        f.write_bytes(b"guest RAM" * 512)
    snapshots.commit(store, "s1")


def _world_accessible(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            st = os.lstat(Path(dirpath) / name)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o007:
                out.append(f"{Path(dirpath) / name} {stat.S_IMODE(st.st_mode):o}")
    return out


def test_finding6_store_has_no_world_access(open_base: Path) -> None:
    store = _store(open_base)
    _populate(store, open_base)
    assert _world_accessible(store.layout.root) == []
    assert stat.S_IMODE(store.layout.root.stat().st_mode) == 0o750


@pytest.mark.root
def test_finding6_other_users_cannot_read_images_or_guest_memory(open_base: Path) -> None:
    store = _store(open_base)
    _populate(store, open_base)
    lay = store.layout
    for f in (
        lay.template_dir("base") / "rootfs.ext4",
        lay.template_manifest("base"),
        lay.disk_rootfs("vm-1"),
        lay.snapshot_memory("s1"),
        lay.snapshot_state("s1"),
    ):
        assert f.is_file(), f
        res = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(f)],
            capture_output=True,
            check=False,
        )
        assert res.returncode != 0 and res.stdout == b"", f"nobody read {f}"
        assert b"Permission denied" in res.stderr


def test_finding6_older_store_is_tightened_at_start(open_base: Path) -> None:
    """A tree as earlier versions left it: 0755 directories, 0644 templates, 0444
    snapshot files. The next start takes the other bits away (and follows no link)."""
    root = open_base / "storage"
    tpl = root / "templates" / "old"
    snap = root / "snapshots" / "s"
    for d in (root, tpl, snap, root / "disks" / "vm-1"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    for f, mode in (
        (tpl / "vmlinux", 0o644),
        (tpl / "rootfs.ext4", 0o644),
        (tpl / "template.json", 0o644),
        (snap / "memory", 0o444),
        (root / "disks" / "vm-1" / "rootfs.ext4", 0o664),
    ):
        f.write_bytes(b"x")
        os.chmod(f, mode)
    outside = open_base / "outside"
    outside.write_bytes(b"not the store's")
    os.chmod(outside, 0o644)
    (tpl / "link").symlink_to(outside)
    _store(open_base)  # ensure_dirs, as at every start
    assert _world_accessible(root) == []
    assert stat.S_IMODE((tpl / "vmlinux").stat().st_mode) == 0o640
    assert stat.S_IMODE((snap / "memory").stat().st_mode) == 0o440
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644, "a symlink was followed"
