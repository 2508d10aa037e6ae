"""fcd-vmm: launches Firecracker through its jailer and drives it over its API.

The helper skeleton (the same names in all four daemons): ``plan`` (pure:
paths, jailer argv, cgroup values, Firecracker API bodies), ``checks`` (pure
re-validation of every Launch argument), the adapters ``uidpool`` (uid/gid
per VM, persisted), ``cgroups``, ``jailfs`` (chroot preparation/removal),
``procs`` (pidfds, subreaper, inotify waits), ``fcclient`` (API client),
``fclog`` and ``launcher`` (the launch sequence), ``service`` (state and the
``@handles`` RPC handlers), ``__main__`` (composition root).
"""
