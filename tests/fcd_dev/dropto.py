"""``python -m fcd_dev.dropto``: start a daemon as an unprivileged user, as its unit does.

Used by :class:`fcd_dev.suite.Suite` for ``storage_user``: the suite (root) binds
the daemon's socket where the unit's ``.socket`` would, and this wrapper, run as
root inside the suite's network namespace, moves that socket to fd 3, becomes
the user (no supplementary groups), sets ``LISTEN_FDS``/``LISTEN_PID`` for
itself and execs the daemon, which picks the socket up as from systemd.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

SD_LISTEN_FDS_START = 3


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fcd-dropto")
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("a command is required after --")
    if args.listen_fd != SD_LISTEN_FDS_START:
        os.dup2(args.listen_fd, SD_LISTEN_FDS_START, inheritable=True)
        os.close(args.listen_fd)
    os.set_inheritable(SD_LISTEN_FDS_START, True)
    os.setgroups([])
    os.setresgid(args.gid, args.gid, args.gid)
    os.setresuid(args.uid, args.uid, args.uid)
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    sys.exit(main())
