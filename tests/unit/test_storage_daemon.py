"""The real fcd-storage daemon as a subprocess, driven over its RPC socket; and the import command.

No root needed: the daemon runs as the current user, who is made the allowed peer.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from fcd_common import config
from fcd_common.config import Config, SecurityConfig
from fcd_common.errors import InvalidArgument, NotFound
from fcd_common.proto.common import Ping
from fcd_common.proto.storage import (
    PROTOCOL,
    DiskGet,
    DiskList,
    Provision,
    Release,
    TemplateGet,
    TemplateImport,
    TemplateList,
)
from fcd_common.rpc import Done, RpcClient

from .storage_helpers import MiB, kernel_file, make_config, sparse_image

BIN = Path(sys.executable).parent / "fcd-storage"


@pytest.fixture
def cfg_file(tmp_path: Path) -> tuple[Config, Path]:
    # short base: AF_UNIX paths are limited to 108 bytes
    cfg = make_config(tmp_path, security=SecurityConfig(api_user=getpass.getuser()))
    path = tmp_path / "fcd.toml"
    path.write_text(config.render(cfg))
    return cfg, path


@pytest.fixture
def daemon(cfg_file: tuple[Config, Path], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    cfg, path = cfg_file
    # leftovers of an earlier crash, reclaimed at start
    tmp = cfg.state("storage") / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "tpl-old-1234").mkdir()
    (cfg.state("storage") / "disks" / "vm-stale").mkdir(parents=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "FCD_LOG_LEVEL": "DEBUG"}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen([str(BIN), "--config", str(path)], env=env)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        yield proc
    finally:
        notify.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_daemon_serves_the_contract(
    daemon: subprocess.Popen[bytes], cfg_file: tuple[Config, Path], tmp_path: Path
) -> None:
    cfg, _ = cfg_file
    store = cfg.state("storage")
    assert list((store / "tmp").iterdir()) == []
    assert not (store / "disks" / "vm-stale").exists()
    kernel = kernel_file(tmp_path / "vmlinux")
    rootfs = sparse_image(tmp_path / "rootfs.img", 32 * MiB)

    async def scenario() -> None:
        c = RpcClient(cfg.socket("storage"), PROTOCOL, timeout=30)
        try:
            pong = await c.call(Ping())
            assert pong.status == "0 templates, 0 disks"
            assert pong.pid == daemon.pid
            imp = TemplateImport(
                name="base", kernel_path=str(kernel), rootfs_path=str(rootfs), kernel_args="quiet"
            )
            t = await c.call(imp)
            assert t.rootfs_size == 32 * MiB and t.kernel_args == "quiet"
            assert t.kernel_path == str(store / "templates/base/vmlinux")
            assert await c.call(imp) == t  # idempotent
            assert await c.call(TemplateGet(name="base")) == t
            assert (await c.call(TemplateList())).items == [t]

            d = await c.call(Provision(vm_id="vm-1", template="base", disk_size_mib=48))
            assert d.rootfs_path == str(store / "disks/vm-1/rootfs.ext4")
            assert d.kernel_path == t.kernel_path
            assert d.size_bytes == 48 * MiB and d.method in ("copy", "reflink")
            assert Path(d.rootfs_path).stat().st_size == 48 * MiB
            assert await c.call(DiskGet(vm_id="vm-1")) == d
            assert (await c.call(DiskList())).items == [d]
            assert (await c.call(Ping())).status == "1 templates, 1 disks"
            # a create's lookup (users=False) skips the walk of every manifest used_by needs
            assert [
                (t.used_by, t.kernel_args)
                for t in [
                    await c.call(TemplateGet(name="base")),
                    await c.call(TemplateGet(name="base", users=False)),
                ]
            ] == [(["vm:vm-1"], "quiet"), ([], "quiet")]

            # concurrent provisions of different VMs on one connection
            many = await asyncio.gather(
                *(c.call(Provision(vm_id=f"vm-c{i}", template="base")) for i in range(4))
            )
            assert sorted(x.vm_id for x in many) == [f"vm-c{i}" for i in range(4)]

            with pytest.raises(NotFound):
                await c.call(Provision(vm_id="vm-2", template="nope"))
            with pytest.raises(InvalidArgument):
                await c.call(Provision(vm_id="vm-2", template="base", disk_size_mib=1))
            with pytest.raises(InvalidArgument, match=r"kernel_path"):
                await c.call(
                    TemplateImport(name="x", kernel_path="vmlinux", rootfs_path=str(rootfs))
                )
            with pytest.raises(InvalidArgument):  # the contract's pattern refuses path-like names
                await c.call(
                    TemplateImport(name="../x", kernel_path=str(kernel), rootfs_path=str(rootfs))
                )

            for vm in ["vm-1", "vm-1", *(f"vm-c{i}" for i in range(4))]:
                assert await c.call(Release(vm_id=vm)) == Done()
            with pytest.raises(NotFound):
                await c.call(DiskGet(vm_id="vm-1"))
            assert (await c.call(Ping())).status == "1 templates, 0 disks"
        finally:
            await c.close()

    asyncio.run(scenario())
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert list((store / "disks").iterdir()) == []
    assert list((store / "tmp").iterdir()) == []


@pytest.mark.parametrize("config_first", [True, False])
def test_import_command(cfg_file: tuple[Config, Path], tmp_path: Path, config_first: bool) -> None:
    cfg, path = cfg_file
    kernel = kernel_file(tmp_path / "vmlinux")
    rootfs = sparse_image(tmp_path / "rootfs.img", 8 * MiB)
    args = ["import", "--name", "cli", "--kernel", str(kernel), "--rootfs", str(rootfs)]
    args += ["--kernel-args", "console=ttyS0 reboot=k"]
    conf = ["--config", str(path)]
    argv = [str(BIN), *conf, *args] if config_first else [str(BIN), *args, *conf]
    out = subprocess.run(argv, capture_output=True, check=True)
    m = json.loads(out.stdout)
    assert m["name"] == "cli" and m["rootfs_size"] == 8 * MiB
    assert m["kernel_args"] == "console=ttyS0 reboot=k"
    manifest = cfg.state("storage") / "templates/cli/manifest.json"
    on_disk = msgspec.json.decode(manifest.read_bytes())
    assert on_disk == m
    # same again: idempotent; different content: conflict, non-zero exit
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 0
    rootfs.write_bytes(b"other")
    bad = subprocess.run(argv, capture_output=True, check=False)
    assert bad.returncode == 1
    assert b"conflict" in bad.stderr


def test_import_command_refuses_bad_name(cfg_file: tuple[Config, Path], tmp_path: Path) -> None:
    _, path = cfg_file
    kernel = kernel_file(tmp_path / "vmlinux")
    argv = [str(BIN), "--config", str(path), "import", "--name", "../x"]
    argv += ["--kernel", str(kernel), "--rootfs", str(kernel)]
    res = subprocess.run(argv, capture_output=True, check=False)
    assert res.returncode == 1
    assert b"invalid_argument" in res.stderr
