"""fcd-vmm: launches Firecracker through its jailer and drives it over its API.

Modules: ``uidpool`` (uid/gid per VM, persisted), ``jail`` (pure plan: paths,
jailer argv, cgroup values, API bodies), ``checks`` (re-validation of every
Launch argument), ``cgroups``, ``jailfs`` (chroot preparation/removal),
``procs`` (pidfds, subreaper, inotify waits), ``fcclient`` (API client),
``launcher`` (the launch sequence), ``manager`` (state + RPC handlers).
"""
