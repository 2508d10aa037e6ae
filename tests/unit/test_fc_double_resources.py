"""Rate limiters and the balloon in the Firecracker double, against transcripts of v1.7.0.

Each step's expected status and body were recorded from the real v1.7.0 binary
(``/opt/fc17/firecracker --api-sock``, the minimal guest, no jail); with
``FCD_FIRECRACKER`` naming a real binary the same steps run against it too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_fc_double import FIRECRACKER, Api, Double, guest_kernel, needs_kvm

PRE = "The requested operation is not supported before starting the microVM."
POST = "The requested operation is not supported after starting the microVM."
BALLOON = "Balloon config error: Error creating the balloon device: "
TB = {"size": 1000, "one_time_burst": 10, "refill_time": 100}
TB_VIEW = TB
DRIVE_PATCH = "Drive config error: Unable to patch the block device: Device manager error: "

Step = tuple[str, str, Any, int, Any]


def _drive(disk: Path, drive_id: str, root: bool, limiter: Any) -> dict[str, Any]:
    return {
        "drive_id": drive_id,
        "path_on_host": str(disk),
        "is_root_device": root,
        "is_read_only": False,
        "rate_limiter": limiter,
    }


def _drive_view(disk: Path, drive_id: str, root: bool, limiter: Any) -> dict[str, Any]:
    return {
        "drive_id": drive_id,
        "partuuid": None,
        "is_root_device": root,
        "cache_type": "Unsafe",
        "is_read_only": False,
        "path_on_host": str(disk),
        "rate_limiter": limiter,
        "io_engine": "Sync",
        "socket": None,
    }


def steps(tmp: Path, kernel: Path) -> list[Step]:
    root, data = tmp / "root.img", tmp / "data.img"
    for d in (root, data):
        d.write_bytes(b"\0" * 4096)
    ops = {"size": 100, "refill_time": 1000}
    return [
        ("GET", "/balloon/statistics", None, 400, PRE),
        ("GET", "/balloon", None, 400, "Balloon config error: No balloon device found."),
        ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 2}, 400, PRE),
        ("PATCH", "/balloon", {"amount_mib": 10}, 400, PRE),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}, 204, None),
        (
            "PUT",
            "/balloon",
            {"amount_mib": 200, "deflate_on_oom": False},
            400,
            "Balloon config error: Amount of pages requested is too large.",
        ),
        ("PUT", "/boot-source", {"kernel_image_path": str(kernel)}, 204, None),
        (
            "PUT",
            "/drives/rootfs",
            _drive(root, "rootfs", True, {"bandwidth": TB, "ops": ops}),
            204,
            None,
        ),
        (
            "PUT",
            "/drives/data",
            _drive(data, "data", False, {"bandwidth": {"size": 0, "refill_time": 0}}),
            204,
            None,
        ),
        (
            "PUT",
            "/drives/bad",
            _drive(data, "bad", False, {"bandwidth": {"size": 5}}),
            400,
            re.compile(
                r"An error occurred when deserializing the json body of a request: missing "
                r"field `refill_time` at line 1 column \d+\."
            ),
        ),
        (
            "PUT",
            "/balloon",
            {"amount_mib": 0, "deflate_on_oom": True, "stats_polling_interval_s": 1},
            204,
            None,
        ),
        ("GET", "/balloon/statistics", None, 400, PRE),
        ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"ops": TB}}, 400, PRE),
        ("PUT", "/actions", {"action_type": "InstanceStart"}, 204, None),
        (
            "GET",
            "/balloon/statistics",
            None,
            200,
            {"target_pages": 0, "actual_pages": 0, "target_mib": 0, "actual_mib": 0},
        ),
        ("PATCH", "/balloon", {"amount_mib": 10}, 400, BALLOON + "DeviceNotActive"),
        ("PATCH", "/balloon", {"amount_mib": 1000}, 400, BALLOON + "TooManyPagesRequested"),
        (
            "PATCH",
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "rate_limiter": {"bandwidth": {"size": 2000, "refill_time": 1000}},
            },
            204,
            None,
        ),
        (
            "PATCH",
            "/drives/data",
            {
                "drive_id": "data",
                "rate_limiter": {"ops": {"size": 7, "refill_time": 70, "one_time_burst": 0}},
            },
            204,
            None,
        ),
        (
            "PATCH",
            "/drives/nope",
            {"drive_id": "nope", "rate_limiter": {"ops": TB}},
            400,
            DRIVE_PATCH
            + "Failed to find the device on the bus. Please verify the request arguments.",
        ),
        (
            "PATCH",
            "/drives/rootfs",
            {"drive_id": "rootfs"},
            400,
            DRIVE_PATCH + "Running method expected different backend. Please verify the request "
            "arguments.",
        ),
        (
            "PATCH",
            "/network-interfaces/eth1",
            {"iface_id": "eth1", "tx_rate_limiter": {"bandwidth": TB}},
            400,
            "Network config error: Unable to update the net device: Device manager error: "
            "Failed to find the device on the bus.",
        ),
        ("PATCH", "/machine-config", {"vcpu_count": 2}, 400, POST),
        (
            "GET",
            "/vm/config",
            None,
            200,
            lambda cfg: (
                cfg["drives"],
                [
                    _drive_view(
                        root,
                        "rootfs",
                        True,
                        {
                            "bandwidth": {
                                "size": 2000,
                                "one_time_burst": None,
                                "refill_time": 1000,
                            },
                            "ops": {"size": 100, "one_time_burst": None, "refill_time": 1000},
                        },
                    ),
                    _drive_view(
                        data,
                        "data",
                        False,
                        {
                            "bandwidth": None,
                            "ops": {"size": 7, "one_time_burst": None, "refill_time": 70},
                        },
                    ),
                ],
            ),
        ),
        (
            "PATCH",
            "/drives/rootfs",
            {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}},
            204,
            None,
        ),
        (
            "GET",
            "/vm/config",
            None,
            200,
            lambda cfg: (
                [cfg["drives"][0]["rate_limiter"], cfg["balloon"]],
                [
                    {
                        "bandwidth": {"size": 2000, "one_time_burst": None, "refill_time": 1000},
                        "ops": None,
                    },
                    {"amount_mib": 0, "deflate_on_oom": True, "stats_polling_interval_s": 1},
                ],
            ),
        ),
    ]


def _run(api: Api, script: list[Step]) -> None:
    for method, path, body, status, want in script:
        r = api.call(method, path, body)
        where = f"{method} {path} {json.dumps(body)}"
        assert r.status == status, (where, r.raw)
        if callable(want):
            got, expected = want(r.json())
            assert got == expected, where
        elif isinstance(want, re.Pattern):
            assert want.fullmatch(r.fault), (where, r.fault)
        elif isinstance(want, str):
            assert r.fault == want, where
        elif want is not None:
            assert r.json() == want, where


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kernels")
    return {
        "plain": guest_kernel.build(d / "vmlinux"),
        "balloon": guest_kernel.build(d / "vmlinux-balloon", balloon_driver=True),
    }


@pytest.fixture
def double(tmp_path: Path) -> Iterator[Double]:
    d = Double(tmp_path)
    yield d
    d.stop()


@needs_kvm
def test_rate_limiters_and_balloon_as_v170(
    double: Double, tmp_path: Path, kernels: dict[str, Path]
) -> None:
    _run(double.api, steps(tmp_path, kernels["plain"]))


@needs_kvm
@pytest.mark.realfc
def test_same_steps_against_the_real_binary(tmp_path: Path, kernels: dict[str, Path]) -> None:
    fc = os.environ.get("FCD_FIRECRACKER")
    if (
        not fc
        or "1.7.0"
        not in subprocess.run([fc, "--version"], check=False, capture_output=True, text=True).stdout
    ):
        pytest.skip("FCD_FIRECRACKER does not name a real v1.7.0 firecracker")
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen([fc, "--api-sock", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)  # a foreign binary's socket, in a test
        _run(Api(sock), steps(tmp_path, kernels["plain"]))
    finally:
        proc.kill()
        proc.wait()


def _boot(api: Api, tmp: Path, kernel: Path, stats_s: int) -> None:
    disk = tmp / "root.img"
    disk.write_bytes(b"\0" * 4096)
    api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    api.ok("PUT", "/boot-source", {"kernel_image_path": str(kernel)})
    api.ok("PUT", "/drives/rootfs", _drive(disk, "rootfs", True, None))
    api.ok(
        "PUT",
        "/balloon",
        {"amount_mib": 0, "deflate_on_oom": False, "stats_polling_interval_s": stats_s},
    )
    api.ok("PUT", "/actions", {"action_type": "InstanceStart"})


@needs_kvm
def test_statistics_disabled_and_no_balloon(
    double: Double, tmp_path: Path, kernels: dict[str, Path]
) -> None:
    _boot(double.api, tmp_path, kernels["plain"], 0)
    r = double.api.call("GET", "/balloon/statistics")
    assert (r.status, r.fault) == (400, BALLOON + "StatisticsDisabled")


@needs_kvm
def test_guest_with_a_balloon_driver_reaches_the_target(
    double: Double, tmp_path: Path, kernels: dict[str, Path]
) -> None:
    _boot(double.api, tmp_path, kernels["balloon"], 1)
    double.api.ok("PATCH", "/balloon", {"amount_mib": 32})
    stats = double.api.ok("GET", "/balloon/statistics").json()
    assert stats == {"target_pages": 8192, "actual_pages": 8192, "target_mib": 32, "actual_mib": 32}
    assert double.api.ok("GET", "/vm/config").json()["balloon"]["amount_mib"] == 32


@needs_kvm
def test_statistics_patch_after_boot_aborts_v170(
    double: Double, tmp_path: Path, kernels: dict[str, Path]
) -> None:
    """FIRECRACKER.md §9: v1.7.0 dies with SIGABRT, the connection drops unanswered."""
    _boot(double.api, tmp_path, kernels["plain"], 1)
    with pytest.raises((ConnectionError, OSError, AssertionError, IndexError, ValueError)):
        double.api.call("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 3})
    assert double.proc.wait(timeout=10) == -6


def test_double_path_exists() -> None:
    assert FIRECRACKER.exists()


MMDS = "MMMDS config error: "


def mmds_steps(tap: str, version: tuple[int, int] = (1, 7)) -> list[Step]:
    """``PUT /mmds/config`` validation (v1.7.0 transcript; the error replies of a V1 config
    still carry ``Deprecation: true``, checked separately). ``version``: of the binary
    that answers -- from 1.13 the config also reports ``imds_compat``."""
    ids_bad = MMDS + (
        "The list of network interface IDs provided contains at least one ID that does not "
        "correspond to any existing network interface."
    )
    return [
        ("PUT", "/mmds/config", {"network_interfaces": ["eth0"]}, 400, ids_bad),
        (
            "PUT",
            "/mmds/config",
            {"network_interfaces": []},
            400,
            MMDS
            + "The list of network interface IDs that allow forwarding MMDS requests is empty.",
        ),
        (
            "PUT",
            "/mmds/config",
            {"network_interfaces": "eth0"},
            400,
            re.compile(
                r"An error occurred when deserializing the json body of a request: invalid "
                r'type: string "eth0", expected a sequence at line 1 column \d+\.'
            ),
        ),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap}, 204, None),
        ("PUT", "/mmds/config", {"network_interfaces": ["eth0", "eth1"]}, 400, ids_bad),
        (
            "PUT",
            "/mmds/config",
            {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"},
            400,
            MMDS + "The MMDS IPv4 address is not link local.",
        ),
        (
            "PUT",
            "/mmds/config",
            {"network_interfaces": ["eth0"], "ipv4_address": "nope"},
            400,
            re.compile(
                r"An error occurred when deserializing the json body of a request: invalid "
                r"IPv4 address syntax at line 1 column \d+\."
            ),
        ),
        ("PUT", "/mmds/config", {"network_interfaces": ["eth0"]}, 204, None),
        (
            "GET",
            "/vm/config",
            None,
            200,
            lambda cfg: (
                [cfg["mmds-config"], cfg["boot-source"]],
                [
                    {
                        "version": "V1",
                        "network_interfaces": ["eth0"],
                        "ipv4_address": "169.254.169.254",
                        **({"imds_compat": False} if version >= (1, 13) else {}),
                    },
                    {"kernel_image_path": "", "initrd_path": None, "boot_args": None},
                ],
            ),
        ),
    ]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a transient TAP needs CAP_NET_ADMIN")


@needs_root
def test_mmds_config_validation(double: Double) -> None:
    tap = f"fcdm{os.getpid() % 100000}"
    try:
        _run(double.api, mmds_steps(tap))
        r = double.api.call("PUT", "/mmds/config", {"network_interfaces": []})
        assert any(h.lower() == "deprecation: true" for h in r.headers), r.headers
    finally:
        double.stop()  # the transient TAP goes with the process


@needs_root
@pytest.mark.realfc
def test_mmds_steps_against_the_real_binary(tmp_path: Path) -> None:
    fc = os.environ.get("FCD_FIRECRACKER", "")
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen([fc, "--api-sock", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)  # a foreign binary's socket, in a test
        out = subprocess.run([fc, "--version"], check=True, capture_output=True, text=True).stdout
        m = re.search(r"v(\d+)\.(\d+)", out)
        assert m, out
        version = (int(m.group(1)), int(m.group(2)))
        _run(Api(sock), mmds_steps(f"fcdr{os.getpid() % 100000}", version))
    finally:
        proc.kill()
        proc.wait()
