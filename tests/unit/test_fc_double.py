"""The Firecracker test double, run directly (no jail): wire format, errors, phases, effects.

Every test runs the double with imports blocked after start-up, as inside a jail, and checks
that it never tried a lazy import.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent.parent / "fakes"
FIRECRACKER = FAKES / "firecracker"
sys.path.insert(0, str(FAKES))

import guest_kernel  # noqa: E402

needs_kvm = pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK),
    reason="InstanceStart opens /dev/kvm, like the real VMM",
)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[[\w-]+:(main|fc_api)\] .+$")


@dataclass
class Reply:
    raw: bytes
    status: int
    headers: list[str]
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data

    @property
    def fault(self) -> str:
        return str(self.json()["fault_message"])


def read_reply(sock: socket.socket, buf: bytearray) -> Reply:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = 0
    for h in lines[1:]:
        if h.lower().startswith("content-length:"):
            length = int(h.split(":", 1)[1])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    raw = head + b"\r\n\r\n" + rest[:length]
    del buf[: len(raw)]
    return Reply(raw, int(lines[0].split(" ")[1]), lines[1:], rest[:length])


def request(method: str, path: str, body: object | None = None) -> bytes:
    payload = (
        b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
    if payload:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


class Api:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        # like the real VMM, the double binds and then listens: a connect can land in between
        for attempt in range(50):
            try:
                self.sock.connect(str(path))
                break
            except ConnectionRefusedError:
                if attempt == 49:
                    raise
                time.sleep(0.01)
        self.buf = bytearray()

    def call(self, method: str, path: str, body: object | None = None) -> Reply:
        self.sock.sendall(request(method, path, body))
        return read_reply(self.sock, self.buf)

    def ok(self, method: str, path: str, body: object | None = None) -> Reply:
        r = self.call(method, path, body)
        assert r.status in (200, 204), r.raw
        return r


class Double:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.sock = tmp / "api.sock"
        env = {**os.environ, "FCD_DOUBLE_BLOCK_IMPORTS": "1"}
        self.proc = subprocess.Popen(
            [str(FIRECRACKER), "--api-sock", str(self.sock), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "API socket never appeared"
            time.sleep(0.01)
        self.api = Api(self.sock)

    def connect(self) -> Api:
        return Api(self.sock)

    def wait(self, timeout: float = 5) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=5)
        return out.decode(), err.decode()


@pytest.fixture(scope="session")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return guest_kernel.build(tmp_path_factory.mktemp("kernel") / "vmlinux")


@pytest.fixture
def fc(tmp_path: Path) -> Iterator[Double]:
    d = Double(tmp_path)
    yield d
    _out, err = d.stop()
    assert "lazy import" not in err


def configure(fc: Double, kernel: Path, tmp: Path, mem: int = 64) -> dict[str, Path]:
    disk = tmp / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    log, metrics = tmp / "fc.log", tmp / "fc.metrics"
    log.touch()
    metrics.touch()
    fc.api.ok("PUT", "/logger", {"log_path": str(log), "level": "Info"})
    fc.api.ok("PUT", "/metrics", {"metrics_path": str(metrics)})
    fc.api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mem})
    fc.api.ok(
        "PUT",
        "/boot-source",
        {"kernel_image_path": str(kernel), "boot_args": "console=ttyS0 reboot=k panic=1"},
    )
    fc.api.ok(
        "PUT",
        "/drives/rootfs",
        {
            "drive_id": "rootfs",
            "path_on_host": str(disk),
            "is_root_device": True,
            "is_read_only": False,
        },
    )
    return {"disk": disk, "log": log, "metrics": metrics}


# -- command line ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIRECRACKER), *args], check=False, capture_output=True, text=True, timeout=10
    )


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("Firecracker v1.7.0")


def test_repeated_flag_is_an_argument_error(tmp_path: Path) -> None:
    r = run_cli("--api-sock", str(tmp_path / "a"), "--id", "a", "--id", "b")
    assert r.returncode == 153
    assert "The argument 'id' was provided more than once." in r.stdout


def test_unknown_flag_and_missing_value() -> None:
    r = run_cli("--bogus")
    assert r.returncode == 153
    assert "Found argument 'bogus' which wasn't expected" in r.stdout
    r = run_cli("--id")
    assert r.returncode == 153
    assert "The argument 'id' requires a value, but none was supplied." in r.stdout


def test_invalid_instance_id(tmp_path: Path) -> None:
    r = run_cli("--api-sock", str(tmp_path / "s"), "--id", "bad_id")
    assert r.returncode == 1
    assert "Invalid instance ID: Invalid char (_) at position 3" in r.stdout
    assert not (tmp_path / "s").exists()


def test_existing_socket_path_fails(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    sock.touch()
    r = run_cli("--api-sock", str(sock))
    assert r.returncode == 1
    assert (
        f"Failed to open the API socket at: {sock}. Check that it is not already used." in r.stdout
    )


def test_log_path_must_exist_in_v17(tmp_path: Path) -> None:
    r = run_cli("--api-sock", str(tmp_path / "s"), "--log-path", str(tmp_path / "nope.log"))
    assert r.returncode == 1


def test_logs_go_to_stdout_before_a_logger_is_set(tmp_path: Path) -> None:
    d = Double(tmp_path, "--id", "vm-1")
    d.api.ok("GET", "/")
    out, err = d.stop()
    lines = out.splitlines()
    assert lines[0].endswith("[vm-1:main] Running Firecracker v1.7.0")
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert 'The API server received a Get request on "/".' in out
    assert err == ""


# -- wire format -------------------------------------------------------------------------------


def test_get_root_wire_format(fc: Double) -> None:
    r = fc.api.call("GET", "/")
    body = (
        b'{"id":"anonymous-instance","state":"Not started","vmm_version":"1.7.0",'
        b'"app_name":"Firecracker"}'
    )
    assert r.raw == (
        b"HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def test_no_content_wire_format(fc: Double) -> None:
    r = fc.api.call("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    assert r.raw == b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
    assert fc.api.call("GET", "/machine-config").json() == {
        "vcpu_count": 2,
        "mem_size_mib": 256,
        "smt": False,
        "track_dirty_pages": False,
        "huge_pages": "None",
    }


def test_keep_alive_and_pipelining(fc: Double) -> None:
    api = fc.connect()
    api.sock.sendall(
        request("GET", "/version") + request("GET", "/machine-config") + request("GET", "/")
    )
    replies = [read_reply(api.sock, api.buf) for _ in range(3)]
    assert replies[0].json() == {"firecracker_version": "1.7.0"}
    assert replies[1].json()["mem_size_mib"] == 128
    assert replies[2].json()["state"] == "Not started"
    assert api.call("GET", "/version").status == 200  # still open


def test_payload_limit(fc: Double) -> None:
    big = b'{"x":"' + b"a" * 51200 + b'"}'
    r = fc.api.call("PUT", "/mmds", big)
    assert r.status == 400
    assert (
        r.body
        == (
            f'{{ "error": "Request payload with size {len(big)} is larger than the '
            f"limit of 51200 allowed by server.\nAll previous unanswered requests "
            f'will be dropped." }}'
        ).encode()
    )


def test_custom_payload_limit(tmp_path: Path) -> None:
    d = Double(tmp_path, "--http-api-max-payload-size", "100")
    r = d.api.call("PUT", "/mmds", {"k": "v" * 200})
    d.stop()
    assert r.status == 400
    assert b"is larger than the limit of 100 allowed by server." in r.body


def test_unsupported_method(fc: Double) -> None:
    r = fc.api.call("DELETE", "/drives/x")
    assert r.status == 400
    assert r.body == (
        b'{ "error": "Invalid HTTP Method: Unsupported HTTP method.\n'
        b'All previous unanswered requests will be dropped." }'
    )


def test_parser_errors(fc: Double) -> None:
    assert fc.api.call("GET", "/foo").fault == "Invalid request method and/or path: GET foo."
    assert fc.api.call("PUT", "/actions").fault == "Empty PUT request."
    assert fc.api.call("PATCH", "/vm").fault == "Empty PATCH request."
    assert fc.api.call("GET", "/", {"a": 1}).fault == "GET request cannot have a body."
    assert (
        fc.api.call("PUT", "/bogus", {"a": 1}).fault
        == "Invalid request method and/or path: PUT bogus."
    )


# -- body validation ---------------------------------------------------------------------------

PREFIX = "An error occurred when deserializing the json body of a request: "


def test_unknown_field(fc: Double) -> None:
    r = fc.api.call("PUT", "/boot-source", b'{"kernel_image_path":"/k","x":1}')
    assert r.status == 400
    assert r.fault == PREFIX + (
        "unknown field `x`, expected one of `kernel_image_path`, "
        "`initrd_path`, `boot_args` at line 1 column 29."
    )


def test_missing_field_wrong_type_unknown_variant(fc: Double) -> None:
    assert (
        fc.api.call("PUT", "/machine-config", b'{"vcpu_count":1}').fault
        == PREFIX + "missing field `mem_size_mib` at line 1 column 16."
    )
    assert (
        fc.api.call("PUT", "/machine-config", b'{"vcpu_count":"2","mem_size_mib":1}').fault
        == PREFIX + 'invalid type: string "2", expected u8 at line 1 column 17.'
    )
    assert (
        fc.api.call("PUT", "/machine-config", b'{"vcpu_count":300,"mem_size_mib":1}').fault
        == PREFIX + "invalid value: integer `300`, expected u8 at line 1 column 17."
    )
    assert fc.api.call("PUT", "/actions", b'{"action_type":"Reboot"}').fault == PREFIX + (
        "unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, "
        "`SendCtrlAltDel` at line 1 column 23."
    )
    assert (
        fc.api.call("PATCH", "/vm", b'{"state":"Stopped"}').fault
        == PREFIX + "unknown variant `Stopped`, expected `Paused` or `Resumed` at line 1 column 18."
    )
    assert (
        fc.api.call("PUT", "/actions", b'{"action_type":').fault
        == PREFIX + "EOF while parsing a value at line 1 column 15."
    )


def test_token_bucket_accepts_unknown_fields(fc: Double, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 512)
    fc.api.ok(
        "PUT",
        "/drives/d1",
        {
            "drive_id": "d1",
            "path_on_host": str(disk),
            "is_root_device": False,
            "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100, "extra": 1}},
        },
    )
    r = fc.api.call(
        "PUT",
        "/drives/d1",
        {
            "drive_id": "d1",
            "path_on_host": str(disk),
            "is_root_device": False,
            "rate_limiter": {"bogus": {}},
        },
    )
    assert "unknown field `bogus`, expected `bandwidth` or `ops`" in r.fault


def test_ids(fc: Double, tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 512)
    body = {"drive_id": "root-fs", "path_on_host": str(disk), "is_root_device": True}
    assert (
        fc.api.call("PUT", "/drives/root-fs", body).fault
        == "API Resource IDs can only contain alphanumeric characters and underscores."
    )
    body["drive_id"] = "other"
    assert (
        fc.api.call("PUT", "/drives/rootfs", body).fault
        == "The id from the path does not match the id from the body!"
    )
    body["drive_id"] = "rootfs"
    fc.api.ok("PUT", "/drives/rootfs", body)
    body["drive_id"] = "second"
    assert (
        fc.api.call("PUT", "/drives/second", body).fault
        == "Drive config error: A root block device already exists!"
    )


def test_drive_opened_at_put_time(fc: Double, tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    r = fc.api.call(
        "PUT", "/drives/d", {"drive_id": "d", "path_on_host": str(missing), "is_root_device": False}
    )
    assert r.fault == (
        "Drive config error: Unable to create the virtio block device: Virtio "
        "backend error: Error manipulating the backing file: No such file or "
        f"directory (os error 2) {missing}"
    )


def test_boot_source_opened_at_put_time(fc: Double) -> None:
    assert (
        fc.api.call("PUT", "/boot-source", {"kernel_image_path": "/no/vmlinux"}).fault
        == "Boot source error: The kernel file cannot be opened: No such file or directory "
        "(os error 2)"
    )
    assert (
        fc.api.call("PUT", "/actions", {"action_type": "InstanceStart"}).fault
        == "Start microvm error: Cannot start microvm without kernel configuration."
    )


def test_kernel_must_be_an_x86_64_elf(fc: Double, tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinux"
    bogus.write_bytes(b"MZ not an elf" + b"\0" * 100)
    fc.api.ok("PUT", "/boot-source", {"kernel_image_path": str(bogus)})
    fault = fc.api.call("PUT", "/actions", {"action_type": "InstanceStart"}).fault
    assert fault.startswith("Start microvm error: Cannot load kernel")
    assert "Invalid Elf magic number" in fault
    assert fc.api.call("GET", "/").json()["state"] == "Not started"


def test_tap_name_too_long(fc: Double) -> None:
    r = fc.api.call(
        "PUT",
        "/network-interfaces/eth0",
        {"iface_id": "eth0", "host_dev_name": "a-very-long-tap-name"},
    )
    assert r.fault == (
        "Network config error: Could not create the network device: Open tap "
        "device failed: Invalid interface name"
    )


def test_phase_rules_before_boot(fc: Double) -> None:
    pre = "The requested operation is not supported before starting the microVM."
    assert fc.api.call("PATCH", "/vm", {"state": "Paused"}).fault == pre
    assert fc.api.call("PUT", "/actions", {"action_type": "FlushMetrics"}).fault == pre
    assert fc.api.call("PUT", "/actions", {"action_type": "SendCtrlAltDel"}).fault == pre
    assert fc.api.call("PATCH", "/drives/x", {"drive_id": "x", "path_on_host": "/a"}).fault == pre
    assert (
        fc.api.call("PUT", "/snapshot/create", {"snapshot_path": "s", "mem_file_path": "m"}).fault
        == pre
    )
    assert fc.api.call("PATCH", "/machine-config", {}).fault == "Empty PATCH request."


def test_logger_and_metrics_targets(fc: Double, tmp_path: Path) -> None:
    assert fc.api.call("PUT", "/logger", {"log_path": str(tmp_path / "x.log")}).fault.startswith(
        "Logger error: "
    )
    metrics = tmp_path / "m"
    metrics.touch()
    fc.api.ok("PUT", "/metrics", {"metrics_path": str(metrics)})
    assert (
        fc.api.call("PUT", "/metrics", {"metrics_path": str(metrics)}).fault
        == "Metrics error: Reinitialization of metrics not allowed."
    )


# -- lifecycle ---------------------------------------------------------------------------------


@needs_kvm
def test_boot_pause_resume_metrics_and_logs(fc: Double, kernel: Path, tmp_path: Path) -> None:
    files = configure(fc, kernel, tmp_path)
    fc.api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    assert fc.api.call("GET", "/").json()["state"] == "Running"
    post = "The requested operation is not supported after starting the microVM."
    assert fc.api.call("PUT", "/actions", {"action_type": "InstanceStart"}).fault == post
    assert fc.api.call("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 1}).fault == post
    assert fc.api.call("PUT", "/boot-source", {"kernel_image_path": str(kernel)}).fault == post

    lines = files["metrics"].read_text().splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    assert next(iter(first)) == "utc_timestamp_ms"
    for key in (
        "api_server",
        "block",
        "block_rootfs",
        "net",
        "put_api_requests",
        "vmm",
        "latencies_us",
        "logger",
        "uart",
        "vcpu",
        "signals",
        "seccomp",
    ):
        assert key in first, key
    assert first["put_api_requests"]["drive_count"] == 1
    fc.api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    lines = files["metrics"].read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["put_api_requests"]["drive_count"] == 0  # delta since last

    fc.api.ok("PATCH", "/vm", {"state": "Paused"})
    assert fc.api.call("GET", "/").json()["state"] == "Paused"
    fc.api.ok("PATCH", "/vm", {"state": "Paused"})  # repeating is a no-op
    fc.api.ok("PATCH", "/vm", {"state": "Resumed"})
    assert fc.api.call("GET", "/").json()["state"] == "Running"
    fc.api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(files["disk"])})

    log = files["log"].read_text().splitlines()
    assert log and all(LOG_LINE.match(line) for line in log), log
    assert any("'pause vm' VMM action took" in line for line in log)
    cfg = fc.api.call("GET", "/vm/config").json()
    assert set(cfg) == {
        "balloon",
        "drives",
        "boot-source",
        "cpu-config",
        "logger",
        "machine-config",
        "metrics",
        "mmds-config",
        "network-interfaces",
        "vsock",
        "entropy",
    }


@needs_kvm
def test_ctrl_alt_del_exits_zero(fc: Double, kernel: Path, tmp_path: Path) -> None:
    configure(fc, kernel, tmp_path)
    fc.api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    t0 = time.monotonic()
    fc.api.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert fc.api.call("GET", "/").status == 200  # still serving meanwhile
    code, _out, err = fc.wait()
    assert code == 0
    assert time.monotonic() - t0 < 2
    assert "lazy import" not in err


@needs_kvm
def test_snapshot_create_and_load(fc: Double, kernel: Path, tmp_path: Path) -> None:
    configure(fc, kernel, tmp_path, mem=32)
    fc.api.ok("PUT", "/actions", {"action_type": "InstanceStart"})
    state, mem = tmp_path / "vm.state", tmp_path / "vm.mem"
    body = {"snapshot_type": "Full", "snapshot_path": str(state), "mem_file_path": str(mem)}
    assert fc.api.call("PUT", "/snapshot/create", body).fault == (
        "Create snapshot error: Cannot save the microVM state: Operation not allowed: "
        "save/restore unavailable while running"
    )
    fc.api.ok("PATCH", "/vm", {"state": "Paused"})
    assert (
        "Diff snapshots are not allowed"
        in fc.api.call("PUT", "/snapshot/create", {**body, "snapshot_type": "Diff"}).fault
    )
    fc.api.ok("PUT", "/snapshot/create", body)
    assert fc.api.call("GET", "/").json()["state"] == "Paused"
    assert struct.unpack("<Q", state.read_bytes()[:8])[0] == 0x0710_1984_8664_0000
    st = mem.stat()
    assert st.st_size == 32 << 20
    assert st.st_blocks * 512 < st.st_size  # sparse

    # a fresh process restores it: Paused, or Running with resume_vm
    (tmp_path / "fresh").mkdir()
    fresh = Double(tmp_path / "fresh")
    try:
        fresh.api.ok(
            "PUT",
            "/snapshot/load",
            {
                "snapshot_path": str(state),
                "mem_backend": {"backend_type": "File", "backend_path": str(mem)},
            },
        )
        assert fresh.api.call("GET", "/").json()["state"] == "Paused"
        assert fresh.api.call("GET", "/machine-config").json()["mem_size_mib"] == 32
        fresh.api.ok("PATCH", "/vm", {"state": "Resumed"})
        post = "The requested operation is not supported after starting the microVM."
        assert (
            fresh.api.call(
                "PUT", "/snapshot/load", {"snapshot_path": str(state), "mem_file_path": str(mem)}
            ).fault
            == post
        )
    finally:
        _out, err = fresh.stop()
    assert "lazy import" not in err


def test_snapshot_load_rules(fc: Double, kernel: Path, tmp_path: Path) -> None:
    r = fc.api.call("PUT", "/snapshot/load", {"snapshot_path": "s"})
    assert r.fault == PREFIX + "missing field: either `mem_backend` or `mem_file_path` is required."
    r = fc.api.call(
        "PUT",
        "/snapshot/load",
        {
            "snapshot_path": "s",
            "mem_file_path": "m",
            "mem_backend": {"backend_type": "File", "backend_path": "m"},
        },
    )
    assert "exclusively is required." in r.fault
    fc.api.ok("PUT", "/boot-source", {"kernel_image_path": str(kernel)})
    assert fc.api.call(
        "PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"}
    ).fault == (
        "Load snapshot error: Loading a microVM snapshot not allowed after configuring "
        "boot-specific resources."
    )


BOOT_SPECIFIC = (
    "Load snapshot error: Loading a microVM snapshot not allowed after configuring "
    "boot-specific resources."
)
LOAD = {
    "snapshot_path": "/nonexistent.state",
    "mem_backend": {"backend_type": "File", "backend_path": "/nonexistent.mem"},
}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("/balloon", {"amount_mib": 1, "deflate_on_oom": False}),
        ("/entropy", {}),
    ],
)
def test_boot_specific_resources_block_a_load(
    fc: Double, path: str, body: dict[str, object]
) -> None:
    # FIRECRACKER.md §2: what fcd-vmm must never send before /snapshot/load
    fc.api.ok("PUT", path, body)
    assert fc.api.call("PUT", "/snapshot/load", LOAD).fault == BOOT_SPECIFIC


def test_logger_metrics_and_mmds_data_do_not_block_a_load(fc: Double, tmp_path: Path) -> None:
    log, metrics = tmp_path / "fc.log", tmp_path / "fc.metrics"
    log.touch()
    metrics.touch()
    fc.api.ok("PUT", "/logger", {"log_path": str(log), "level": "Info", "show_level": True})
    fc.api.ok("PUT", "/metrics", {"metrics_path": str(metrics)})
    fc.api.ok("PUT", "/mmds", {"a": 1})
    # v1.7 knows no track_dirty_pages on load (added in 1.13): a serde error, process lives
    r = fc.api.call("PUT", "/snapshot/load", {**LOAD, "track_dirty_pages": True})
    assert r.fault.startswith(PREFIX + "unknown field `track_dirty_pages`")
    r = fc.api.call("PUT", "/snapshot/load", {**LOAD, "enable_diff_snapshots": True})
    assert r.fault.startswith("Load snapshot error: Failed to restore from snapshot")
    assert "Permission denied" not in r.fault and "No such file" in r.fault
    code, _out, _err = fc.wait()
    assert code == 1  # a failed load ends the process


def test_failed_snapshot_load_answers_then_exits_1(fc: Double, tmp_path: Path) -> None:
    bad = tmp_path / "bad.state"
    bad.write_bytes(b"garbage" * 20)
    r = fc.api.call("PUT", "/snapshot/load", {"snapshot_path": str(bad), "mem_file_path": str(bad)})
    assert r.status == 400
    assert r.fault.startswith("Load snapshot error: Failed to restore from snapshot")
    assert r.json().keys() == {"fault_message"}
    code, _out, _err = fc.wait()
    assert code == 1


def test_deprecated_field_sets_header(fc: Double) -> None:
    r = fc.api.call(
        "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}
    )
    assert r.status == 204
    assert "Deprecation: true" in r.headers


@pytest.mark.root
def test_tap_opened_at_put_time_in_a_netns(tmp_path: Path) -> None:
    ns = f"fcdt-{os.getpid()}-fc"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sock = tmp_path / "api.sock"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(FIRECRACKER), "--api-sock", str(sock)],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            api = Api(sock)
            # as root outside a jail TUNSETIFF makes a transient tap (only in our netns)
            api.ok(
                "PUT",
                "/network-interfaces/eth0",
                {"iface_id": "eth0", "host_dev_name": "fcdtap0", "guest_mac": "AA:FC:00:00:00:01"},
            )
            links = subprocess.run(
                ["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True
            ).stdout
            assert "fcdtap0" in links
            r = api.call(
                "PUT",
                "/network-interfaces/eth1",
                {"iface_id": "eth1", "host_dev_name": "fcdtap1", "guest_mac": "aa:fc:00:00:00:01"},
            )
            assert r.fault == (
                "Network config error: The MAC address is already in use: aa:fc:00:00:00:01"
            )
        finally:
            proc.kill()
            proc.wait()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
