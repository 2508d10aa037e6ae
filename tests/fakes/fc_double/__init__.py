"""A faithful test double of the Firecracker v1.7.0 VMM process (API, state machine, effects).

``main(argv)`` runs it. Everything it needs is imported here, at package import, so the
jailer double can import this package before pivot_root and call ``main`` inside the jail,
where no Python library files exist (``preload`` pulls in the codec and stdlib modules that
CPython would otherwise load lazily).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .cli import main

MARKER = "# fcd-test-double: firecracker"

# Modules used lazily by the stdlib on paths the double exercises (codecs, json, errors).
_LAZY = (
    "encodings.utf_8",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.idna",
    "json.decoder",
    "json.encoder",
    "json.scanner",
    "_json",
    "selectors",
    "socket",
    "fcntl",
    "struct",
    "zlib",
    "signal",
    "errno",
    "re",
    "time",
    "select",
    "array",
    "_struct",
)


class LazyImportBlocked(ImportError):
    pass


class _Blocker:
    """A meta-path finder that refuses every import, recording it (used after chroot)."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.blocked.append(name)
        sys.stderr.write(f"fcd-test-double: lazy import of {name} after chroot\n")
        sys.stderr.flush()
        raise LazyImportBlocked(f"import of {name} after chroot")


def preload() -> None:
    for name in _LAZY:
        importlib.import_module(name)


def block_imports() -> _Blocker:
    """Forbid further imports (the jail has no library files; fail loudly, not subtly)."""
    blocker = _Blocker()
    sys.meta_path.insert(0, blocker)
    return blocker


__all__ = ["MARKER", "block_imports", "main", "preload"]
