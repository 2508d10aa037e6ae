"""Length-prefixed msgspec MessagePack RPC between the fcd daemons."""

from .codec import MAX_FRAME, Done, FrameDecoder, Protocol, Reply, Request
from .transport import Handler, Peer, RpcClient, RpcServer, bind_unix, peer_credentials

__all__ = [
    "MAX_FRAME",
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
    "peer_credentials",
]
