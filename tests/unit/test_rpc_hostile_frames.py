"""#9 finding 8: a frame nested thousands deep is answered, not fatal to the connection."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from fcd_common.errors import ProtocolError
from fcd_common.rpc import FrameDecoder, RpcClient
from fcd_common.rpc.codec import (
    Envelope,
    Failure,
    FrameError,
    Result,
    decode_envelope,
    frame,
    peek_call_id,
)

from .test_rpc import PROTO, Echo, _serve

DEEP = 5000


@pytest.fixture(autouse=True)
def _daemon_recursion_limit() -> Iterator[None]:
    """The daemons run with CPython's default recursion limit (1000), which is what caps
    msgspec's nesting; other tests' libraries (hypothesis) may have raised it."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _deep_call(call_id: int, depth: int = DEEP) -> bytes:
    """A call envelope whose body is ``depth`` nested one-element arrays."""
    enc = msgspec.msgpack.encode
    body = b"\x91" * depth + b"\xc0"
    return b"\x83" + enc("k") + enc("call") + enc("id") + enc(call_id) + enc("body") + body


def test_finding8_deep_envelope_is_a_protocol_error_with_its_call_id() -> None:
    with pytest.raises(FrameError, match="nested too deeply") as ei:
        decode_envelope(_deep_call(4242))
    assert ei.value.call_id == 4242
    assert isinstance(ei.value, ProtocolError)
    assert peek_call_id(_deep_call(7)) == 7
    assert peek_call_id(b"\xc1garbage") == 0


def test_finding8_deep_request_body_is_a_protocol_error() -> None:
    deep = b"\x82" + msgspec.msgpack.encode("t") + msgspec.msgpack.encode("t.echo")
    deep += msgspec.msgpack.encode("text") + b"\x91" * DEEP + b"\xc0"
    with pytest.raises(ProtocolError, match=r"invalid request|nested too deeply"):
        PROTO.decode_request(msgspec.Raw(deep))


def test_finding8_deep_frame_gets_a_reply_and_the_connection_lives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock_path = tmp_path / "t.sock"

    async def main() -> None:
        server = await _serve(sock_path)
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        await loop.sock_connect(s, str(sock_path))
        # the deep frame and a good call behind it, in one write, on one connection
        await loop.sock_sendall(s, frame(_deep_call(1)) + PROTO.encode_call(2, Echo(text="after")))
        dec, got = FrameDecoder(), list[Envelope]()
        while len(got) < 2:
            data = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
            assert data, "the server dropped the connection"
            got += [decode_envelope(p) for p in dec.feed(data)]
        by_id = {e.id: e for e in got}
        bad = by_id[1]
        assert isinstance(bad, Failure) and bad.code == "protocol_error"
        assert "nested too deeply" in bad.message
        good = by_id[2]
        assert isinstance(good, Result)
        assert PROTO.decode_reply(Echo(text=""), good.body).text == "after"
        s.close()
        # the typed client on a connection of its own still works
        client = RpcClient(sock_path, PROTO, timeout=5)
        assert (await client.call(Echo(text="alive"))).text == "alive"
        await client.close()
        await server.close(1)

    with caplog.at_level(logging.WARNING, logger="fcd.rpc"):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a bad frame"
