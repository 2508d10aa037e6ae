"""libnftables applier: run the JSON transactions that :mod:`fcd_net.ruleset` builds.

The only module of fcd-net that talks to nftables, through libnftables'
JSON API (``python3-nftables``) -- never the ``nft`` binary. Each public
method that changes the ruleset is exactly one ``json_cmd`` call, i.e. one
atomic nft transaction. The periodic "are fcd's tables still there" check is one
``NFT_MSG_GETTABLE`` dump through pyroute2 instead (:meth:`Firewall.present`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.nftables.main import NFTables

from fcd_common.config import NetworkConfig
from fcd_common.errors import Internal

from . import ruleset
from .plan import Lease
from .ruleset import Json

log = logging.getLogger("fcd.net.firewall")

NFPROTO_INET = 1
NFPROTO_BRIDGE = 7


class Firewall:
    def __init__(self, net: NetworkConfig) -> None:
        import nftables

        self.net = net
        self._nft: Any = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        self._local = threading.local()
        self._dump_failed = False

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

        One dump of the tables (``NFT_MSG_GETTABLE``) on this thread's netlink socket,
        whatever the ruleset holds: libnftables' ``list tables`` first fills its cache
        with every chain, set and set element (on fcd's ruleset two dozen netlink
        round trips, 1 ms at 1,000 elements of one set), and this runs every
        ``table_check_s`` on fcd-net's only worker thread. If that dump fails, the
        libnftables query answers instead; if that fails too the tables count as
        gone, and the rebuild that follows is idempotent."""
        try:
            have = {(t.get("nfgen_family"), t.get_attr("NFTA_TABLE_NAME")) for t in self._tables()}
        except (NetlinkError, OSError) as e:
            self._close_tables()
            # said once at warning level: a dump that keeps failing would say it every check
            level = logging.DEBUG if self._dump_failed else logging.WARNING
            self._dump_failed = True
            log.log(level, "cannot dump the nft tables (%s): asking libnftables", e)
            have = self._listed_tables()
        t = self.net.nft_table
        return {(NFPROTO_INET, t), (NFPROTO_BRIDGE, t)} <= have

    def _listed_tables(self) -> set[tuple[int, str]]:
        rc, out, _ = self._nft.json_cmd({"nftables": [{"list": {"tables": None}}]})
        if rc != 0:
            return set()
        families = {"inet": NFPROTO_INET, "bridge": NFPROTO_BRIDGE}
        return {
            (families.get(o["table"].get("family"), -1), o["table"].get("name"))
            for o in (out or {}).get("nftables", [])
            if isinstance(o, dict) and isinstance(o.get("table"), dict)
        }

    def _tables(self) -> list[Any]:
        nf = getattr(self._local, "nf", None)
        if nf is None:
            nf = self._local.nf = NFTables(nfgen_family=0)  # every family
        return list(nf.get_tables())

    def _close_tables(self) -> None:
        nf = getattr(self._local, "nf", None)
        self._local.nf = None
        if nf is not None:
            try:
                nf.close()
            except Exception as e:  # a socket already broken: nothing left to release
                log.debug("closing the nft socket: %s", e)

    def add_vm(self, lease: Lease) -> None:
        self.run(f"add the identity of {lease.vm_id}", ruleset.add_vm(self.net, lease))

    def remove_vm(self, lease: Lease) -> None:
        self.run(f"remove the identity of {lease.vm_id}", ruleset.remove_vm(self.net, lease))

    def replace_ports(self, old: Lease, new: Lease) -> None:
        cmd = ruleset.replace_ports(self.net, old, new)
        self.run(f"change the port mappings of {new.vm_id}", cmd)
