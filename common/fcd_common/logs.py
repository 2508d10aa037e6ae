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
from pathlib import Path
from typing import Any

from . import reqid

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def vm(vm_id: str, **more: Any) -> dict[str, Any]:
    """``extra=`` mapping carrying the VM id (and any further FCD_* fields)."""
    fields: dict[str, Any] = {"FCD_VM_ID": vm_id}
    fields.update({f"FCD_{k.upper()}": v for k, v in more.items()})
    return fields


class _RequestIdFilter(logging.Filter):
    """Every record made while a request is served carries its ``FCD_REQUEST_ID``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "FCD_REQUEST_ID"):
            rid = reqid.current()
            if rid is not None:
                record.FCD_REQUEST_ID = rid
        return True


_state: dict[str, Any] = {"journal": False, "daemon": ""}


def to_journal() -> bool:
    """True if this process logs to journald (set by :func:`setup`)."""
    return bool(_state["journal"])


def use_vm_store(root: Path, max_bytes: int | None = None) -> None:
    """Without journald, also keep every record that names a VM in the per-VM file
    store under ``root`` (:mod:`fcd_common.vmlogstore`); a no-op under journald."""
    if to_journal():
        return
    from .vmlogstore import DEFAULT_MAX_BYTES, VmFileHandler

    handler = VmFileHandler(root, str(_state["daemon"]), max_bytes or DEFAULT_MAX_BYTES)
    handler.addFilter(_RequestIdFilter())
    logging.getLogger().addHandler(handler)


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
    _state["daemon"] = daemon
    _state["journal"] = bool(os.environ.get("JOURNAL_STREAM") and not force_stderr)
    if _state["journal"]:
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
    handler.addFilter(_RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter stays at warning
    for noisy in ("httpx", "httpcore", "pyroute2", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
