"""How e2fsprogs are run: the confined command line (pure) and a thin runner.

See :mod:`fcd_storage.confine` for what the sandbox does. Under systemd
fcd-storage is already an unprivileged user in a private network namespace with
a seccomp filter (the unit); the child adds Landlock (writes only to the image)
and a socket ban on top. As root (``fcd up``) it also gets a new network
namespace and the image owner's uid, or uid 0 without capabilities.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fcd_common.errors import Internal

ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"}
CONFINE = str(Path(__file__).with_name("confine.py"))


def argv(
    tool_argv: Sequence[str],
    writable: Sequence[Path],
    *,
    euid: int,
    owner: tuple[int, int] | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The command that runs ``tool_argv`` confined to writing ``writable``.

    ``euid`` is fcd-storage's own; as root the child leaves the network and becomes
    ``owner`` (the image's uid and gid) when that is not root.
    """
    # run as a script without site (-S): it needs only the standard library, and
    # skipping site-packages halves its start-up
    out = [python, "-I", "-S", CONFINE]
    for w in writable:
        out += ["--write", str(w)]
    if euid == 0:
        out.append("--new-netns")
        if owner is not None and owner[0] != 0:
            out += ["--uid", str(owner[0]), "--gid", str(owner[1])]
    return [*out, "--", *tool_argv]


def run(
    tool_argv: Sequence[str],
    image: Path,
    *,
    timeout: float,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run an e2fsprogs tool that may write only ``image``; its output captured."""
    st = os.stat(image)
    cmd = argv(tool_argv, [image], euid=os.geteuid(), owner=(st.st_uid, st.st_gid))
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=ENV,
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise Internal(f"{os.path.basename(tool_argv[0])} timed out after {timeout:g}s") from None
