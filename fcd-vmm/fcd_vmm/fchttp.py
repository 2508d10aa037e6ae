"""One HTTP/1.1 connection to a Firecracker API socket: httptools over an asyncio Unix stream.

Firecracker's API is plain HTTP/1.1 on a Unix socket: no TLS, no redirects,
cookies, auth, pools or proxies. httpx brought all of those along on every call
(and anyio and httpcore under it): a third of fcd-vmm's CPU per create went
into its layers for the seven calls of a boot (py-spy, issue #14). h11, next,
spent ~40 us of pure Python per request. This keeps what is needed: one
keep-alive connection per client, a request written as the fixed bytes
Firecracker's parser expects, and its answer parsed by httptools (llhttp, the
C parser uvicorn uses in fcd-api).

Errors: ``OSError`` when the socket cannot be reached or the connection
breaks, :class:`ProtocolError` for a malformed answer or one cut short,
:class:`TooLarge` for an answer over ``max_body`` bytes (a jailed process does
not get to make fcd-vmm buffer without bound); the caller turns them into fcd
errors.
"""

from __future__ import annotations

import asyncio
import re

import httptools

MAX_BODY = 1 << 20
_READ = 65536
_METHODS = frozenset({"GET", "PUT", "PATCH"})
_TARGET = re.compile(r"/[!-~]*")  # printable ASCII, no space: nothing can end the line early


class ProtocolError(Exception):
    """The answer is not HTTP/1.1 this client can take (or it was cut short)."""


class BadRequest(ValueError):
    """A method or target this client will not put on the wire."""


class TooLarge(Exception):
    """The answer's body exceeds the limit."""


class _Answer:
    """httptools callbacks for one response: its status, body and whether it is whole."""

    __slots__ = ("chunks", "done", "keep", "limit", "messages", "over", "parser", "size", "status")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.done = False
        self.keep = False
        self.over = False
        self.messages = 0
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limit:
            self.over = True  # raised by the reader: an exception here would be wrapped
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        # read here: once the callback returns, llhttp resets for the next message
        if not self.done:
            self.status = self.parser.get_status_code()
            self.keep = self.parser.should_keep_alive()
        self.done = True


def request_bytes(method: str, target: str, body: bytes | None) -> bytes:
    """The request as it goes on the wire; BadRequest for a method or target that
    could smuggle a header (fcd builds both itself, but the check is cheap)."""
    if method not in _METHODS or not _TARGET.fullmatch(target):
        raise BadRequest(f"refusing to send {method!r} {target!r}")
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class Connection:
    """Requests one after another over one connection (re-opened when the server closes it)."""

    def __init__(self, path: str, *, max_body: int = MAX_BODY) -> None:
        self.path = path
        self.max_body = max_body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=_READ)
        return self._reader, self._writer

    async def request(self, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        """(status, body) of one request; the connection is kept for the next if it can be."""
        data = request_bytes(method, target, body)
        reader, writer = await self._open()
        try:
            writer.write(data)
            await writer.drain()
            status, content, keep = await self._answer(reader)
        except BaseException:
            self.close()
            raise
        if not keep:  # Connection: close, or bytes past the answer: the next request opens anew
            self.close()
        return status, content

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        answer = _Answer(self.max_body)
        parser = answer.parser
        while not answer.done:
            data = await reader.read(_READ)
            if not data:
                raise ProtocolError("the server closed the connection mid-answer")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as e:
                raise ProtocolError(f"malformed answer: {e}") from None
            if answer.over:
                raise TooLarge(f"answer larger than {self.max_body} bytes")
        if answer.status < 200:
            raise ProtocolError(f"unexpected interim answer {answer.status}")
        keep = answer.keep and answer.messages == 1
        return answer.status, b"".join(answer.chunks), keep

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
