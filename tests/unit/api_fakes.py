"""In-memory fakes of the three helpers, served by the real RpcServer on temp sockets.

They implement the proto contracts (fcd_common.proto.*) with dicts, record
every call as ``(tag, vm_id)``, and fail on demand: ``fakes.fail["storage.provision"]
= ResourceExhausted("disk full")``. fcd-api talks to them through its real
clients, so the wire format is exercised too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from fcd_api.app import create_asgi
from fcd_api.clients import Helpers
from fcd_api.models import now
from fcd_api.registry import Registry
from fcd_api.service import Flows
from fcd_common import reqid
from fcd_common.config import LimitsConfig, NetworkConfig
from fcd_common.errors import Conflict, FailedPrecondition, FcdError, NotFound
from fcd_common.proto import net as pnet
from fcd_common.proto import storage as pstorage
from fcd_common.proto import usage as pusage
from fcd_common.proto import vmm as pvmm
from fcd_common.proto.common import ProbeResult
from fcd_common.proto.console import ConsoleLine, ConsoleLines, ConsoleRead
from fcd_common.rpc import (
    ANY_CALLER,
    Done,
    Peer,
    Protocol,
    Request,
    RpcClient,
    RpcServer,
    bind_unix,
)

TEMPLATE = pstorage.TemplateInfo(
    name="base",
    kernel_path="/store/templates/base/vmlinux",
    rootfs_path="/store/templates/base/rootfs.ext4",
    kernel_size=1,
    rootfs_size=1 << 20,
    kernel_sha256="0" * 64,
    rootfs_sha256="0" * 64,
    kernel_args="console=ttyS0 reboot=k",
    created_at="2024-01-01T00:00:00Z",
)


FIRECRACKER_V1_7 = pvmm.VmmInfo(firecracker_version="1.7.0", snapshot_version="1.0.0")


@dataclass
class FakeHelpers:
    calls: list[tuple[str, str]] = field(default_factory=list)
    request_ids: list[tuple[str, str | None]] = field(default_factory=list)
    """(tag, the request id the call carried): installed by the RPC server."""
    fail: dict[str, FcdError] = field(default_factory=dict)
    block: dict[str, asyncio.Event] = field(default_factory=dict)
    """tag -> gate: a call with this tag waits for the event before it runs."""
    _arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    jails: dict[str, pvmm.JailInfo] = field(default_factory=dict)
    disks: dict[str, pstorage.DiskInfo] = field(default_factory=dict)
    nets: dict[str, pnet.NetInfo] = field(default_factory=dict)
    procs: dict[str, pvmm.VmProcess] = field(default_factory=dict)
    launches: list[pvmm.Launch] = field(default_factory=list)
    snapshots: dict[str, pstorage.SnapshotInfo] = field(default_factory=dict)
    suspends: dict[str, pstorage.SuspendInfo] = field(default_factory=dict)
    stops: list[pvmm.Stop] = field(default_factory=list)
    exits: list[pvmm.VmExit] = field(default_factory=list)
    epoch: str = "e1"
    console_lines: dict[str, list[ConsoleLine]] = field(default_factory=dict)
    tcp_up: dict[tuple[str, int], bool] = field(default_factory=dict)
    """(vm id, guest port) -> does the guest accept a connection (net.probe_tcp)."""
    _exit_added: asyncio.Event = field(default_factory=asyncio.Event)
    info: pvmm.VmmInfo = FIRECRACKER_V1_7
    _next_uid: int = 900_000
    _next_ip: int = 2

    def arrived(self, tag: str) -> asyncio.Event:
        """Set once a call with this tag has reached the fake."""
        return self._arrived.setdefault(tag, asyncio.Event())

    def tags(self, vm_id: str | None = None) -> list[str]:
        return [t for t, v in self.calls if vm_id is None or v == vm_id]

    # --- vmm ---------------------------------------------------------------------
    async def allocate_jail(self, req: pvmm.AllocateJail) -> pvmm.JailInfo:
        if req.vm_id not in self.jails:
            uid = self._next_uid
            self._next_uid += 1
            self.jails[req.vm_id] = pvmm.JailInfo(
                vm_id=req.vm_id, uid=uid, gid=uid, chroot_dir=f"/srv/jailer/firecracker/{req.vm_id}"
            )
        return self.jails[req.vm_id]

    async def launch(self, req: pvmm.Launch) -> pvmm.VmProcess:
        if req.vm_id not in self.jails:
            raise NotFound(f"no jail for {req.vm_id}")
        self.launches.append(req)
        state: pvmm.ProcState = "paused" if req.restore and not req.resume else "running"
        proc = pvmm.VmProcess(vm_id=req.vm_id, state=state, pid=4242 + len(self.launches))
        self.procs[req.vm_id] = proc
        return proc

    async def pause(self, req: pvmm.Pause) -> pvmm.VmProcess:
        p = self.procs[req.vm_id]
        self.procs[req.vm_id] = pvmm.VmProcess(vm_id=p.vm_id, state="paused", pid=p.pid)
        return self.procs[req.vm_id]

    async def resume(self, req: pvmm.Resume) -> pvmm.VmProcess:
        p = self.procs[req.vm_id]
        self.procs[req.vm_id] = pvmm.VmProcess(vm_id=p.vm_id, state="running", pid=p.pid)
        return self.procs[req.vm_id]

    async def stop(self, req: pvmm.Stop) -> pvmm.StopResult:
        self.procs.pop(req.vm_id, None)
        self.stops.append(req)
        return pvmm.StopResult(vm_id=req.vm_id, graceful=not req.force)

    async def release_jail(self, req: pvmm.ReleaseJail) -> pvmm.VmProcess:
        self.procs.pop(req.vm_id, None)
        self.jails.pop(req.vm_id, None)
        return pvmm.VmProcess(vm_id=req.vm_id, state="absent")

    async def status(self, req: pvmm.Status) -> pvmm.VmProcess:
        return self.procs.get(req.vm_id) or pvmm.VmProcess(vm_id=req.vm_id, state="absent")

    async def list_vms(self, req: pvmm.ListVms) -> pvmm.VmProcessList:
        listed = {**{v: pvmm.VmProcess(vm_id=v, state="not_started") for v in self.jails}}
        return pvmm.VmProcessList(items=list({**listed, **self.procs}.values()))

    async def vmm_probe(self, req: pvmm.Probe) -> ProbeResult:
        p = self.procs.get(req.vm_id)
        ok = p is not None and p.state in ("running", "paused")
        return ProbeResult(ok=ok, detail="state Running" if ok else "Firecracker is not running")

    async def net_probe_tcp(self, req: pnet.NetProbeTcp) -> ProbeResult:
        if req.vm_id not in self.nets:
            raise NotFound(f"VM {req.vm_id} has no network lease")
        ok = self.tcp_up.get((req.vm_id, req.port), False)
        return ProbeResult(ok=ok, detail="accepted" if ok else "Connection refused")

    # --- storage -----------------------------------------------------------------
    async def template_get(self, req: pstorage.TemplateGet) -> pstorage.TemplateInfo:
        if req.name != TEMPLATE.name:
            raise NotFound(f"no template {req.name!r}", details={"template": req.name})
        return TEMPLATE

    async def template_list(self, req: pstorage.TemplateList) -> pstorage.TemplateInfoList:
        return pstorage.TemplateInfoList(items=[TEMPLATE])

    async def template_import(self, req: pstorage.TemplateImport) -> pstorage.TemplateInfo:
        return TEMPLATE

    async def provision(self, req: pstorage.Provision) -> pstorage.DiskInfo:
        disk = pstorage.DiskInfo(
            vm_id=req.vm_id,
            template=req.template,
            kernel_path=TEMPLATE.kernel_path,
            rootfs_path=f"/store/disks/{req.vm_id}/rootfs.ext4",
            size_bytes=(req.disk_size_mib or 1) << 20,
            method="reflink",
            drives=[
                pstorage.DriveInfo(
                    name=d.name,
                    path=f"/store/disks/{req.vm_id}/drive-{d.name}.ext4",
                    size_bytes=(d.size_mib or 1) << 20,
                    read_only=d.template is not None,
                    template=d.template,
                )
                for d in req.drives
            ],
        )
        self.disks[req.vm_id] = disk
        return disk

    async def storage_release(self, req: pstorage.Release) -> Done:
        self.disks.pop(req.vm_id, None)
        return Done()

    async def disk_get(self, req: pstorage.DiskGet) -> pstorage.DiskInfo:
        return self.disks[req.vm_id]

    async def disk_list(self, req: pstorage.DiskList) -> pstorage.DiskInfoList:
        return pstorage.DiskInfoList(items=list(self.disks.values()))

    async def template_build(self, req: pstorage.TemplateBuild) -> pstorage.TemplateInfo:
        return msgspec.structs.replace(TEMPLATE, name=req.name, source="build")

    async def template_delete(self, req: pstorage.TemplateDelete) -> Done:
        users = [f"vm:{d.vm_id}" for d in self.disks.values() if d.template == req.name]
        if users:
            raise Conflict(f"template {req.name!r} is in use", details={"used_by": users})
        return Done()

    async def reclaim(self, req: pstorage.Reclaim) -> pstorage.ReclaimResult:
        gone = [v for v in self.disks if v not in req.live_vm_ids]
        for v in gone:
            del self.disks[v]
        return pstorage.ReclaimResult(removed=[f"disk:{v}" for v in gone])

    def _snapshot(self, name: str) -> pstorage.SnapshotInfo:
        if name not in self.snapshots:
            raise NotFound(f"snapshot {name!r} not found", details={"field": "snapshot"})
        return self.snapshots[name]

    async def snapshot_prepare(self, req: pstorage.SnapshotPrepare) -> pstorage.SnapshotInfo:
        if req.name in self.snapshots:
            raise Conflict(f"snapshot {req.name!r} already exists", details={"field": "name"})
        base = f"/store/snapshots/{req.name}"
        self.snapshots[req.name] = pstorage.SnapshotInfo(
            name=req.name,
            vm_id=req.vm_id,
            template=self.disks[req.vm_id].template,
            state="pending",
            state_path=f"{base}/vmstate",
            memory_path=f"{base}/memory",
            disk_path=f"{base}/rootfs.ext4",
        )
        return self.snapshots[req.name]

    async def snapshot_commit(self, req: pstorage.SnapshotCommit) -> pstorage.SnapshotInfo:
        snap = msgspec.structs.replace(
            self._snapshot(req.name), state="ready", memory_size=128 << 20, origin=req.origin
        )
        self.snapshots[req.name] = snap
        return snap

    async def snapshot_get(self, req: pstorage.SnapshotGet) -> pstorage.SnapshotInfo:
        return self._snapshot(req.name)

    async def snapshot_delete(self, req: pstorage.SnapshotDelete) -> Done:
        self._snapshot(req.name)
        del self.snapshots[req.name]
        return Done()

    def _suspend(self, vm_id: str, pending: bool) -> pstorage.SuspendInfo:
        tail = ".pending" if pending else ""
        return pstorage.SuspendInfo(
            vm_id=vm_id,
            state_path=f"/store/disks/{vm_id}/suspend.vmstate{tail}",
            memory_path=f"/store/disks/{vm_id}/suspend.memory{tail}",
            pending=pending,
            state_size=0 if pending else 4096,
            memory_size=0 if pending else 128 << 20,
        )

    async def suspend_prepare(self, req: pstorage.SuspendPrepare) -> pstorage.SuspendInfo:
        if req.vm_id not in self.disks:
            raise NotFound(f"no disk for vm {req.vm_id!r}", details={"field": "vm_id"})
        return self._suspend(req.vm_id, pending=True)

    async def suspend_commit(self, req: pstorage.SuspendCommit) -> pstorage.SuspendInfo:
        self.suspends[req.vm_id] = self._suspend(req.vm_id, pending=False)
        return self.suspends[req.vm_id]

    async def suspend_abort(self, req: pstorage.SuspendAbort) -> Done:
        return Done()

    async def snapshot_list(self, req: pstorage.SnapshotList) -> pstorage.SnapshotInfoList:
        return pstorage.SnapshotInfoList(items=list(self.snapshots.values()))

    def crash(self, vm_id: str, code: int | None, tail: list[str] | None = None) -> None:
        """As fcd-vmm's pidfd would report it: the VM's Firecracker ended by itself."""
        proc = self.procs.pop(vm_id)
        assert proc.pid is not None
        self.exits.append(
            pvmm.VmExit(
                seq=len(self.exits) + 1,
                vm_id=vm_id,
                pid=proc.pid,
                exit_code=code,
                at="2026-12-02T00:00:00Z",
                log_tail=tail or [],
            )
        )
        self._exit_added.set()
        self._exit_added = asyncio.Event()

    async def watch_exits(self, req: pvmm.WatchExits) -> pvmm.VmExits:
        since = req.since if req.epoch == self.epoch else 0
        if not [x for x in self.exits if x.seq > since]:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_added.wait(), min(req.wait_s, 0.5))
        items = [x for x in self.exits if x.seq > since]
        return pvmm.VmExits(epoch=self.epoch, items=items, next=items[-1].seq if items else since)

    def print_line(self, vm_id: str, text: str, at: float | None = None) -> None:
        """The guest printed ``text`` on its console (read by fcd-vmm at ``at``)."""
        lines = self.console_lines.setdefault(vm_id, [])
        lines.append(
            ConsoleLine(seq=len(lines) + 1, time=time.time() if at is None else at, text=text)
        )

    async def console(self, req: ConsoleRead) -> ConsoleLines:
        after = req.after if req.epoch == self.epoch else 0
        lines = [x for x in self.console_lines.get(req.vm_id, []) if x.seq > after]
        if not lines and req.wait_s > 0:
            await asyncio.sleep(min(req.wait_s, 0.05))
        return ConsoleLines(
            vm_id=req.vm_id,
            epoch=self.epoch,
            lines=lines,
            next_after=lines[-1].seq if lines else after,
        )

    async def vmm_info(self, req: pvmm.Info) -> pvmm.VmmInfo:
        return self.info

    async def update_resources(self, req: pvmm.UpdateResources) -> pvmm.ResourcesInForce:
        if req.vm_id not in self.procs:
            raise FailedPrecondition(f"VM {req.vm_id} is not running")
        return pvmm.ResourcesInForce(
            vm_id=req.vm_id, cgroup_version=1, cpu_quota=req.cpu_quota or None
        )

    async def read_resources(self, req: pvmm.ReadResources) -> pvmm.ResourcesInForce:
        if req.vm_id not in self.procs:
            raise FailedPrecondition(f"VM {req.vm_id} is not running")
        launch = next((x for x in reversed(self.launches) if x.vm_id == req.vm_id), None)
        balloon = None
        if launch is not None and launch.balloon is not None:
            size, stats = launch.balloon_mib or 0, launch.balloon.stats_interval_s > 0
            balloon = pvmm.BalloonState(  # a driver that reaches every target at once
                requested_mib=size,
                deflate_on_oom=launch.balloon.deflate_on_oom,
                stats_interval_s=launch.balloon.stats_interval_s,
                target_mib=size if stats else None,
                actual_mib=size if stats else None,
            )
        return pvmm.ResourcesInForce(vm_id=req.vm_id, cgroup_version=1, balloon=balloon)

    async def snapshot_create(self, req: pvmm.SnapshotCreate) -> pvmm.SnapshotTaken:
        if self.procs[req.vm_id].state != "paused":
            raise FailedPrecondition(f"VM {req.vm_id} is not paused")
        return pvmm.SnapshotTaken(
            vm_id=req.vm_id,
            type=req.type,
            state_size=4096,
            memory_size=128 << 20,
            firecracker_version=self.info.firecracker_version,
            snapshot_version=self.info.snapshot_version,
            took_ms=1.0,
        )

    # --- net ---------------------------------------------------------------------
    async def net_setup(self, req: pnet.NetSetup) -> pnet.NetInfo:
        if req.vm_id in self.nets:
            return self.nets[req.vm_id]
        ports = self._ports(req.vm_id, list(req.ports))
        if req.mode == "netns":  # every VM namespace holds the same guest network
            info = pnet.NetInfo(
                vm_id=req.vm_id,
                tap="fctap0",
                mac="06:00:0a:c8:00:02",
                ip="10.200.0.2",
                gateway="10.200.0.1",
                prefix_len=30,
                bridge="",
                uid=req.uid,
                gid=req.gid,
                ports=ports,
                mode="netns",
                netns=f"/run/netns/fcvm-{req.vm_id[:13]}",
                host_ip=f"10.201.0.{self._next_ip}",
            )
        else:
            info = pnet.NetInfo(
                vm_id=req.vm_id,
                tap=f"fc{req.vm_id[:13]}",
                mac="06:00:ac:1e:00:02",
                ip=f"172.30.0.{self._next_ip}",
                gateway="172.30.0.1",
                prefix_len=24,
                bridge="fcbr0",
                uid=req.uid,
                gid=req.gid,
                ports=ports,
            )
        self._next_ip += 1
        self.nets[req.vm_id] = info
        return info

    async def net_teardown(self, req: pnet.NetTeardown) -> Done:
        self.nets.pop(req.vm_id, None)
        return Done()

    async def net_get(self, req: pnet.NetGet) -> pnet.NetInfo:
        return self.nets[req.vm_id]

    async def net_list(self, req: pnet.NetList) -> pnet.NetInfoList:
        return pnet.NetInfoList(items=list(self.nets.values()))

    def _ports(self, vm_id: str, ports: list[pnet.PortMapping]) -> list[pnet.PortMapping]:
        taken = {(p.protocol, p.host_port) for n in self.nets.values() for p in n.ports}
        out = []
        for p in ports:
            port = p.host_port or next(
                x for x in range(20000, 30000) if (p.protocol, x) not in taken
            )
            if (p.protocol, port) in taken:
                raise Conflict(
                    f"host port {p.protocol}/{port} is already mapped",
                    details={"field": "ports[0].host_port"},
                )
            taken.add((p.protocol, port))
            out.append(msgspec.structs.replace(p, host_port=port))
        return out

    async def net_ports_add(self, req: pnet.NetPortsAdd) -> pnet.NetInfo:
        info = self.nets[req.vm_id]
        info = msgspec.structs.replace(info, ports=info.ports + self._ports(req.vm_id, req.ports))
        self.nets[req.vm_id] = info
        return info

    async def net_ports_remove(self, req: pnet.NetPortsRemove) -> pnet.NetInfo:
        info = self.nets[req.vm_id]
        gone = {(p.protocol, p.host_port) for p in req.ports}
        info = msgspec.structs.replace(
            info, ports=[p for p in info.ports if (p.protocol, p.host_port) not in gone]
        )
        self.nets[req.vm_id] = info
        return info

    async def net_counters(self, req: pnet.NetCounters) -> pnet.Counters:
        return pnet.Counters(
            vm_id=req.vm_id,
            iface=self.nets[req.vm_id].tap,
            rx_bytes=0,
            rx_packets=0,
            rx_dropped=0,
            tx_bytes=0,
            tx_packets=0,
            tx_dropped=0,
        )

    async def net_counters_all(self, req: pnet.NetCountersAll) -> pnet.CountersList:
        items = [await self.net_counters(pnet.NetCounters(vm_id=v)) for v in sorted(self.nets)]
        return pnet.CountersList(sampled_at=now(), items=items)

    async def usage(self, req: pusage.Usage) -> pusage.VmUsage:
        p = self.procs.get(req.vm_id)
        if p is None:
            return pusage.VmUsage(vm_id=req.vm_id, state="exited")
        at = now()
        return pusage.VmUsage(
            vm_id=req.vm_id,
            state=p.state,
            pid=p.pid,
            rss_bytes=30 << 20,
            rss_at=at,
            cgroup=pusage.CgroupUsage(
                sampled_at=at,
                version=2,
                cpu_usage_ns=1_500_000_000,
                cpu_user_ns=1_000_000_000,
                cpu_system_ns=500_000_000,
                cpu_throttled_ns=0,
                memory_usage_bytes=64 << 20,
                memory_limit_bytes=192 << 20,
            ),
            firecracker_at=at,
            flushed=req.flush,
            drives=[pusage.DriveIo(drive_id="rootfs", read_bytes=4096, read_ops=1)],
            nets=[pusage.FirecrackerNetIo(iface_id="eth0", rx_bytes=60, rx_packets=1)],
        )

    async def usage_all(self, req: pusage.UsageAll) -> pusage.VmUsageList:
        items = [await self.usage(pusage.Usage(vm_id=v, flush=req.flush)) for v in self.procs]
        return pusage.VmUsageList(items=items)

    async def net_reconcile(self, req: pnet.NetReconcile) -> pnet.ReconcileReport:
        return pnet.ReconcileReport(removed=[])

    # --- wiring ------------------------------------------------------------------
    def _wrap(self, fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Any, Peer], Awaitable[Any]]:
        async def handler(req: Any, _peer: Peer) -> Any:
            tag = type(req).__struct_config__.tag
            self.calls.append((str(tag), getattr(req, "vm_id", "")))
            self.request_ids.append((str(tag), reqid.current()))
            self.arrived(str(tag)).set()
            gate = self.block.get(str(tag))
            if gate is not None:
                await gate.wait()
            err = self.fail.get(str(tag))
            if err is not None:
                raise err
            return await fn(req)

        return handler

    def tables(self) -> dict[str, tuple[Protocol, dict[type[Request[Any]], Any]]]:
        from fcd_common.proto.common import Ping, Pong

        async def ping(req: Ping) -> Pong:
            return Pong(daemon="fake", version="0", pid=os.getpid(), status="fake")

        w = self._wrap
        return {
            "vmm": (
                pvmm.PROTOCOL,
                {
                    Ping: w(ping),
                    pvmm.AllocateJail: w(self.allocate_jail),
                    pvmm.Launch: w(self.launch),
                    pvmm.Pause: w(self.pause),
                    pvmm.Resume: w(self.resume),
                    pvmm.Stop: w(self.stop),
                    pvmm.ReleaseJail: w(self.release_jail),
                    pvmm.Status: w(self.status),
                    pvmm.ListVms: w(self.list_vms),
                    pvmm.Info: w(self.vmm_info),
                    pvmm.WatchExits: w(self.watch_exits),
                    pvmm.SnapshotCreate: w(self.snapshot_create),
                    pvmm.UpdateResources: w(self.update_resources),
                    pvmm.ReadResources: w(self.read_resources),
                    ConsoleRead: w(self.console),
                    pusage.Usage: w(self.usage),
                    pusage.UsageAll: w(self.usage_all),
                    pvmm.Probe: w(self.vmm_probe),
                },
            ),
            "storage": (
                pstorage.PROTOCOL,
                {
                    Ping: w(ping),
                    pstorage.TemplateImport: w(self.template_import),
                    pstorage.TemplateGet: w(self.template_get),
                    pstorage.TemplateList: w(self.template_list),
                    pstorage.Provision: w(self.provision),
                    pstorage.Release: w(self.storage_release),
                    pstorage.DiskGet: w(self.disk_get),
                    pstorage.DiskList: w(self.disk_list),
                    pstorage.TemplateBuild: w(self.template_build),
                    pstorage.TemplateDelete: w(self.template_delete),
                    pstorage.Reclaim: w(self.reclaim),
                    pstorage.SnapshotPrepare: w(self.snapshot_prepare),
                    pstorage.SnapshotCommit: w(self.snapshot_commit),
                    pstorage.SnapshotGet: w(self.snapshot_get),
                    pstorage.SnapshotDelete: w(self.snapshot_delete),
                    pstorage.SnapshotList: w(self.snapshot_list),
                    pstorage.SuspendPrepare: w(self.suspend_prepare),
                    pstorage.SuspendCommit: w(self.suspend_commit),
                    pstorage.SuspendAbort: w(self.suspend_abort),
                },
            ),
            "net": (
                pnet.PROTOCOL,
                {
                    Ping: w(ping),
                    pnet.NetSetup: w(self.net_setup),
                    pnet.NetTeardown: w(self.net_teardown),
                    pnet.NetGet: w(self.net_get),
                    pnet.NetList: w(self.net_list),
                    pnet.NetPortsAdd: w(self.net_ports_add),
                    pnet.NetPortsRemove: w(self.net_ports_remove),
                    pnet.NetCounters: w(self.net_counters),
                    pnet.NetReconcile: w(self.net_reconcile),
                    pnet.NetCountersAll: w(self.net_counters_all),
                    pnet.NetProbeTcp: w(self.net_probe_tcp),
                },
            ),
        }


@dataclass
class Harness:
    client: httpx.AsyncClient
    fakes: FakeHelpers
    flows: Flows
    registry: Registry
    dir: Path


@contextlib.asynccontextmanager
async def api_harness(
    limits: LimitsConfig | None = None,
    *,
    db_dir: Path | None = None,
    network: NetworkConfig | None = None,
) -> AsyncIterator[Harness]:
    """fcd-api's app in-process (httpx ASGITransport) over fake helpers on real sockets."""
    base = Path(tempfile.mkdtemp(prefix="fcdapi-", dir="/tmp"))
    fakes = FakeHelpers()
    servers: list[RpcServer] = []
    clients: dict[str, RpcClient] = {}
    try:
        for name, (proto, table) in fakes.tables().items():
            server = RpcServer(proto, table, peers={os.getuid(): ANY_CALLER})
            await server.start(bind_unix(base / f"{name}.sock"))
            servers.append(server)
            clients[name] = RpcClient(base / f"{name}.sock", proto, timeout=5.0)
        helpers = Helpers(
            net=clients["net"],
            storage=clients["storage"],
            vmm=clients["vmm"],
            stop_timeout_s=1.0,
        )
        registry = Registry.open((db_dir or base) / "registry.db")
        flows = Flows(registry, helpers, limits or LimitsConfig(), network)
        transport = httpx.ASGITransport(app=create_asgi(flows))
        async with httpx.AsyncClient(transport=transport, base_url="http://fcd") as client:
            try:
                yield Harness(client, fakes, flows, registry, base)
            finally:
                await helpers.close()
                registry.close()
    finally:
        for s in servers:
            await s.close(0.5)
        shutil.rmtree(base, ignore_errors=True)
