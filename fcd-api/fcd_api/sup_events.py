"""The one way supervision reports what it did: health changes, restarts, reconciliation.

Every report is a journal entry with structured fields (``FCD_VM_ID``,
``FCD_EVENT`` = the kind, and one ``FCD_<KEY>`` per datum), so
``journalctl FCD_EVENT=health`` lists every health change. When fcd-api's
events stream (``GET /v1/events``, fcd_api.events) is present, this is the one
function to point at its ``publish(kind, vm_id, **data)`` as well.
"""

from __future__ import annotations

import logging
from typing import Any

from fcd_common import logs

__all__ = ["health_event"]

log = logging.getLogger("fcd.api.events")

_LEVELS = {"warning": logging.WARNING, "error": logging.ERROR}


def health_event(kind: str, vm_id: str, message: str, /, level: str = "info", **data: Any) -> None:
    """Report supervision event ``kind`` of ``vm_id`` (journal; events stream at merge)."""
    extra = logs.vm(vm_id, event=kind, **{k: v for k, v in data.items() if v is not None})
    log.log(_LEVELS.get(level, logging.INFO), "%s: %s", kind, message, extra=extra)
