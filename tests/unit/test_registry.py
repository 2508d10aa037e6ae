"""The SQLite registry: WAL, CRUD, filters, persistence, crash marking."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgspec
import pytest

from fcd_api.models import CreateVMRequest, Runtime, VmRecord, VMState, now
from fcd_api.registry import SCHEMA_VERSION, Registry, parse_label_filters
from fcd_common.errors import Conflict, Internal, InvalidArgument, NotFound
from fcd_common.proto.common import PortMapping
from fcd_common.proto.net import NetInfo
from fcd_common.proto.vmm import JailInfo


def rec(vm_id: str, state: VMState = VMState.RUNNING, **labels: str) -> VmRecord:
    ts = now()
    spec = CreateVMRequest(id=vm_id, template="base", labels=labels)
    return VmRecord(id=vm_id, spec=spec, state=state, created_at=ts, updated_at=ts)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry.open(tmp_path / "api" / "registry.db")
    yield r  # type: ignore[misc]
    r.close()


def test_wal_and_schema_version(reg: Registry) -> None:
    assert reg.journal_mode == "wal"
    assert reg.schema_version == SCHEMA_VERSION


def test_crud(reg: Registry) -> None:
    assert reg.get("a") is None
    r = rec("a", VMState.CREATING, team="x")
    reg.insert(r)
    assert reg.get("a") == r
    with pytest.raises(Conflict):
        reg.insert(r)
    jail = JailInfo(vm_id="a", uid=900000, gid=900000, chroot_dir="/srv/jailer/a/root")
    rt = Runtime(jail=jail, net=_net("a"), pid=12)
    updated = reg.update(msgspec.structs.replace(r, state=VMState.RUNNING, runtime=rt))
    got = reg.require("a")
    assert got == updated
    assert got.state is VMState.RUNNING and got.runtime.net == _net("a")
    assert got.spec.labels == {"team": "x"}
    assert reg.delete("a") is True
    assert reg.delete("a") is False
    with pytest.raises(NotFound):
        reg.require("a")
    with pytest.raises(NotFound):
        reg.update(r)


def test_list_filters(reg: Registry) -> None:
    reg.insert(rec("a", VMState.RUNNING, team="x", tier="1"))
    reg.insert(rec("b", VMState.STOPPED, team="x"))
    reg.insert(rec("c", VMState.RUNNING, team="y", eq="a=b"))
    ids = lambda rs: sorted(r.id for r in rs)  # noqa: E731
    assert ids(reg.list_vms()) == ["a", "b", "c"]
    assert ids(reg.list_vms(state=VMState.RUNNING)) == ["a", "c"]
    assert ids(reg.list_vms(labels={"team": "x"})) == ["a", "b"]
    assert ids(reg.list_vms(state=VMState.RUNNING, labels={"team": "x"})) == ["a"]
    assert ids(reg.list_vms(labels={"team": "x", "tier": "1"})) == ["a"]
    assert ids(reg.list_vms(labels=parse_label_filters(["eq=a=b"]))) == ["c"]
    assert ids(reg.list_vms(state=VMState.PAUSED)) == []
    assert reg.count() == 3
    assert reg.counts() == {VMState.RUNNING: 2, VMState.STOPPED: 1}


def test_label_filter_parsing() -> None:
    assert parse_label_filters(["a=1", "b=", "c=x=y"]) == {"a": "1", "b": "", "c": "x=y"}
    for bad in ["novalue", "=v"]:
        with pytest.raises(InvalidArgument):
            parse_label_filters([bad])


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    r1 = Registry.open(path)
    a = rec("a", team="x")
    r1.insert(a)
    r1.close()
    r2 = Registry.open(path)
    try:
        assert r2.require("a") == a
        assert r2.journal_mode == "wal"
    finally:
        r2.close()


def test_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(Internal):
        Registry.open(path)


def test_failed_transaction_rolls_back(reg: Registry) -> None:
    reg.insert(rec("a"))
    with pytest.raises(Conflict):
        reg.insert(rec("a"))
    # the connection is usable and not stuck inside a transaction
    reg.insert(rec("b"))
    assert reg.count() == 2


def _net(vm_id: str) -> NetInfo:
    return NetInfo(
        vm_id=vm_id,
        tap="fcabc",
        mac="06:00:ac:1e:00:02",
        ip="172.30.0.2",
        gateway="172.30.0.1",
        prefix_len=24,
        bridge="fcbr0",
        uid=900000,
        gid=900000,
        ports=[PortMapping(host_port=20000, guest_port=80)],
    )


def test_schema_1_rows_are_migrated_not_lost(tmp_path: Path) -> None:
    """A registry written by schema 1 (flat runtime) opens with every VM intact."""
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE vms (id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,"
        " runtime TEXT NOT NULL DEFAULT '{}', error TEXT, created_at TEXT NOT NULL,"
        " started_at TEXT, stopped_at TEXT, updated_at TEXT NOT NULL); PRAGMA user_version=1;"
    )
    old_runtime = {
        "uid": 900000,
        "gid": 900000,
        "chroot_dir": "/srv/jailer/a/root",
        "tap": "fcabc",
        "mac": "06:00:ac:1e:00:02",
        "ip": "172.30.0.2",
        "gateway": "172.30.0.1",
        "prefix_len": 24,
        "bridge": "fcbr0",
        "kernel_path": "/s/templates/base/vmlinux",
        "rootfs_path": "/s/disks/a/rootfs.ext4",
        "disk_method": "reflink",
        "template_kernel_args": "console=ttyS0",
        "pid": 12,
        "drives": [{"name": "data", "path": "/s/disks/a/drive-data.ext4", "read_only": False}],
        "port_mappings": [{"host_port": 20000, "guest_port": 80, "protocol": "tcp"}],
        "network_mode": "bridge",
    }
    conn.execute(
        "INSERT INTO vms VALUES (?, ?, ?, ?, NULL, 't', NULL, NULL, 't')",
        ("a", '{"id":"a","template":"base"}', "running", json.dumps(old_runtime)),
    )
    conn.execute("INSERT INTO vms VALUES ('b', '{\"template\":\"base\"}', 'error', '{}',"
                 " 'x', 't', NULL, NULL, 't')")  # fmt: skip
    conn.commit()
    conn.close()
    reg = Registry.open(db)
    try:
        assert reg.schema_version == SCHEMA_VERSION
        a = reg.require("a")
        assert a.runtime.net == _net("a")
        assert a.runtime.jail is not None and a.runtime.jail.chroot_dir == "/srv/jailer/a/root"
        assert a.runtime.disk is not None and a.runtime.disk.method == "reflink"
        assert [d.name for d in a.runtime.disk.drives] == ["data"]
        assert (a.runtime.pid, a.runtime.template_kernel_args) == (12, "console=ttyS0")
        assert a.to_public().ip_address == "172.30.0.2"
        assert reg.require("b").runtime == Runtime()
    finally:
        reg.close()


def test_generation_changes_with_every_write_and_only_then(reg: Registry) -> None:
    """The health scan reads all records only when this changed: a write through this
    registry, or a commit through another connection, must change it."""
    g = reg.generation()
    reg.list_vms()
    reg.get("a")
    assert reg.generation() == g  # reads change nothing
    reg.insert(rec("a", VMState.CREATING))
    assert reg.generation() != g
    g = reg.generation()
    reg.update(msgspec.structs.replace(reg.require("a"), state=VMState.RUNNING))
    assert reg.generation() != g
    g = reg.generation()
    other = sqlite3.connect(reg.path)
    other.execute("UPDATE vms SET state = 'stopped' WHERE id = 'a'")
    other.commit()
    other.close()
    assert reg.generation() != g
    g = reg.generation()
    assert reg.delete("a")
    assert reg.generation() != g


def test_health_rows_agree_with_the_decoded_records(reg: Registry) -> None:
    from fcd_api.supervision_models import Health, HealthCheck

    check = HealthCheck(check="tcp:8080", interval_s=1)
    plain = rec("a", VMState.RUNNING)
    reg.insert(plain)
    spec = msgspec.structs.replace(rec("b").spec, health_check=check)
    probed = msgspec.structs.replace(rec("b", VMState.CREATING), spec=spec)
    reg.insert(probed)
    live = reg.require("b")
    runtime = msgspec.structs.replace(live.runtime, pid=4242, health=Health.HEALTHY)
    reg.update(msgspec.structs.replace(live, state=VMState.STOPPED, runtime=runtime))
    rows = {r.id: r for r in reg.health_rows()}
    for full in reg.list_vms():
        row = rows.pop(full.id)
        assert row.state is full.state
        assert row.check == full.spec.health_check
        assert row.pid == full.runtime.pid
        assert row.has_health == (full.runtime.health is not None)
    assert rows == {}
    assert reg.health_rows()[1].check == check and reg.health_rows()[1].pid == 4242
    # without a default check only VMs with a check or a health to clear are read
    assert [r.id for r in reg.health_rows(everyone=False)] == ["b"]
    c = msgspec.structs.replace(rec("c", VMState.STOPPED), spec=rec("c").spec)
    reg.insert(c)
    live = reg.require("c")
    runtime = msgspec.structs.replace(live.runtime, health=Health.UNHEALTHY)
    reg.update(msgspec.structs.replace(live, runtime=runtime))
    assert [r.id for r in reg.health_rows(everyone=False)] == ["b", "c"]


def test_reads_reuse_a_decoded_record_only_while_its_row_is_unchanged(
    reg: Registry, tmp_path: Path
) -> None:
    reg.insert(rec("a", team="x"))
    reg.insert(rec("b"))
    first = {r.id: r for r in reg.list_vms()}
    again = {r.id: r for r in reg.list_vms()}
    assert again["a"] is first["a"] and again["b"] is first["b"]  # not decoded twice
    assert reg.get("a") is first["a"]
    view = reg.public(first["a"])
    assert reg.public(again["a"]) is view
    # a write through this registry
    reg.update(msgspec.structs.replace(first["a"], state=VMState.STOPPED, error="x"))
    a = reg.require("a")
    assert a is not first["a"] and a.state is VMState.STOPPED and a.error == "x"
    assert reg.public(a) is not view and reg.public(a).state is VMState.STOPPED
    # a write by another connection (sqlite3 CLI, a second process) is seen too
    other = sqlite3.connect(reg.path)
    with other:
        other.execute("UPDATE vms SET error = 'changed elsewhere' WHERE id = 'b'")
    other.close()
    b = next(r for r in reg.list_vms() if r.id == "b")
    assert b is not first["b"] and b.error == "changed elsewhere"
    assert reg.public(b).error == "changed elsewhere"
    # a deleted VM is gone, even if its id comes back with another spec
    assert reg.delete("a")
    assert [r.id for r in reg.list_vms()] == ["b"]
    reg.insert(rec("a", team="y"))
    assert reg.require("a").spec.labels == {"team": "y"}
    # a view of a record the table no longer holds is built, never kept
    stale = first["b"]
    assert reg.public(stale).error is None
    assert reg.public(reg.require("b")).error == "changed elsewhere"
