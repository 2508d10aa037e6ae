"""OS errors as stable codes: what crosses a boundary says what went wrong, not where.

An ``OSError`` that escapes a handler (fcd-storage copying an image, fcd-api's
registry on a full disk ...) would otherwise leave as ``internal`` with
``str(e)``, which carries host paths (``[Errno 13] Permission denied:
'/var/lib/fcd/...'``). :func:`from_os_error` keeps only the errno: its name in
``details`` and ``strerror`` in the message; the daemon's own log keeps the
whole error for the operator.
"""

from __future__ import annotations

import errno
import os

from .errors import (
    Conflict,
    FcdError,
    Internal,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

__all__ = ["from_os_error"]

_BY_ERRNO: dict[int, type[FcdError]] = {
    errno.ENOSPC: ResourceExhausted,
    errno.EDQUOT: ResourceExhausted,
    errno.ENOMEM: ResourceExhausted,
    errno.EMFILE: ResourceExhausted,
    errno.ENFILE: ResourceExhausted,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EROFS: PermissionDenied,
    errno.ENOENT: NotFound,
    errno.EEXIST: Conflict,
    errno.EBUSY: Conflict,
    errno.EAGAIN: Unavailable,
}


def from_os_error(exc: OSError, what: str = "operation") -> FcdError:
    """The stable error for ``exc``, with no path in it: ``"<what> failed: <strerror>"``."""
    num = exc.errno
    cls = _BY_ERRNO.get(num, Internal) if num is not None else Internal
    reason = os.strerror(num) if num is not None else type(exc).__name__
    name = errno.errorcode.get(num, "") if num is not None else ""
    return cls(f"{what} failed: {reason}", details={"errno": name or None})
