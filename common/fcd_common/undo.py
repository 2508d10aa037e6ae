"""One undo stack: an undo pushed per step, all of them run in reverse on failure.

A multi-step operation (fcd-api's create, fcd-net's setup) pushes a named
undo for every step it has begun. On failure :meth:`Undo.rollback` runs every
undo, last pushed first, and returns the ones that failed, with their names:
an undo's own failure never stops the others, and never hides the error that
made the caller roll back. On success :meth:`Undo.commit` forgets them all.

Used as a context manager the stack behaves like :class:`contextlib.AsyncExitStack`,
which it is built on: leaving the block runs every undo unless
:meth:`~Undo.commit` was called. :class:`SyncUndo` is the same on
:class:`contextlib.ExitStack`, for synchronous code (fcd-net's core).

Only :class:`Exception` counts as an undo's failure; a ``BaseException``
(cancellation) still propagates, after the remaining undos ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = ["SyncUndo", "Undo", "UndoFailure"]


@dataclass(frozen=True)
class UndoFailure:
    """An undo that raised: its name and what it raised."""

    name: str
    error: Exception


class _Names:
    def __init__(self) -> None:
        self._names: list[str] = []
        self.failures: list[UndoFailure] = []

    def __len__(self) -> int:
        """How many undos are pending."""
        return len(self._names)

    @property
    def names(self) -> list[str]:
        """The pending undos' names, in the order they would run."""
        return self._names[::-1]


class Undo(_Names):
    """An asynchronous undo stack."""

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.AsyncExitStack()

    def push(self, name: str, fn: Callable[[], Awaitable[object]]) -> None:
        """Register ``fn`` to run on rollback (after every undo pushed later)."""

        async def run() -> None:
            try:
                await fn()
            except Exception as e:
                self.failures.append(UndoFailure(name, e))

        self._stack.push_async_callback(run)
        self._names.append(name)

    def commit(self) -> None:
        """Keep what was done: forget every pending undo."""
        self._stack.pop_all()
        self._names.clear()

    async def rollback(self) -> list[UndoFailure]:
        """Run every pending undo in reverse; return those that failed (in the order run)."""
        try:
            await self._stack.aclose()
        finally:
            self._names.clear()
        return list(self.failures)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()


class SyncUndo(_Names):
    """A synchronous undo stack (same contract as :class:`Undo`)."""

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()

    def push(self, name: str, fn: Callable[[], object]) -> None:
        """Register ``fn`` to run on rollback (after every undo pushed later)."""

        def run() -> None:
            try:
                fn()
            except Exception as e:
                self.failures.append(UndoFailure(name, e))

        self._stack.callback(run)
        self._names.append(name)

    def commit(self) -> None:
        """Keep what was done: forget every pending undo."""
        self._stack.pop_all()
        self._names.clear()

    def rollback(self) -> list[UndoFailure]:
        """Run every pending undo in reverse; return those that failed (in the order run)."""
        try:
            self._stack.close()
        finally:
            self._names.clear()
        return list(self.failures)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rollback()
