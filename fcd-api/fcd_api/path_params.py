"""Names in URL paths are checked in fcd-api, by the parameter's name, for every route.

A path parameter is one of a few kinds of name: ``{vm_id}`` is a VM id,
``{name}`` a template or snapshot name. :data:`PATH_PARAM_TYPES` maps each to
its shared type (:mod:`fcd_common.types`, the same one the RPC contract and
the helpers check), and :class:`PathParamCheck`, a middleware of the whole
app, validates every path parameter against it before the handler runs (and
before any RPC): a bad name is a 400 that names the field, where it used to
reach fcd-storage and come back as 502 (#9 finding 7). The OpenAPI document
shows the same constraints (:mod:`fcd_api.openapi_doc`), and a unit test
fails for a route whose path parameter is not in the table, so a route added
later cannot skip the check.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.exceptions import ValidationException
from litestar.types import ASGIApp, Receive, Scope, Send

from fcd_common.types import Name, VmId

__all__ = ["FIELD_NAMES", "PATH_PARAM_TYPES", "PathParamCheck", "check_path_params"]

PATH_PARAM_TYPES: dict[str, Any] = {
    "vm_id": VmId,
    "name": Name,
}
FIELD_NAMES = {"vm_id": "id"}
"""The field an error names, where it is not the parameter's own name (a VM's ``id``)."""


def check_path_params(params: dict[str, Any]) -> None:
    """ValidationException (400, naming the parameter) for a value its type refuses."""
    problems = []
    for key, value in params.items():
        kind = PATH_PARAM_TYPES.get(key)
        if kind is None:
            continue  # not a name; the route's own annotation converts it
        try:
            msgspec.convert(value, kind)
        except msgspec.ValidationError as e:
            field = FIELD_NAMES.get(key, key)
            msg = str(e).replace(" - at `$`", "")
            problems.append({"message": f"{msg} (field {field})", "key": field, "source": "path"})
    if problems:
        raise ValidationException(detail="invalid path parameter", extra=problems)


class PathParamCheck:
    """Litestar middleware (runs after routing, so ``path_params`` are known)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params")
        if params:
            check_path_params(params)
        await self.app(scope, receive, send)
