"""Firecracker v1.7.0's command line (utils::arg_parser semantics) and process lifecycle."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

from .schemas import LEVELS
from .server import ApiServer, bind
from .telemetry import Logger, Metrics, io_error, open_sink
from .vmm import VERSION, Vmm

EXIT_OK, EXIT_GENERIC, EXIT_BAD_CONFIG, EXIT_ARG_PARSING = 0, 1, 152, 153
DEFAULT_API_SOCK = "/run/firecracker.socket"
DEFAULT_ID = "anonymous-instance"
HTTP_MAX_PAYLOAD_SIZE = 51200

# name -> takes_value
ARGS: dict[str, bool] = {
    "api-sock": True,
    "id": True,
    "seccomp-filter": True,
    "no-seccomp": False,
    "start-time-us": True,
    "start-time-cpu-us": True,
    "parent-cpu-time-us": True,
    "config-file": True,
    "no-api": False,
    "log-path": True,
    "level": True,
    "module": True,
    "show-level": False,
    "show-log-origin": False,
    "metrics-path": True,
    "boot-timer": False,
    "http-api-max-payload-size": True,
    "mmds-size-limit": True,
    "metadata": True,
    "describe-snapshot": True,
    "snapshot-version": False,
    "version": False,
}
SIGNAL_EXIT = {
    signal.SIGBUS: 149,
    signal.SIGSEGV: 150,
    signal.SIGXFSZ: 151,
    signal.SIGXCPU: 154,
    signal.SIGHUP: 156,
    signal.SIGILL: 157,
}
_ID = re.compile(r"^[A-Za-z0-9-]+$")


class ArgError(Exception):
    pass


def parse_args(argv: list[str]) -> dict[str, str | bool]:
    args = argv[1:]
    if "--" in args:
        args = args[: args.index("--")]
    if "--help" in args:
        return {"help": True}
    if "--version" in args:
        return {"version": True}
    out: dict[str, str | bool] = {}
    it = iter(args)
    for arg in it:
        if not arg.startswith("--"):
            raise ArgError(
                f"Found argument '{arg}' which wasn't expected, or isn't valid in this context."
            )
        name = arg[2:]
        if name not in ARGS:
            raise ArgError(
                f"Found argument '{name}' which wasn't expected, or isn't valid in this context."
            )
        if name in out:
            raise ArgError(f"The argument '{name}' was provided more than once.")
        if ARGS[name]:
            value = next(it, None)
            if value is None or value.startswith("--"):
                raise ArgError(f"The argument '{name}' requires a value, but none was supplied.")
            out[name] = value
        else:
            out[name] = True
    if out.get("no-api") and "config-file" not in out:
        raise ArgError("Argument 'config-file' required, but not found.")
    return out


def validate_id(instance_id: str) -> str | None:
    if not 1 <= len(instance_id) <= 64:
        return f"Invalid len ({len(instance_id)})"
    for pos, ch in enumerate(instance_id):
        if not (ch.isascii() and (ch.isalnum() or ch == "-")):
            return f"Invalid char ({ch}) at position {pos}"
    return None


def _u64(args: dict[str, str | bool], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(str(raw))
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise ArgError(f"Invalid value for {name}: {raw}") from None


def main(argv: list[str]) -> int:  # noqa: PLR0912, PLR0915 -- Firecracker's own start-up sequence, step for step
    """Run the Firecracker double; returns the process exit code."""
    wall0 = time.monotonic_ns() // 1000
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    logger = Logger(DEFAULT_ID)
    try:
        args = parse_args(argv)
    except ArgError as e:
        logger.error(f"Arguments parsing error: {e} \n\nFor more information try --help.")
        return EXIT_ARG_PARSING
    if args.get("help"):
        print("Firecracker v" + VERSION + "\n")
        print("\n".join(f"--{n}" + (f" <{n}>" if v else "") for n, v in ARGS.items()))
        return EXIT_OK
    if args.get("version"):
        print(f"Firecracker v{VERSION}\n")
        return EXIT_OK
    if args.get("snapshot-version"):
        print("v1.0.0")
        return EXIT_OK
    instance_id = str(args.get("id", DEFAULT_ID))
    bad = validate_id(instance_id)
    if bad is not None:
        logger.error(f"Invalid instance ID: {bad}")
        print(f'Error: InvalidInstanceId("{bad}")', file=sys.stderr)
        return EXIT_GENERIC
    logger.instance_id = instance_id
    try:
        start_us = _u64(args, "start-time-us", wall0)
        start_cpu_us = _u64(args, "start-time-cpu-us", 0)
        parent_cpu_us = _u64(args, "parent-cpu-time-us", 0)
        max_payload = _u64(args, "http-api-max-payload-size", HTTP_MAX_PAYLOAD_SIZE)
    except ArgError as e:
        logger.error(f"Arguments parsing error: {e}")
        return EXIT_ARG_PARSING
    if "level" in args:
        level = LEVELS.get(str(args["level"]).lower())
        if level is None:
            logger.error(f"Invalid value for level: {args['level']}")
            return EXIT_GENERIC
        logger.level = level
    logger.show_level = bool(args.get("show-level", False))
    logger.show_origin = bool(args.get("show-log-origin", False))
    if "module" in args:
        logger.module = str(args["module"])
    if "log-path" in args:
        try:
            logger.configure({"log_path": str(args["log-path"])})
        except OSError as e:
            logger.error(f"Failed to initialize logger: Failed to open target file: {io_error(e)}")
            return EXIT_GENERIC
    if "seccomp-filter" in args and not os.path.isfile(str(args["seccomp-filter"])):
        logger.error("Seccomp error: Failed to open seccomp filter file.")
        return EXIT_GENERIC
    if "config-file" in args:
        logger.error(
            "Configuration for VMM from one single json failed: the test double only "
            "supports the API."
        )
        return EXIT_BAD_CONFIG
    metrics = Metrics(
        startup_us=max(0, time.monotonic_ns() // 1000 - start_us),
        startup_cpu_us=time.process_time_ns() // 1000 - start_cpu_us + parent_cpu_us,
    )
    metrics_from_cli = False
    if "metrics-path" in args:
        try:
            metrics.fd = open_sink(str(args["metrics-path"]))
        except OSError as e:
            logger.error(f"Failed to initialize metrics: Failed to open target file: {io_error(e)}")
            return EXIT_GENERIC
        metrics_from_cli = True
    logger.info(f"Running Firecracker v{VERSION}")
    api_sock = str(args.get("api-sock", DEFAULT_API_SOCK))
    try:
        listener = bind(api_sock)
    except OSError:
        msg = f"Failed to open the API socket at: {api_sock}. Check that it is not already used."
        logger.error(msg)
        print(f"Error: {msg}", file=sys.stderr)
        return EXIT_GENERIC
    vmm = Vmm(instance_id, logger, metrics, metrics_from_cli)

    def on_fatal_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name.lower()
        metrics.inc("signals", name)
        logger.error(f"Shutting down VM after intercepting signal {signum}, code 0.")
        metrics.write()
        os._exit(SIGNAL_EXIT[signal.Signals(signum)])

    for sig in SIGNAL_EXIT:
        signal.signal(sig, on_fatal_signal)
    return ApiServer(listener, vmm, max_payload).serve()
