"""Templates from trees, extra drives, quota, snapshots, reference counts, reclaim (no root)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from fcd_common.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from fcd_common.proto.storage import DriveSpec, SnapshotOrigin
from fcd_storage import disks, plan, reclaim, refs, snapshots, suspends, templates
from fcd_storage.manifest import DiskManifest, DriveRecord, SnapshotManifest, now_rfc3339
from fcd_storage.store import Store

from .storage_helpers import MiB, ext4_size, have, kernel_file, make_store, sparse_image

needs_e2fs = pytest.mark.skipif(not have("mkfs.ext4"), reason="e2fsprogs not installed")
ENV = {"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    return kernel_file(tmp_path / "vmlinux")


def tree(base: Path) -> Path:
    (base / "etc").mkdir(parents=True)
    (base / "etc/hostname").write_text("built\n")
    (base / "bin").mkdir()
    (base / "bin/init").write_bytes(b"#!/bin/sh\necho hi\n")
    os.symlink("../etc/hostname", base / "bin/name")
    return base


def debugfs_cat(image: Path, path: str) -> str:
    res = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    return res.stdout


def imported(store: Store, tmp_path: Path, kernel: Path, name: str = "base") -> None:
    img = sparse_image(tmp_path / f"{name}.img", 32 * MiB)
    templates.import_template(store, name, str(kernel), str(img))


# --- import with sha256 ----------------------------------------------------------------


def test_import_verifies_expected_sha256(store: Store, tmp_path: Path, kernel: Path) -> None:
    img = sparse_image(tmp_path / "r.img", 8 * MiB)
    good = hashlib.sha256(img.read_bytes()).hexdigest()
    with pytest.raises(InvalidArgument) as e:
        templates.import_template(store, "t", str(kernel), str(img), rootfs_sha256="0" * 64)
    assert e.value.details["field"] == "rootfs_sha256"
    assert store.templates() == [] and list(store.layout.tmp.iterdir()) == []
    m = templates.import_template(store, "t", str(kernel), str(img), rootfs_sha256=good)
    assert m.rootfs_sha256 == good


# --- build from a tree -------------------------------------------------------------------


@needs_e2fs
def test_build_from_tree_is_a_clean_ext4(store: Store, tmp_path: Path, kernel: Path) -> None:
    m = templates.build_template(store, "built", str(kernel), str(tree(tmp_path / "t")))
    image = store.layout.template_rootfs("built")
    assert m.source == "build" and m.rootfs_size == image.stat().st_size
    assert m.rootfs_size % MiB == 0 and m.rootfs_size >= plan.MIN_BUILD_MIB * MiB
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], check=False, capture_output=True, env=ENV)
    assert fsck.returncode == 0, fsck.stdout
    assert debugfs_cat(image, "/etc/hostname") == "built\n"
    assert debugfs_cat(image, "/bin/init").startswith("#!/bin/sh")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == m.rootfs_sha256
    assert list(store.layout.tmp.iterdir()) == []


@needs_e2fs
def test_build_with_size(store: Store, tmp_path: Path, kernel: Path) -> None:
    templates.build_template(store, "b", str(kernel), str(tree(tmp_path / "t")), size_mib=48)
    assert ext4_size(store.layout.template_rootfs("b")) == 48 * MiB


@needs_e2fs
def test_build_refuses_bad_sources(store: Store, tmp_path: Path, kernel: Path) -> None:
    src = tree(tmp_path / "t")
    os.symlink(src, tmp_path / "link")
    for bad, field in (
        ("relative/dir", "source_dir"),
        (str(tmp_path / "t/../t"), "source_dir"),
        (str(tmp_path / "link"), "source_dir"),
        (str(tmp_path / "missing"), "source_dir"),
        (str(kernel), "source_dir"),
    ):
        with pytest.raises(InvalidArgument) as e:
            templates.build_template(store, "b", str(kernel), bad)
        assert e.value.details["field"] == field, bad
    with pytest.raises(InvalidArgument):
        templates.build_template(store, "../x", str(kernel), str(src))
    big = tmp_path / "big"
    big.mkdir()
    (big / "f").write_bytes(os.urandom(2 * MiB))
    with pytest.raises(InvalidArgument) as e:
        templates.build_template(store, "b", str(kernel), str(big), size_mib=1)
    assert e.value.details["field"] == "size_mib"
    assert store.templates() == [] and list(store.layout.tmp.iterdir()) == []


@needs_e2fs
def test_build_exists_is_conflict(store: Store, tmp_path: Path, kernel: Path) -> None:
    src = tree(tmp_path / "t")
    templates.build_template(store, "b", str(kernel), str(src))
    with pytest.raises(Conflict):
        templates.build_template(store, "b", str(kernel), str(src))


def test_build_geometry() -> None:
    size, inodes = plan.build_geometry(plan.TreeSize(100 * MiB, 5000), None, 1 << 20)
    assert size == 141 * MiB and inodes == 10000
    assert plan.build_geometry(plan.TreeSize(0, 1), None, 1 << 20) == (16 * MiB, 1024)
    with pytest.raises(InvalidArgument):
        plan.build_geometry(plan.TreeSize(100 * MiB, 1), 50, 1 << 20)
    with pytest.raises(InvalidArgument):
        plan.build_geometry(plan.TreeSize(100 * MiB, 1), None, 64)


# --- drives and quota --------------------------------------------------------------------


@needs_e2fs
def test_data_and_shared_drives(store: Store, tmp_path: Path, kernel: Path) -> None:
    imported(store, tmp_path, kernel)
    drives = [DriveSpec(name="data", size_mib=16), DriveSpec(name="ro", template="base")]
    d = disks.provision(store, "vm-1", "base", None, drives)
    info = d.info(store.layout)
    data = Path(info.drives[0].path)
    assert data == store.layout.data_drive("vm-1", "data")
    assert ext4_size(data) == 16 * MiB and not info.drives[0].read_only
    assert info.drives[1].read_only and info.drives[1].path == str(
        store.layout.template_rootfs("base")
    )
    # idempotent with the same drives, conflict with others
    assert disks.provision(store, "vm-1", "base", None, drives) == d
    with pytest.raises(Conflict):
        disks.provision(store, "vm-1", "base", None, drives[:1])
    assert disks.release(store, "vm-1") and not data.exists()


def test_drive_validation(store: Store, tmp_path: Path, kernel: Path) -> None:
    imported(store, tmp_path, kernel)
    bad = [
        [DriveSpec(name="a", size_mib=16), DriveSpec(name="a", size_mib=16)],
        [DriveSpec(name="a")],
        [DriveSpec(name="a", size_mib=16, template="base")],
        [DriveSpec(name="rootfs", size_mib=16)],
        [DriveSpec(name="a", size_mib=1)],
    ]
    for drives in bad:
        with pytest.raises(InvalidArgument):
            disks.provision(store, "vm-1", "base", None, drives)
    with pytest.raises(NotFound):
        disks.provision(store, "vm-1", "base", None, [DriveSpec(name="a", template="nope")])
    assert store.disks() == [] and list(store.layout.tmp.iterdir()) == []


def test_quota_and_space_refused_before_writing(tmp_path: Path, kernel: Path) -> None:
    store = Store(
        make_store(tmp_path).layout,
        max_disk_mib=1 << 20,
        max_vm_disk_mib=64,
        import_dirs=(str(tmp_path),),
    )
    imported(store, tmp_path, kernel)
    with pytest.raises(ResourceExhausted) as e:
        disks.provision(store, "vm-1", "base", None, [DriveSpec(name="d", size_mib=40)])
    assert e.value.details["quota_mib"] == 64
    big = Store(store.layout, max_disk_mib=1 << 30, max_vm_disk_mib=1 << 30)
    with pytest.raises(ResourceExhausted) as e:  # 512 TiB: no filesystem here has that
        disks.provision(big, "vm-1", "base", None, [DriveSpec(name="d", size_mib=1 << 29)])
    assert "free" in e.value.message
    assert store.disks() == [] and list(store.layout.tmp.iterdir()) == []
    assert not store.layout.disk_dir("vm-1").exists()


# --- reference counts, template delete ------------------------------------------------------


def test_template_delete_refused_while_used(store: Store, tmp_path: Path, kernel: Path) -> None:
    imported(store, tmp_path, kernel)
    imported(store, tmp_path, kernel, "other")
    disks.provision(store, "vm-1", "base", None, [DriveSpec(name="ro", template="other")])
    for name in ("base", "other"):
        with pytest.raises(Conflict) as e:
            templates.delete_template(store, name)
        assert e.value.details["used_by"] == ["vm:vm-1"]
    disks.release(store, "vm-1")
    templates.delete_template(store, "other")
    templates.delete_template(store, "base")
    assert store.templates() == [] and list(store.layout.tmp.iterdir()) == []
    with pytest.raises(NotFound):
        templates.delete_template(store, "base")


def test_refs_pure() -> None:
    ts = now_rfc3339()
    disk = DiskManifest(
        vm_id="a",
        template="t",
        template_rootfs_sha256="0",
        size_bytes=1,
        method="copy",
        resized=False,
        created_at=ts,
        drives=[DriveRecord(name="x", size_bytes=1, template="u")],
        snapshot="s",
    )
    snap = SnapshotManifest(name="s", vm_id="b", template="t", created_at=ts)
    assert refs.template_users([disk], [snap]) == {"t": ["snapshot:s", "vm:a"], "u": ["vm:a"]}
    assert refs.snapshot_users([disk]) == {"s": ["vm:a"]}


# --- snapshots ---------------------------------------------------------------------------


def fill(store: Store, name: str) -> None:
    for f in (store.layout.snapshot_state(name), store.layout.snapshot_memory(name)):
        f.write_bytes(b"S" * 4096)


def test_snapshot_lifecycle(store: Store, tmp_path: Path, kernel: Path) -> None:
    imported(store, tmp_path, kernel)
    disks.provision(store, "vm-1", "base")
    p = snapshots.prepare(store, "s1", "vm-1")
    assert not p.ready
    with pytest.raises(FailedPrecondition):
        snapshots.commit(store, "s1")  # the VM has not written the files yet
    with pytest.raises(FailedPrecondition):
        disks.provision(store, "vm-2", "base", snapshot="s1")  # pending
    fill(store, "s1")
    m = snapshots.commit(store, "s1")
    assert m.ready and m.memory_size == 4096 and m.disk_size == 32 * MiB
    for f in (
        store.layout.snapshot_memory("s1"),
        store.layout.snapshot_state("s1"),
        store.layout.snapshot_disk("s1"),
    ):
        assert f.stat().st_mode & 0o777 == 0o400, f  # jail uids read through an ACL
    assert snapshots.commit(store, "s1") == m  # idempotent
    with pytest.raises(Conflict):
        snapshots.prepare(store, "s1", "vm-1")
    # restore: its own disk, made from the snapshot's
    r = disks.provision(store, "vm-2", "base", snapshot="s1")
    assert r.snapshot == "s1"
    disk2 = store.layout.disk_rootfs("vm-2")
    assert disk2.read_bytes() == store.layout.snapshot_disk("s1").read_bytes()
    assert disk2.stat().st_ino != store.layout.snapshot_disk("s1").stat().st_ino
    with pytest.raises(InvalidArgument):
        imported(store, tmp_path, kernel, "other")
        disks.provision(store, "vm-3", "other", snapshot="s1")
    # references: the template is kept by the snapshot, the snapshot by vm-2
    disks.release(store, "vm-1")
    with pytest.raises(Conflict):
        templates.delete_template(store, "base")
    with pytest.raises(Conflict) as e:
        snapshots.delete(store, "s1")
    assert e.value.details["used_by"] == ["vm:vm-2"]
    disks.release(store, "vm-2")
    snapshots.delete(store, "s1")
    templates.delete_template(store, "base")
    assert list(store.layout.snapshots.iterdir()) == []
    assert list(store.layout.tmp.iterdir()) == []


def test_snapshot_names_validated(store: Store) -> None:
    for bad in ("../x", "a/b", "", ".", "A"):
        with pytest.raises(InvalidArgument):
            snapshots.prepare(store, bad, "vm-1")
    with pytest.raises(NotFound):
        snapshots.prepare(store, "s", "vm-1")  # no such VM disk


# --- reclaim -----------------------------------------------------------------------------


def test_reclaim_on_request(store: Store, tmp_path: Path, kernel: Path) -> None:
    imported(store, tmp_path, kernel)
    for vm in ("vm-live", "vm-gone", "vm-new"):
        disks.provision(store, vm, "base")
    snapshots.prepare(store, "pending-live", "vm-live")
    snapshots.prepare(store, "pending-gone", "vm-gone")
    (store.layout.tmp / "junk").mkdir()
    (store.layout.disks / "vm-partial").mkdir()
    time.sleep(3)  # manifests keep whole seconds; the slack is 2 s
    as_of = now_rfc3339()
    time.sleep(3)
    disks.release(store, "vm-new")
    disks.provision(store, "vm-new", "base")  # created after as_of: spared
    removed = reclaim.reclaim_unowned(store, ["vm-live"], as_of)
    assert sorted(removed) == [
        "disk:vm-gone",
        "partial:junk",
        "partial:vm-partial",
        "snapshot:pending-gone",
    ]
    assert {d.vm_id for d in store.disks()} == {"vm-live", "vm-new"}
    assert [m.name for m in snapshots.manifests(store)] == ["pending-live"]
    # at start, a pending snapshot dies with the daemon
    store.reclaim()
    assert snapshots.manifests(store) == []
    with pytest.raises(InvalidArgument):
        reclaim.reclaim_unowned(store, ["vm-live"], "yesterday")
    with pytest.raises(InvalidArgument):
        reclaim.reclaim_unowned(store, ["../etc"], as_of)


def _origin(vm_id: str, kind: str = "full", parent: str | None = None) -> SnapshotOrigin:
    return SnapshotOrigin(
        vm_id=vm_id,
        type=kind,  # type: ignore[arg-type]
        parent=parent,
        vcpu_count=1,
        mem_size_mib=1,
        template="base",
        network_mode="netns",
        guest_ip="10.200.0.2",
        guest_mac="06:00:0a:c8:00:02",
        tap="fctap0",
        firecracker_version="1.7.0",
        snapshot_version="1.0.0",
    )


def test_diff_snapshot_is_layered_onto_its_parent(
    store: Store, tmp_path: Path, kernel: Path
) -> None:
    """A diff's memory holds only the dirty pages (holes elsewhere); committed, it is the
    parent's memory with those pages written over it, restorable on its own."""
    imported(store, tmp_path, kernel)
    disks.provision(store, "vm-1", "base")
    page, pages = 4096, 64
    base = bytes(range(256)) * (page * pages // 256)
    snapshots.prepare(store, "full", "vm-1")
    store.layout.snapshot_state("full").write_bytes(b"S" * 100)
    store.layout.snapshot_memory("full").write_bytes(base)
    full = snapshots.commit(store, "full", _origin("vm-1"))
    assert full.written_bytes == len(base) and full.origin == _origin("vm-1")

    snapshots.prepare(store, "d1", "vm-1")
    store.layout.snapshot_state("d1").write_bytes(b"T" * 100)
    with open(store.layout.snapshot_memory("d1"), "r+b") as f:  # sparse: 2 dirty pages
        f.truncate(len(base))
        for n in (3, 40):
            f.seek(n * page)
            f.write(b"\xee" * page)
    d1 = snapshots.commit(store, "d1", _origin("vm-1", "diff", parent="full"))
    merged = store.layout.snapshot_memory("d1").read_bytes()
    want = bytearray(base)
    for n in (3, 40):
        want[n * page : (n + 1) * page] = b"\xee" * page
    assert merged == bytes(want)
    assert d1.memory_size == len(base) and d1.written_bytes < len(base) // 4
    assert store.layout.snapshot_memory("full").read_bytes() == base  # parent untouched
    assert not list(store.layout.snapshot_dir("d1").glob("*.merge"))

    snapshots.prepare(store, "d2", "vm-1")  # nothing dirtied since d1: all holes
    store.layout.snapshot_state("d2").write_bytes(b"U" * 100)
    os.truncate(store.layout.snapshot_memory("d2"), len(base))
    d2 = snapshots.commit(store, "d2", _origin("vm-1", "diff", parent="d1"))
    assert d2.written_bytes == 0 and store.layout.snapshot_memory("d2").read_bytes() == merged

    snapshots.prepare(store, "orphan", "vm-1")
    fill(store, "orphan")
    with pytest.raises(FailedPrecondition):
        snapshots.commit(store, "orphan", _origin("vm-1", "diff", parent=None))
    with pytest.raises(NotFound):
        snapshots.commit(store, "orphan", _origin("vm-1", "diff", parent="nope"))


# --- suspend files -----------------------------------------------------------------------


def write_suspend(store: Store, vm_id: str, state: bytes, memory: bytes) -> None:
    """What Firecracker does through fcd-vmm's links: it writes the pending inodes."""
    lay = store.layout
    with open(lay.suspend_state(vm_id, pending=True), "r+b") as f:
        f.write(state)
    with open(lay.suspend_memory(vm_id, pending=True), "r+b") as f:
        f.write(memory)


def test_suspend_prepare_commit_replace_release(store: Store, tmp_path: Path, kernel: Path) -> None:
    lay = store.layout
    imported(store, tmp_path, kernel)
    disks.provision(store, "vm-1", "base", drives=[DriveSpec(name="data", size_mib=8)])
    p = suspends.prepare(store, "vm-1")
    state_p, mem_p = (
        lay.suspend_state("vm-1", pending=True),
        lay.suspend_memory("vm-1", pending=True),
    )
    assert p.pending and (p.state_path, p.memory_path) == (str(state_p), str(mem_p))
    for f in (state_p, mem_p):
        st = f.stat()
        assert (st.st_size, st.st_mode & 0o777, st.st_uid) == (0, 0o660, os.geteuid())
    assert state_p.parent == lay.disk_dir("vm-1")
    with pytest.raises(FailedPrecondition, match="empty"):
        suspends.commit(store, "vm-1")  # the VM has not written them
    # a stale pending file (say still linked in a jail) is replaced by a new, empty inode
    write_suspend(store, "vm-1", b"junk", b"junk")
    stale = tmp_path / "stale-link"
    os.link(mem_p, stale)
    suspends.prepare(store, "vm-1")
    assert mem_p.stat().st_size == 0 and mem_p.stat().st_ino != stale.stat().st_ino
    assert stale.read_bytes() == b"junk" and stale.stat().st_nlink == 1
    stale.unlink()

    write_suspend(store, "vm-1", b"S1" * 50, b"M1" * 4096)
    c = suspends.commit(store, "vm-1")
    state, mem = lay.suspend_state("vm-1"), lay.suspend_memory("vm-1")
    assert not c.pending and (c.state_path, c.memory_path) == (str(state), str(mem))
    assert (c.state_size, c.memory_size) == (100, 8192)
    assert not state_p.exists() and not mem_p.exists()
    for f in (state, mem):
        assert f.stat().st_mode & 0o777 == 0o400
    assert suspends.commit(store, "vm-1") == c  # idempotent
    # the disk and its catalog do not mind the extra files
    assert [d.vm_id for d in store.disks()] == ["vm-1"]
    assert store.disk("vm-1").drives[0].name == "data"
    assert store.reclaim() == [] and mem.exists()

    # a woken VM maps the committed memory; a second suspend renames new inodes over it
    with open(mem, "rb") as woken:
        suspends.prepare(store, "vm-1")
        write_suspend(store, "vm-1", b"S2" * 50, b"M2" * 4096)
        c2 = suspends.commit(store, "vm-1")
        assert c2.memory_size == 8192
        assert os.fstat(woken.fileno()).st_ino != mem.stat().st_ino
        assert woken.read() == b"M1" * 4096  # the old inode, unchanged
    assert mem.read_bytes() == b"M2" * 4096 and state.read_bytes() == b"S2" * 50

    # abort: only the pending files go, idempotently
    suspends.prepare(store, "vm-1")
    suspends.abort(store, "vm-1")
    suspends.abort(store, "vm-1")
    assert not state_p.exists() and not mem_p.exists()
    assert mem.read_bytes() == b"M2" * 4096
    assert suspends.commit(store, "vm-1") == c2  # nothing pending: the committed pair

    # release takes everything with the disk directory
    suspends.prepare(store, "vm-1")
    disks.release(store, "vm-1")
    assert not lay.disk_dir("vm-1").exists()
    assert list(lay.tmp.iterdir()) == []
    suspends.abort(store, "vm-1")  # still idempotent without a disk


def test_suspend_refusals(store: Store, tmp_path: Path, kernel: Path) -> None:
    lay = store.layout
    with pytest.raises(NotFound):
        suspends.prepare(store, "vm-1")  # no disk
    with pytest.raises(NotFound):
        suspends.commit(store, "vm-1")
    with pytest.raises(InvalidArgument):
        suspends.prepare(store, "../etc")
    imported(store, tmp_path, kernel)
    disks.provision(store, "vm-1", "base")
    with pytest.raises(FailedPrecondition, match="prepare first"):
        suspends.commit(store, "vm-1")  # nothing prepared, nothing committed
    suspends.prepare(store, "vm-1")
    write_suspend(store, "vm-1", b"S" * 10, b"M" * 4096)
    mem_p = lay.suspend_memory("vm-1", pending=True)
    os.chown(mem_p, 54321, 54321)  # still lent to a jail uid
    with pytest.raises(FailedPrecondition, match="not handed back"):
        suspends.commit(store, "vm-1")
    os.chown(mem_p, os.geteuid(), os.getegid())
    jail_link = tmp_path / "jail-link"
    os.link(mem_p, jail_link)  # still linked into a jail
    with pytest.raises(FailedPrecondition, match="not handed back"):
        suspends.commit(store, "vm-1")
    jail_link.unlink()
    assert not lay.suspend_memory("vm-1").exists()  # nothing was renamed by the refusals
    for f in (mem_p, lay.suspend_state("vm-1", pending=True)):  # nor made read-only
        assert f.stat().st_mode & 0o777 == 0o660
    # an interrupted abort (state pending, memory gone) is refused, not committed
    mem_p.unlink()
    with pytest.raises(FailedPrecondition, match="interrupted abort"):
        suspends.commit(store, "vm-1")
    # an interrupted commit (state renamed, memory pending) is finished
    suspends.prepare(store, "vm-1")
    write_suspend(store, "vm-1", b"S" * 10, b"M" * 4096)
    os.rename(lay.suspend_state("vm-1", pending=True), lay.suspend_state("vm-1"))
    c = suspends.commit(store, "vm-1")
    assert (c.state_size, c.memory_size, c.pending) == (10, 4096, False)
