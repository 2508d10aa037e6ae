"""The API answers what its OpenAPI document says (#9 findings 7, 14, 15).

The first tests check the document itself, for every route (so a route added
later is checked too); the ``test_finding*`` tests replay the audit's attacks
against fcd-api in-process over fake helpers on real RPC sockets.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from fcd_api.app import build_app
from fcd_api.http_errors import MAX_BODY_BYTES, codes_for, statuses
from fcd_api.models import MAX_ANNOTATIONS, MAX_LABELS
from fcd_api.openapi_doc import document, error_statuses
from fcd_api.path_params import PATH_PARAM_TYPES
from fcd_common.errors import HTTP_STATUS, InvalidArgument

from .api_fakes import Harness, api_harness

METHODS = {"get", "put", "post", "delete", "patch"}


def run(test: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with api_harness() as h:
            await test(h)

    asyncio.run(main())


def err(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]  # type: ignore[no-any-return]


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _app() -> Litestar:
    """The app as fcd-api builds it (over fake helpers: building it needs real flows)."""
    out: list[Litestar] = []

    async def t(h: Harness) -> None:
        out.append(build_app(h.flows))

    run(t)
    return out[0]


@pytest.fixture(scope="module")
def app() -> Litestar:
    return _app()


@pytest.fixture(scope="module")
def doc(app: Litestar) -> dict[str, Any]:
    return document(app)


def test_every_route_documents_every_error_status_with_the_real_body(
    doc: dict[str, Any],
) -> None:
    ops = operations(doc)
    assert len(ops) >= 20
    every = set(HTTP_STATUS.values()) | {405}
    for path, method, op in ops:
        documented = {int(s) for s in op["responses"]}
        assert every <= documented, (method, path, sorted(every - documented))
        assert (413 in documented) == ("requestBody" in op), (method, path)
        assert documented >= error_statuses(op)
        assert any(200 <= s < 300 for s in documented), (method, path)
        for status, resp in op["responses"].items():
            if int(status) < 400:
                continue
            schema = resp["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            for code in codes_for(int(status)):
                assert code in resp["description"]
        assert "Allow" in op["responses"]["405"]["headers"]
        assert "Retry-After" in op["responses"]["503"]["headers"]
    assert "status_code" not in str(doc), "Litestar's error body is not what fcd sends"
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]["code"]["enum"]) == set(HTTP_STATUS) | {
        "method_not_allowed",
        "payload_too_large",
    }
    assert statuses() == set(HTTP_STATUS.values()) | {405, 413}


def test_every_path_parameter_is_a_checked_name(doc: dict[str, Any]) -> None:
    """A route with a path parameter fcd-api does not validate fails here: add it to
    ``fcd_api.path_params.PATH_PARAM_TYPES`` (or give it a typed annotation)."""
    for path, method, op in operations(doc):
        for name in re.findall(r"{([^}]+)}", path):
            (param,) = [p for p in op["parameters"] if p["name"] == name and p["in"] == "path"]
            assert name in PATH_PARAM_TYPES or param["schema"].get("type") != "string", (
                method,
                path,
                name,
            )
            if name in PATH_PARAM_TYPES:
                assert param["schema"]["pattern"].endswith("\\Z")


def test_repeatable_creates_document_200_and_201(doc: dict[str, Any]) -> None:
    for path in ("/v1/vms", "/v1/snapshots/{name}/restore"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"200", "201"} <= set(responses)
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/VM"
        }


def test_openapi_endpoints_serve_the_finished_document() -> None:
    async def t(h: Harness) -> None:
        a = (await h.client.get("/openapi.json")).json()
        b = (await h.client.get("/schema/openapi.json")).json()
        assert a == b
        assert "ErrorBody" in a["components"]["schemas"]

    run(t)


# --- finding 7: bad input is a 4xx naming the field, never 5xx ---------------------
def test_finding7_deeply_nested_body_is_400() -> None:
    async def t(h: Harness) -> None:
        for path in ("/v1/vms", "/v1/templates", "/v1/vms/a/ports"):
            r = await h.client.post(
                path, content=b"[" * 200_000, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400, (path, r.text[:200])
            e = err(r)
            assert e["code"] == "invalid_argument"  # typed decoding stops at the first `[`

    run(t)


def test_finding7_bad_names_are_400_before_any_rpc() -> None:
    async def t(h: Harness) -> None:
        for method, path, field in [
            ("GET", "/v1/templates/UPPER", "name"),
            ("GET", "/v1/snapshots/.hidden", "name"),
            ("DELETE", "/v1/snapshots/BAD", "name"),
            ("POST", "/v1/snapshots/-x/restore", "name"),
            ("GET", "/v1/vms/evil%0A", "id"),
            ("POST", "/v1/vms/UPPER/snapshots", "id"),
        ]:
            r = await h.client.request(method, path, json={"name": "s1"})
            assert r.status_code == 400, (method, path, r.text)
            e = err(r)
            assert e["code"] == "invalid_argument" and e["details"]["field"] == field, e
        assert not [c for c in h.fakes.calls if c[0].startswith("storage.")], h.fakes.calls

    run(t)


def test_finding7_helper_invalid_argument_is_400() -> None:
    async def t(h: Harness) -> None:
        h.fakes.fail["storage.template_get"] = InvalidArgument("bad name", details={"field": "n"})
        r = await h.client.get("/v1/templates/base")
        assert r.status_code == 400 and err(r)["code"] == "invalid_argument"

    run(t)


# --- finding 14: bounded labels, annotations and bodies ------------------------------
def test_finding14_labels_annotations_and_body_are_capped() -> None:
    async def t(h: Harness) -> None:
        many = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
        for field in ("labels", "annotations"):
            r = await h.client.post("/v1/vms", json={"template": "base", field: many})
            assert r.status_code == 400, r.text
            assert err(r)["details"]["field"] == field
        big = {"template": "base", "annotations": {"a": "x" * (8 << 20)}}
        r = await h.client.post("/v1/vms", json=big)
        assert r.status_code == 413, r.status_code
        e = err(r)
        assert e["code"] == "payload_too_large" and e["details"] == {"max_bytes": MAX_BODY_BYTES}
        full = {
            "id": "full",
            "template": "base",
            "labels": {f"k{i}": "v" * 256 for i in range(MAX_LABELS)},
            "annotations": {f"a{i}": "x" * 4096 for i in range(MAX_ANNOTATIONS)},
        }
        r = await h.client.post("/v1/vms", json=full)
        assert r.status_code == 201, r.text  # everything at its limit still fits

    run(t)


# --- finding 15: the contract is what it answers ------------------------------------
def test_finding15_decoding_is_strict() -> None:
    async def t(h: Harness) -> None:
        for value in ("2", 1.0, True):
            r = await h.client.post(
                "/v1/vms", json={"id": "s", "template": "base", "vcpu_count": value}
            )
            assert r.status_code == 400, (value, r.text)
            assert err(r)["details"]["field"] == "vcpu_count"
        r = await h.client.post("/v1/vms/nope/ports", json={"host_port": "80", "guest_port": 80})
        assert r.status_code == 400 and err(r)["details"]["field"] == "host_port"
        r = await h.client.post("/v1/vms", json={"id": "s", "template": "base", "vcpu_count": 2})
        assert r.status_code == 201, r.text

    run(t)


def test_finding15_405_names_the_allowed_methods() -> None:
    async def t(h: Harness) -> None:
        for method, path, allowed in [
            ("PUT", "/v1/vms", {"GET", "POST"}),
            ("PATCH", "/v1/templates/base", {"GET", "DELETE"}),
            ("GET", "/v1/vms/a/start", {"POST"}),
        ]:
            r = await h.client.request(method, path)
            assert r.status_code == 405, (method, path)
            assert err(r)["code"] == "method_not_allowed"
            got = {m.strip() for m in r.headers["allow"].split(",")}
            assert allowed <= got, (path, got)

    run(t)


def test_finding15_os_errors_are_stable_codes_without_host_paths() -> None:
    async def t(h: Harness) -> None:
        secret = "/var/lib/fcd/storage/templates/base/rootfs.ext4"
        h.fakes.fail["storage.template_get"] = PermissionError(13, "Permission denied", secret)  # type: ignore[assignment]
        r = await h.client.get("/v1/templates/base")
        e = err(r)
        assert (r.status_code, e["code"]) == (403, "permission_denied"), r.text
        assert "/var/lib" not in r.text and e["details"] == {"errno": "EACCES"}
        h.fakes.fail["storage.template_get"] = OSError(28, "No space left on device", secret)  # type: ignore[assignment]
        r = await h.client.get("/v1/templates/base")
        assert (r.status_code, err(r)["code"]) == (507, "resource_exhausted")
        assert "/var/lib" not in r.text
        h.fakes.fail["storage.template_get"] = RuntimeError(f"boom in {secret}")  # type: ignore[assignment]
        r = await h.client.get("/v1/templates/base")
        assert (r.status_code, err(r)["code"]) == (500, "internal")
        assert "/var/lib" not in r.text

    run(t)


def test_finding7_untyped_deep_json_is_400() -> None:
    """The strict decoder's own guard, for a body decoded without a type."""
    from litestar.exceptions import ValidationException

    from fcd_api.strict_body import decode_body

    with pytest.raises(ValidationException) as ei:
        decode_body(b"[" * 200_000, Any)
    assert "nested too deeply" in str(ei.value.extra)


def test_schemas_are_the_decoders_own(doc: dict[str, Any]) -> None:
    """Bodies refuse unknown fields and the document says so; every $ref resolves."""
    schemas = doc["components"]["schemas"]
    for path, method, op in operations(doc):
        body = op.get("requestBody")
        if body is None:
            continue
        ref = body["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[1]
        assert schemas[name].get("additionalProperties") is False, (method, path, name)
    for ref in re.findall(r"'\$ref': '#/components/schemas/([^']+)'", str(doc)):
        assert ref in schemas, ref
    create = schemas["CreateVMRequest"]["properties"]
    assert create["labels"]["maxProperties"] == MAX_LABELS
    assert create["annotations"]["maxProperties"] == MAX_ANNOTATIONS


def test_finding15_options_names_every_method_of_the_path() -> None:
    async def t(h: Harness) -> None:
        for path, allowed in [
            ("/v1/vms", {"GET", "POST", "OPTIONS"}),
            ("/v1/templates/base", {"GET", "DELETE", "OPTIONS"}),
            ("/v1/vms/a/ports", {"POST", "DELETE", "OPTIONS"}),
        ]:
            r = await h.client.options(path)
            assert r.status_code == 204
            assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, path

    run(t)


def test_finding15_sizes_and_source_paths_are_bounded_before_any_rpc() -> None:
    """The fuzzer's ``size_mib`` of 2**70 gave 500 (fcd-api could not encode the RPC)."""

    async def t(h: Harness) -> None:
        tree = {"name": "t", "kernel_path": "/k", "source_dir": "/d"}
        for body, field in [
            ({**tree, "size_mib": 2**70}, "size_mib"),
            ({**tree, "kernel_path": "vmlinux"}, "kernel_path"),
            ({**tree, "source_dir": "/a/../etc"}, "source_dir"),
        ]:
            r = await h.client.post("/v1/templates/build", json=body)
            assert r.status_code == 400, r.text
            assert err(r)["details"]["field"] == field
        drives = [{"name": f"d{i}", "size_mib": 1} for i in range(17)]
        r = await h.client.post("/v1/vms", json={"template": "base", "drives": drives})
        assert r.status_code == 400 and err(r)["details"]["field"] == "drives"
        assert not [c for c in h.fakes.calls if c[0].startswith("storage.template")]

    run(t)


def test_streamed_routes_document_their_media_types(app: Litestar, doc: dict[str, Any]) -> None:
    seen = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            types = handler.opt.get("media_types")
            if not types:
                continue
            for method in handler.http_methods:
                op = doc["paths"][route.path_format][method.lower()]
                ok = [s for s in op["responses"] if s.startswith("2")]
                assert ok and all(set(op["responses"][s]["content"]) == set(types) for s in ok)
                seen += 1
    assert seen >= 1


# --- found by the fuzz test (tests/e2e/test_api_fuzz.py) -----------------------------
def test_fuzz_found_a_quota_below_the_minimum_is_400_and_the_vm_stays_readable() -> None:
    """``cpu_quota`` 0.005 passed the update's type (ge=0) but not the spec's (ge=0.01):
    it was stored, and every later call on the VM, and the VM list, answered 500."""

    async def t(h: Harness) -> None:
        r = await h.client.post("/v1/vms", json={"id": "q", "template": "base"})
        assert r.status_code == 201, r.text
        r = await h.client.patch("/v1/vms/q/resources", json={"cpu_quota": 0.005})
        assert r.status_code == 400, r.text
        assert err(r)["details"]["field"] == "cpu_quota"
        assert (await h.client.get("/v1/vms/q")).status_code == 200
        assert (await h.client.get("/v1/vms")).status_code == 200

    run(t)


def test_fuzz_found_an_event_cursor_past_sqlite_integers_is_400() -> None:
    async def t(h: Harness) -> None:
        r = await h.client.get("/v1/events", params={"since": 2**70})
        assert r.status_code == 400 and err(r)["details"]["field"] == "since"

    run(t)
