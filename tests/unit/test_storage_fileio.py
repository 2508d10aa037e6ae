"""Sparse-aware copies and hashing on a real filesystem."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from fcd_storage import fileio

from .storage_helpers import MiB, sparse_image


def fd_of(path: Path, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_CLOEXEC)


def test_segments_cover_the_file(tmp_path: Path) -> None:
    img = sparse_image(tmp_path / "img", 16 * MiB, {0: b"a" * 4096, 8 * MiB: b"b" * 4096})
    fd = fd_of(img)
    try:
        segs = list(fileio.segments(fd, 16 * MiB))
    finally:
        os.close(fd)
    assert segs[0][0] == 0 and segs[0][2] is True
    pos = 0
    for off, length, _ in segs:  # contiguous, in order, up to the size
        assert off == pos and length > 0
        pos += length
    assert pos == 16 * MiB
    assert any(d and off <= 8 * MiB < off + n for off, n, d in segs)
    assert segs[-1][2] is False  # a trailing hole


def test_copy_hashed_makes_zero_chunks_sparse(tmp_path: Path) -> None:
    dense = tmp_path / "dense"
    data = b"x" * 1000 + bytes(8 * MiB) + b"tail"
    dense.write_bytes(data)  # fully allocated, mostly zeros
    out = tmp_path / "out"
    src, dst = fd_of(dense), fileio.create_file(out, 0o644)
    try:
        size, digest = fileio.copy_hashed(src, dst)
    finally:
        os.close(src)
        os.close(dst)
    assert size == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 < dense.stat().st_blocks * 512 // 2


def test_copy_hashed_without_destination_only_hashes(tmp_path: Path) -> None:
    img = sparse_image(tmp_path / "img", 4 * MiB)
    fd = fd_of(img)
    try:
        assert fileio.copy_hashed(fd, None) == (
            4 * MiB,
            hashlib.sha256(img.read_bytes()).hexdigest(),
        )
    finally:
        os.close(fd)


@pytest.mark.parametrize("in_kernel", [True, False])
def test_copy_sparse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_kernel: bool) -> None:
    if not in_kernel:

        def no_cfr(*_a: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", no_cfr)
    img = sparse_image(tmp_path / "img", 32 * MiB)
    out = tmp_path / "out"
    src, dst = fd_of(img), fileio.create_file(out, 0o660)
    try:
        fileio.copy_sparse(src, dst)
    finally:
        os.close(src)
        os.close(dst)
    assert out.read_bytes() == img.read_bytes()
    assert out.stat().st_blocks * 512 < 2 * MiB


def test_create_file_refuses_existing_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"")
    (tmp_path / "l").symlink_to(tmp_path / "nowhere")
    for name in ("x", "l"):
        with pytest.raises(FileExistsError):
            fileio.create_file(tmp_path / name, 0o644)
    assert not (tmp_path / "nowhere").exists()


def test_publish_dir_refuses_to_overwrite(tmp_path: Path) -> None:
    a, b, final = tmp_path / "a", tmp_path / "b", tmp_path / "final"
    for d in (a, b):
        d.mkdir()
        (d / "f").write_text(d.name)
    assert fileio.publish_dir(a, final) is True
    assert fileio.publish_dir(b, final) is False
    assert (final / "f").read_text() == "a"


def test_reflink_unsupported_is_false(tmp_path: Path) -> None:
    img = sparse_image(tmp_path / "img", MiB)
    src, dst = fd_of(img), fileio.create_file(tmp_path / "out", 0o600)
    try:
        ok = fileio.reflink(src, dst)  # False on ext4, True on xfs/btrfs
    finally:
        os.close(src)
        os.close(dst)
    if ok:
        assert (tmp_path / "out").read_bytes() == img.read_bytes()
