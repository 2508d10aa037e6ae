"""Chaos run: random operations while random daemons are kill -9'ed and restarted.

The engine of tests/e2e/test_chaos.py (a short run in CI) and bench/chaos.py (as
long as you like). With a seeded RNG it runs N operations through the public
API -- create, pause, resume, stop, start, delete, snapshot, restore, resources
update -- and,
with probability ``kill_p`` per operation, SIGKILLs one of the four daemons
at a random moment (often while the operation is in flight) and restarts it,
sometimes only after the next operation ran against the dead daemon (as
systemd's ``Restart=`` would, a moment later). Then:

1. every daemon runs again and fcd-api's reconciliation settles (no VM in a
   transient state);
2. every VM a client got a 2xx for exists, unless a client asked for its delete
   (``lost``);
3. every VM the API lists matches the kernel: running/paused VMs have their
   Firecracker (the pid the API says, running as a pool uid) and their TAP or
   namespace; other VMs have no process; no Firecracker runs that no VM lists
   (``mismatches``);
4. everything is deleted through the API, and nothing is left: TAPs, veths,
   VM namespaces, nft elements and per-VM chains, leases, disks, snapshots,
   jails, cgroups, processes, fcd-vmm records (``leaks``).

A failure prints the seed: ``FCD_CHAOS_SEED=<seed>`` replays the same choices
(the kill timing still depends on the machine).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fcd_common import ids
from fcd_dev import suite as suite_mod
from fcd_net import leases as net_leases
from fcd_vmm import uidpool

from .harness import api, nft_ruleset, pids_with_uid_in, proc_status, sh, taps

DAEMONS: tuple[suite_mod.Daemon, ...] = ("net", "storage", "vmm", "api")
OPS = ("create", "pause", "resume", "stop", "start", "delete", "snapshot", "restore", "update")
WEIGHTS = (4, 2, 2, 2, 2, 2, 2, 2, 1)
TRANSIENT = {"creating", "starting", "pausing", "stopping", "deleting"}
STATIC_NFT = {"private", "gw_addrs", "gw_services"}


@dataclass
class Figures:
    seed: int
    operations: int = 0
    ok: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    kills_mid_operation: int = 0
    lost: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    vms_at_end: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"seed                 {self.seed}",
            f"operations           {self.operations} ({self.ok} answered 2xx)",
            f"  by kind            {dict(sorted(self.by_op.items()))}",
            f"daemons killed       {sum(self.kills.values())} {dict(sorted(self.kills.items()))}",
            f"kills mid-operation  {self.kills_mid_operation}",
            f"VMs listed at end    {self.vms_at_end}",
            f"VMs lost             {len(self.lost)} {self.lost or ''}",
            f"API/kernel mismatch  {len(self.mismatches)} {self.mismatches or ''}",
            f"leaks                {len(self.leaks)} {self.leaks or ''}",
            f"took                 {self.seconds:.1f}s",
        ]


@dataclass
class Model:
    """What the client knows: 2xx'd VMs, deletes it asked for, snapshots it took."""

    acked: set[str] = field(default_factory=set)
    asked_delete: set[str] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    """VMs in netns mode (only they can be snapshotted for a restore)."""


class Chaos:
    def __init__(
        self,
        suite: suite_mod.Suite,
        seed: int,
        *,
        kill_p: float = 0.3,
        max_vms: int = 6,
        template: str = "demo",
    ) -> None:
        self.suite = suite
        self.rng = random.Random(seed)
        self.fig = Figures(seed=seed)
        self.model = Model()
        self.kill_p = kill_p
        self.max_vms = max_vms
        self.template = template
        self._n = 0

    # --- the run ---------------------------------------------------------------------
    def run(self, operations: int) -> Figures:
        t0 = time.monotonic()
        down: suite_mod.Daemon | None = None
        for _ in range(operations):
            kill: suite_mod.Daemon | None = None
            if down is None and self.rng.random() < self.kill_p:
                kill = self.rng.choice(DAEMONS)
            self._one(kill)
            if down is not None:
                self._restart(down)
                down = None
            if kill is not None:
                if self.rng.random() < 0.3 and kill != "api":
                    down = kill  # the next operation meets the dead daemon
                else:
                    self._restart(kill)
        for d in DAEMONS:
            self._restart(d)
        self._settle()
        self._check_lost()
        self._check_kernel()
        self._delete_all()
        self.fig.leaks = self.leftovers()
        self.fig.seconds = time.monotonic() - t0
        return self.fig

    def _one(self, kill: suite_mod.Daemon | None) -> None:
        op = self.rng.choices(OPS, WEIGHTS)[0]
        call = self._plan(op)
        for other in self.rng.sample(OPS, len(OPS)):  # op impossible now: another
            if call is None:
                op, call = other, self._plan(other)
        assert call is not None
        self.fig.operations += 1
        self.fig.by_op[op] += 1
        done = threading.Event()
        killer = None
        if kill is not None:
            delay = self.rng.uniform(0, 0.25)

            def do_kill() -> None:
                time.sleep(delay)
                mid = not done.is_set()
                if self._kill(kill) and mid:
                    self.fig.kills_mid_operation += 1

            killer = threading.Thread(target=do_kill)
            killer.start()
        try:
            call()
        finally:
            done.set()
            if killer is not None:
                killer.join()

    def _plan(self, op: str) -> Any:
        m, rng = self.model, self.rng
        existing = sorted(m.tried - m.asked_delete)
        if op == "create":
            if len(existing) >= self.max_vms:
                return None
            self._n += 1
            vm_id = f"c{self._n}"
            mode = rng.choice(["bridge", "netns"])
            body: dict[str, Any] = {"id": vm_id, "template": self.template, "network_mode": mode}
            if rng.random() < 0.5:  # supervised: restarts run while the daemons die too
                body["restart_policy"] = {"mode": "on-failure", "max_retries": 2, "backoff": 0.2}
                body["health_check"] = {"check": rng.choice(["process", "api"]), "interval_s": 0.5}
            return lambda: self._create(vm_id, "/v1/vms", body, mode == "netns")
        if op == "restore":
            if not m.snapshots or len(existing) >= self.max_vms:
                return None
            self._n += 1
            vm_id, snap = f"r{self._n}", rng.choice(sorted(m.snapshots))
            return lambda: self._create(vm_id, f"/v1/snapshots/{snap}/restore", {"id": vm_id}, True)
        if not existing:
            return None
        vm_id = rng.choice(existing)
        if op == "delete":
            force = rng.random() < 0.7
            return lambda: self._delete(vm_id, force)
        if op == "snapshot":
            if vm_id not in m.netns:
                return None
            self._n += 1
            name = f"s{self._n}"
            then = rng.choice(["resume", "pause", "stop"])
            body = {"name": name, "then": then}
            return lambda: self._snapshot(vm_id, name, body)
        if op == "update":  # live on a running VM (cgroup), kept in the spec otherwise
            quota = rng.choice([0.5, 1.0, 2.0])
            return lambda: self._patch(f"/v1/vms/{vm_id}/resources", {"cpu_quota": quota})
        return lambda: self._post(f"/v1/vms/{vm_id}/{op}")

    # --- API calls (any failure is an outcome, not an error of the run) -------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            with api(self.suite, timeout=60) as c:
                return c.request(method, path, **kw)
        except httpx.HTTPError:
            return None  # fcd-api killed mid-request (or not up yet)

    def _post(self, path: str, body: Any = None) -> httpx.Response | None:
        r = self._request("POST", path, json=body)
        if r is not None and r.status_code < 300:
            self.fig.ok += 1
        return r

    def _patch(self, path: str, body: Any) -> None:
        r = self._request("PATCH", path, json=body)
        if r is not None and r.status_code < 300:
            self.fig.ok += 1

    def _create(self, vm_id: str, path: str, body: dict[str, Any], netns: bool) -> None:
        self.model.tried.add(vm_id)
        if netns:
            self.model.netns.add(vm_id)
        r = self._post(path, body)
        if r is not None and r.status_code < 300:
            self.model.acked.add(vm_id)

    def _delete(self, vm_id: str, force: bool) -> None:
        self.model.asked_delete.add(vm_id)
        r = self._request("DELETE", f"/v1/vms/{vm_id}", params={"force": str(force).lower()})
        if r is not None and r.status_code < 300:
            self.fig.ok += 1
        elif r is not None and r.status_code in (409, 503):
            self.model.asked_delete.discard(vm_id)  # refused: the VM stays (409) or may (503)
            if r.status_code == 503:
                self.model.asked_delete.add(vm_id)

    def _snapshot(self, vm_id: str, name: str, body: dict[str, Any]) -> None:
        r = self._post(f"/v1/vms/{vm_id}/snapshots", body)
        if r is not None and r.status_code < 300:
            self.model.snapshots.add(name)

    # --- daemons ---------------------------------------------------------------------------
    def _kill(self, d: suite_mod.Daemon) -> bool:
        p = self.suite.procs.get(d)
        if p is None or p.poll() is not None:
            return False
        p.kill()
        p.wait()
        self.fig.kills[d] += 1
        return True

    def _restart(self, d: suite_mod.Daemon) -> None:
        p = self.suite.procs.get(d)
        if p is not None and p.poll() is None:
            return
        self.suite.restart(d, timeout=60)

    # --- checks ------------------------------------------------------------------------------
    def _list(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while True:
            r = self._request("GET", "/v1/vms")
            if r is not None and r.status_code == 200:
                out: list[dict[str, Any]] = r.json()
                return out
            assert time.monotonic() < deadline, "fcd-api does not answer"
            time.sleep(0.2)

    def _settle(self, within: float = 90) -> None:
        """Until no VM is in a transient state and two reconcile rounds could have run."""
        deadline = time.monotonic() + within
        while True:
            busy = [v["id"] for v in self._list() if v["state"] in TRANSIENT]
            if not busy:
                break
            if time.monotonic() > deadline:
                self.fig.mismatches += [f"{v}: still transient" for v in busy]
                break
            time.sleep(0.3)
        interval = self.suite.cfg.supervision.reconcile_interval_s
        time.sleep(min(2 * interval + 0.5, 10))

    def _check_lost(self) -> None:
        listed = {v["id"] for v in self._list()}
        m = self.model
        self.fig.lost = sorted(m.acked - m.asked_delete - listed)

    def _pool_pids(self) -> list[int]:
        """Processes running as a pool uid in this suite's namespaces (its own and its
        netns-mode VMs'): other suites may run beside it."""
        cfg, s = self.suite.cfg, self.suite
        vm_ns = sorted(n for n in _netns() if n.startswith(s.vm_netns_prefix))
        pids: list[int] = []
        for ns in [s.netns, *vm_ns]:
            if ns:
                pids += pids_with_uid_in(cfg.jail.uid_min, cfg.jail.uid_max, ns)
        return pids

    def _firecrackers(self) -> dict[int, str]:
        """pid -> VM id of every live Firecracker (pool uid, ``--id`` on its command line)."""
        out = {}
        for pid in self._pool_pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if proc_status(pid).get("State", "Z").startswith("Z"):
                    continue
            except OSError:
                continue
            if b"--id" in argv:
                out[pid] = argv[argv.index(b"--id") + 1].decode()
        return out

    def _check_kernel(self) -> None:
        cfg, bad = self.suite.cfg, self.fig.mismatches
        vms = self._list()
        self.fig.vms_at_end = len(vms)
        fcs = self._firecrackers()
        by_vm = {v: p for p, v in fcs.items()}
        links = set(taps(self.suite.netns or "", cfg.network.tap_prefix))
        namespaces = _netns()
        jail_records = uidpool.stored_records(cfg.state("vmm"))
        leases = net_leases.stored(cfg.state("net"))
        for vm in vms:
            vm_id, state, pid = vm["id"], vm["state"], vm["pid"]
            if state in ("running", "paused"):
                if by_vm.get(vm_id) != pid:
                    bad.append(f"{vm_id}: {state} with pid {pid}, Firecracker {by_vm.get(vm_id)}")
                if (
                    vm["network_mode"] == "bridge"
                    and ids.tap_name(vm_id, cfg.network.tap_prefix) not in links
                ):
                    bad.append(f"{vm_id}: {state} without its TAP")
                if vm["network_mode"] == "netns" and not any(
                    n.startswith(self.suite.vm_netns_prefix) for n in namespaces
                ):
                    bad.append(f"{vm_id}: {state} without a namespace")
            elif vm_id in by_vm:
                bad.append(f"{vm_id}: {state} but Firecracker {by_vm[vm_id]} runs")
            store = cfg.state("storage") / "disks" / vm_id
            if not store.exists():
                bad.append(f"{vm_id}: {state} without its disk")
            if vm_id not in leases:
                bad.append(f"{vm_id}: {state} without its lease")
            if vm_id not in jail_records:
                bad.append(f"{vm_id}: {state} without its jail record")
        listed = {v["id"] for v in vms}
        bad += [f"Firecracker {p} of unknown VM {v}" for p, v in fcs.items() if v not in listed]

    def _delete_all(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            vms = self._list()
            if not vms:
                break
            for vm in vms:
                self._request("DELETE", f"/v1/vms/{vm['id']}", params={"force": "true"})
            assert time.monotonic() < deadline, f"cannot delete {[v['id'] for v in vms]}"
        r = self._request("GET", "/v1/snapshots")
        for snap in r.json() if r is not None and r.status_code == 200 else []:
            self._request("DELETE", f"/v1/snapshots/{snap['name']}")
        # what fcd-api's reconciliation would remove on its next round, now
        self._request("POST", "/v1/storage/reclaim")

    def leftovers(self) -> list[str]:
        s = self.suite
        cfg = s.cfg
        out = [f"tap {t}" for t in taps(s.netns or "", cfg.network.tap_prefix)]
        veths = json.loads(sh("ip", "-n", s.netns or "", "-j", "link", "show", "type", "veth"))
        out += [f"veth {v['ifname']}" for v in veths if v["ifname"].startswith("fv")]
        out += [f"netns {n}" for n in sorted(_netns()) if n.startswith(s.vm_netns_prefix)]
        for obj in nft_ruleset(s.netns or "")["nftables"]:
            for kind in ("set", "map"):
                x = obj.get(kind)
                if x and x.get("elem") and x["name"] not in STATIC_NFT:
                    out.append(f"nft {kind} {x['name']}: {x['elem']}")
            c = obj.get("chain")
            if c and c["name"].startswith("vm_") and c["name"] != "vm_to_vm":
                out.append(f"nft chain {c['name']}")
        out += [f"lease {v}" for v in net_leases.stored(cfg.state("net"))]
        store = cfg.state("storage")
        for sub in ("disks", "snapshots"):
            d = store / sub
            if d.exists():
                out += [f"{sub} {p.name}" for p in d.iterdir()]
        jails = Path(cfg.paths.chroot_base) / Path(cfg.jail.firecracker).name
        if jails.exists():
            out += [f"jail {p.name}" for p in jails.iterdir()]
        root = Path("/sys/fs/cgroup")
        out += [f"cgroup {p}" for p in root.glob(f"*/{s.parent_cgroup}/*") if p.is_dir()]
        out += [f"cgroup {p}" for p in root.glob(f"{s.parent_cgroup}/*") if p.is_dir()]
        out += [f"process {p}" for p in self._pool_pids()]
        out += [f"vmm record {v}" for v in uidpool.stored_records(cfg.state("vmm"))]
        out += [f"vmm record file {p.name}" for p in (cfg.state("vmm") / "vms").glob("*.json")]
        return out


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()
