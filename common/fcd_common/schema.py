"""The one base class of every fcd schema: frozen, keyword-only, strict about unknown fields.

msgspec does not inherit ``kw_only`` from a base Struct (a subclass adding a
required field after a defaulted one fails), and mypy only treats a subclass
as frozen if it says so again. :class:`Record` settles both once: its
metaclass applies ``frozen=True, kw_only=True, forbid_unknown_fields=True`` to
every subclass (a subclass may still pass its own, e.g. ``tag=``), and for the
type checker the same defaults are declared with ``dataclass_transform``. So a
schema is just ``class Foo(Record): ...``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

__all__ = ["Record"]

_DEFAULTS = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True}


class _RecordMeta(type(msgspec.Struct)):  # type: ignore[misc]
    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> Any:
        for key, value in _DEFAULTS.items():
            kwargs.setdefault(key, value)
        return super().__new__(mcls, name, bases, namespace, **kwargs)


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(
        kw_only_default=True, frozen_default=True, field_specifiers=(msgspec.field,)
    )
    class Record(msgspec.Struct, frozen=True, kw_only=True):
        """Base of every fcd schema (API bodies, RPC messages, records on disk)."""

else:

    class Record(msgspec.Struct, metaclass=_RecordMeta):
        """Base of every fcd schema (API bodies, RPC messages, records on disk)."""
