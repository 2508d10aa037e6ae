"""Shared building blocks of the fcd daemons: config, ids, errors, RPC, runtime."""
