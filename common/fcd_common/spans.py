"""Where one operation's time went: named durations (spans), recorded cheaply.

A daemon opens a :class:`Spans` for an operation it wants broken down (fcd-api
per HTTP request, fcd-vmm per launch) and makes it current; code anywhere
below marks its phases with ``with spans.span("jailer"):``. With no recorder
current a span is a context-variable lookup and nothing else, so phases can be
marked in hot paths. A recorder's spans travel back in a reply (fcd-vmm's
``VmProcess.timings``, fcd-api's ``Server-Timing`` response header) and are
logged at debug level; ``bench/create_delete.py`` prints their medians.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

__all__ = ["Spans", "current", "span"]

_now = time.perf_counter
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")


class Spans:
    """Named durations of one operation, in the order they ended."""

    __slots__ = ("items", "t0")

    def __init__(self) -> None:
        self.t0 = _now()
        self.items: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        self.items.append((name, seconds))

    def since_start(self, name: str) -> None:
        """A span from the recorder's creation until now."""
        self.items.append((name, _now() - self.t0))

    def span(self, name: str) -> _Span:
        return _Span(self, name)

    def merge(self, prefix: str, timings_ms: Mapping[str, float]) -> None:
        """Another daemon's spans (milliseconds, as in a reply), under ``prefix``."""
        for name, ms in timings_ms.items():
            self.items.append((f"{prefix}{name}", ms / 1000))

    def as_ms(self) -> dict[str, float]:
        """{name: ms}; a name seen twice adds up."""
        out: dict[str, float] = {}
        for name, s in self.items:
            out[name] = round(out.get(name, 0.0) + s * 1000, 3)
        return out

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value: ``name;dur=ms``, comma-separated, each
        name a token (anything else becomes ``_``)."""
        return ", ".join(
            f"{_NOT_TOKEN.sub('_', name)};dur={ms:g}" for name, ms in self.as_ms().items()
        )

    def log(
        self, logger: logging.Logger, what: str, extra: Mapping[str, Any] | None = None
    ) -> None:
        if self.items and logger.isEnabledFor(logging.DEBUG):
            logger.debug("timings of %s: %s", what, self.server_timing(), extra=extra)


class _Span:
    __slots__ = ("name", "spans", "t")

    def __init__(self, spans: Spans | None, name: str) -> None:
        self.spans, self.name, self.t = spans, name, 0.0

    def __enter__(self) -> None:
        if self.spans is not None:
            self.t = _now()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.spans is not None:
            self.spans.items.append((self.name, _now() - self.t))


current: contextvars.ContextVar[Spans | None] = contextvars.ContextVar("fcd_spans", default=None)
"""The recorder of the operation this task (or thread, via to_thread) works on."""


def span(name: str) -> _Span:
    """A phase of the current operation (a no-op without a current recorder)."""
    return _Span(current.get(), name)
