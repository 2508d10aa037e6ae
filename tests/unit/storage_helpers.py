"""Shared helpers for the fcd-storage tests: configs, sparse images, ext4 superblock reads."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from fcd_common.config import Config, PathsConfig, StorageConfig
from fcd_common.storelayout import StoreLayout
from fcd_storage.store import Store

MiB = 1 << 20


def make_config(base: Path, **sections: object) -> Config:
    paths = PathsConfig(state_dir=str(base / "state"), run_dir=str(base / "run"))
    sections.setdefault("storage", StorageConfig(import_dirs=[str(base)]))  # the test's files
    return Config(paths=paths, **sections)  # type: ignore[arg-type]


def make_store(base: Path, *, max_disk_mib: int = 1 << 20, import_dir: Path | None = None) -> Store:
    """A store below ``base``; imports may read below ``import_dir`` (default ``base``)."""
    store = Store(
        StoreLayout(base / "state" / "storage"),
        max_disk_mib=max_disk_mib,
        import_dirs=(str(import_dir or base),),
    )
    store.ensure_dirs()
    return store


def sparse_image(path: Path, size: int, marks: dict[int, bytes] | None = None) -> Path:
    """A sparse file of ``size`` bytes with a few written islands."""
    marks = marks if marks is not None else {0: b"HEAD" * 1024, size // 2: b"MID!" * 1024}
    with path.open("wb") as f:
        f.truncate(size)
        for off, data in marks.items():
            f.seek(off)
            f.write(data)
    return path


def kernel_file(path: Path, content: bytes = b"\x7fELF fake kernel" * 100) -> Path:
    path.write_bytes(content)
    return path


def have(tool: str) -> bool:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def mkfs_ext4(path: Path, size_mib: int, content_dir: Path | None = None) -> Path:
    argv = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1"]
    if content_dir is not None:
        argv += ["-d", str(content_dir)]
    env = {"PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin", "LC_ALL": "C"}
    subprocess.run([*argv, str(path), f"{size_mib}M"], check=True, env=env)
    return path


def ext4_size(path: Path) -> int:
    """Filesystem size in bytes from the ext4 superblock (blocks_count * block size)."""
    with path.open("rb") as f:
        f.seek(1024)
        sb = f.read(1024)
    (lo,) = struct.unpack_from("<I", sb, 4)
    (log_block,) = struct.unpack_from("<I", sb, 24)
    (hi,) = struct.unpack_from("<I", sb, 0x150)
    (incompat,) = struct.unpack_from("<I", sb, 0x60)
    blocks: int = lo | ((hi << 32) if incompat & 0x80 else 0)
    return blocks * (1024 << int(log_block))
