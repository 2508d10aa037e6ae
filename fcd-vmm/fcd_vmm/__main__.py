"""fcd-vmm: composition root.

Runs as root with a cut capability bounding set; serves the fcd-vmm RPC
contract (``fcd_common.proto.vmm``) on ``cfg.socket("vmm")``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fcd_common import runtime
from fcd_common.proto import vmm as proto
from fcd_common.service import serve_rpc

from .procs import set_child_subreaper
from .service import VmmService


async def build(ctx: runtime.Context) -> runtime.Service:
    set_child_subreaper()
    manager = VmmService(ctx.cfg)
    manager.start()
    return await serve_rpc(
        ctx, "vmm", proto.PROTOCOL, manager, status=manager.status_line, on_close=manager.close
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = runtime.base_parser("fcd-vmm", "Firecracker launcher: jails, processes, VM lifecycle")
    return runtime.run("fcd-vmm", build, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
