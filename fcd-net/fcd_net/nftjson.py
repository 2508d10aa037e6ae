"""Tiny builders for libnftables JSON commands (pure; shared by the rule plans)."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def meta(key: str) -> Json:
    return {"meta": {"key": key}}


def payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def prefix(cidr: str) -> Json | str:
    addr, _, length = cidr.partition("/")
    if not length or length == "32":
        return addr
    return {"prefix": {"addr": addr, "len": int(length)}}


def concat(*items: Any) -> Json:
    return {"concat": list(items)}


L4 = concat(meta("l4proto"), payload("th", "dport"))
"""``meta l4proto . th dport`` (guard with ``meta l4proto {tcp, udp}``)."""
TCP_UDP = match(meta("l4proto"), {"set": ["tcp", "udp"]})
ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}
RETURN: Json = {"return": None}


def counter() -> Json:
    return {"counter": {"packets": 0, "bytes": 0}}


def jump(chain: str) -> Json:
    return {"jump": {"target": chain}}


def rule(family: str, table: str, chain: str, comment: str | None, *expr: Json) -> Json:
    body: Json = {"family": family, "table": table, "chain": chain, "expr": list(expr)}
    if comment:
        body["comment"] = comment
    return {"add": {"rule": body}}


def replace_table(family: str, name: str) -> list[Json]:
    """Commands that leave an empty, freshly created table (whether it existed or not)."""
    table = {"family": family, "name": name}
    return [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]


def base_chain(  # noqa: PLR0917 -- reads like nft's own "type X hook Y priority Z"
    family: str,
    table: str,
    name: str,
    kind: str,
    hook: str,
    prio: int,
    policy: str = "accept",
    dev: str | None = None,
) -> Json:
    chain: Json = {
        "family": family,
        "table": table,
        "name": name,
        "type": kind,
        "hook": hook,
        "prio": prio,
        "policy": policy,
    }
    if dev is not None:
        chain["dev"] = dev
    return {"add": {"chain": chain}}


def chain(family: str, table: str, name: str) -> Json:
    return {"add": {"chain": {"family": family, "table": table, "name": name}}}


def set_decl(
    family: str,
    table: str,
    name: str,
    kind: str | list[str],
    *,
    interval: bool = False,
    elem: list[Any] | None = None,
) -> Json:
    body: Json = {"family": family, "table": table, "name": name, "type": kind}
    if interval:
        body["flags"] = ["interval"]
    if elem:
        body["elem"] = elem
    return {"add": {"set": body}}


def map_decl(
    family: str, table: str, name: str, kind: str | list[str], data: str | list[str]
) -> Json:
    return {
        "add": {"map": {"family": family, "table": table, "name": name, "type": kind, "map": data}}
    }


def elements(verb: str, family: str, table: str, name: str, elem: list[Any]) -> list[Json]:
    if not elem:
        return []
    return [{verb: {"element": {"family": family, "table": table, "name": name, "elem": elem}}}]


def idempotent_delete(family: str, table: str, name: str, elem: list[Any]) -> list[Json]:
    """Delete elements whether present or not: ``add`` then ``delete`` in one transaction
    (nftables 1.0.6 has no ``destroy``). Map elements are ``[key, value]``; the delete
    names the key only."""
    keys = [e[0] if isinstance(e, list) else e for e in elem]
    return elements("add", family, table, name, elem) + elements(
        "delete", family, table, name, keys
    )
