"""fcd_vmm.fchttp: one keep-alive HTTP/1.1 connection to a Firecracker API socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fcd_vmm import fchttp


async def _server(path: Path, replies: list[bytes], conns: list[int]) -> asyncio.AbstractServer:
    """Answers each request with the next of ``replies``; counts connections."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(1)
        buf = b""
        while replies:
            data = await r.read(65536)
            if not data:
                break
            buf += data
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(rest) < length:
                    break
                buf = rest[length:]
                reply = replies.pop(0)
                w.write(reply)
                await w.drain()
                if b"Connection: close" in reply:
                    w.close()
                    return
        w.close()

    return await asyncio.start_unix_server(handle, path=str(path))


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n"


def test_requests_share_one_connection(tmp_path: Path) -> None:
    sock, conns = tmp_path / "s", []
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n{"state":"Running"}'

    async def main() -> list[tuple[int, bytes]]:
        server = await _server(sock, [NO_CONTENT, NO_CONTENT, ok], conns)
        async with server:
            c = fchttp.Connection(str(sock))
            out = [
                await c.request("PUT", "/logger", b"{}"),
                await c.request("PUT", "/metrics", b"{}"),
                await c.request("GET", "/", None),
            ]
            c.close()
            return out

    out = asyncio.run(main())
    assert out == [(204, b""), (204, b""), (200, b'{"state":"Running"}')]
    assert len(conns) == 1


def test_a_closed_connection_is_opened_again(tmp_path: Path) -> None:
    sock, conns = tmp_path / "s", []
    closing = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"

    async def main() -> None:
        server = await _server(sock, [closing, NO_CONTENT], conns)
        async with server:
            c = fchttp.Connection(str(sock))
            assert await c.request("PUT", "/a", b"{}") == (204, b"")
            assert await c.request("PUT", "/b", b"{}") == (204, b"")
            c.close()

    asyncio.run(main())
    assert len(conns) == 2


def test_an_answer_over_the_limit_is_refused(tmp_path: Path) -> None:
    sock, conns = tmp_path / "s", []
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000

    async def main() -> None:
        server = await _server(sock, [big], conns)
        async with server:
            c = fchttp.Connection(str(sock), max_body=4096)
            with pytest.raises(fchttp.TooLarge):
                await c.request("GET", "/", None)
            c.close()

    asyncio.run(main())


def test_a_server_that_hangs_up_mid_answer_is_an_os_error(tmp_path: Path) -> None:
    sock, conns = tmp_path / "s", []
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nabc"

    async def main() -> None:
        server = await _server(sock, [cut], conns)
        async with server:
            c = fchttp.Connection(str(sock))
            with pytest.raises(fchttp.ProtocolError):
                await c.request("GET", "/", None)
            c.close()

    asyncio.run(main())


def test_a_malformed_answer_is_a_protocol_error_and_the_connection_is_dropped(
    tmp_path: Path,
) -> None:
    sock, conns = tmp_path / "s", []
    garbage = b"HTTP/1.1 2x0 OK\r\n\r\n"

    async def main() -> None:
        server = await _server(sock, [garbage, NO_CONTENT], conns)
        async with server:
            c = fchttp.Connection(str(sock))
            with pytest.raises(fchttp.ProtocolError):
                await c.request("GET", "/", None)
            assert await c.request("PUT", "/a", b"{}") == (204, b"")  # a new connection
            c.close()

    asyncio.run(main())
    assert len(conns) == 2


def test_chunked_answers_and_bytes_past_the_answer(tmp_path: Path) -> None:
    sock, conns = tmp_path / "s", []
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    two = NO_CONTENT + NO_CONTENT  # a second answer nobody asked for: the connection goes

    async def main() -> list[tuple[int, bytes]]:
        server = await _server(sock, [chunked, two, NO_CONTENT], conns)
        async with server:
            c = fchttp.Connection(str(sock))
            out = [
                await c.request("GET", "/", None),
                await c.request("PUT", "/a", b"{}"),
                await c.request("PUT", "/b", b"{}"),
            ]
            c.close()
            return out

    assert asyncio.run(main()) == [(200, b"abc"), (204, b""), (204, b"")]
    assert len(conns) == 2


@pytest.mark.parametrize(
    ("method", "target"),
    [("POST", "/a"), ("GET", "a"), ("GET", "/a b"), ("PUT", "/a\r\nX-Evil: 1"), ("GET", "/\u00e9")],
)
def test_a_request_that_could_smuggle_a_header_is_refused(method: str, target: str) -> None:
    with pytest.raises(fchttp.BadRequest):
        fchttp.request_bytes(method, target, None)


def test_the_request_bytes() -> None:
    assert fchttp.request_bytes("PUT", "/drives/rootfs", b"{}") == (
        b"PUT /drives/rootfs HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert fchttp.request_bytes("GET", "/", None) == (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
    )
