"""Driving the booted container: fcctl as a user, unit state, /proc, journal, test drop-ins."""

from __future__ import annotations

import json
from typing import Any

from .nspawn import Container
from .units import VENV

API = "/run/fcd/api.sock"
MEMBER, OTHER = "fcdtester", "fcdother"


class Suite:
    def __init__(self, c: Container) -> None:
        self.c = c
        self.state: dict[str, Any] = {}

    def fcctl(self, *args: str, user: str = MEMBER, check: bool = True) -> Any:
        cp = self.c.run(
            "runuser", "-u", user, "--", "env", f"FCD_SOCKET={API}",
            str(VENV / "bin/fcctl"), "-o", "json", *args, check=check,
        )  # fmt: skip
        return json.loads(cp.stdout) if check and cp.stdout.strip() else cp

    def active(self, unit: str) -> bool:
        return self.c.show(unit, "ActiveState")["ActiveState"] == "active"

    def wait_active(self, unit: str, *, not_pid: int = 0, timeout: float = 30.0) -> int:
        def ready() -> bool:
            return self.active(unit) and self.c.main_pid(unit) not in (0, not_pid)

        self.c.wait_for(f"{unit} active", ready, timeout)
        return self.c.main_pid(unit)

    def status(self, pid: int) -> dict[str, str]:
        text = self.c.run("cat", f"/proc/{pid}/status").stdout
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}

    def alive(self, pid: int) -> bool:
        return self.c.run("kill", "-0", str(pid), check=False).returncode == 0

    def journal(self, *match: str) -> list[dict[str, Any]]:
        out = self.c.run("journalctl", "--no-pager", "-o", "json", *match).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def dropin(self, unit: str, text: str | None) -> None:
        d = f"/run/systemd/system/{unit}.service.d"
        if text is None:
            self.c.run("rm", "-rf", d)
        else:
            self.c.run("mkdir", "-p", d)
            self.c.run("tee", f"{d}/zz-test.conf", input=text)
        self.c.systemctl("daemon-reload")
