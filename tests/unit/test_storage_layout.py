"""Store layout: names validated, paths derived, lexical containment checks for fcd-vmm."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcd_common import storelayout as L
from fcd_common.errors import InvalidArgument
from fcd_storage.plan import check_source_path

from .storage_helpers import make_config

BAD_NAMES = ["../x", "a/b", "/abs", "..", ".", "", "A", "-x", "x..y", "x\0", "a" * 65, "x y"]


@pytest.fixture
def lay(tmp_path: Path) -> L.StoreLayout:
    return L.layout(make_config(tmp_path))


def test_paths_derived_from_state_dir(tmp_path: Path, lay: L.StoreLayout) -> None:
    root = tmp_path / "state" / "storage"
    assert lay.root == root
    assert lay.template_kernel("ubuntu-22.04") == root / "templates/ubuntu-22.04/vmlinux"
    assert lay.template_rootfs("base") == root / "templates/base/rootfs.ext4"
    assert lay.template_manifest("base") == root / "templates/base/manifest.json"
    assert lay.disk_rootfs("vm-1") == root / "disks/vm-1/rootfs.ext4"
    assert lay.disk_manifest("vm-1") == root / "disks/vm-1/disk.json"
    assert lay.tmp == root / "tmp"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_template_names_refused(lay: L.StoreLayout, name: str) -> None:
    with pytest.raises(InvalidArgument):
        lay.template_dir(name)


@pytest.mark.parametrize("vm_id", [*BAD_NAMES, "a_b", "a.b"])
def test_vm_ids_refused(lay: L.StoreLayout, vm_id: str) -> None:
    with pytest.raises(InvalidArgument):
        lay.disk_dir(vm_id)


def test_relative_root_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        L.StoreLayout(Path("state/storage"))


def test_is_inside_store(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    root = str(tmp_path / "state" / "storage")
    assert L.is_inside_store(cfg, root + "/disks/vm-1/rootfs.ext4")
    assert L.is_inside_store(cfg, Path(root) / "templates/t/vmlinux")
    assert not L.is_inside_store(cfg, root)  # the root itself is not a file of the store
    assert not L.is_inside_store(cfg, root + "/../net/x")
    assert not L.is_inside_store(cfg, root + "/disks/../../x")
    assert not L.is_inside_store(cfg, root + "//disks/x")
    assert not L.is_inside_store(cfg, root + "x/evil")  # sibling with the same prefix
    assert not L.is_inside_store(cfg, "disks/vm-1/rootfs.ext4")
    assert not L.is_inside_store(cfg, "/etc/shadow")


def test_is_template_kernel_and_vm_disk(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    root = tmp_path / "state" / "storage"
    assert L.is_template_kernel(cfg, root / "templates/base/vmlinux")
    assert L.is_template_rootfs(cfg, root / "templates/base/rootfs.ext4")
    assert not L.is_template_kernel(cfg, root / "templates/base/rootfs.ext4")
    assert not L.is_template_kernel(cfg, root / "templates/Bad/vmlinux")
    assert not L.is_template_kernel(cfg, root / "templates/a/b/vmlinux")
    assert not L.is_template_kernel(cfg, root / "disks/base/vmlinux")
    assert not L.is_template_kernel(cfg, f"{root}/templates/../templates/base/vmlinux")
    assert L.is_vm_disk(cfg, "vm-1", root / "disks/vm-1/rootfs.ext4")
    assert not L.is_vm_disk(cfg, "vm-2", root / "disks/vm-1/rootfs.ext4")
    assert not L.is_vm_disk(cfg, "../vm-1", root / "disks/vm-1/rootfs.ext4")
    assert not L.is_vm_disk(cfg, "vm-1", f"{root}/disks/vm-1/../vm-1/rootfs.ext4")


@pytest.mark.parametrize("path", ["relative/k", "", "/a/../b", "/a//b", "/a/./b", "/a/b/", "/x\0"])
def test_source_paths_refused(path: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        check_source_path(path, "kernel_path")
    assert e.value.details == {"field": "kernel_path"}


def test_source_path_accepted() -> None:
    assert check_source_path("/srv/images/vmlinux", "kernel_path") == "/srv/images/vmlinux"
