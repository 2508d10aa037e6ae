"""fcd-storage: the daemon (``fcd-storage [serve]``) and ``fcd-storage import``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from fcd_common import config as config_mod
from fcd_common import logs, runtime
from fcd_common.errors import FcdError
from fcd_common.proto.storage import PROTOCOL
from fcd_common.service import RpcService, serve_rpc

from . import templates
from .manifest import encode
from .service import StorageService
from .store import Store

NAME = "fcd-storage"
log = logging.getLogger("fcd.storage")


def build_parser() -> argparse.ArgumentParser:
    parser = runtime.base_parser(NAME, "fcd storage helper: templates and per-VM disks")
    sub = parser.add_subparsers(dest="cmd", metavar="{serve,import}")
    serve = sub.add_parser("serve", help="run the daemon (the default)")
    imp = sub.add_parser("import", help="copy a kernel and rootfs into the template store")
    for p in (serve, imp):
        p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    imp.add_argument("--name", required=True, help="template name")
    imp.add_argument("--kernel", required=True, help="absolute path of the guest kernel (vmlinux)")
    imp.add_argument("--rootfs", required=True, help="absolute path of the root filesystem image")
    imp.add_argument("--kernel-args", default="", help="kernel command line for this template")
    return parser


async def serve(ctx: runtime.Context) -> RpcService:
    store = Store.from_config(ctx.cfg)
    store.ensure_dirs()
    removed = store.reclaim()
    if removed:
        log.info("reclaimed %d partial entries", len(removed))
    svc = StorageService(store)
    return await serve_rpc(ctx, "storage", PROTOCOL, svc, status=svc.status)


def import_command(args: argparse.Namespace) -> int:
    logs.setup(NAME, force_stderr=True)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        sys.stderr.write(f"{NAME}: invalid configuration: {e}\n")
        return runtime.EX_CONFIG
    store = Store.from_config(cfg)
    # The operator names the files on the command line with their own rights: their
    # directories are import directories for this one run (still no symlinks, and
    # only regular files, below them).
    store.import_dirs += tuple(
        dict.fromkeys(os.path.dirname(p) for p in (args.kernel, args.rootfs) if p.startswith("/"))
    )
    try:
        store.ensure_dirs()
        m = templates.import_template(store, args.name, args.kernel, args.rootfs, args.kernel_args)
    except FcdError as e:
        sys.stderr.write(f"{NAME} import: {e.code}: {e.message}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"{NAME} import: {e}\n")
        return 1
    sys.stdout.buffer.write(encode(m))
    sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "import":
        return import_command(args)
    return runtime.run(NAME, serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
