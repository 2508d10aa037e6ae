"""fcd-vmm's jail records on disk, for tests that play a crash: read one, or change
one while the daemon is stopped (what a kill between two steps would have left)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from fcd_common.recordlog import RecordLog
from fcd_vmm.uidpool import JailRecord, log_path, stored_records


def record(state_dir: Path, vm_id: str) -> JailRecord | None:
    return stored_records(state_dir).get(vm_id)


def edit(state_dir: Path, vm_id: str, **changes: Any) -> None:
    """Rewrite ``vm_id``'s record with ``changes`` (the daemon must be stopped)."""
    log = RecordLog(log_path(state_dir), JailRecord)
    try:
        rec = log.load()[vm_id]
        log.put(vm_id, msgspec.structs.replace(rec, **changes))
    finally:
        log.close()
