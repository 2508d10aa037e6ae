"""Logging for the daemons: journald with structured fields, or stderr.

Fields are passed with ``extra=``: ``log.info("started", extra=vm(vm_id))``.
Under systemd (``JOURNAL_STREAM`` set) records go to journald through
python3-systemd's JournalHandler, with ``FCD_DAEMON`` on every entry and
upper-case extras (``FCD_VM_ID``, ``FCD_REQUEST_ID`` ...) as journal fields,
so ``journalctl FCD_VM_ID=<id>`` follows one VM across daemons. Elsewhere a
plain line goes to stderr with the same fields appended as ``key=value``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def vm(vm_id: str, **more: Any) -> dict[str, Any]:
    """``extra=`` mapping carrying the VM id (and any further FCD_* fields)."""
    fields: dict[str, Any] = {"FCD_VM_ID": vm_id}
    fields.update({f"FCD_{k.upper()}": v for k, v in more.items()})
    return fields


class _FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [
            f"{k.removeprefix('FCD_').lower()}={v}"
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and k.isupper()
        ]
        return f"{base} [{' '.join(extras)}]" if extras else base


def setup(daemon: str, *, level: int | str | None = None, force_stderr: bool = False) -> None:
    """Configure the root logger once for a daemon process."""
    level = level or os.environ.get("FCD_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") and not force_stderr:
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=daemon, FCD_DAEMON=daemon)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _FieldsFormatter(
                f"%(asctime)s {daemon}[%(process)d] %(levelname)s %(name)s: %(message)s"
            )
        )
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter stays at warning
    for noisy in ("httpx", "httpcore", "pyroute2", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
