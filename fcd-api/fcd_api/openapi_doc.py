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
  (:data:`fcd_api.path_params.PATH_PARAM_TYPES`), which fcd-api enforces;
* a streamed route (``opt={"media_types": (...)}`` on its decorator) documents
  those media types for its success answer;
* the schemas of bodies, responses and query parameters are msgspec's own
  JSON schemas of the types fcd-api decodes and encodes with (Litestar's leave
  out ``additionalProperties: false``, ``maxProperties`` and the patterns of
  list items, all of which the decoder enforces).

Every route can meet every helper error (a flow calls fcd-vmm, fcd-net and
fcd-storage), so listing all of them is the truth, not padding.
``tests/unit/test_api_contract.py`` checks the result for every route.
"""

from __future__ import annotations

import http
import typing
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Response
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg
from litestar.routes import HTTPRoute

from .http_errors import codes_for, statuses
from .models import ErrorBody
from .path_params import PATH_PARAM_TYPES

__all__ = ["document", "error_statuses", "finish"]

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_REF = "#/components/schemas/{name}"
_FINISHED = "fcd_openapi_finished"
QUERY_NAMES = frozenset({"vm_id"})
"""Query parameters that are the same kind of name as the path parameter (checked by the
route with ``check_vm_id``)."""
_LIMITS = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern")
"""A ``QueryParameter(...)``'s constraints, which Litestar enforces through msgspec too."""
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


def _handlers(app: Litestar) -> dict[tuple[str, str], HTTPRouteHandler]:
    """(path as the document writes it, method) -> the handler, for documented routes."""
    out = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.resolve_include_in_schema():
                for method in handler.http_methods:
                    out[(route.path_format, method.lower())] = handler
    return out


def _unwrap(annotation: Any) -> Any:
    """``Response[T]`` -> ``T``; anything else as it is."""
    if typing.get_origin(annotation) is Response:
        (inner,) = typing.get_args(annotation)
        return inner
    return annotation


def _query_params(handler: HTTPRouteHandler) -> dict[str, Any]:
    """The URL name -> annotation of each query parameter of ``handler``."""
    out = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        kw = field.kwarg_definition
        if isinstance(kw, ParameterKwarg) and not (kw.header or kw.cookie) and name != "data":
            if name in PATH_PARAM_TYPES:
                continue
            limits = {k: getattr(kw, k) for k in _LIMITS if getattr(kw, k, None) is not None}
            ann = _constrained(field.annotation, limits)
            if ann is not None:
                out[kw.query or name] = ann
    return out


def _constrained(annotation: Any, limits: dict[str, Any]) -> Any:
    """``annotation`` with ``limits`` on it (on the non-None part of an optional one);
    None if msgspec cannot describe the result (the parameter keeps Litestar's schema)."""
    ann = annotation
    if limits:
        args = typing.get_args(annotation)
        if type(None) in args and len(args) == 2:
            (inner,) = [a for a in args if a is not type(None)]
            ann = Annotated[inner, msgspec.Meta(**limits)] | None
        else:
            ann = Annotated[annotation, msgspec.Meta(**limits)]
    return ann if _describable(ann) else None


def _types(handlers: dict[tuple[str, str], HTTPRouteHandler]) -> list[Any]:
    found: list[Any] = [ErrorBody]
    for handler in handlers.values():
        data = handler.parsed_data_field
        if data is not None:
            found.append(data.annotation)
        ret = _unwrap(handler.parsed_fn_signature.return_type.annotation)
        if ret not in (None, type(None)) and ret is not Any:
            found.append(ret)
        found += [spec.data_container for spec in (handler.responses or {}).values()]
    return [t for t in found if _describable(t)]


def _describable(annotation: Any) -> bool:
    """True if msgspec can write a JSON schema for it (a streamed or raw response cannot:
    those keep the schema Litestar gave them)."""
    try:
        msgspec.json.schema(annotation)
    except (TypeError, ValueError):
        return False
    return True


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in doc.get("paths", {}).items()
        for method, operation in item.items()
        if method in _METHODS
    ]


def _finish_responses(operation: dict[str, Any], streamed: Any) -> None:
    wanted = error_statuses(operation)
    responses = operation.setdefault("responses", {})
    for status in list(responses):
        if status.isdigit() and int(status) >= 400:
            del responses[status]  # Litestar's {status_code, detail, extra}
    for status in sorted(wanted):
        responses[str(status)] = _error_response(status)
    if streamed:  # a Stream: its media types, one line per item
        for status, resp in responses.items():
            if status.startswith("2"):
                resp["content"] = {key: {"schema": {"type": "string"}} for key in streamed}


def _finish_parameters(operation: dict[str, Any], queries: dict[str, dict[str, Any]]) -> None:
    """``queries``: name -> msgspec's schema of the query parameter's type."""
    for param in operation.get("parameters", []):
        name, where = param.get("name"), param.get("in")
        if where == "path" and name in PATH_PARAM_TYPES:
            param["schema"] = msgspec.json.schema(PATH_PARAM_TYPES[name])
        elif where == "query" and name in QUERY_NAMES:
            schema = msgspec.json.schema(PATH_PARAM_TYPES[name])
            param["schema"] = {"anyOf": [schema, {"type": "null"}]}
        elif where == "query" and name in queries:
            param["schema"] = queries[name]


def finish(doc: dict[str, Any], app: Litestar | None = None) -> dict[str, Any]:
    """Rewrite ``doc`` (a Litestar-generated OpenAPI dict of ``app``) in place, and return it."""
    handlers = _handlers(app) if app is not None else {}
    queries: dict[tuple[str, str], dict[str, Any]] = {}
    for path, method, operation in _operations(doc):
        handler = handlers.get((path, method))
        if handler is not None:
            params = operation.get("parameters", [])
            named = {p.get("name") for p in params if p.get("in") == "query"}
            queries[(path, method)] = {
                n: t for n, t in _query_params(handler).items() if n in named
            }
    query_types = [t for params in queries.values() for t in params.values()]
    all_types = _types(handlers) + query_types
    schemas, components = msgspec.json.schema_components(all_types, ref_template=_REF)
    by_id = dict(zip(map(id, all_types), schemas, strict=True))
    all_codes = sorted({c for st in statuses() for c in codes_for(st)})
    components["ErrorDetail"]["properties"]["code"]["enum"] = all_codes
    doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
    for path, method, operation in _operations(doc):
        handler = handlers.get((path, method))
        _finish_responses(operation, handler.opt.get("media_types") if handler else None)
        query = {n: by_id[id(t)] for n, t in queries.get((path, method), {}).items()}
        _finish_parameters(operation, query)
    return doc


def document(app: Litestar) -> dict[str, Any]:
    """The app's finished OpenAPI document (finished once; every later call, and
    Litestar's own ``/schema`` endpoints, serve the same dict)."""
    doc = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    if not app.state.get(_FINISHED):
        finish(doc, app)
        app.state[_FINISHED] = True
    return doc
