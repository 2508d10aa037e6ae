"""fcd-storage: template store and per-VM copy-on-write root disks (unprivileged)."""
