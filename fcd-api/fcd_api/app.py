"""The public HTTP/JSON API (Litestar): routes, one error shape, request ids.

Every error leaves as ``{"error": {"code", "message", "details"}}`` with the
status from ``fcd_common.errors.HTTP_STATUS`` (:mod:`fcd_api.http_errors`);
Litestar's own validation errors become ``400 invalid_argument`` naming the
field. Bodies are decoded strictly into the route's type
(:mod:`fcd_api.strict_body`), at most ``MAX_BODY_BYTES`` of them; path
parameters that are names are checked against the shared types before a
handler runs (:mod:`fcd_api.path_params`); the OpenAPI document lists every
route's real statuses and error body (:mod:`fcd_api.openapi_doc`). Every
response carries ``X-Request-Id`` (the client's, or a generated one), which
is also logged with each line a flow writes (journal field ``FCD_REQUEST_ID``).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Litestar, MediaType, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from fcd_common import spans
from fcd_common.version import version

from .allow_header import AllowHeader
from .http_errors import EXCEPTION_HANDLERS, MAX_BODY_BYTES, error_response
from .log_routes import log_router
from .metrics_collect import Collector
from .metrics_routes import metrics_router
from .models import VM, CreateVMRequest, VersionInfo, VMState
from .net_routes import net_router
from .openapi_doc import document
from .path_params import PathParamCheck
from .prom import Exposition, OperationsMiddleware
from .readonly import Access, ListenerPolicy
from .registry import parse_label_filters
from .resources_flows import ResourceFlows
from .resources_routes import resources_router
from .service import Flows, request_id
from .snapshot_routes import snapshot_router
from .storage_routes import storage_router
from .strict_body import StrictRequest
from .suspend_flows import SuspendFlows

__all__ = ["RequestIdMiddleware", "build_app", "create_asgi", "error_response", "version"]

log = logging.getLogger("fcd.api.http")

LabelFilter = Annotated[str, msgspec.Meta(pattern=r"^[^=]+=", max_length=512)]
"""``k=v`` (the value may be empty, or contain ``=``)."""

AGAIN = ResponseSpec(VM, description="It already exists with this spec (a repeated create)")

_RID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# --- routes ----------------------------------------------------------------------
class VMController(Controller):
    path = "/v1/vms"
    tags = ["vms"]

    @post(
        "/",
        status_code=201,
        summary="Create a VM (200 if it already exists with this spec)",
        responses={200: AGAIN},
    )
    async def create_vm(
        self, flows: NamedDependency[Flows], data: JSONBody[CreateVMRequest]
    ) -> Response[VM]:
        rec, created = await flows.create(data)
        return Response(rec.to_public(), status_code=201 if created else 200)

    @get("/", summary="List VMs")
    async def list_vms(
        self,
        flows: NamedDependency[Flows],
        vm_state: Annotated[
            VMState | None, QueryParameter(name="state", description="only VMs in this state")
        ] = None,
        label: Annotated[
            list[LabelFilter] | None,
            QueryParameter(description="k=v; repeat to require several labels"),
        ] = None,
    ) -> list[VM]:
        labels = parse_label_filters(label or [])
        public = flows.registry.public
        return [public(r) for r in flows.list_vms(state=vm_state, labels=labels)]

    @get("/{vm_id:str}", summary="Get a VM")
    async def get_vm(self, flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
        return await ResourceFlows(flows).public(flows.get(vm_id))

    @post("/{vm_id:str}/start", status_code=200, summary="Start a stopped VM")
    async def start_vm(self, flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
        return (await flows.start(vm_id)).to_public()

    @post("/{vm_id:str}/stop", status_code=200, summary="Stop a running or paused VM")
    async def stop_vm(self, flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
        return (await flows.stop(vm_id)).to_public()

    @post("/{vm_id:str}/pause", status_code=200, summary="Pause a running VM")
    async def pause_vm(self, flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
        return (await flows.pause(vm_id)).to_public()

    @post(
        "/{vm_id:str}/resume", status_code=200, summary="Resume a paused (or wake a suspended) VM"
    )
    async def resume_vm(self, flows: NamedDependency[Flows], vm_id: FromPath[str]) -> VM:
        if flows.get(vm_id).state is VMState.SUSPENDED:
            return (await SuspendFlows(flows).wake(vm_id)).to_public()
        return (await flows.resume(vm_id)).to_public()

    @delete("/{vm_id:str}", status_code=204, summary="Delete a stopped/error VM (any with force)")
    async def delete_vm(
        self, flows: NamedDependency[Flows], vm_id: FromPath[str], force: FromQuery[bool] = False
    ) -> None:
        await flows.delete(vm_id, force=force)


@get("/_ping", media_type=MediaType.TEXT, include_in_schema=False)
async def ping() -> str:
    return "OK"


@get("/version")
async def get_version() -> VersionInfo:
    return VersionInfo(version=version())


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return document(request.app)


def build_app(
    flows: NamedDependency[Flows], *, debug: bool = False, exposition: Exposition | None = None
) -> Litestar:
    if exposition is None:  # scrapes still work; per-VM series once a collection ran
        exposition = Exposition(flows.registry, Collector(flows, 10.0))

    async def provide_flows() -> Flows:
        return flows

    app = Litestar(
        route_handlers=[
            VMController,
            ping,
            get_version,
            openapi_json,
            storage_router,
            net_router,
            snapshot_router,
            resources_router,
            log_router,
            metrics_router,
        ],
        dependencies={"flows": Provide(provide_flows)},
        state=State({"exposition": exposition}),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[AllowHeader, PathParamCheck],
        request_class=StrictRequest,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(title="fcd", version=version(), path="/schema"),
        logging_config=None,
        debug=debug,
    )
    document(app)  # finish the OpenAPI document now: every route is registered
    return app


class RequestIdMiddleware:
    """Outermost ASGI layer: X-Request-Id in (validated, or generated) and echoed out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        rid = ""
        for key, value in scope.get("headers", []):
            if key.lower() == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if not _RID_RE.fullmatch(rid):
            rid = uuid.uuid4().hex
        token = request_id.set(rid)
        timings = spans.Spans()
        spans_token = spans.current.set(timings)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", rid.encode()))
                if timings.items:  # a flow marked its phases: say where the time went
                    timings.since_start("api.total")
                    headers.append((b"server-timing", timings.server_timing().encode()))
                    timings.log(log, f"{scope['method']} {scope['path']}", {"FCD_REQUEST_ID": rid})
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            spans.current.reset(spans_token)
            request_id.reset(token)


def create_asgi(
    flows: NamedDependency[Flows],
    *,
    debug: bool = False,
    exposition: Exposition | None = None,
    listeners: dict[str, Access] | None = None,
) -> RequestIdMiddleware:
    """The ASGI application fcd-api serves. ``listeners``: the access each listening
    socket grants (:mod:`fcd_api.readonly`); None: every request has full access."""
    app: ASGIApp = OperationsMiddleware(build_app(flows, debug=debug, exposition=exposition))
    if listeners is not None:
        app = ListenerPolicy(app, listeners, default=Access.SCRAPE)
    return RequestIdMiddleware(app)
