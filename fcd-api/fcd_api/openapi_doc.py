"""The OpenAPI document says what fcd-api answers, for every route, old or new.

Litestar documents each route's success response and, for errors, its own
``{status_code, detail, extra}`` body, which fcd never sends. :func:`finish`
rewrites the generated document once, when the app is built, for every
operation it finds (so a route added later is covered without a word):

* every error status the exception handlers can produce
  (:func:`fcd_api.http_errors.statuses`: the ``HTTP_STATUS`` table and the
  HTTP layer's 405/413), plus any a route declares with ``raises=``, is a
  response with fcd's real body, ``ErrorBody`` (``{"error": {"code",
  "message", "details"}}``), its description listing the stable codes;
  413 only where the route takes a body;
* 405 documents its ``Allow`` header and 503 its ``Retry-After``;
* a path parameter gets the constraints of its shared type
  (:data:`fcd_api.path_params.PATH_PARAM_TYPES`), which fcd-api enforces.

Every route can meet every helper error (a flow calls fcd-vmm, fcd-net and
fcd-storage), so listing all of them is the truth, not padding.
``tests/unit/test_api_contract.py`` checks the result for every route.
"""

from __future__ import annotations

import http
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

from .http_errors import codes_for, statuses
from .models import ErrorBody
from .path_params import PATH_PARAM_TYPES

__all__ = ["document", "error_statuses", "finish"]

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_REF = "#/components/schemas/{name}"
_FINISHED = "fcd_openapi_finished"
_HEADERS: dict[int, dict[str, Any]] = {
    405: {
        "Allow": {
            "description": "the methods this path takes",
            "schema": {"type": "string"},
            "required": True,
        }
    },
    503: {
        "Retry-After": {
            "description": "seconds to wait before asking again",
            "schema": {"type": "string"},
            "required": True,
        }
    },
}


def error_statuses(operation: dict[str, Any]) -> set[int]:
    """The error statuses ``operation`` documents once finished: every one the
    handlers produce (413 only with a body), and any the route declared."""
    out = statuses()
    if "requestBody" not in operation:
        out.discard(413)
    declared = {int(s) for s in operation.get("responses", {}) if s.isdigit() and int(s) >= 400}
    return out | declared


def _error_response(status: int) -> dict[str, Any]:
    codes = codes_for(status) or ["internal"]
    phrase = http.HTTPStatus(status).phrase
    resp: dict[str, Any] = {
        "description": f"{phrase}: code {' or '.join(codes)}",
        "content": {"application/json": {"schema": {"$ref": _REF.format(name=ErrorBody.__name__)}}},
    }
    if status in _HEADERS:
        resp["headers"] = _HEADERS[status]
    return resp


def finish(doc: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``doc`` (a Litestar-generated OpenAPI dict) in place, and return it."""
    _, components = msgspec.json.schema_components([ErrorBody], ref_template=_REF)
    all_codes = sorted({c for st in statuses() for c in codes_for(st)})
    components["ErrorDetail"]["properties"]["code"]["enum"] = all_codes
    doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
    for item in doc.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            wanted = error_statuses(operation)
            responses = operation.setdefault("responses", {})
            for status in list(responses):
                if status.isdigit() and int(status) >= 400:
                    del responses[status]  # Litestar's {status_code, detail, extra}
            for status in sorted(wanted):
                responses[str(status)] = _error_response(status)
            for param in operation.get("parameters", []):
                kind = PATH_PARAM_TYPES.get(param.get("name"))
                if param.get("in") == "path" and kind is not None:
                    param["schema"] = msgspec.json.schema(kind)
    return doc


def document(app: Litestar) -> dict[str, Any]:
    """The app's finished OpenAPI document (finished once; every later call, and
    Litestar's own ``/schema`` endpoints, serve the same dict)."""
    doc = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    if not app.state.get(_FINISHED):
        finish(doc)
        app.state[_FINISHED] = True
    return doc
