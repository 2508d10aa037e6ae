"""micro-http's wire format, sans I/O.

Firecracker's API server is micro-http: HTTP/1.1 only (GET, PUT, PATCH), keep-alive, several
requests per connection answered in order, a status line without reason phrase and exactly
the headers ``Server``, ``Connection`` and (with a body) ``Content-Type``/``Content-Length``.
A parse error answers 400 with a hand-formatted pseudo-JSON body (it contains a raw newline)
and drops whatever else was pending on the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("GET", "PUT", "PATCH")
MAX_LINE = 1024  # micro-http's BUFFER_SIZE: a request line or header longer than this fails


@dataclass
class Request:
    method: str
    path: str  # absolute path, e.g. "/drives/rootfs"
    body: bytes | None  # None when Content-Length is 0 or absent


class ParseError(Exception):
    """A micro-http RequestError; ``str()`` is its Display text."""


def response(status: int, body: bytes | None = None, deprecation: bool = False) -> bytes:
    head = [f"HTTP/1.1 {status} ", "Server: Firecracker API", "Connection: keep-alive"]
    if deprecation:
        head.append("Deprecation: true")
    if body is not None or status not in (100, 204):
        payload = body or b""
        head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}")
    else:
        payload = b""
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def parse_error_response(err: ParseError) -> bytes:
    body = f'{{ "error": "{err}\nAll previous unanswered requests will be dropped." }}'
    return response(400, body.encode())


def _request_line(line: bytes) -> tuple[str, str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError("Invalid request.") from e
    parts = text.split(" ")
    if len(parts) != 3:
        raise ParseError("Invalid request.")
    method, uri, version = parts
    if method not in METHODS:
        raise ParseError("Invalid HTTP Method: Unsupported HTTP method.")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise ParseError("Invalid HTTP Version: Unsupported HTTP version.")
    if uri.startswith("http://"):
        rest = uri[len("http://") :]
        slash = rest.find("/")
        uri = rest[slash:] if slash >= 0 else "/"
    if not uri.startswith("/"):
        raise ParseError("Invalid URI: Unsupported URI format.")
    # micro-http keeps the query string out of the path it hands to Firecracker
    return method, uri.split("?", 1)[0]


class Connection:
    """Feed bytes in, get parsed requests out (or a ParseError)."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.buf = bytearray()
        self._method = ""
        self._path = ""
        self._length = 0
        self._in_headers = False
        self._expect = False
        self.interim: list[bytes] = []  # "100 Continue" answers to send before the next reply

    def feed(self, data: bytes) -> list[Request]:
        """Return every request completed by ``data``; raise ParseError on bad input."""
        self.buf += data
        out: list[Request] = []
        while True:
            if not self._in_headers and self._method == "":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) >= MAX_LINE:
                        raise ParseError("Invalid request.")
                    return out
                self._method, self._path = _request_line(bytes(self.buf[:end]))
                del self.buf[: end + 2]
                self._in_headers = True
                self._length = 0
            if self._in_headers:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) >= MAX_LINE:
                        raise ParseError("Invalid header. Reason: Header is too long.")
                    return out
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                if line == b"":
                    self._in_headers = False
                    if self._length > self.max_payload:
                        raise ParseError(
                            f"Request payload with size {self._length} is larger than the "
                            f"limit of {self.max_payload} allowed by server."
                        )
                    if self._length == 0:
                        out.append(Request(self._method, self._path, None))
                        self._method = ""
                    elif self._expect:
                        self.interim.append(response(100))
                    self._expect = False
                    continue
                self._header(line)
                continue
            # waiting for the body
            if len(self.buf) < self._length:
                return out
            body = bytes(self.buf[: self._length])
            del self.buf[: self._length]
            out.append(Request(self._method, self._path, body))
            self._method = ""

    def _header(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ParseError("Invalid header. Reason: Invalid UTF-8 string.") from e
        if ":" not in text:
            raise ParseError(
                f"Invalid header. Reason: Header is incorrectly formatted. Key: {text}"
            )
        key, value = text.split(":", 1)
        name = key.strip().lower()
        if name == "content-length":
            try:
                self._length = int(value.strip())
                if self._length < 0 or self._length >= 1 << 32:
                    raise ValueError
            except ValueError as e:
                raise ParseError(
                    f"Invalid header. Reason: Invalid value. Key:{key}; Value:{value}"
                ) from e
        elif name == "expect" and value.strip() == "100-continue":
            self._expect = True
        elif name == "accept-encoding":
            for enc in value.split(","):
                if enc.strip() == "identity;q=0" or (
                    enc.strip() == "*;q=0" and "identity" not in value
                ):
                    raise ParseError(
                        f"Invalid header. Reason: Invalid value. Key:Accept-Encoding; Value:{enc}"
                    )
