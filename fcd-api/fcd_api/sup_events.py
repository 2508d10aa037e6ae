"""The one way supervision reports what it did: health changes, restarts, reconciliation.

Every report is an event of :mod:`fcd_api.events` (``GET /v1/events``, stored, and
a journal entry with ``FCD_EVENT`` = the kind and ``MESSAGE_ID``), with the
message and the data as its fields; a warning or an error is also logged at
that level, so ``journalctl -p warning`` shows failed checks and restarts.
Kinds: ``health``, ``restart_scheduled``, ``restart``, ``restarted``,
``restart_failed``, ``restart_gave_up``, ``reconcile``.
"""

from __future__ import annotations

import logging
from typing import Any

from fcd_common import logs

from . import events

__all__ = ["health_event"]

log = logging.getLogger("fcd.api.supervision")

_LEVELS = {"warning": logging.WARNING, "error": logging.ERROR}


def health_event(kind: str, vm_id: str, message: str, /, level: str = "info", **data: Any) -> None:
    """Publish supervision event ``kind`` of ``vm_id``; log it too when it is bad news."""
    fields = {k: v for k, v in data.items() if v is not None}
    events.publish(kind, vm_id, message=message, **fields)
    if level in _LEVELS:
        log.log(_LEVELS[level], "%s: %s", kind, message, extra=logs.vm(vm_id, event=kind))
