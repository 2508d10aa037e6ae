"""Length-prefixed msgspec MessagePack RPC between the fcd daemons."""

from .codec import ANY_CALLER, MAX_FRAME, Caller, Done, FrameDecoder, Protocol, Reply, Request
from .dispatch import handler_table, handles
from .transport import Handler, Peer, RpcClient, RpcServer, bind_unix, peer_credentials

__all__ = [
    "ANY_CALLER",
    "MAX_FRAME",
    "Caller",
    "Done",
    "FrameDecoder",
    "Handler",
    "Peer",
    "Protocol",
    "Reply",
    "Request",
    "RpcClient",
    "RpcServer",
    "bind_unix",
    "handler_table",
    "handles",
    "peer_credentials",
]
