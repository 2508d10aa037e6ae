"""#9 finding 10: e2fsprogs parse user images inside fcd-storage, so they run
confined: no sockets, no network, no writes anywhere but the one image, no way
back to more privileges. The attack is a tool that does what a compromised parser
would; it is put first on PATH, so ``extfs.grow`` (the real code path) runs it."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from fcd_common.errors import Internal
from fcd_storage import extfs, sandbox

from .storage_helpers import MiB, have, mkfs_ext4

EVIL = r"""#!{python}
import os, socket, sys
image = sys.argv[-1]
out = []
for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
    try:
        socket.socket(fam).close()
        out.append(f"socket {{fam.name}} OPENED")
    except OSError as e:
        out.append(f"socket {{fam.name}} refused {{e.errno}}")
for path in ({outside!r}, {created!r}):
    try:
        with open(path, "a") as f:
            f.write("owned\n")
        out.append(f"write {{path}} DONE")
    except OSError as e:
        out.append(f"write {{path}} refused {{e.errno}}")
try:
    os.unlink({victim!r})
    out.append("unlink DONE")
except OSError as e:
    out.append(f"unlink refused {{e.errno}}")
with open(image, "r+b") as f:  # the one thing it may change
    f.write(b"X")
out.append("image written")
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
out.append("nnp " + status["NoNewPrivs"].strip())
out.append("capeff " + status["CapEff"].strip())
out.append("uid " + str(os.getuid()))
devs = open("/proc/net/dev").readlines()[2:]
out.append("ifaces " + ",".join(sorted(l.split(":")[0].strip() for l in devs)))
print("|".join(out))
sys.exit(8)  # "operational error": grow() reports the output
"""


def _evil_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    paths = {
        "outside": tmp_path / "outside.txt",
        "created": tmp_path / "created.txt",
        "victim": tmp_path / "victim.txt",
    }
    paths["outside"].write_text("mine\n")
    paths["victim"].write_text("keep me\n")
    script = EVIL.format(python=sys.executable, **{k: str(v) for k, v in paths.items()})
    tool = bindir / "e2fsck"
    tool.write_text(script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '')}")
    return paths


def _report(tmp_path: Path, image: Path) -> dict[str, str]:
    with pytest.raises(Internal) as e:
        extfs.grow(image)
    m = re.search(r"(socket AF_INET .*)", e.value.message)
    assert m, e.value.message
    return dict(item.split(" ", 1) if " " in item else (item, "") for item in m.group(1).split("|"))


def test_finding10_e2fsprogs_child_cannot_open_sockets_or_write_outside_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _evil_tool(tmp_path, monkeypatch)
    image = tmp_path / "disk.ext4"
    image.write_bytes(bytes(4096))
    r = _report(tmp_path, image)
    assert "OPENED" not in " ".join(r.values()), r
    assert "DONE" not in " ".join(r.values()), r
    assert paths["outside"].read_text() == "mine\n"
    assert not paths["created"].exists()
    assert paths["victim"].read_text() == "keep me\n"
    assert image.read_bytes()[:1] == b"X", "the image itself must stay writable"
    assert r["nnp"] == "1" and r["capeff"] == "0000000000000000"
    if os.geteuid() == 0:  # fcd up: its own empty network namespace as well
        assert r["ifaces"] == "lo"


@pytest.mark.root
def test_finding10_as_root_the_child_becomes_the_images_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Path(tempfile.mkdtemp(prefix="fcd-sandbox-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # the dropped uid must reach the tool and the image
        paths = _evil_tool(base, monkeypatch)
        image = base / "disk.ext4"
        image.write_bytes(bytes(4096))
        os.chown(image, 65534, 65534)
        r = _report(base, image)
        assert r["uid"] == "65534" and r["capeff"] == "0000000000000000"
        assert "DONE" not in " ".join(r.values()) and "OPENED" not in " ".join(r.values()), r
        assert paths["victim"].exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sandbox_argv_is_planned_from_who_runs_it() -> None:
    tool = ["/sbin/e2fsck", "-fp", "/s/disk"]
    img = [Path("/s/disk")]
    as_user = sandbox.argv(tool, img, euid=990, owner=(990, 990), python="/py")
    assert as_user == ["/py", "-I", "-S", sandbox.CONFINE, "--write", "/s/disk", "--", *tool]
    as_root = sandbox.argv(tool, img, euid=0, owner=(990, 991), python="/py")
    assert as_root[4:] == ["--write", "/s/disk", "--new-netns", "--uid", "990", "--gid", "991",
                           "--", *tool]  # fmt: skip
    root_image = sandbox.argv(tool, img, euid=0, owner=(0, 0), python="/py")
    assert "--uid" not in root_image and "--new-netns" in root_image


@pytest.mark.skipif(not have("e2fsck"), reason="e2fsprogs not installed")
def test_real_e2fsprogs_still_grow_an_image_in_the_sandbox(tmp_path: Path) -> None:
    image = mkfs_ext4(tmp_path / "disk.ext4", 16)
    os.truncate(image, 32 * MiB)
    extfs.grow(image)
    from .storage_helpers import ext4_size

    assert ext4_size(image) == 32 * MiB
    assert stat.S_ISREG(image.stat().st_mode)
