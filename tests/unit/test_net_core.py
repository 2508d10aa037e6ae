"""fcd-net's core logic (idempotency, undo, conflicts, restart) with fake appliers."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from fcd_common import ids
from fcd_common.config import Config, JailConfig, NetworkConfig, PathsConfig
from fcd_common.errors import Conflict, Internal, InvalidArgument, NotFound, ResourceExhausted
from fcd_common.proto.net import PortMapping
from fcd_net import reconcile
from fcd_net.leases import LeaseStore
from fcd_net.links import Link
from fcd_net.plan import Lease
from fcd_net.service import NetCore


def lease(vm_id: str, ip: str) -> Lease:
    return Lease(
        vm_id=vm_id,
        ip=ip,
        tap=ids.tap_name(vm_id),
        mac=ids.guest_mac(ip),
        uid=900_001,
        gid=900_001,
    )


class FakeLinks:
    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.localnet: dict[str, bool] = {}
        self.fail_attach = False

    def get(self, name: str) -> Link | None:
        return self.links.get(name)

    def is_tap(self, name: str) -> bool | None:
        link = self.links.get(name)
        return None if link is None else link.is_tap

    def addresses(self) -> tuple[str, ...]:
        return ("10.213.0.1", "192.0.2.10")

    def set_route_localnet(self, iface: str, on: bool) -> bool:
        changed = self.localnet.get(iface, False) != on
        self.localnet[iface] = on
        return changed

    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface) -> Link:
        self.links[name] = Link(1, name, "bridge", True, None)
        return self.links[name]

    def create_tap(self, name: str, uid: int, gid: int) -> None:
        self.links[name] = Link(len(self.links) + 2, name, "tun", False, None, 2, uid, gid)

    def attach(self, name: str, bridge: str) -> None:
        if self.fail_attach:
            raise Internal("attach failed")
        old = self.links[name]
        self.links[name] = Link(
            old.index, name, old.kind, True, 1, old.tun_type, old.owner, old.group
        )

    def delete(self, name: str) -> bool:
        return self.links.pop(name, None) is not None

    def list(self) -> list[Link]:
        return list(self.links.values())

    def names(self) -> list[str]:
        return list(self.links)

    def stats(self, name: str) -> dict[str, int] | None:
        if name not in self.links:
            return None
        keys = ("rx_bytes", "rx_packets", "rx_dropped", "tx_bytes", "tx_packets", "tx_dropped")
        return dict.fromkeys(keys, 1)


class FakeFirewall:
    def __init__(self) -> None:
        self.identities: set[str] = set()
        self.ports: dict[str, list[PortMapping]] = {}
        self.fail = False
        self.tables = False
        self.builds = 0

    def present(self) -> bool:
        return self.tables

    def ensure_base(self, leases: Sequence[Lease]) -> None:
        self.identities = {x.vm_id for x in leases}
        self.tables = True
        self.builds += 1

    def add_vm(self, lease: Lease) -> None:
        if self.fail:
            raise Internal("nft failed")
        self.identities.add(lease.vm_id)

    def remove_vm(self, lease: Lease) -> None:
        self.identities.discard(lease.vm_id)

    def replace_ports(self, old: Lease, new: Lease) -> None:
        if self.fail:
            raise Internal("nft failed")
        self.ports[new.vm_id] = list(new.ports)


def make_core(
    tmp_path: Path, subnet: str = "10.213.0.0/24"
) -> tuple[NetCore, FakeLinks, FakeFirewall]:
    cfg = Config(
        paths=PathsConfig(state_dir=str(tmp_path), run_dir=str(tmp_path)),
        network=NetworkConfig(subnet=subnet),
        jail=JailConfig(uid_min=900_000, uid_max=900_100),
    )
    links, fw = FakeLinks(), FakeFirewall()
    core = NetCore(cfg, LeaseStore(cfg.state("net")), links, fw)
    core.start()
    return core, links, fw


def test_setup_is_idempotent_and_keeps_the_lease_owner(tmp_path: Path) -> None:
    core, links, fw = make_core(tmp_path)
    a = core.setup("vm-a", 900_001, 900_001)
    assert core.setup("vm-a", 900_001, 900_001) == a
    del links.links[a.tap]  # TAP vanished: recreated with the same lease
    assert core.setup("vm-a", 900_001, 900_001) == a
    assert links.links[a.tap].master == 1
    with pytest.raises(Conflict) as e:  # issue #9 finding 11: the owner is the lease's
        core.setup("vm-a", 900_002, 900_003)
    assert e.value.details == {"field": "uid"}
    assert (links.links[a.tap].owner, links.links[a.tap].group) == (900_001, 900_001)
    # a TAP re-owned behind fcd-net's back is given back to the lease's owner
    links.create_tap(a.tap, 900_009, 900_009)
    assert core.setup("vm-a", 900_001, 900_001) == a
    assert (links.links[a.tap].owner, links.links[a.tap].group) == (900_001, 900_001)
    assert fw.identities == {"vm-a"}
    assert links.localnet == {"fcbr0": False}
    assert core.status() == "1 leases, bridge fcbr0 up"


def test_setup_refuses_uid_outside_pool(tmp_path: Path) -> None:
    core, links, _ = make_core(tmp_path)
    with pytest.raises(InvalidArgument) as e:
        core.setup("vm-a", 0, 900_001)
    assert e.value.details == {"field": "uid"}
    assert len(core.store) == 0 and set(links.links) == {"fcbr0"}


def test_setup_refuses_a_non_tap_interface_with_the_name(tmp_path: Path) -> None:
    core, links, _ = make_core(tmp_path)
    tap = ids.tap_name("vm-a")
    links.links[tap] = Link(9, tap, "veth", True, None)
    with pytest.raises(Conflict):
        core.setup("vm-a", 900_001, 900_001)
    assert len(core.store) == 0


def test_setup_refuses_a_tap_name_held_by_another_lease(tmp_path: Path) -> None:
    core, _, _ = make_core(tmp_path)
    core.store.put(msgspec.structs.replace(lease("vm-x", "10.213.0.9"), tap=ids.tap_name("vm-a")))
    with pytest.raises(Conflict):
        core.setup("vm-a", 900_001, 900_001)


def test_failed_setup_undoes_everything(tmp_path: Path) -> None:
    core, links, fw = make_core(tmp_path)
    fw.fail = True
    with pytest.raises(Internal):
        core.setup("vm-a", 900_001, 900_001)
    assert len(core.store) == 0 and set(links.links) == {"fcbr0"} and not fw.identities
    assert len(LeaseStore(core.cfg.state("net"))) == 0
    fw.fail, links.fail_attach = False, True
    with pytest.raises(Internal):
        core.setup("vm-a", 900_001, 900_001)
    assert len(core.store) == 0 and set(links.links) == {"fcbr0"}
    links.fail_attach = False
    assert core.setup("vm-a", 900_001, 900_001).ip == "10.213.0.2"


def test_pool_exhaustion_and_release(tmp_path: Path) -> None:
    core, _, _ = make_core(tmp_path, "10.9.9.0/29")
    ips = [core.setup(f"vm-{i}", 900_001, 900_001).ip for i in range(5)]
    assert ips == ["10.9.9.2", "10.9.9.3", "10.9.9.4", "10.9.9.5", "10.9.9.6"]
    with pytest.raises(ResourceExhausted):
        core.setup("vm-5", 900_001, 900_001)
    core.teardown("vm-1")
    assert core.setup("vm-5", 900_001, 900_001).ip == "10.9.9.3"


def test_teardown_removes_exactly_that_vm_and_is_idempotent(tmp_path: Path) -> None:
    core, links, fw = make_core(tmp_path)
    a = core.setup("vm-a", 900_001, 900_001)
    b = core.setup("vm-b", 900_001, 900_001)
    core.teardown("vm-a")
    core.teardown("vm-a")
    core.teardown("never-existed")
    assert a.tap not in links.links and b.tap in links.links
    assert fw.identities == {"vm-b"}
    with pytest.raises(NotFound):
        core.get("vm-a")
    assert [x.vm_id for x in core.list().items] == ["vm-b"]


def test_teardown_removes_an_orphan_tap_without_lease(tmp_path: Path) -> None:
    core, links, _ = make_core(tmp_path)
    links.create_tap(ids.tap_name("vm-a"), 900_001, 900_001)
    core.teardown("vm-a")
    assert set(links.links) == {"fcbr0"}


def test_leases_survive_restart(tmp_path: Path) -> None:
    core, _, _ = make_core(tmp_path)
    a = core.setup("vm-a", 900_001, 900_001)
    core2, _, fw2 = make_core(tmp_path)
    assert fw2.identities == {"vm-a"}  # re-applied at start
    assert core2.setup("vm-a", 900_001, 900_001).ip == a.ip
    assert core2.setup("vm-b", 900_001, 900_001).ip != a.ip


def test_tables_removed_by_someone_else_are_rebuilt(tmp_path: Path) -> None:
    """Issue #9 finding 13: without fcd's tables nothing stops a guest (and, with
    route_localnet, nothing stops it reaching the host's loopback)."""
    core, links, fw = make_core(tmp_path)
    core.setup("vm-a", 900_001, 900_001)
    assert fw.builds == 1 and not core.guard_tables()
    fw.tables, fw.identities = False, set()  # nft flush ruleset
    assert core.guard_tables()
    assert fw.builds == 2 and fw.identities == {"vm-a"}
    assert links.localnet == {"fcbr0": False}


def test_periodic_reconcile_removes_orphans_and_rebuilds_only_missing_tables(
    tmp_path: Path,
) -> None:
    core, links, fw = make_core(tmp_path)
    a = core.setup("vm-a", 900_001, 900_001)
    links.create_tap("fctapstale", 900_009, 900_009)  # a crash's leftover, under the prefix
    links.links["eth9"] = Link(99, "eth9", "tun", True, None, 2, 0, 0)  # not fcd's: never
    builds = fw.builds
    report = core.reconcile(None, rebuild=False)
    assert report.removed == ["tap fctapstale"]
    assert set(links.links) == {"fcbr0", a.tap, "eth9"}
    assert fw.builds == builds  # the tables are there: no rebuild of every VM
    fw.tables, fw.identities = False, set()
    core.reconcile(None, rebuild=False)
    assert fw.builds == builds + 1 and fw.identities == {"vm-a"}
    core.reconcile(None)  # an explicit round rebuilds
    assert fw.builds == builds + 2


def test_unowned_names_are_the_prefixed_ones_no_lease_holds(tmp_path: Path) -> None:
    core, _, _ = make_core(tmp_path)
    a = core.setup("vm-a", 900_001, 900_001)
    net = core.net
    names = ["lo", "eth0", net.bridge, a.tap, net.tap_prefix + "zz", net.veth_prefix + "yy"]
    got = reconcile.unowned_names(net, list(core.store), names)
    assert got == [net.tap_prefix + "zz", net.veth_prefix + "yy"]
