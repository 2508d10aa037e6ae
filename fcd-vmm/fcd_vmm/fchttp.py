"""One HTTP/1.1 connection to a Firecracker API socket: h11 over an asyncio Unix stream.

Firecracker's API is plain HTTP/1.1 on a Unix socket: no TLS, no redirects,
cookies, auth, pools or proxies. httpx brought all of those along on every call
(and anyio and httpcore under it): a third of fcd-vmm's CPU per create went
into its layers for the seven calls of a boot (py-spy, issue #14). This is the
part that is needed, on h11 (the HTTP/1.1 state machine httpx itself uses):
one keep-alive connection per client, a request, its complete answer.

Errors: ``OSError`` when the socket cannot be reached or the connection
breaks, ``h11.ProtocolError`` for a malformed answer, :class:`TooLarge` for an
answer over ``max_body`` bytes (a jailed process does not get to make fcd-vmm
buffer without bound); the caller turns them into fcd errors.
"""

from __future__ import annotations

import asyncio

import h11

MAX_BODY = 1 << 20
_READ = 65536


class TooLarge(Exception):
    """The answer's body exceeds the limit."""


class Connection:
    """Requests one after another over one connection (re-opened when the server closes it)."""

    def __init__(self, path: str, *, max_body: int = MAX_BODY) -> None:
        self.path = path
        self.max_body = max_body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._h11: h11.Connection | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]:
        if self._writer is None or self._h11 is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=_READ)
            self._h11 = h11.Connection(h11.CLIENT)
        return self._reader, self._writer, self._h11

    async def request(self, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        """(status, body) of one request; the connection is kept for the next if it can be."""
        reader, writer, conn = await self._open()
        try:
            headers = [("Host", "localhost"), ("Accept", "application/json")]
            if body is not None:
                headers += [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ]
            out = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body is not None:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
            status, content = await self._answer(reader, conn)
        except BaseException:
            self.close()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # Connection: close, or anything unexpected: the next request opens anew
            self.close()
        return status, content

    async def _answer(
        self, reader: asyncio.StreamReader, conn: h11.Connection
    ) -> tuple[int, bytes]:
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ)
                conn.receive_data(data)  # b"" marks the end of the stream
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise TooLarge(f"answer larger than {self.max_body} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection mid-answer")
            # InformationalResponse (1xx): keep reading

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = self._h11 = None
