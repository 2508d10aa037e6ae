"""Request bodies decoded strictly, straight into the route's body type.

Litestar decodes a JSON body to plain Python values and then converts them to
the handler's ``data`` type with ``msgspec.convert(..., strict=False)``; lax
conversion is what lets ``"vcpu_count": "2"`` and ``1.0`` through (#9 finding
15). :class:`StrictRequest` is the app's request class: its ``json()`` decodes
the body with ``msgspec.json.decode(body, type=<data type>, strict=True)``, so
the value it hands on is already the typed Struct (which Litestar's own
conversion passes through as it is), and a wrong type, a string for a number
or a float for an int is a 400 naming the field. It applies to every route
that takes a body, including routes added later. Query and path parameters
stay Litestar's (they arrive as strings, so they must be converted).

A body nested deeper than msgspec's recursion guard allows is a 400 too
(#9 finding 7: 200,000 ``[`` gave 500).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.types import Empty

__all__ = ["StrictRequest", "decode_body"]


def decode_body(body: bytes, target: Any) -> Any:
    """``body`` decoded as ``target`` (``Any``: untyped), strictly; ValidationException
    (400 naming the field) for anything that does not fit."""
    try:
        return msgspec.json.decode(body or b"null", type=target, strict=True)
    except msgspec.ValidationError as e:
        raise ValidationException(
            detail="invalid request body", extra=[{"message": str(e), "source": "body"}]
        ) from None
    except msgspec.DecodeError as e:
        raise ValidationException(
            detail="invalid request body",
            extra=[{"message": f"malformed JSON: {e}", "source": "body"}],
        ) from None
    except RecursionError:
        raise ValidationException(
            detail="invalid request body",
            extra=[{"message": "JSON body is nested too deeply", "source": "body"}],
        ) from None


class StrictRequest(Request[Any, Any, Any]):
    """The request class of fcd's app: strict, typed body decoding."""

    async def json(self) -> Any:
        if self._json is Empty:
            if (cached := self._connection_state.json) is not Empty:
                self._json = cached
            else:
                field = self.route_handler.parsed_data_field
                target = field.annotation if field is not None else Any
                self._json = self._connection_state.json = decode_body(await self.body(), target)
        return self._json
