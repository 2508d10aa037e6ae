"""``GET /v1/vms/{id}/logs`` and ``GET /v1/events``: NDJSON (or plain text) streams.

Logs: ``follow`` (keep the stream open for new lines; it ends when the VM is
deleted), ``tail`` (the last N stored lines first), ``since`` (seconds since the
epoch, or an ISO 8601 time), ``source`` (``console``, ``firecracker``, ``fcd``;
repeated or comma-separated). Each NDJSON line is one
:class:`fcd_common.vmlogstore.Entry`; ``format=text`` (or ``Accept: text/plain``)
gives ``<time> <source> [<daemon>] <message>`` lines instead.

Events: ``since`` (an event id: the ones after it), ``vm_id``, ``type`` (repeated
or comma-separated), ``follow`` (with ``vm_id``: until that VM's ``deleted``); each
line one :class:`fcd_api.events.Event`. The
response header ``X-Fcd-First-Event`` is the oldest id still stored (a ``since``
below it means some were pruned).

A stream never holds the event loop or a lock while it waits: log follows read in
worker threads, event follows wait on their own bounded queue (a follower that
does not read is cut off, others are not slowed). Shutdown ends every stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from fcd_common.errors import FailedPrecondition, InvalidArgument, NotFound
from fcd_common.ids import check_vm_id
from fcd_common.vmlogstore import Entry

from . import events, logstore
from .service import Flows

__all__ = ["install", "log_router", "shutdown"]

NDJSON = "application/x-ndjson"
TEXT = "text/plain; charset=utf-8"
SOURCES = frozenset({"console", "firecracker", "fcd"})
_enc = msgspec.json.Encoder()

_state: dict[str, Any] = {"store": None, "closing": None}


def install(store: logstore.Store | None) -> None:
    """The log store the routes read (fcd-api's start-up)."""
    _state["store"] = store
    _state["closing"] = asyncio.Event()


def shutdown() -> None:
    """End every open stream (fcd-api is stopping)."""
    closing = _state["closing"]
    if closing is not None:
        closing.set()
    s = events.store()
    if s is not None:
        for sub in list(s._subs):
            sub.close()


def _closing() -> bool:
    c = _state["closing"]
    return c is not None and c.is_set()


def _format(request: Request[Any, Any, Any], fmt: str | None) -> Literal["json", "text"]:
    if fmt is not None:
        if fmt not in ("json", "text"):
            raise InvalidArgument("format must be json or text", details={"field": "format"})
        return "text" if fmt == "text" else "json"
    accept = request.headers.get("accept", "")
    return "text" if "text/plain" in accept and "json" not in accept else "json"


def parse_since(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"since {value!r} is neither seconds since the epoch nor an ISO 8601 time",
            details={"field": "since"},
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def parse_sources(values: Sequence[str] | None) -> frozenset[str]:
    out = {s.strip() for v in values or [] for s in v.split(",") if s.strip()}
    bad = out - SOURCES
    if bad:
        raise InvalidArgument(
            f"unknown log source {sorted(bad)[0]!r}: one of {', '.join(sorted(SOURCES))}",
            details={"field": "source"},
        )
    return frozenset(out)


def text_line(e: Entry) -> bytes:
    stamp = dt.datetime.fromtimestamp(e.time, tz=dt.UTC).isoformat(timespec="milliseconds")
    who = f" {e.daemon}" if e.source == "fcd" and e.daemon else ""
    return f"{stamp.replace('+00:00', 'Z')} {e.source}{who} {e.message}\n".encode()


def _line(e: Entry, fmt: str) -> bytes:
    return text_line(e) if fmt == "text" else _enc.encode(e) + b"\n"


@get(
    "/v1/vms/{vm_id:str}/logs",
    summary="A VM's console, Firecracker and fcd log lines",
    opt={"media_types": (NDJSON, TEXT)},
)
async def vm_logs(
    *,
    request: Request[Any, Any, Any],
    flows: NamedDependency[Flows],
    vm_id: FromPath[str],
    follow: FromQuery[bool] = False,
    tail: Annotated[int | None, QueryParameter(ge=0, le=100_000)] = None,
    since: FromQuery[str | None] = None,
    source: FromQuery[list[Literal["console", "firecracker", "fcd"]] | None] = None,
    format: FromQuery[Literal["json", "text"] | None] = None,
) -> Stream:
    check_vm_id(vm_id)
    store: logstore.Store | None = _state["store"]
    if store is None:
        raise FailedPrecondition("no log store configured")
    fmt = _format(request, format)
    q = logstore.Query(vm_id, parse_sources(source), parse_since(since), tail)
    exists = flows.registry.get(vm_id) is not None
    backlog = await store.backlog(q)
    following = follow and exists
    if not following:
        store.release(q)
    if not exists and not backlog:
        raise NotFound(f"VM {vm_id} not found", details={"id": vm_id})

    def gone() -> bool:
        return _closing() or flows.registry.get(vm_id) is None

    async def body() -> AsyncIterator[bytes]:
        try:
            for e in backlog:
                yield _line(e, fmt)
            if following:
                async for e in store.follow(q, gone):
                    yield _line(e, fmt)
        finally:
            store.release(q)

    return Stream(body(), media_type=TEXT if fmt == "text" else NDJSON)


@get(
    "/v1/events",
    summary="VM events (created, started, paused, ..., died, deleted)",
    opt={"media_types": (NDJSON,)},
)
async def list_events(
    *,
    follow: FromQuery[bool] = False,
    since: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
    vm_id: FromQuery[str | None] = None,
    type: FromQuery[list[str] | None] = None,
) -> Response[Any]:
    if vm_id is not None:
        check_vm_id(vm_id)
    types = events.parse_types(type)
    s = events.store()
    if s is None:
        raise FailedPrecondition("no event store configured")
    sub = s.subscribe() if follow and not _closing() else None

    def wanted(ev: events.Event) -> bool:
        return (vm_id is None or ev.vm_id == vm_id) and (not types or ev.type in types)

    async def body() -> AsyncIterator[bytes]:
        last = since
        try:
            while True:
                batch = s.query(last, vm_id, types, 500)
                for ev in batch:
                    last = ev.id
                    yield events.encode_line(ev)
                if len(batch) < 500:
                    break
            if sub is None:
                return
            while True:
                item = await sub.queue.get()
                if item is None:  # cut off (too slow) or shutting down
                    return
                if item.id > last and wanted(item):
                    last = item.id
                    yield events.encode_line(item)
                    if vm_id is not None and item.type == "deleted":
                        return  # the one VM followed is gone: nothing more will come
        finally:
            if sub is not None:
                sub.close()

    return Stream(body(), media_type=NDJSON, headers={"X-Fcd-First-Event": str(s.first_id())})


log_router = Router(path="/", route_handlers=[vm_logs, list_events], tags=["observability"])
