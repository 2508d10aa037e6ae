"""fcctl's text output: one aligned-table renderer and one ``key: value`` renderer.

A table is declared as data, a sequence of :class:`Column` (a header and how to
get the cell from one item), so each listing only says *what* it shows. Every
cell and value goes through :func:`escape`: what fcctl prints comes from the
API (names, labels, kernel arguments, error messages), and a control character
such as ``\\x1b`` must reach the terminal as the four characters ``\\x1b``,
never raw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Column", "escape", "escape_lines", "render_detail", "render_table"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Column(Generic[T]):
    """One table column: its header and how to get the cell text from an item."""

    header: str
    cell: Callable[[T], object]


def escape(text: str) -> str:
    """``text`` with every non-printable character written the way ``repr`` writes it.

    Printable characters (including non-ASCII letters) stay as they are; control
    characters, line breaks, bidi overrides and other invisible characters become
    ``\\x1b``, ``\\n``, ``\\u202e``..., so one value stays on one line and cannot
    drive the terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def escape_lines(text: str) -> str:
    """Escape each line of ``text`` but keep the line breaks between them."""
    return "\n".join(escape(line) for line in text.split("\n"))


def render_table(columns: Sequence[Column[T]], items: Iterable[T]) -> str:
    """``items`` as left-aligned columns two spaces apart; a header line even when empty."""
    rows = [
        tuple(c.header for c in columns),
        *(tuple(escape(str(c.cell(item))) for c in columns) for item in items),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def render_detail(pairs: Iterable[tuple[str, object]]) -> str:
    """``key: value`` lines with the values aligned one space after the longest key."""
    lines = [(escape(k) + ":", escape(str(v))) for k, v in pairs]
    width = max((len(k) for k, _ in lines), default=0)
    return "\n".join(f"{k.ljust(width)} {v}" for k, v in lines)
