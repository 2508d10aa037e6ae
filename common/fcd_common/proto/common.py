"""Messages every helper answers."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..rpc import Reply, Request

Uid = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 2)]
MiB = Annotated[int, msgspec.Meta(ge=1)]


class Ping(Request, tag="ping", frozen=True):
    pass


class Pong(Reply, frozen=True):
    daemon: str
    version: str
    pid: int
    status: str
