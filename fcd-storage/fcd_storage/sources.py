"""Opening what a template import or build reads: only below the import directories.

A request names the kernel, rootfs and source tree by path, and fcd-storage reads
them with its own rights, so the path is the one thing that could make it read
(and publish, into a store others read) a file its caller may not. Here:

1. the path must lie lexically below one of ``storage.import_dirs``;
2. the rest of it is resolved from a descriptor of that directory with
   ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)``
   into an ``O_PATH`` descriptor, which opens nothing (a FIFO does not block, a
   device's open has no side effect);
3. that descriptor must be a regular file (a directory for a build) by ``fstat``;
4. only then is the same inode opened for reading through ``/proc/self/fd/N``.

Every failure after step 1 gives the same message and code, so an answer never
says whether a path exists, is readable, or what it is; the reason goes to the
journal only.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

from fcd_common import openat2
from fcd_common.errors import InvalidArgument

from . import plan

log = logging.getLogger("fcd.storage")

RESOLVE = openat2.RESOLVE_BENEATH | openat2.RESOLVE_NO_SYMLINKS | openat2.RESOLVE_NO_MAGICLINKS
REASON = "import_source_unusable"


def unusable(field: str, what: str = "regular file") -> InvalidArgument:
    """The one answer for a source that cannot be used, whatever the reason."""
    return InvalidArgument(
        f"{field} is not a readable {what} below an import directory",
        details={"field": field, "reason": REASON},
    )


def _below(path: str, d: str) -> bool:
    return path != d and os.path.commonpath([d, path]) == d


def import_dir_of(
    path: str, import_dirs: Sequence[str], field: str, store_root: str | None = None
) -> tuple[str, str]:
    """``(import_dir, relative rest)`` for ``path`` (lexical: no filesystem access).
    Nothing of the store itself is a source, even with an import directory above it
    (a snapshot's memory file must never become a template anyone may boot)."""
    plan.check_source_path(path, field)
    if store_root is not None and (path == store_root or _below(path, store_root)):
        raise InvalidArgument(f"{field} must not be a file of the store", details={"field": field})
    for d in import_dirs:
        if _below(path, d):
            return d, os.path.relpath(path, d)
    raise InvalidArgument(
        f"{field} must be below one of the import directories ({', '.join(import_dirs)})",
        details={"field": field, "import_dirs": list(import_dirs)},
    )


def open_source(
    path: str,
    field: str,
    import_dirs: Sequence[str],
    *,
    directory: bool = False,
    store_root: str | None = None,
) -> int:
    """A read descriptor (``O_DIRECTORY`` for a build's tree) of the checked inode."""
    base, rel = import_dir_of(path, import_dirs, field, store_root)
    want = stat.S_ISDIR if directory else stat.S_ISREG
    what = "directory" if directory else "regular file"
    try:
        dir_fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            pfd = openat2.open_below(dir_fd, rel, os.O_PATH, RESOLVE)
        finally:
            os.close(dir_fd)
        try:
            mode = os.fstat(pfd).st_mode
            if not want(mode):
                raise OSError(0, f"is not a {what} (mode {mode:o})")
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
            return os.open(f"/proc/self/fd/{pfd}", flags | (os.O_DIRECTORY if directory else 0))
        finally:
            os.close(pfd)
    except (OSError, ValueError) as e:
        log.info("refused %s %r: %s", field, path, getattr(e, "strerror", None) or e)
        raise unusable(field, what) from None
