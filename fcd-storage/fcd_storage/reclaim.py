"""Reclaim on request: disks and pending snapshots that no live VM owns.

fcd-storage cannot know which VMs exist; fcd-api can. It sends the ids of
every VM in its registry (any state: a stopped or failed VM still owns its
disk) and the time it read them; what belongs to none of them and is older
than that moment is removed, together with staging leftovers. Templates and
ready snapshots are never reclaimed: they are deleted only on request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fcd_common import logs
from fcd_common.ids import check_vm_id

from . import disks, plan, snapshots
from .store import Store

log = logging.getLogger("fcd.storage")


def reclaim_unowned(store: Store, live_vm_ids: Iterable[str], as_of: str) -> list[str]:
    """Remove what no live VM owns; return what was removed (``tmp:``, ``disk:``, ``snapshot:``)."""
    live = {check_vm_id(v) for v in live_vm_ids}
    plan.parse_time(as_of)
    removed = [f"partial:{p.name}" for p in store.reclaim(keep_pending=True)]
    for vm_id in plan.disks_to_reclaim(store.disks(), live, as_of):
        if disks.release(store, vm_id):
            log.warning("reclaimed the disk of a VM fcd-api does not know", extra=logs.vm(vm_id))
            removed.append(f"disk:{vm_id}")
    for name in snapshots.pending_to_reclaim(store, live, as_of):
        store.remove_entry(store.layout.snapshot_dir(name), f"snap-del-{name}-")
        log.warning("reclaimed pending snapshot %s (its VM is gone)", name)
        removed.append(f"snapshot:{name}")
    return removed
