"""The request id of the work in hand, carried across every hop.

fcd-api sets it from ``X-Request-Id`` (or makes one); the RPC client sends it in
each call's frame (:class:`fcd_common.rpc.codec.Call` ``rid``) and the server
installs it for the handler's task, and :func:`fcd_common.logs.setup` adds it
to every log record as ``FCD_REQUEST_ID``. So ``journalctl FCD_REQUEST_ID=<id>``
shows one create across the four daemons.
"""

from __future__ import annotations

import contextvars

NONE = "-"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("fcd_request_id", default=NONE)
"""``-`` when no request is being served (start-up, background watchers)."""


def current() -> str | None:
    """The id to send on the wire: None outside a request."""
    rid = request_id.get()
    return None if rid == NONE else rid
