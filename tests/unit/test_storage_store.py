"""The store on a real filesystem (tmp_path, no root): import, provision, release, reclaim."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import msgspec
import pytest

from fcd_common.errors import Conflict, Internal, InvalidArgument, NotFound, ResourceExhausted
from fcd_storage import disks, extfs, fileio, templates
from fcd_storage.manifest import TemplateManifest
from fcd_storage.store import Store

from .storage_helpers import MiB, ext4_size, have, kernel_file, make_store, mkfs_ext4, sparse_image


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    return kernel_file(src / "vmlinux"), sparse_image(src / "rootfs.img", 64 * MiB)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(store: Store) -> list[Path]:
    return sorted(store.layout.tmp.iterdir())


def test_import_writes_files_and_manifest(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    m = templates.import_template(store, "base", str(kernel), str(rootfs), "console=ttyS0 reboot=k")
    lay = store.layout
    assert m.kernel_sha256 == sha(kernel) and m.rootfs_sha256 == sha(rootfs)
    assert (m.kernel_size, m.rootfs_size) == (kernel.stat().st_size, 64 * MiB)
    assert m.created_at.endswith("Z")
    assert lay.template_kernel("base").read_bytes() == kernel.read_bytes()
    assert sha(lay.template_rootfs("base")) == m.rootfs_sha256
    on_disk = msgspec.json.decode(lay.template_manifest("base").read_bytes(), type=TemplateManifest)
    assert on_disk == m
    for p in (lay.template_kernel("base"), lay.template_rootfs("base")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640  # not world-readable (#9 finding 6)
    # the copy is as sparse as the source
    st = lay.template_rootfs("base").stat()
    assert st.st_blocks * 512 < 4 * MiB
    assert store.template("base") == m
    assert store.templates() == [m]
    info = m.info(lay)
    assert info.kernel_path == str(lay.template_kernel("base"))
    assert info.rootfs_path == str(lay.template_rootfs("base"))
    assert leftovers(store) == []


def test_import_is_idempotent_and_conflicts(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    first = templates.import_template(store, "base", str(kernel), str(rootfs))
    again = templates.import_template(store, "base", str(kernel), str(rootfs))
    assert again == first  # same created_at: nothing rewritten
    with pytest.raises(Conflict):
        templates.import_template(store, "base", str(kernel), str(rootfs), "other args")
    with rootfs.open("r+b") as f:
        f.seek(MiB)
        f.write(b"changed")
    with pytest.raises(Conflict):
        templates.import_template(store, "base", str(kernel), str(rootfs))
    assert store.template("base") == first
    assert leftovers(store) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", "Base"])
def test_import_refuses_bad_names(store: Store, sources: tuple[Path, Path], name: str) -> None:
    kernel, rootfs = sources
    with pytest.raises(InvalidArgument):
        templates.import_template(store, name, str(kernel), str(rootfs))
    assert list(store.layout.templates.iterdir()) == []


def test_import_refuses_bad_sources(
    store: Store, tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    kernel, rootfs = sources
    link = tmp_path / "link"
    link.symlink_to(kernel)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    unusable = "kernel_path is not a readable regular file below an import directory"
    cases = [  # what is on the filesystem is never told apart (#9 finding 9)
        (str(link), unusable),
        (str(fifo), unusable),
        (str(tmp_path / "src"), unusable),
        (str(tmp_path / "missing"), unusable),
        (str(tmp_path), "must be below one of the import directories"),
        ("vmlinux", "absolute"),
        (f"{tmp_path}/src/../src/vmlinux", "normalized"),
    ]
    for path, msg in cases:
        with pytest.raises(InvalidArgument, match=msg) as e:
            templates.import_template(store, "base", path, str(rootfs))
        assert e.value.details["field"] == "kernel_path"
    assert list(store.layout.templates.iterdir()) == []
    assert leftovers(store) == []


def test_provision_copy_is_sparse_and_identical(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    d = disks.provision(store, "vm-1", "base")
    lay = store.layout
    disk = lay.disk_rootfs("vm-1")
    # tmp_path is ext4/overlay here; on a reflink filesystem method would be "reflink"
    assert d.method in ("copy", "reflink")
    assert d.size_bytes == 64 * MiB
    assert disk.read_bytes() == rootfs.read_bytes()
    st = disk.stat()
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < 4 * MiB
    assert stat.S_IMODE(st.st_mode) == 0o660
    info = d.info(lay)
    assert info.kernel_path == str(lay.template_kernel("base"))
    assert info.rootfs_path == str(disk)
    assert Path(info.kernel_path).is_absolute()
    assert store.disk("vm-1") == d
    assert store.disks() == [d]
    assert store.counts() == (1, 1)
    assert leftovers(store) == []


def test_provision_idempotent_and_conflicts(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    templates.import_template(store, "other", str(kernel), str(rootfs), "x")
    d = disks.provision(store, "vm-1", "base")
    assert disks.provision(store, "vm-1", "base") == d
    assert disks.provision(store, "vm-1", "base", 64) == d
    with pytest.raises(Conflict, match="template"):
        disks.provision(store, "vm-1", "other")
    with pytest.raises(Conflict):
        disks.provision(store, "vm-1", "base", 65)
    with pytest.raises(NotFound):
        disks.provision(store, "vm-2", "missing")
    with pytest.raises(InvalidArgument, match="smaller"):
        disks.provision(store, "vm-2", "base", 63)
    with pytest.raises(InvalidArgument):
        disks.provision(store, "../vm", "base")
    with pytest.raises(InvalidArgument):
        disks.provision(store, "vm-2", "../base")
    assert [m.vm_id for m in store.disks()] == ["vm-1"]
    assert leftovers(store) == []


def test_provision_grows_a_raw_image(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    d = disks.provision(store, "vm-1", "base", 100)
    assert d.size_bytes == 100 * MiB and not d.resized  # not ext4: extended only
    disk = store.layout.disk_rootfs("vm-1")
    assert disk.stat().st_size == 100 * MiB
    assert disk.read_bytes()[: 64 * MiB] == rootfs.read_bytes()


def test_release_is_idempotent(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    disks.provision(store, "vm-1", "base")
    assert disks.release(store, "vm-1") is True
    assert not store.layout.disk_dir("vm-1").exists()
    assert disks.release(store, "vm-1") is False
    with pytest.raises(NotFound):
        store.disk("vm-1")
    assert store.counts() == (1, 0)
    assert leftovers(store) == []
    # the template is untouched and can be provisioned again
    assert disks.provision(store, "vm-1", "base").vm_id == "vm-1"


def test_release_even_when_the_disk_was_chowned_away(
    store: Store, sources: tuple[Path, Path]
) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    disks.provision(store, "vm-1", "base")
    disk = store.layout.disk_rootfs("vm-1")
    os.link(disk, store.layout.root / "jail-link")  # what fcd-vmm does
    if os.geteuid() == 0:
        os.chown(disk, 900_001, 900_001)
    assert disks.release(store, "vm-1") is True
    assert (store.layout.root / "jail-link").exists()  # the jail's link is fcd-vmm's to remove


def test_free_space_refusal_leaves_nothing(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    free = fileio.free_bytes(store.layout.tmp)
    with pytest.raises(ResourceExhausted, match="not enough space"):
        disks.provision(store, "vm-1", "base", 2 * free // MiB)
    assert not store.layout.disk_dir("vm-1").exists()
    assert leftovers(store) == []


def test_failure_midway_leaves_nothing(
    store: Store, sources: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))

    def boom(_fd: int, _dst: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fileio, "reflink", lambda _s, _d: False)
    monkeypatch.setattr(fileio, "copy_sparse", boom)
    with pytest.raises(OSError):
        disks.provision(store, "vm-1", "base")
    assert not store.layout.disk_dir("vm-1").exists()
    assert leftovers(store) == []


def test_reclaim_removes_partials_only(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    lay = store.layout
    templates.import_template(store, "base", str(kernel), str(rootfs))
    disks.provision(store, "vm-1", "base")
    (lay.tmp / "tpl-x-123").mkdir()
    (lay.tmp / "tpl-x-123" / "rootfs.ext4").write_bytes(b"partial")
    (lay.tmp / "stray").write_bytes(b"x")
    (lay.disks / "vm-2").mkdir()
    (lay.disks / "vm-2" / "rootfs.ext4").write_bytes(b"no manifest")
    (lay.templates / "half").mkdir()
    removed = store.reclaim()
    assert sorted(p.name for p in removed) == ["half", "stray", "tpl-x-123", "vm-2"]
    assert leftovers(store) == []
    assert store.counts() == (1, 1)
    assert lay.disk_rootfs("vm-1").exists()


def test_reclaim_keeps_what_another_live_process_is_staging(store: Store) -> None:
    """``fcd-storage import`` runs beside the daemon: its staging directory must
    survive the daemon's reclaim (fcd-api's reconciliation asks for one at any time)
    for as long as the import runs, and go once it is gone."""
    lay = store.layout
    other = subprocess.Popen(["sleep", "30"])
    try:
        theirs = lay.tmp / f"tpl-demo-{other.pid}-abcd_123"
        theirs.mkdir()
        mine = fileio.make_staging(lay.tmp, "tpl-v2-")  # this process: not in flight here
        assert mine.name.startswith(f"tpl-v2-{os.getpid()}-")
        gone = lay.tmp / "tpl-v2-999999999-zzzzzzzz"  # no such pid
        gone.mkdir()
        removed = store.reclaim(keep_pending=True)
        assert sorted(p.name for p in removed) == sorted([mine.name, gone.name])
        assert theirs.is_dir()
    finally:
        other.kill()
        other.wait()
    assert [p.name for p in store.reclaim()] == [theirs.name]


def test_corrupt_manifest_is_internal(store: Store, sources: tuple[Path, Path]) -> None:
    kernel, rootfs = sources
    templates.import_template(store, "base", str(kernel), str(rootfs))
    manifest = store.layout.template_manifest("base")
    manifest.chmod(0o644)
    manifest.unlink()
    manifest.write_bytes(b"{not json")
    with pytest.raises(Internal, match="unreadable manifest"):
        store.template("base")
    assert store.templates() == []  # listing skips it


@pytest.mark.skipif(not have("mkfs.ext4"), reason="mkfs.ext4 not installed")
def test_provision_resizes_ext4(store: Store, tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello").write_text("hello from the template\n")
    image = mkfs_ext4(tmp_path / "rootfs.ext4", 32, content)
    kernel = kernel_file(tmp_path / "vmlinux")
    templates.import_template(store, "base", str(kernel), str(image))
    d = disks.provision(store, "vm-1", "base", 96)
    disk = store.layout.disk_rootfs("vm-1")
    assert d.resized and d.size_bytes == 96 * MiB
    assert disk.stat().st_size == 96 * MiB
    assert ext4_size(disk) == 96 * MiB
    assert ext4_size(store.layout.template_rootfs("base")) == 32 * MiB  # template untouched
    env = {"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"}
    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, env=env, check=False)
    assert fsck.returncode == 0, fsck.stdout
    if have("debugfs"):
        out = subprocess.run(
            ["debugfs", "-R", "cat /hello", str(disk)], capture_output=True, env=env, check=True
        )
        assert out.stdout == b"hello from the template\n"
    # same size as the image: no resize
    assert not disks.provision(store, "vm-2", "base").resized


def test_failed_resize_leaves_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not have("mkfs.ext4"):
        pytest.skip("mkfs.ext4 not installed")
    image = mkfs_ext4(tmp_path / "rootfs.ext4", 16)
    templates.import_template(store, "base", str(kernel_file(tmp_path / "vmlinux")), str(image))

    def fail(_image: Path) -> None:
        raise Internal("resize2fs failed")

    monkeypatch.setattr(extfs, "grow", fail)
    with pytest.raises(Internal):
        disks.provision(store, "vm-1", "base", 32)
    assert not store.layout.disk_dir("vm-1").exists()
    assert leftovers(store) == []
