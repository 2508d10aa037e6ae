"""fcctl doctor: each pure check on made-up hosts, the rendering and the exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fcd_api import cli, metrics_cli
from fcd_api import doctor as d
from fcd_api.doctor import KvmFacts, SocketFacts, Status

V1_MOUNTS = """\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_kvm() -> None:
    assert d.check_kvm(KvmFacts(exists=False, is_char=False)).status is Status.FAIL
    assert d.check_kvm(KvmFacts(exists=True, is_char=False)).status is Status.FAIL
    denied = d.check_kvm(KvmFacts(exists=True, is_char=True, open_error=13))
    assert denied.status is Status.FAIL and "Permission denied" in denied.detail
    assert "/dev/kvm" in denied.fix
    old = d.check_kvm(KvmFacts(exists=True, is_char=True, api_version=11))
    assert old.status is Status.FAIL
    lacking = d.check_kvm(
        KvmFacts(exists=True, is_char=True, api_version=12, missing_caps=("XSAVE", "PIT2"))
    )
    assert lacking.status is Status.FAIL and "XSAVE, PIT2" in lacking.detail
    assert d.check_kvm(KvmFacts(exists=True, is_char=True, api_version=12)).status is Status.PASS


def test_cgroup_facts_and_check() -> None:
    version, ctrls, _ = d.cgroup_facts("auto", V1_MOUNTS, "")
    assert version == 1 and {"cpu", "cpuacct", "memory", "pids"} <= ctrls
    assert d.check_cgroups(version, ctrls).status is Status.PASS
    # v2 wins when the unified root has cpu and memory
    version, ctrls, _ = d.cgroup_facts("auto", V1_MOUNTS, "cpu io memory pids")
    assert version == 2 and d.check_cgroups(version, ctrls).status is Status.PASS
    none = d.cgroup_facts("auto", "", None)
    assert none[0] is None
    assert d.check_cgroups(none[0], none[1], none[2]).status is Status.FAIL
    no_mem = d.check_cgroups(2, {"cpu", "pids"})
    assert no_mem.status is Status.FAIL and "memory" in no_mem.detail
    no_acct = d.check_cgroups(1, {"cpu", "memory", "pids"})
    assert no_acct.status is Status.WARN and "cpuacct" in no_acct.detail


def test_network_checks() -> None:
    assert d.check_nftables(True).status is Status.PASS
    assert d.check_nftables(False, "ImportError: nftables").status is Status.FAIL
    assert d.check_tun(True, True).status is Status.PASS
    assert d.check_tun(False, False).status is Status.FAIL
    assert d.check_tun(True, False).status is Status.FAIL
    assert d.check_forwarding("1", True, None).status is Status.PASS
    assert d.check_forwarding("1", False, None).status is Status.FAIL
    off = d.check_forwarding("0", True, None)
    assert off.status is Status.WARN and "ip_forward" in off.fix
    assert d.check_forwarding("1", True, "1").status is Status.WARN


def test_binaries() -> None:
    def check(**kw: object) -> d.Result:
        args: dict[str, object] = {"exists": True, "executable": True, "output": None}
        args.update(kw)
        return d.check_binary("firecracker", "/x/firecracker", **args)  # type: ignore[arg-type]

    assert check(exists=False).status is Status.FAIL
    assert check(executable=False).status is Status.FAIL
    assert check(error="exit 1").status is Status.FAIL
    assert check(output="Firecracker v1.6.0\n").status is Status.FAIL
    assert check(output="something\n").status is Status.WARN
    ok = check(output="Firecracker v1.7.0\n\n")
    assert ok.status is Status.PASS and "v1.7.0" in ok.detail
    assert check(output="Firecracker v1.14.2").status is Status.PASS


def test_jail_uid_range_against_subuid_and_accounts() -> None:
    free = d.check_subid_overlap(900_000, 965_535, "alice:100000:65536\n", "alice:100000:65536")
    assert free.status is Status.PASS
    clash = d.check_subid_overlap(900_000, 965_535, "bob:960000:65536\n", "")
    assert clash.status is Status.WARN and "/etc/subuid bob:960000-1025535" in clash.detail
    gid_clash = d.check_subid_overlap(900_000, 965_535, "", "carol:899999:2\n")
    assert gid_clash.status is Status.WARN and "/etc/subgid" in gid_clash.detail
    edge = d.check_subid_overlap(900_000, 965_535, "dan:899990:10\n", "")  # ends at 899999
    assert edge.status is Status.PASS
    account = d.check_subid_overlap(900_000, 965_535, "", "", ["svc"])
    assert account.status is Status.WARN and "account svc" in account.detail


def test_host_port_range() -> None:
    ok = d.check_port_range(20000, 29999, "20000-29999", "32768\t60999")
    assert ok.status is Status.PASS
    split = d.check_port_range(20000, 29999, "20000-24999,25000-29999", "32768 60999")
    assert split.status is Status.PASS
    partly = d.check_port_range(20000, 29999, "20000-25000", "32768 60999")
    assert partly.status is Status.WARN and "ip_local_reserved_ports=20000-29999" in partly.fix
    overlap = d.check_port_range(20000, 29999, "", "10000 60999")
    assert overlap.status is Status.WARN and "ephemeral range 10000-60999" in overlap.detail


def test_reflink() -> None:
    assert d.check_reflink("/s", True).status is Status.PASS
    no = d.check_reflink("/s", False, "Operation not supported")
    assert no.status is Status.WARN and "XFS" in no.fix
    assert d.check_reflink("/s", None, "no such directory").status is Status.WARN


def _sock(**kw: object) -> SocketFacts:
    args: dict[str, object] = {
        "path": "/run/fcd/net.sock",
        "exists": True,
        "is_socket": True,
        "mode": 0o660,
        "uid": 0,
        "gid": 990,
        "group": "fcd",
        "accepts": True,
    }
    args.update(kw)
    return SocketFacts(**args)  # type: ignore[arg-type]


def test_sockets_and_their_peers_rights() -> None:
    def check(f: SocketFacts, gids: tuple[int, ...] = (990,)) -> d.Result:
        return d.check_socket("fcd-net", f, group="fcd", peer="fcd", peer_uid=990, peer_gids=gids)

    assert check(_sock()).status is Status.PASS
    assert check(_sock(exists=False)).status is Status.WARN
    assert check(_sock(is_socket=False)).status is Status.FAIL
    world = check(_sock(mode=0o666))
    assert world.status is Status.FAIL and "chmod 0660" in world.fix
    assert check(_sock(group="root", gid=0)).status is Status.WARN
    shut_out = check(_sock(), gids=(1000,))
    assert shut_out.status is Status.FAIL and "usermod -aG fcd fcd" in shut_out.fix
    assert check(_sock(accepts=False)).status is Status.FAIL


def test_render_and_exit_status() -> None:
    results = [
        d.Result("kvm", Status.PASS, "fine"),
        d.Result("tun", Status.FAIL, "missing", "modprobe tun"),
        d.Result("host-ports", Status.WARN, "not reserved", "sysctl"),
    ]
    text = d.render(results)
    lines = text.splitlines()
    assert lines[0].startswith("PASS  kvm")
    assert lines[1].startswith("FAIL  tun") and "fix: modprobe tun" in lines[2]
    assert "fix" not in lines[0]
    assert lines[-1] == "3 checks: 1 FAIL, 1 WARN"


def test_doctor_on_this_host_reports_every_check() -> None:
    """The probes run (read-only) on this host; FAIL lines decide the exit status."""
    text, status = metrics_cli.doctor(as_json=False)
    names = [line.split()[1] for line in text.splitlines() if line[:4] in ("PASS", "WARN", "FAIL")]
    for want in ("kvm", "cgroups", "nftables", "tun", "forwarding", "firecracker", "jailer"):
        assert want in names
    assert {"jail-uids", "host-ports", "reflink", "fcd-api", "fcd-vmm"} <= set(names)
    assert status == (1 if any(line.startswith("FAIL") for line in text.splitlines()) else 0)


def test_fcctl_doctor_exits_1_on_a_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fcctl doctor` needs no API; a missing Firecracker is a FAIL and exit status 1."""
    conf = tmp_path / "fcd.toml"
    conf.write_text(
        f'[paths]\nrun_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
        f'[jail]\nfirecracker = "{tmp_path}/nope/firecracker"\njailer = "{tmp_path}/nope/jailer"\n'
    )
    monkeypatch.setenv("FCD_CONFIG", str(conf))
    monkeypatch.delenv("FCD_FIRECRACKER", raising=False)
    monkeypatch.delenv("FCD_JAILER", raising=False)
    assert cli.main(["--socket", str(tmp_path / "no.sock"), "doctor"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  firecracker  {tmp_path}/nope/firecracker does not exist" in out
    assert f"WARN  fcd-api      {tmp_path}/run/api.sock does not exist" in out
    assert cli.main(["doctor", "-o", "json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["status"] for r in results}["jailer"] == "FAIL"
