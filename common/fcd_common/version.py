"""fcd's version, as installed (one answer for ``ping`` and ``GET /version``)."""

from __future__ import annotations

import functools
from importlib import metadata

__all__ = ["version"]


@functools.cache
def version() -> str:
    try:
        return metadata.version("fcd")
    except metadata.PackageNotFoundError:
        return "0+unknown"
