"""libnftables applier: run the JSON transactions that :mod:`fcd_net.ruleset` builds.

The only module of fcd-net that talks to nftables, through libnftables'
JSON API (``python3-nftables``) -- never the ``nft`` binary. Each public
method is exactly one ``json_cmd`` call, i.e. one atomic nft transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fcd_common.config import NetworkConfig
from fcd_common.errors import Internal

from . import ruleset
from .plan import Lease
from .ruleset import Json

log = logging.getLogger("fcd.net.firewall")


class Firewall:
    def __init__(self, net: NetworkConfig) -> None:
        import nftables

        self.net = net
        self._nft: Any = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def run(self, what: str, cmd: Json) -> Any:
        """One transaction; raise Internal with nft's own message if it is refused."""
        if not cmd.get("nftables"):
            return None
        rc, out, err = self._nft.json_cmd(cmd)
        if rc != 0:
            raise Internal(f"nftables refused to {what}: {str(err).strip() or f'rc {rc}'}")
        return out

    def ensure_base(self, leases: Sequence[Lease]) -> None:
        """(Re)build both fcd tables with every VM of ``leases``, atomically."""
        self.run("build the fcd tables", ruleset.base_ruleset(self.net, leases))
        log.info(
            "nft tables inet/bridge %s in place with %d VMs",
            self.net.nft_table,
            len(leases),
        )

    def present(self) -> bool:
        """Both fcd tables exist (something else may have flushed the ruleset).

        Asks for the list of tables only: listing the tables themselves returned every
        VM's elements and chains, O(VMs) every 2 s on fcd-net's only worker thread."""
        rc, out, _ = self._nft.json_cmd({"nftables": [{"list": {"tables": None}}]})
        if rc != 0:
            return False
        have = {
            (o["table"].get("family"), o["table"].get("name"))
            for o in (out or {}).get("nftables", [])
            if isinstance(o, dict) and isinstance(o.get("table"), dict)
        }
        t = self.net.nft_table
        return {("inet", t), ("bridge", t)} <= have

    def add_vm(self, lease: Lease) -> None:
        self.run(f"add the identity of {lease.vm_id}", ruleset.add_vm(self.net, lease))

    def remove_vm(self, lease: Lease) -> None:
        self.run(f"remove the identity of {lease.vm_id}", ruleset.remove_vm(self.net, lease))

    def replace_ports(self, old: Lease, new: Lease) -> None:
        cmd = ruleset.replace_ports(self.net, old, new)
        self.run(f"change the port mappings of {new.vm_id}", cmd)
