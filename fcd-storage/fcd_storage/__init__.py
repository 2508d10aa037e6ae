"""fcd-storage: template store, per-VM copy-on-write disks, snapshot files (unprivileged).

Skeleton: ``plan`` (pure: sizes, manifests to write, re-checks of names and
kernel args), the adapters ``fileio``, ``extfs``, ``manifest``; the catalog
``store`` and the operation modules ``templates``, ``disks``, ``drives``,
``snapshots``, ``reclaim``, ``refs``; ``service`` (the ``@handles`` RPC
handlers), ``__main__`` (composition root).
"""
