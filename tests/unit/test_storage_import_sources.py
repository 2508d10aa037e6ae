"""#9 findings 2 and 9: a template import or build reads only below the configured
import directories, never through a symlink, never anything but a regular file
(a directory for a build), opens nothing before that check, and answers every
refusal of what is on the filesystem with the same message and code.

Real files, FIFOs and device nodes in a temp dir (the device node needs root).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from fcd_common.errors import InvalidArgument
from fcd_common.storelayout import StoreLayout
from fcd_storage import sources, templates
from fcd_storage.store import Store

from .storage_helpers import MiB, have, kernel_file, mkfs_ext4, sparse_image


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "import").mkdir()
    s = Store(
        StoreLayout(tmp_path / "state" / "storage"),
        max_disk_mib=1 << 20,
        import_dirs=(str(tmp_path / "import"),),
    )
    s.ensure_dirs()
    return s


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    imp = tmp_path / "import"
    return kernel_file(imp / "vmlinux"), sparse_image(imp / "rootfs.img", 8 * MiB)


def _refused(store: Store, kernel: str, rootfs: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as e:
        templates.import_template(store, "t", kernel, rootfs)
    assert list(store.layout.templates.iterdir()) == [], "nothing may be published"
    return e.value


def test_finding2_import_reads_only_below_import_dirs(
    store: Store, tmp_path: Path, good: tuple[Path, Path]
) -> None:
    kernel, rootfs = good
    secret = tmp_path / "secret"  # outside every import directory
    secret.write_bytes(b"root:$6$hash:19000:0:99999:7:::\n")
    os.chmod(secret, 0o600)
    # the audit's request: a host file named directly
    for path in ("/etc/shadow", str(secret)):
        e = _refused(store, path, str(rootfs))
        assert "must be below one of the import directories" in e.message
        e = _refused(store, str(kernel), path)
        assert e.details["field"] == "rootfs_path"
    # ... or reached through a symlink (last component or a directory) inside one
    imp = tmp_path / "import"
    (imp / "shadow").symlink_to("/etc/shadow")
    (imp / "dir").symlink_to(tmp_path)
    for path in (imp / "shadow", imp / "dir" / "secret"):
        e = _refused(store, str(path), str(rootfs))
        assert e.details == {"field": "kernel_path", "reason": sources.REASON}
    # ... or the store itself (a snapshot's memory file must never become a template)
    store.import_dirs += (str(tmp_path),)
    inside = store.layout.root / "snapshots" / "s" / "memory"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"guest memory")
    e = _refused(store, str(inside), str(rootfs))
    assert "must not be a file of the store" in e.message
    # what is below an import directory, as a regular file, still imports
    m = templates.import_template(store, "t", str(kernel), str(rootfs))
    assert m.rootfs_size == 8 * MiB


@pytest.mark.skipif(not have("mkfs.ext4"), reason="mkfs.ext4 (e2fsprogs) not installed")
def test_finding2_build_reads_only_a_directory_below_import_dirs(
    store: Store, tmp_path: Path, good: tuple[Path, Path]
) -> None:
    kernel, _ = good
    tree = tmp_path / "outside-tree"
    tree.mkdir()
    (tree / "etc").mkdir()
    imp = tmp_path / "import"
    (imp / "tree-link").symlink_to(tree)
    for src, msg in (
        (str(tree), "must be below one of the import directories"),
        ("/etc", "must be below one of the import directories"),
        (str(imp / "tree-link"), "is not a readable directory below an import directory"),
        (str(kernel), "is not a readable directory below an import directory"),
    ):
        with pytest.raises(InvalidArgument, match=msg) as e:
            templates.build_template(store, "b", str(kernel), src, size_mib=16)
        assert e.value.details["field"] == "source_dir"
    (imp / "tree").mkdir()
    (imp / "tree" / "hello").write_text("hi\n")
    m = templates.build_template(store, "b", str(kernel), str(imp / "tree"), size_mib=16)
    assert m.source == "build"


def test_finding9_import_errors_do_not_say_what_is_there(
    store: Store, tmp_path: Path, good: tuple[Path, Path]
) -> None:
    _, rootfs = good
    imp = tmp_path / "import"
    os.mkfifo(imp / "fifo")
    (imp / "dir").mkdir()
    (imp / "link").symlink_to(rootfs)
    (imp / "dangling").symlink_to(imp / "nothing")
    names = ["missing", "fifo", "dir", "link", "dangling", "dir/missing", "link/x"]
    if os.geteuid() == 0:
        os.mknod(imp / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        names.append("null")
    answers = set()
    for name in names:
        e = _refused(store, str(imp / name), str(rootfs))
        answers.add((e.code, e.message, tuple(sorted(e.details.items()))))
    assert answers == {
        (
            "invalid_argument",
            "kernel_path is not a readable regular file below an import directory",
            (("field", "kernel_path"), ("reason", sources.REASON)),
        )
    }


def test_finding9_nothing_is_opened_before_the_regular_file_check(
    store: Store, tmp_path: Path, good: tuple[Path, Path]
) -> None:
    """Opening a FIFO for reading is observable: it releases a writer blocked in
    open(O_WRONLY). A refused import must not have released it."""
    _, rootfs = good
    fifo = tmp_path / "import" / "fifo"
    os.mkfifo(fifo)
    opened = threading.Event()
    fds: list[int] = []

    def writer() -> None:
        fds.append(os.open(fifo, os.O_WRONLY))  # blocks until someone opens for reading
        opened.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    _refused(store, str(fifo), str(rootfs))
    released_by_import = opened.wait(2)  # generous: a slow machine can only hide a failure
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # now release it ourselves
    try:
        assert opened.wait(30)
        t.join(30)
    finally:
        os.close(reader)
        for fd in fds:
            os.close(fd)
    assert not released_by_import, "the import opened the FIFO before checking its type"


def test_ext4_image_below_an_import_dir_still_builds_a_template(
    store: Store, tmp_path: Path, good: tuple[Path, Path]
) -> None:
    if not have("mkfs.ext4"):
        pytest.skip("mkfs.ext4 (e2fsprogs) not installed")
    kernel, _ = good
    sub = tmp_path / "import" / "nested" / "deeper"
    sub.mkdir(parents=True)
    image = mkfs_ext4(sub / "root.ext4", 8)
    m = templates.import_template(store, "nested", str(kernel), str(image))
    assert m.rootfs_size == 8 * MiB
