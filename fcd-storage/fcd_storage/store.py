"""The store: templates and per-VM disks on the filesystem (synchronous, thread-safe per key).

This is the catalog: it owns the layout and the limits, start-up
(directories, reclaim of partial entries), the reads and lists of manifests,
and the two primitives every operation shares (removing a published entry,
handing new files to the store's owner). It imports none of the operations.
The operations live in modules named for what they do
(:mod:`~fcd_storage.templates`, :mod:`~fcd_storage.disks`,
:mod:`~fcd_storage.snapshots`, :mod:`~fcd_storage.suspends`,
:mod:`~fcd_storage.reclaim`), each taking the
``Store`` as its first argument; the service and tools call them directly.
Each validates its names, asks ``plan`` what to do, and does it with
``fileio``: build everything in a staging directory under ``tmp/``, manifest
last, then rename the directory into place. A failure at any point removes the
staging directory, so nothing half-made is ever visible; a crash leaves only
``tmp/`` entries, which :meth:`Store.reclaim` removes at start.

Callers serialize operations on the same template name or VM id.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from fcd_common.config import Config
from fcd_common.errors import Internal, NotFound
from fcd_common.ids import check_name, check_vm_id, is_vm_id
from fcd_common.storelayout import (
    DISK_MANIFEST,
    SNAPSHOT_MANIFEST,
    SNAPSHOT_PENDING,
    TEMPLATE_MANIFEST,
    StoreLayout,
)
from fcd_common.storelayout import layout as layout_of

from . import fileio, modes
from .manifest import DiskManifest, TemplateManifest, load

log = logging.getLogger("fcd.storage")
_T = TypeVar("_T", bound=msgspec.Struct)

TMP_DIR_MODE = 0o700


class Store:
    def __init__(
        self,
        lay: StoreLayout,
        *,
        max_disk_mib: int,
        max_vm_disk_mib: int = 2_097_152,
        max_drives: int = 8,
        import_dirs: Sequence[str] = ("/var/lib/fcd/import",),
    ) -> None:
        self.layout = lay
        self.import_dirs = tuple(import_dirs)
        self.max_disk_mib = max_disk_mib
        self.max_vm_disk_mib = max_vm_disk_mib
        self.max_drives = max_drives

    @classmethod
    def from_config(cls, cfg: Config) -> Store:
        lim = cfg.limits
        return cls(
            layout_of(cfg),
            max_disk_mib=lim.max_disk_mib,
            max_vm_disk_mib=lim.max_vm_disk_mib,
            max_drives=lim.max_drives,
            import_dirs=cfg.storage.import_dirs,
        )

    # -- start-up ---------------------------------------------------------------

    def ensure_dirs(self) -> None:
        lay = self.layout
        lay.root.mkdir(parents=True, exist_ok=True, mode=modes.DIR)
        os.chmod(lay.root, modes.DIR)
        dirs = (
            (lay.templates, modes.DIR),
            (lay.disks, modes.DIR),
            (lay.snapshots, modes.DIR),
            (lay.tmp, TMP_DIR_MODE),
        )
        for d, mode in dirs:
            d.mkdir(exist_ok=True, mode=mode)
            os.chmod(d, mode)
        for path in modes.tighten(lay.root):
            log.info("took the world's access away from %s (#9 finding 6)", path)

    def reclaim(self, *, keep_pending: bool = False) -> list[Path]:
        """Remove staging leftovers and entries without a manifest; return what was removed.

        At start nothing of this daemon is in flight, so pending snapshots go too
        (a ``tmp/`` entry another live process is filling stays); on request
        (``keep_pending``, with every other operation excluded by the caller)
        they stay, and :mod:`fcd_storage.reclaim` decides about them by VM.
        """
        lay = self.layout
        removed: list[Path] = []
        for entry in _entries(lay.tmp):
            if fileio.staging_owner_alive(entry):
                # another process's staging (``fcd-storage import`` while the daemon
                # runs): in use; it goes once its maker is gone
                log.info("kept %s: its maker still runs", entry.name)
                continue
            fileio.remove_tree(entry)
            removed.append(entry)
        complete = (
            (lay.templates, TEMPLATE_MANIFEST),
            (lay.disks, DISK_MANIFEST),
            (lay.snapshots, SNAPSHOT_MANIFEST),  # a pending snapshot dies with the daemon
        )
        for parent, manifest in complete:
            for entry in _entries(parent):
                if entry.is_symlink() or not entry.is_dir():
                    partial = True
                else:
                    partial = not (entry / manifest).is_file()
                    if keep_pending and parent == lay.snapshots:
                        partial = partial and not (entry / SNAPSHOT_PENDING).is_file()
                if partial:
                    fileio.remove_tree(entry)
                    removed.append(entry)
        for path in removed:
            log.info("reclaimed partial entry %s", path)
        return removed

    def counts(self) -> tuple[int, int]:
        t = sum(1 for e in _entries(self.layout.templates) if (e / TEMPLATE_MANIFEST).is_file())
        d = sum(1 for e in _entries(self.layout.disks) if (e / DISK_MANIFEST).is_file())
        return t, d

    # -- templates --------------------------------------------------------------

    def template(self, name: str) -> TemplateManifest:
        m = self.template_manifest(check_name(name, "template"))
        if m is None:
            raise NotFound(f"template {name!r} not found", details={"field": "template"})
        return m

    def templates(self) -> list[TemplateManifest]:
        out = []
        for entry in _entries(self.layout.templates):
            with contextlib.suppress(NotFound, Internal):
                out.append(self.template(entry.name))
        return sorted(out, key=lambda m: m.name)

    # -- disks ------------------------------------------------------------------

    def disk(self, vm_id: str) -> DiskManifest:
        m = self.disk_manifest(check_vm_id(vm_id))
        if m is None:
            raise NotFound(f"no disk for vm {vm_id!r}", details={"field": "vm_id"})
        return m

    def disks(self) -> list[DiskManifest]:
        out = []
        for entry in _entries(self.layout.disks):
            if is_vm_id(entry.name):
                with contextlib.suppress(NotFound, Internal):
                    out.append(self.disk(entry.name))
        return sorted(out, key=lambda m: m.vm_id)

    def remove_entry(self, final: Path, prefix: str) -> bool:
        """Remove a published directory; False if there was none.

        It is renamed into ``tmp/`` first, so an interrupted delete leaves only
        staging junk (reclaimed at start), never a half-deleted entry.
        """
        if not final.exists() and not final.is_symlink():
            return False
        doomed = fileio.make_staging(self.layout.tmp, prefix)
        try:
            os.rename(final, doomed / "d")
        except FileNotFoundError:
            fileio.remove_tree(doomed)
            return False
        fileio.remove_tree(doomed)
        return True

    # -- manifests and ownership, for the operation modules -------------------

    def template_manifest(self, name: str) -> TemplateManifest | None:
        """The template's manifest, None if there is none (``name`` already checked)."""
        return _load(self.layout.template_manifest(name), TemplateManifest)

    def disk_manifest(self, vm_id: str) -> DiskManifest | None:
        """The VM's disk manifest, None if there is none (``vm_id`` already checked)."""
        return _load(self.layout.disk_manifest(vm_id), DiskManifest)

    def adopt(self, staging: Path) -> None:
        """When run as root (the import command), give new files to the store's owner."""
        if os.geteuid() != 0:
            return
        st = os.stat(self.layout.root)
        if st.st_uid == 0 and st.st_gid == 0:
            return
        for p in [staging, *staging.iterdir()]:
            os.lchown(p, st.st_uid, st.st_gid)


def _load(path: Path, typ: type[_T]) -> _T | None:
    try:
        return load(path, typ)
    except (msgspec.DecodeError, OSError) as e:
        raise Internal(f"unreadable manifest {path}: {e}") from None


def _entries(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except FileNotFoundError:
        return []
