"""RPC codec and transport: framing, typed errors, concurrency, peer checks, bad input."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path

import msgspec
import pytest

from fcd_common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Unavailable,
)
from fcd_common.rpc import (
    ANY_CALLER,
    MAX_FRAME,
    Caller,
    FrameDecoder,
    Peer,
    Protocol,
    Reply,
    Request,
    RpcClient,
    RpcServer,
    bind_unix,
)
from fcd_common.rpc.codec import Call, decode_envelope, frame


class EchoReply(Reply):
    text: str


class Echo(Request[EchoReply], tag="t.echo"):
    text: str
    delay: float = 0.0


class Missing(Request[EchoReply], tag="t.missing"):
    key: str


class Crash(Request[EchoReply], tag="t.crash"):
    pass


class ApiOnly(Request[EchoReply], tag="t.api_only"):
    access = Caller.API


class Stranger(Request[EchoReply], tag="t.stranger"):
    pass


PROTO = Protocol("test", [Echo, Missing, Crash, ApiOnly])


async def echo(req: Echo, peer: Peer) -> EchoReply:
    await asyncio.sleep(req.delay)
    return EchoReply(text=req.text)


async def missing(req: Missing, peer: Peer) -> EchoReply:
    raise NotFound(f"no {req.key}", details={"key": req.key})


async def crash(req: Crash, peer: Peer) -> EchoReply:
    raise RuntimeError("boom")


async def api_only(req: ApiOnly, peer: Peer) -> EchoReply:
    return EchoReply(text="api")


HANDLERS = {Echo: echo, Missing: missing, Crash: crash, ApiOnly: api_only}


def test_frame_decoder_splits_and_joins() -> None:
    d = FrameDecoder()
    data = frame(b"abc") + frame(b"") + frame(b"x" * 70000)
    out: list[bytes] = []
    for i in range(0, len(data), 7):
        out += d.feed(data[i : i + 7])
    assert out == [b"abc", b"", b"x" * 70000]
    assert d.pending == 0


def test_frame_decoder_rejects_oversized() -> None:
    d = FrameDecoder()
    with pytest.raises(ProtocolError):
        d.feed(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError):
        frame(b"x" * (MAX_FRAME + 1))


def test_unknown_tag_is_a_protocol_error_and_bad_field_invalid_argument() -> None:
    raw = msgspec.msgpack.encode({"t": "t.nope"})
    with pytest.raises(ProtocolError, match="invalid request"):
        PROTO.decode_request(msgspec.Raw(raw))
    raw = msgspec.msgpack.encode({"t": "t.echo", "text": 5})
    with pytest.raises(InvalidArgument, match=r"\$\.text") as ei:
        PROTO.decode_request(msgspec.Raw(raw))
    assert ei.value.details == {"field": "text"}
    raw = msgspec.msgpack.encode({"t": "t.echo", "text": "a", "extra": 1})
    with pytest.raises(InvalidArgument):
        PROTO.decode_request(msgspec.Raw(raw))


def test_envelope_roundtrip() -> None:
    data = PROTO.encode_call(7, Echo(text="hi"))
    (payload,) = FrameDecoder().feed(data)
    env = decode_envelope(payload)
    assert isinstance(env, Call) and env.id == 7
    assert PROTO.decode_request(env.body) == Echo(text="hi")


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "t.sock"


async def _serve(
    path: Path, uids: frozenset[int] | None = None, caller: Caller = ANY_CALLER
) -> RpcServer:
    peers = dict.fromkeys(uids or {os.geteuid()}, caller)
    server = RpcServer(PROTO, HANDLERS, peers=peers)
    await server.start(bind_unix(path))
    return server


def test_calls_concurrent_typed_errors(sock_path: Path) -> None:
    async def main() -> None:
        server = await _serve(sock_path)
        client = RpcClient(sock_path, PROTO, timeout=5)
        slow = asyncio.create_task(client.call(Echo(text="slow", delay=0.3)))
        fast = await client.call(Echo(text="fast"))
        assert fast.text == "fast" and not slow.done()  # not head-of-line blocked
        assert (await slow).text == "slow"
        results = await asyncio.gather(*(client.call(Echo(text=str(i))) for i in range(200)))
        assert [r.text for r in results] == [str(i) for i in range(200)]
        with pytest.raises(NotFound) as ei:
            await client.call(Missing(key="k"))
        assert ei.value.details == {"key": "k"}
        with pytest.raises(Exception) as ei2:
            await client.call(Crash())
        assert getattr(ei2.value, "code", None) == "internal"
        with pytest.raises(DeadlineExceeded):
            await client.call(Echo(text="x", delay=2), timeout=0.1)
        # the connection survives a timeout
        assert (await client.call(Echo(text="again"))).text == "again"
        await client.close()
        await server.close(1)

    asyncio.run(main())


def test_peer_not_allowed_is_refused(sock_path: Path) -> None:
    async def main() -> None:
        server = await _serve(sock_path, frozenset({os.geteuid() + 12345}))
        client = RpcClient(sock_path, PROTO, timeout=5)
        with pytest.raises(PermissionDenied):
            await client.call(Echo(text="x"))
        await client.close()
        await server.close(1)

    asyncio.run(main())


def test_garbage_and_oversized_frames_do_not_kill_server(sock_path: Path) -> None:
    async def main() -> None:
        server = await _serve(sock_path)
        loop = asyncio.get_running_loop()
        for junk in (
            frame(b"\xc1\xc1garbage"),
            frame(msgspec.msgpack.encode({"k": "call", "id": 3, "body": {"t": "zz"}})),
            struct.pack(">I", MAX_FRAME + 5),
        ):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            await loop.sock_connect(s, str(sock_path))
            await loop.sock_sendall(s, junk)
            reply = await asyncio.wait_for(loop.sock_recv(s, 65536), 5)
            (payload,) = FrameDecoder().feed(reply)
            env = decode_envelope(payload)
            assert getattr(env, "code", None) == "protocol_error"
            s.close()
        client = RpcClient(sock_path, PROTO, timeout=5)
        assert (await client.call(Echo(text="alive"))).text == "alive"
        await client.close()
        await server.close(1)

    asyncio.run(main())


def test_no_server_is_unavailable(sock_path: Path) -> None:
    async def main() -> None:
        client = RpcClient(sock_path, PROTO, timeout=1)
        with pytest.raises(Unavailable):
            await client.call(Echo(text="x"))

    asyncio.run(main())


def test_access_rule_is_enforced_per_request(sock_path: Path) -> None:
    """An ADMIN peer (root's tools) may call what is open to it, not an API-only request."""

    async def main() -> None:
        server = await _serve(sock_path, caller=Caller.ADMIN)
        client = RpcClient(sock_path, PROTO, timeout=5)
        assert (await client.call(Echo(text="ok"))).text == "ok"
        with pytest.raises(PermissionDenied, match=r"t\.api_only may not be called"):
            await client.call(ApiOnly())
        assert (await client.call(Echo(text="still"))).text == "still"  # connection kept
        await client.close()
        await server.close(1)
        server = await _serve(sock_path, caller=Caller.API)
        client = RpcClient(sock_path, PROTO, timeout=5)
        assert (await client.call(ApiOnly())).text == "api"
        await client.close()
        await server.close(1)

    asyncio.run(main())


def test_client_refuses_a_request_of_another_protocol(sock_path: Path) -> None:
    async def main() -> None:
        client = RpcClient(sock_path, PROTO, timeout=1)
        with pytest.raises(ProtocolError, match="not a test request"):
            await client.call(Stranger())

    asyncio.run(main())


def test_request_must_name_its_reply_and_table_must_match() -> None:
    class _NoReply(Request, tag="t.noreply"):  # type: ignore[type-arg]
        pass

    with pytest.raises(TypeError, match="does not name its reply"):
        Protocol("bad", [Echo, _NoReply])

    with pytest.raises(ValueError, match=r"no handler for \['ApiOnly'\]"):
        RpcServer(PROTO, {Echo: echo, Missing: missing, Crash: crash}, peers={0: ANY_CALLER})
    assert Echo.reply is EchoReply and Echo.access == ANY_CALLER and ApiOnly.access == Caller.API


def test_calls_of_a_peer_that_went_away_are_cancelled(sock_path: Path) -> None:
    """A long poll must not outlive its caller (it would hold the daemon's shutdown)."""

    async def main() -> None:
        server = await _serve(sock_path)
        client = RpcClient(sock_path, PROTO, timeout=5)
        pending = asyncio.create_task(client.call(Echo(text="slow", delay=30)))
        for _ in range(500):  # until the server has the call
            if server._calls:
                break
            await asyncio.sleep(0.01)
        (call,) = server._calls
        await client.close()
        pending.cancel()
        await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 2)
        assert call.cancelled() or call.done()
        await server.close(0.1)

    asyncio.run(main())


class Poll(Request[EchoReply], tag="t.poll"):
    long_poll = True


def test_a_closing_server_cancels_long_polls_at_once(sock_path: Path) -> None:
    async def poll(req: Poll, peer: Peer) -> EchoReply:
        await asyncio.sleep(30)
        return EchoReply(text="late")

    async def main() -> None:
        proto = Protocol("test", [Echo, Poll])
        server = RpcServer(proto, {Echo: echo, Poll: poll}, peers={os.geteuid(): ANY_CALLER})
        await server.start(bind_unix(sock_path))
        client = RpcClient(sock_path, proto, timeout=5)
        waiting = asyncio.create_task(client.call(Poll()))
        for _ in range(500):
            if server._calls:
                break
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await server.close(grace=10)
        assert time.monotonic() - t0 < 2  # not the 10 s grace
        with pytest.raises(Unavailable):
            await waiting
        await client.close()

    asyncio.run(main())
