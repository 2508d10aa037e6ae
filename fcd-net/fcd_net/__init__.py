"""fcd-net: the network helper (CAP_NET_ADMIN): bridge, TAPs, address pool, nftables.

Skeleton: ``plan`` (pure: leases, names, addresses) with ``ruleset``,
``vm_rules`` and ``ns_rules`` (pure nftables plans), ``checks`` (pure
re-validation of ports and policies), the adapters ``links``, ``netns``,
``firewall``/``nftjson``, ``leases``, ``reconcile``, ``listeners`` (host
sockets on a port, sock_diag), ``reserved_ports`` (the range in
``ip_local_reserved_ports``); ``core`` (the service's
synchronous logic, on one worker thread), ``service`` (the ``@handles`` RPC
handlers), ``__main__`` (composition root).
"""
