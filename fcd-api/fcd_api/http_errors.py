"""How every failure leaves fcd-api: ``{"error": {"code", "message", "details"}}``.

One exception handler per kind of failure, for the whole app:

* :class:`FcdError` (a flow or a helper): the status from
  ``fcd_common.errors.HTTP_STATUS``; 503 adds ``Retry-After``.
* Litestar's ``ValidationException`` (body, query or path parameter):
  ``400 invalid_argument`` naming the field in ``details.field``.
* Litestar's other ``HTTPException`` s: the routing ones get codes of their own
  (:data:`HTTP_ONLY_CODES`): ``405 method_not_allowed`` keeps its ``Allow``
  header, ``413 payload_too_large`` is a body over ``MAX_BODY_BYTES``.
* Anything else is a bug: ``500 internal``, logged with its traceback, answered
  without the exception's text (which can carry host paths); an ``OSError``
  becomes its stable code (:func:`fcd_common.oserrors.from_os_error`).

:func:`statuses` is every status these handlers can produce; the OpenAPI
document (:mod:`fcd_api.openapi_doc`) is built from it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from fcd_common.errors import HTTP_STATUS, FcdError
from fcd_common.oserrors import from_os_error

from .models import ErrorBody, ErrorDetail
from .service import request_id

__all__ = [
    "EXCEPTION_HANDLERS",
    "HTTP_ONLY_CODES",
    "MAX_BODY_BYTES",
    "codes_for",
    "error_response",
    "statuses",
]

log = logging.getLogger("fcd.api.http")

MAX_BODY_BYTES = 1 << 20
"""The largest request body fcd-api reads (a create with every label and annotation
at its limit is about 300 KiB); a larger one is ``413 payload_too_large``."""

HTTP_ONLY_CODES: dict[str, int] = {
    "method_not_allowed": 405,
    "payload_too_large": 413,
}
"""Codes the HTTP layer itself answers with (no helper or flow raises them)."""

_HTTP_CODES = {404: "not_found", 403: "permission_denied", 503: "unavailable"}
_HTTP_CODES.update({status: code for code, status in HTTP_ONLY_CODES.items()})
_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_NAMED_FIELD_RE = re.compile(r"(?:unknown|missing required) field `([^`]*)`")
_PARAM_ALIASES = {"vm_state": "state", "data": ""}


def codes_for(status: int) -> list[str]:
    """The stable codes that leave with ``status``."""
    table = {**HTTP_STATUS, **HTTP_ONLY_CODES}
    return sorted(code for code, st in table.items() if st == status)


def statuses() -> set[int]:
    """Every error status the handlers below can answer."""
    return set(HTTP_STATUS.values()) | set(HTTP_ONLY_CODES.values())


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _on_fcd_error(_: Request[Any, Any, Any], exc: FcdError) -> Response[ErrorBody]:
    status = HTTP_STATUS.get(exc.code, 500)
    if status >= 500:
        log.warning(
            "request failed: %s: %s",
            exc.code,
            exc.message,
            extra={"FCD_REQUEST_ID": request_id.get()},
        )
    # a helper is down or restarting: ask again shortly
    headers = {"Retry-After": "1"} if status == 503 else None
    return error_response(status, exc.code, exc.message, exc.details, headers)


def _on_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    fields: list[str] = []
    messages: list[str] = []
    for p in problems:
        if not isinstance(p, dict):
            continue
        msg = str(p.get("message", ""))
        m = _NAMED_FIELD_RE.search(msg) or _FIELD_RE.search(msg)
        key = str(p.get("key") or "")
        field = m.group(1) if m else _PARAM_ALIASES.get(key, key)
        if field:
            fields.append(field)
        messages.append(msg)
    message = "; ".join(messages) or exc.detail
    if fields and not any(f in message for f in fields):
        message = f"{message} (field {', '.join(fields)})"
    details: dict[str, Any] = {"errors": problems}
    if fields:
        details["field"] = fields[0]
    return error_response(400, "invalid_argument", message, details)


def _on_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    code = _HTTP_CODES.get(status, "invalid_argument" if 400 <= status < 500 else "internal")
    headers = {
        k: v for k, v in (exc.headers or {}).items() if k.lower() in {"allow", "retry-after"}
    }
    details = exc.extra or None
    if status == 413:
        details = {"max_bytes": MAX_BODY_BYTES}
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return error_response(status, code, exc.detail, details, headers or None)


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, OSError):
        log.warning("request failed: %s", exc, exc_info=exc)
        return _on_fcd_error(_, from_os_error(exc))
    log.exception("unhandled error", exc_info=exc)
    rid = request_id.get()
    return error_response(500, "internal", f"internal error (request id {rid})")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    FcdError: _on_fcd_error,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    Exception: _on_unexpected,
}
