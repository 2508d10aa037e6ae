"""The supervision fields of a VM's spec: health check, restart policy, readiness.

They follow the conventions operators know from container health checks and
restart policies. Every number left out of a request comes from the
``[supervision]`` section of the configuration (:func:`effective_check`,
:func:`effective_policy`), so a change of the defaults applies to VMs created
before it.

* ``health_check``: ``{check: "process" | "api" | "tcp:PORT" | "serial:REGEX",
  interval_s, timeout_s, retries, start_period_s}``;
* ``restart_policy``: ``{mode: "no" | "on-failure" | "always", max_retries,
  backoff}`` (``backoff``: seconds before the first attempt, doubled each
  further one, at most ``supervision.restart_backoff_max_s``);
* ``wait_for``: ``"tcp:PORT" | "serial:REGEX"`` with ``wait_timeout_s``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from fcd_common.config import SupervisionConfig
from fcd_common.errors import InvalidArgument
from fcd_common.schema import Record

__all__ = [
    "CheckSpec",
    "Effective",
    "EffectivePolicy",
    "Health",
    "HealthCheck",
    "RestartPolicy",
    "WaitFor",
    "check_wait_for",
    "effective_check",
    "effective_policy",
    "parse_target",
]

CHECK_PATTERN = r"^(process|api|tcp:[0-9]{1,5}|serial:.{1,256})\Z"
WAIT_PATTERN = r"^(tcp:[0-9]{1,5}|serial:.{1,256})\Z"

CheckSpec = Annotated[str, msgspec.Meta(pattern=CHECK_PATTERN, max_length=263)]
WaitFor = Annotated[str, msgspec.Meta(pattern=WAIT_PATTERN, max_length=263)]
Interval = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Period = Annotated[float, msgspec.Meta(ge=0, le=3600)]


class Health(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class HealthCheck(Record):
    check: CheckSpec
    interval_s: Interval | None = None
    timeout_s: Interval | None = None
    retries: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    """Consecutive failures (after the start period) that make the VM unhealthy."""
    start_period_s: Period | None = None
    """Failures in this time after a start do not count; a success ends it."""

    def __post_init__(self) -> None:
        parse_target(self.check)  # a bad port or regex: ValueError -> 400 naming the field


class RestartPolicy(Record):
    mode: Literal["no", "on-failure", "always"] = "no"
    """on-failure: restart a VM that crashed (``error``) or became unhealthy;
    always: also one whose guest shut itself down (``stopped`` without a client
    asking). A VM a client stopped, paused or suspended is never restarted."""
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None = None
    backoff: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None


@dataclass(frozen=True)
class Effective:
    """A health check with every default filled in."""

    kind: Literal["process", "api", "tcp", "serial"]
    arg: str
    """tcp: the port; serial: the regular expression."""
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float

    @property
    def port(self) -> int:
        return int(self.arg)


@dataclass(frozen=True)
class EffectivePolicy:
    mode: Literal["no", "on-failure", "always"]
    max_retries: int
    backoff_s: float
    backoff_max_s: float


def parse_target(text: str) -> tuple[Literal["process", "api", "tcp", "serial"], str]:
    """``"tcp:80"`` -> ``("tcp", "80")``; raises ValueError for a bad port or regex."""
    kind, _, arg = text.partition(":")
    if kind == "tcp":
        if not 1 <= int(arg) <= 65535:
            raise ValueError(f"{text!r}: port must be 1..65535")
        return "tcp", arg
    if kind == "serial":
        try:
            re.compile(arg)
        except re.error as e:
            raise ValueError(f"{text!r}: bad regular expression: {e}") from None
        return "serial", arg
    if kind in ("process", "api") and not arg:
        return kind, ""  # type: ignore[return-value]
    raise ValueError(f"unknown check {text!r}")


def check_wait_for(wait_for: str | None) -> None:
    """InvalidArgument for a ``wait_for`` whose port or regex is bad."""
    if wait_for is None:
        return
    try:
        parse_target(wait_for)
    except ValueError as e:
        raise InvalidArgument(f"wait_for: {e}", details={"field": "wait_for"}) from None


def effective_check(hc: HealthCheck | None, cfg: SupervisionConfig) -> Effective | None:
    """The VM's health check with the configured defaults; None: the VM has none."""
    check = hc.check if hc is not None else cfg.health_check
    if not check:
        return None
    kind, arg = parse_target(check)

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    return Effective(
        kind=kind,
        arg=arg,
        interval_s=pick(hc.interval_s if hc else None, cfg.health_interval_s),
        timeout_s=pick(hc.timeout_s if hc else None, cfg.health_timeout_s),
        retries=int(pick(hc.retries if hc else None, cfg.health_retries)),
        start_period_s=pick(hc.start_period_s if hc else None, cfg.health_start_period_s),
    )


def effective_policy(rp: RestartPolicy | None, cfg: SupervisionConfig) -> EffectivePolicy:
    return EffectivePolicy(
        mode=rp.mode if rp is not None else cfg.restart_mode,
        max_retries=cfg.restart_max_retries
        if rp is None or rp.max_retries is None
        else rp.max_retries,
        backoff_s=cfg.restart_backoff_s if rp is None or rp.backoff is None else rp.backoff,
        backoff_max_s=cfg.restart_backoff_max_s,
    )
