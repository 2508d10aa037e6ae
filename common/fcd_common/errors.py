"""The one error tree of fcd.

Every failure that crosses a process boundary is an :class:`FcdError` with a
stable ``code``. The RPC layer sends ``(code, message, details)`` and the
receiving side rebuilds the same subclass from the code, so a caller catches
``NotFound`` whether the error was raised locally or three daemons away. The
HTTP layer maps codes to status codes in exactly one table (``HTTP_STATUS``).

    FcdError                      code
    ├── InvalidArgument           invalid_argument     bad input; names the field
    ├── NotFound                  not_found
    ├── Conflict                  conflict             exists / in use / port taken
    │   └── HostPortInUse         host_port_in_use     a host service listens on that port
    ├── FailedPrecondition        failed_precondition  illegal state transition
    ├── ResourceExhausted         resource_exhausted   pool empty, limit reached
    ├── PermissionDenied          permission_denied    peer not allowed
    ├── Unavailable               unavailable          helper down, cannot connect
    ├── DeadlineExceeded          deadline_exceeded    call timed out
    ├── ProtocolError             protocol_error       malformed / oversized frame, unknown method
    ├── FirecrackerError          firecracker_error    the VMM answered with a fault_message
    ├── BalloonInactive           balloon_inactive     the guest has no balloon driver (409)
    └── Internal                  internal             a bug or an unexpected OS error
"""

from __future__ import annotations

from typing import Any, ClassVar


class FcdError(Exception):
    """Base class; ``code`` is stable and part of the public contract."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(FcdError):
    code = "invalid_argument"


class NotFound(FcdError):
    code = "not_found"


class Conflict(FcdError):
    code = "conflict"


class HostPortInUse(Conflict):
    """A port mapping would take over a port a host service listens on (details name
    the listener)."""

    code = "host_port_in_use"


class FailedPrecondition(FcdError):
    code = "failed_precondition"


class ResourceExhausted(FcdError):
    code = "resource_exhausted"


class PermissionDenied(FcdError):
    code = "permission_denied"


class Unavailable(FcdError):
    code = "unavailable"


def not_sent(exc: BaseException) -> bool:
    """True if ``exc`` says the request never reached the helper (it could not be
    connected to): nothing happened there, so the caller's state is still true."""
    details = exc.details if isinstance(exc, Unavailable) else None
    return isinstance(details, dict) and details.get("sent") is False


class DeadlineExceeded(FcdError):
    code = "deadline_exceeded"


class ProtocolError(FcdError):
    code = "protocol_error"


class FirecrackerError(FcdError):
    code = "firecracker_error"


class BalloonInactive(FcdError):
    """Firecracker's ``DeviceNotActive``: the guest never started its balloon driver."""

    code = "balloon_inactive"


class Internal(FcdError):
    code = "internal"


_BY_CODE: dict[str, type[FcdError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        Conflict,
        HostPortInUse,
        FailedPrecondition,
        ResourceExhausted,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        ProtocolError,
        FirecrackerError,
        BalloonInactive,
        Internal,
    )
}

HTTP_STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "not_found": 404,
    "conflict": 409,
    "host_port_in_use": 409,
    "failed_precondition": 409,
    "resource_exhausted": 507,
    "permission_denied": 403,
    "unavailable": 503,
    "deadline_exceeded": 504,
    "protocol_error": 502,
    "firecracker_error": 502,
    "balloon_inactive": 409,
    "internal": 500,
}


def from_code(code: str, message: str, details: Any = None) -> FcdError:
    """Rebuild an error received from another process; unknown codes become Internal."""
    cls = _BY_CODE.get(code, Internal)
    err = cls(message, details=details)
    if cls is Internal and code != "internal":
        err.details = {"remote_code": code, "details": details}
    return err
