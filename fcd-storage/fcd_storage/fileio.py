"""The file operations of the store: sparse-aware copies, reflinks, atomic publication.

Everything here is effectful and small; the decisions live in ``plan``. All
files are created with ``O_EXCL | O_NOFOLLOW`` inside directories the store
owns, and published by renaming a complete staging directory into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fcd_common.atomicfile import fsync_dir
from fcd_common.errors import Internal

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


@contextlib.contextmanager
def owned_fd(fd: int) -> Iterator[int]:
    """Yield ``fd`` and close it afterwards, whatever happens."""
    try:
        yield fd
    finally:
        os.close(fd)


def open_store_file(path: Path) -> int:
    """Open a file of the store for reading (never through a symlink)."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def create_file(path: Path, mode: int) -> int:
    """Create a new file (it must not exist) with exactly ``mode``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    os.fchmod(fd, mode)
    return fd


def write_file(path: Path, data: bytes, mode: int) -> None:
    fd = create_file(path, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def segments(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_data)`` runs of a file, from SEEK_DATA/SEEK_HOLE.

    Filesystems without hole reporting yield the whole file as data.
    """
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to EOF
                yield pos, size - pos, False
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size - pos, True
                return
            raise
        data = min(data, size)
        if data > pos:
            yield pos, data - pos, False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data, True
        pos = hole


def _pread_exact(fd: int, n: int, off: int) -> bytes:
    buf = os.pread(fd, n, off)
    if len(buf) != n:
        raise Internal(f"source changed while being copied (short read at {off})")
    return buf


def _pwrite_all(fd: int, buf: bytes, off: int) -> None:
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def copy_hashed(src: int, dst: int | None) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` (or just read it if None) and return ``(size, sha256)``.

    Holes are hashed as zeros and not written; all-zero chunks inside data runs
    are skipped too, so the copy is at least as sparse as the source.
    """
    size = os.fstat(src).st_size
    h = hashlib.sha256()
    for start, length, is_data in segments(src, size):
        off, end = start, start + length
        while off < end:
            n = min(CHUNK, end - off)
            if not is_data:
                h.update(_ZEROS[:n])
            else:
                buf = _pread_exact(src, n, off)
                h.update(buf)
                if dst is not None and buf != _ZEROS[:n]:
                    _pwrite_all(dst, buf, off)
            off += n
    if dst is not None:
        os.ftruncate(dst, size)
    if os.fstat(src).st_size != size:
        raise Internal("source changed size while being copied")
    return size, h.hexdigest()


def copy_into(src: int, path: Path, mode: int) -> tuple[int, str]:
    """Copy ``src`` into a new file ``path`` (fsynced); return its ``(size, sha256)``."""
    with owned_fd(create_file(path, mode)) as dst:
        result = copy_hashed(src, dst)
        os.fsync(dst)
    return result


def copy_sparse(src: int, dst: int) -> None:
    """Copy the data runs of ``src`` into ``dst`` at the same offsets, leaving holes."""
    size = os.fstat(src).st_size
    in_kernel = True
    for off, length, is_data in segments(src, size):
        if not is_data:
            continue
        pos, end = off, off + length
        while pos < end:
            n = min(64 * CHUNK, end - pos)
            if in_kernel:
                try:
                    done = os.copy_file_range(src, dst, n, pos, pos)
                except OSError as e:
                    if e.errno not in _NO_COPY_RANGE:
                        raise
                    in_kernel = False
                    continue
                if done == 0:
                    raise Internal(f"source ended early while copying (at {pos})")
                pos += done
            else:
                _pwrite_all(dst, _pread_exact(src, min(n, CHUNK), pos), pos)
                pos += min(n, CHUNK)
    os.ftruncate(dst, size)


def reflink(src: int, dst: int) -> bool:
    """Clone ``src`` into the empty ``dst`` with FICLONE; False if the filesystem cannot."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as e:
        if e.errno in _NO_REFLINK:
            return False
        raise
    return True


def allocated(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def make_staging(tmp: Path, prefix: str) -> Path:
    """A new directory ``tmp/<prefix><pid>-<random>``: the pid of its maker tells
    :func:`staging_owner_alive` whether it may still be in use."""
    return Path(tempfile.mkdtemp(dir=tmp, prefix=f"{prefix}{os.getpid()}-"))


_STAGING_PID = re.compile(r"-([0-9]+)-[a-z0-9_]{8}\Z")
"""``<pid>-<mkdtemp's 8 characters>`` at the end of a staging name (the random part
has no ``-``, so a digit-bearing prefix such as ``tpl-v2-`` cannot be mistaken)."""


def staging_owner_alive(entry: Path) -> bool:
    """Whether the process that made staging ``entry`` -- another one than this: a
    ``fcd-storage import`` beside the daemon -- still runs, i.e. may still be filling
    it. False for this process's own entries (its callers know whether they are in
    flight), for names without a pid (an older fcd's) and for dead makers. A reused
    pid only keeps the entry until a later reclaim; it never loses one in use."""
    m = _STAGING_PID.search(entry.name)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def publish_dir(staging: Path, final: Path) -> bool:
    """Rename a complete staging directory into place; False if ``final`` already exists."""
    try:
        os.rename(staging, final)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    fsync_dir(final.parent)
    return True


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree; missing is fine."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


def read_header(fd: int, n: int = 2048) -> bytes:
    with contextlib.suppress(OSError):
        return os.pread(fd, n, 0)
    return b""
