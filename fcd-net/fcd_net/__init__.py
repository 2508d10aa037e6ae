"""fcd-net: the network helper (CAP_NET_ADMIN): bridge, TAPs, address pool, nftables."""
