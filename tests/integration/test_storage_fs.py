"""fcd-storage on real filesystems (root, loop images made and removed here):

- XFS reflink=1: cloning a 1 GiB image costs what cloning 64 MiB does, and no blocks;
- ext4: the fallback is a sparse copy with identical content;
- kill -9 of the daemon in the middle of a clone, then a restart: no partial file,
  no manifest pointing at one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fcd_common import config
from fcd_common.config import SecurityConfig
from fcd_common.errors import FcdError
from fcd_common.proto.storage import PROTOCOL, DiskInfo, DiskList, Provision
from fcd_common.rpc import RpcClient
from fcd_storage import disks, templates
from fcd_storage.store import Store
from tests.integration.test_storage_reflink import loop_fs, sha, used_bytes
from tests.unit.storage_helpers import MiB, kernel_file, make_config, make_store

pytestmark = pytest.mark.root

BIN = Path(sys.executable).parent / "fcd-storage"


def filled_image(path: Path, size: int) -> Path:
    """An image whose every block is written (a worst case for a copy, none for a reflink)."""
    chunk = bytes(range(256)) * (MiB // 256)
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(chunk)
        os.fsync(f.fileno())
    return path


def test_xfs_clone_time_and_space_do_not_grow_with_size(tmp_path: Path) -> None:
    with loop_fs(tmp_path, "xfs", size=4 << 30) as mnt:
        store = make_store(mnt)
        kernel = kernel_file(mnt / "vmlinux")
        for name, size in (("small", 64 * MiB), ("large", 1024 * MiB)):
            img = filled_image(mnt / f"{name}.img", size)
            templates.import_template(store, name, str(kernel), str(img))
        results = {}
        for name in ("small", "large"):
            before = used_bytes(mnt)
            t0 = time.perf_counter()
            d = disks.provision(store, f"vm-{name}", name)
            elapsed = time.perf_counter() - t0
            grown = used_bytes(mnt) - before
            results[name] = (elapsed, grown)
            assert d.method == "reflink"
            assert grown < 2 * MiB, f"{name}: the clone used {grown} bytes"
        for name, (elapsed, grown) in results.items():
            print(f"xfs reflink clone of {name}: {elapsed * 1000:.1f} ms, {grown // 1024} KiB used")
        assert sha(store.layout.disk_rootfs("vm-small")) == sha(
            store.layout.template_rootfs("small")
        )


def test_ext4_fallback_is_an_identical_sparse_copy(tmp_path: Path) -> None:
    with loop_fs(tmp_path, "ext4") as mnt:
        store = make_store(mnt)
        img = mnt / "src.img"
        with img.open("wb") as f:  # 512 MiB with 3 written islands
            f.truncate(512 * MiB)
            for off in (0, 200 * MiB, 511 * MiB):
                f.seek(off)
                f.write(os.urandom(MiB))
        templates.import_template(store, "t", str(kernel_file(mnt / "vmlinux")), str(img))
        before = used_bytes(mnt)
        d = disks.provision(store, "vm-1", "t")
        grown = used_bytes(mnt) - before
        disk = store.layout.disk_rootfs("vm-1")
        assert d.method == "copy"
        assert sha(disk) == sha(img)
        assert disk.stat().st_blocks * 512 <= 4 * MiB
        assert grown < 8 * MiB
        print(f"ext4 sparse copy of a 512 MiB image with 3 MiB of data used {grown // MiB} MiB")


def start_daemon(cfg_path: Path, notify_path: Path) -> subprocess.Popen[bytes]:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path.unlink(missing_ok=True)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([str(BIN), "--config", str(cfg_path)], env=env)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
    finally:
        notify.close()
    return proc


def test_kill_9_mid_clone_leaves_nothing_partial(tmp_path: Path) -> None:  # noqa: PLR0915 -- kill mid-clone, restart, check: one scenario
    with loop_fs(tmp_path, "ext4") as mnt:
        cfg = make_config(mnt, security=SecurityConfig(api_user="root"))
        cfg_path = tmp_path / "fcd.toml"
        cfg_path.write_text(config.render(cfg))
        store = Store.from_config(cfg)
        store.ensure_dirs()
        img = filled_image(mnt / "big.img", 768 * MiB)  # a copy on ext4: long enough to hit
        templates.import_template(store, "big", str(kernel_file(mnt / "vmlinux")), str(img))
        img.unlink()
        lay = store.layout
        proc = start_daemon(cfg_path, tmp_path / "notify")
        errors: list[BaseException] = []

        def provision() -> None:
            async def call() -> None:
                c = RpcClient(cfg.socket("storage"), PROTOCOL, timeout=120)
                try:
                    await c.call(Provision(vm_id="vm-1", template="big"))
                finally:
                    await c.close()

            try:
                asyncio.run(call())
            except (FcdError, OSError, EOFError) as e:
                errors.append(e)

        caller = threading.Thread(target=provision)
        try:
            caller.start()
            deadline = time.monotonic() + 60
            partial: list[Path] = []
            while time.monotonic() < deadline and proc.poll() is None:
                partial = [p for d in lay.tmp.iterdir() for p in d.iterdir() if p.stat().st_blocks]
                if partial:
                    break
                time.sleep(0.002)
            assert partial, "the clone finished before it could be interrupted"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            caller.join(30)
            assert errors, "the caller saw no error from a killed daemon"
            copied = partial[0].stat().st_blocks * 512 if partial[0].exists() else 0
            print(f"killed mid-clone with {copied // MiB} of 768 MiB copied")
            assert not lay.disk_dir("vm-1").exists()  # never published
            assert list(lay.tmp.iterdir())  # the partial staging dir is there ...
            proc = start_daemon(cfg_path, tmp_path / "notify")
            assert list(lay.tmp.iterdir()) == []  # ... until the restart reclaims it
            assert list(lay.disks.iterdir()) == []

            async def disks() -> list[DiskInfo]:
                c = RpcClient(cfg.socket("storage"), PROTOCOL, timeout=30)
                try:
                    return (await c.call(DiskList())).items
                finally:
                    await c.close()

            assert asyncio.run(disks()) == []
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
            caller.join(30)
