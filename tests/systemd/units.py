"""Where the units come from, rendered for this checkout's venv, and capability names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
DAEMONS = ("fcd-api", "fcd-net", "fcd-storage", "fcd-vmm")
UNITS = (
    "fcd.target",
    *(f"{d}.socket" for d in DAEMONS),
    "fcd-api-ro.socket",
    *(f"{d}.service" for d in DAEMONS),
)
MAX_EXPOSURE = {"fcd-api": 1.5, "fcd-storage": 2.0, "fcd-net": 2.5, "fcd-vmm": 4.0}
# fcd-net.service with the opt-in netns drop-in (systemd/fcd-net-netns.conf)
MAX_EXPOSURE_NETNS = 4.0

# linux/capability.h
CAPS = (  # noqa: SIM905
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap "
    "linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner "
    "sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice "
    "sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap "
    "mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf "
    "checkpoint_restore"
).split()


def cap_mask(names: str) -> int:
    """``cap_chown cap_kill`` (as ``systemctl show`` prints them) -> bit mask."""
    mask = 0
    for name in names.split():
        mask |= 1 << CAPS.index(name.lower().removeprefix("cap_"))
    return mask


def render(dest: Path, *extra: str) -> list[Path]:
    """The units with this checkout's venv substituted (the install script's own rendering)."""
    subprocess.run(
        [
            str(REPO / "systemd" / "install"),
            "--render-only",
            str(dest),
            "--venv",
            str(VENV),
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return [dest / u for u in UNITS]
