"""#9 finding 3: fcd-vmm (root) never follows a name inside a jail that the jail uid
controls. A compromised Firecracker owns its chroot's ``/`` and ``/run``: it can
swap its API socket for a link to another VM's socket, or the jailer's pid file for
a FIFO or a link to ``/dev/zero``. Real daemon, real jails, real Unix sockets
(the Firecracker/jailer doubles, or the real binaries via FCD_FIRECRACKER/FCD_JAILER).
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
from pathlib import Path

import pytest

from fcd_common.errors import FcdError, Unavailable
from fcd_common.proto.vmm import AllocateJail, Pause, ReleaseJail, Status, Stop
from fcd_vmm import jailfs
from fcd_vmm.plan import jail_paths

from .. import jailrecords
from ..launches import drive
from . import test_vmm_daemon as daemon
from .test_vmm_daemon import Env, acl_uids, fc_get, needs_doubles

env = daemon.env  # the same fixture: a daemon in its own netns, temp dir and uid range

pytestmark = pytest.mark.root


def _launch(env: Env, vm_id: str, ip: str) -> int:
    jail = env.call(AllocateJail(vm_id=vm_id))
    tap = env.make_tap(vm_id, jail.uid)
    from fcd_common import ids

    vm = env.call(env.launch_req(vm_id, tap, ip=ip, mac=ids.guest_mac(ip)))
    assert vm.pid is not None and vm.state == "running"
    return jail.uid


def _in_jail(root: Path, uid: int, fn: object) -> None:
    """Run ``fn`` as a compromised Firecracker: chrooted into ``root``, as the jail uid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.chroot(root)
            os.chdir("/")
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the jail uid could not do its part"


@needs_doubles
def test_finding3_symlinked_api_socket_is_refused(env: Env) -> None:
    env.start()
    a, b = f"a-{secrets.token_hex(3)}", f"b-{secrets.token_hex(3)}"
    uid_a = _launch(env, a, "172.30.0.2")
    _launch(env, b, "172.30.0.3")
    pa, pb = jail_paths(env.cfg, a), jail_paths(env.cfg, b)

    def swap() -> None:  # inside A's jail, as its uid: /run is its own
        os.unlink("/run/firecracker.socket")
        os.symlink(pb.api_socket, "/run/firecracker.socket")  # B's socket, by its host path

    _in_jail(pa.root, uid_a, swap)
    assert stat.S_ISLNK(os.lstat(pa.api_socket).st_mode)
    with pytest.raises(Unavailable, match="not usable"):
        env.call(Pause(vm_id=a))
    assert fc_get(pb.api_socket)["state"] == "Running", "pausing A must never reach B"
    assert env.call(Status(vm_id=b)).state == "running"
    env.call(ReleaseJail(vm_id=a))
    env.call(ReleaseJail(vm_id=b))


@needs_doubles
def test_finding3_socket_not_owned_by_the_jail_uid_is_refused(env: Env) -> None:
    env.start()
    a = f"a-{secrets.token_hex(3)}"
    _launch(env, a, "172.30.0.2")
    pa = jail_paths(env.cfg, a)
    os.chown(pa.api_socket, 0, 0, follow_symlinks=False)  # another uid's socket under the name
    with pytest.raises(FcdError, match="belongs to uid 0"):
        env.call(Pause(vm_id=a))
    env.call(ReleaseJail(vm_id=a))


def _read_pid_bounded(paths: object) -> int | None:
    """``read_pid_file`` in a thread: a hang or an exception fails the test, not the run."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(jailfs.read_pid_file(paths))  # type: ignore[arg-type]
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "read_pid_file blocked"
    assert not isinstance(out[0], BaseException), out[0]
    return out[0]  # type: ignore[return-value]


def test_finding3_pid_file_fifo_device_and_symlink_are_not_read(tmp_path: Path) -> None:
    from fcd_common import config

    cfg = config.decode(f'[paths]\nchroot_base = "{tmp_path}/jail"\n')
    paths = jail_paths(cfg, "vm-1")
    paths.root.mkdir(parents=True)
    pid = paths.pid_file
    pid.write_text("4242\n")
    assert _read_pid_bounded(paths) == 4242
    pid.unlink()
    os.mkfifo(pid)  # nobody ever writes it: an open for reading would wait forever
    assert _read_pid_bounded(paths) is None
    pid.unlink()
    os.symlink("/dev/zero", pid)  # an endless read
    assert _read_pid_bounded(paths) is None
    pid.unlink()
    os.mknod(pid, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero itself, in the jail
    assert _read_pid_bounded(paths) is None
    pid.unlink()
    (tmp_path / "outside").write_text("1\n")
    os.symlink(tmp_path / "outside", pid)  # a host file the jail uid wants fcd-vmm to read
    assert _read_pid_bounded(paths) is None
    pid.unlink()
    pid.write_text("1" * 10_000_000)  # huge: only a few bytes are read
    assert _read_pid_bounded(paths) is None


@needs_doubles
def test_finding3_fifo_pid_file_does_not_hang_daemon_start(env: Env) -> None:
    env.start()
    a = f"a-{secrets.token_hex(3)}"
    _launch(env, a, "172.30.0.2")
    pa = jail_paths(env.cfg, a)
    env.stop()
    jailrecords.edit(env.cfg.state("vmm"), a, pid=None, state="allocated")
    pa.pid_file.unlink()
    os.mkfifo(pa.pid_file)
    env.start()  # spawn() fails if the daemon is not ready within its timeout
    env.call(ReleaseJail(vm_id=a))


@needs_doubles
def test_finding6_shared_template_files_are_read_through_the_jail_uids_acl(env: Env) -> None:
    """Templates are 0640 and fcd-storage's (not world-readable): a VM reads the kernel
    and a shared image through a hard link and an ACL entry for its own uid that lasts
    only as long as the launch (Firecracker holds the files open by its end), so a
    shared file's ACL never grows with the VMs running; no other uid gets anything."""
    env.start()
    a = f"a-{secrets.token_hex(3)}"
    kernel, _ = env.storage_files(a)
    image = kernel.parent / "rootfs.ext4"
    owner = env.cfg.jail.uid_max + 1000  # fcd-storage's user: not a jail uid
    for f in (kernel, image):
        os.chown(f, owner, owner)
        os.chmod(f, 0o640)
    jail = env.call(AllocateJail(vm_id=a))
    tap = env.make_tap(a, jail.uid)
    ro = drive(str(image), "shared", read_only=True)
    vm = env.call(env.launch_req(a, tap, drives=[ro]))
    # the double opened the kernel and the image as the jail uid: only the entry let it
    assert vm.state == "running"
    pa = jail_paths(env.cfg, a)
    for store_file, linked in ((kernel, pa.kernel), (image, pa.drive("shared"))):
        assert os.stat(linked).st_ino == os.stat(store_file).st_ino, "a link, not a copy"
        assert acl_uids(store_file) == [], "the entry goes once the launch is over"
        st = os.stat(store_file)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (owner, 0o640)
    # a stop and a second launch (a start) grant again for that launch only
    env.call(Stop(vm_id=a, force=True))
    assert env.call(env.launch_req(a, tap, drives=[ro])).state == "running"
    assert acl_uids(kernel) == [] == acl_uids(image)
    env.call(ReleaseJail(vm_id=a))
    for f in (kernel, image):
        assert acl_uids(f) == []
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o640


def test_an_entry_a_crash_left_between_grant_and_revoke_goes_at_start(env: Env) -> None:
    """The launch records the files before granting; a daemon killed before the revoke
    leaves the entry and the record: the next start revokes it (no launch is in flight
    then) and the running VM keeps working."""
    env.start()
    a = f"a-{secrets.token_hex(3)}"
    kernel, _ = env.storage_files(a)
    owner = env.cfg.jail.uid_max + 1000
    os.chown(kernel, owner, owner)
    os.chmod(kernel, 0o640)
    jail = env.call(AllocateJail(vm_id=a))
    vm = env.call(env.launch_req(a, env.make_tap(a, jail.uid)))
    assert vm.state == "running" and acl_uids(kernel) == []
    env.stop()
    # the state a kill between the grant and the revoke leaves
    jailfs.grant_read(str(kernel), jail.uid)
    jailrecords.edit(env.cfg.state("vmm"), a, acl_files=[str(kernel)])
    assert acl_uids(kernel) == [jail.uid]
    env.start()
    assert acl_uids(kernel) == []
    rec = jailrecords.record(env.cfg.state("vmm"), a)
    assert rec is not None and rec.acl_files == []
    assert env.call(Status(vm_id=a)).state == "running"
    env.call(ReleaseJail(vm_id=a))
    assert stat.S_IMODE(os.stat(kernel).st_mode) == 0o640


def test_finding3_log_tail_never_reads_through_a_jail_symlink(tmp_path: Path) -> None:
    """A failed launch's error details carry the tail of Firecracker's log: a jail
    that swaps it for a link to a host file must not get that file into them."""
    from fcd_common import config

    cfg = config.decode(f'[paths]\nchroot_base = "{tmp_path}/jail"\n')
    paths = jail_paths(cfg, "vm-1")
    paths.root.mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("root:$6$hash:19000::::::\n")
    paths.log_file.symlink_to(secret)
    assert jailfs.log_tail(paths) == ""
    paths.log_file.unlink()
    os.mkfifo(paths.log_file)  # no forwarder for it: still nothing, and no hang
    assert jailfs.log_tail(paths) == ""
    paths.log_file.unlink()
    paths.log_file.write_text("line 1\nline 2\n")
    assert jailfs.log_tail(paths) == "line 1\nline 2"
