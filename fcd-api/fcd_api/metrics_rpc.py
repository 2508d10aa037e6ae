"""fcd-api's calls to its helpers, timed for Prometheus (``fcd_rpc_*``; see prom.py)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from fcd_common.errors import FcdError
from fcd_common.rpc import Request, RpcClient
from fcd_common.rpc.codec import R

__all__ = ["RPC_ERRORS", "RPC_SECONDS", "TimedRpcClient"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_SECONDS = Histogram(
    "fcd_rpc_duration_seconds",
    "Duration of fcd-api's calls to its helpers",
    ["helper", "method"],
    buckets=_BUCKETS,
    registry=None,
)
RPC_ERRORS = Counter(
    "fcd_rpc_errors",
    "fcd-api's helper calls that failed, by error code",
    ["helper", "method", "code"],
    registry=None,
)


class TimedRpcClient(RpcClient):
    """An RpcClient whose every call is timed into ``fcd_rpc_duration_seconds``."""

    async def call(self, request: Request[R], *, timeout: float | None = None) -> R:
        helper = self.protocol.name
        method = type(request).__struct_config__.tag
        t0 = time.perf_counter()
        try:
            return await super().call(request, timeout=timeout)
        except FcdError as e:
            RPC_ERRORS.labels(helper, str(method), e.code).inc()
            raise
        finally:
            RPC_SECONDS.labels(helper, str(method)).observe(time.perf_counter() - t0)
