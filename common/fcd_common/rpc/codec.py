"""Sans-IO RPC codec: bytes in, typed messages out; nothing here touches a socket.

Wire format: each frame is a 4-byte big-endian payload length followed by the
payload, a MessagePack-encoded envelope (:class:`Call`, :class:`Result` or
:class:`Failure`, told apart by the ``k`` tag). A call's ``body`` is one
request Struct tagged by method name (``t``); it is decoded in a second step
against the daemon's own union, so an unknown or malformed method still gets
an error reply addressed to the right request id.

Frames larger than ``MAX_FRAME`` (1 MiB) are a protocol error; the stream
cannot be resynchronised after one, so the transport closes the connection.

Nesting is capped too: msgspec decodes recursively and stops a frame nested
deeper than the interpreter's recursion limit allows with ``RecursionError``
(before it uses up the C stack). Every decode here turns that into a
``ProtocolError`` for the one call it belongs to: the call id is read from the
frame's head (:func:`peek_call_id`), which precedes the body, so the answer
reaches the right caller and the connection, with its other calls, stays up.

A request of a known method whose fields do not validate is the caller's
mistake, not a broken peer: it is an ``InvalidArgument`` (HTTP 400 when it
came from the API), naming the field; an unknown method stays a protocol error.
"""

from __future__ import annotations

import enum
import re
import struct
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from ..errors import FcdError, InvalidArgument, ProtocolError, from_code
from ..schema import Record

MAX_FRAME = 1 << 20
RID_MAX = 128
"""A request id longer than this is cut (fcd-api's own are far shorter)."""
_HEADER = struct.Struct(">I")


class Caller(enum.Flag):
    """Who a peer is, decided from its ``SO_PEERCRED`` uid by the server."""

    API = enum.auto()
    """The fcd-api user: the owner of the registry, the helpers' one real client."""
    ADMIN = enum.auto()
    """root: an operator's tools and the tests (and fcd-api itself when it runs as root)."""


ANY_CALLER = Caller.API | Caller.ADMIN


class Reply(Record):
    """Base of every RPC result."""


class Done(Reply):
    """Result of a call that returns nothing but success."""


R = TypeVar("R", bound=Reply)


class Request(Record, Generic[R], tag_field="t"):
    """Base of every RPC request: ``class Foo(Request[FooReply], tag="daemon.foo")``.

    The type parameter is the contract: :attr:`reply` is read from it when the
    class is made, the client decodes the answer as that type, and mypy checks
    that ``await client.call(Foo(...))`` is used as a ``FooReply`` and that the
    helper's handler returns one. :attr:`access` says which callers the server
    lets through (the socket's peer check comes first).
    """

    reply: ClassVar[type[Reply]]
    access: ClassVar[Caller] = ANY_CALLER
    long_poll: ClassVar[bool] = False
    """Waits for something to happen: a shutting-down server cancels it at once
    (the caller gets ``unavailable`` and asks again) instead of waiting for it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Request:
                (reply,) = typing.get_args(base)
                if not (isinstance(reply, type) and issubclass(reply, Reply)):
                    raise TypeError(f"{cls.__name__}: Request[...] needs a Reply subclass")
                cls.reply = reply

    @classmethod
    def method(cls) -> str:
        """The wire tag, e.g. ``"net.setup"``."""
        return str(cls.__struct_config__.tag)


class Call(msgspec.Struct, tag="call", tag_field="k", frozen=True, omit_defaults=True):
    id: int
    body: msgspec.Raw
    rid: str | None = None
    """The request id the call is made for (:mod:`fcd_common.reqid`); optional, so
    a peer that does not send it (or does not know it) still speaks the protocol."""


class Result(msgspec.Struct, tag="result", tag_field="k", frozen=True):
    id: int
    body: msgspec.Raw


class Failure(msgspec.Struct, tag="error", tag_field="k", frozen=True):
    id: int
    code: str
    message: str
    details: Any = None

    def to_exception(self) -> FcdError:
        return from_code(self.code, self.message, self.details)


Envelope = Call | Result | Failure

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Accumulates bytes and yields complete frame payloads."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every complete payload. ProtocolError on an oversized frame."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > self._max:
                raise ProtocolError(f"frame of {size} bytes exceeds the {self._max} byte limit")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[_HEADER.size : end]))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


class Protocol:
    """One daemon's method set: the union of its request Structs, decoded by tag,
    and each request's reply type, decoded by a decoder built once."""

    def __init__(self, name: str, requests: Iterable[type[Request[Any]]]) -> None:
        self.name = name
        self.requests = tuple(requests)
        if not self.requests:
            raise ValueError("a protocol needs at least one request type")
        for r in self.requests:
            if not hasattr(r, "reply"):
                raise TypeError(f"{r.__name__} does not name its reply: use Request[Reply]")
        union: Any = self.requests[0]
        for r in self.requests[1:]:
            union = union | r
        self._request_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(union)
        self._methods = frozenset(r.method() for r in self.requests)
        self._reply_decoders: dict[type[Request[Any]], msgspec.msgpack.Decoder[Any]] = {
            r: msgspec.msgpack.Decoder(r.reply) for r in self.requests
        }

    # --- client side -------------------------------------------------------------
    def encode_call(self, call_id: int, request: Request[Any], rid: str | None = None) -> bytes:
        if type(request) not in self._reply_decoders:
            raise ProtocolError(f"{type(request).__name__} is not a {self.name} request")
        try:
            body = msgspec.Raw(_encoder.encode(request))
        except (OverflowError, msgspec.EncodeError) as e:  # an unbounded value slipped in
            raise InvalidArgument(f"{request.method()} cannot be sent: {e}") from None
        return frame(_encoder.encode(Call(call_id, body, rid[:RID_MAX] if rid else None)))

    def decode_reply(self, request: Request[R], body: msgspec.Raw) -> R:
        """The reply to ``request``, as the type its class names."""
        decoder = self._reply_decoders.get(type(request))
        if decoder is None:
            raise ProtocolError(f"{type(request).__name__} is not a {self.name} request")
        try:
            result: R = decoder.decode(body)
        except msgspec.DecodeError as e:  # ValidationError is a DecodeError
            raise ProtocolError(f"malformed {type(request).reply.__name__} reply: {e}") from None
        except RecursionError:
            raise ProtocolError(f"{type(request).reply.__name__} reply {TOO_DEEP}") from None
        return result

    # --- server side -------------------------------------------------------------
    def decode_request(self, body: msgspec.Raw) -> Request[Any]:
        try:
            req: Request[Any] = self._request_decoder.decode(body)
        except msgspec.ValidationError as e:
            method = method_of(body)
            if method is None or method not in self._methods:
                raise ProtocolError(f"invalid request: {e}") from None
            raise InvalidArgument(
                f"invalid {method} request: {e}", details={"field": _field_of(str(e))}
            ) from None
        except msgspec.DecodeError as e:
            raise ProtocolError(f"malformed request: {e}") from None
        except RecursionError:
            raise ProtocolError(f"request {TOO_DEEP}") from None
        return req

    @staticmethod
    def encode_result(call_id: int, result: Reply) -> bytes:
        return frame(_encoder.encode(Result(call_id, msgspec.Raw(_encoder.encode(result)))))

    @staticmethod
    def encode_failure(call_id: int, err: FcdError) -> bytes:
        details = err.details
        try:
            _encoder.encode(details)
        except (TypeError, msgspec.EncodeError):
            details = repr(details)
        return frame(_encoder.encode(Failure(call_id, err.code, err.message, details)))


TOO_DEEP = "is nested too deeply"


class FrameError(ProtocolError):
    """A frame that does not decode; ``call_id`` is the call it belongs to when its
    head could still be read (0: unknown, the whole connection is at fault)."""

    def __init__(self, message: str, call_id: int) -> None:
        super().__init__(message)
        self.call_id = call_id


def decode_envelope(payload: bytes) -> Envelope:
    """One frame's envelope; :class:`FrameError` (with the call id when the head is
    readable) for a malformed or too deeply nested one."""
    try:
        env: Envelope = _envelope_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise FrameError(f"malformed frame: {e}", peek_call_id(payload)) from None
    except RecursionError:
        raise FrameError(f"frame {TOO_DEEP}", peek_call_id(payload)) from None
    return env


class _Tag(msgspec.Struct):
    t: str


_tag_decoder = msgspec.msgpack.Decoder(_Tag)
_FIELD_RE = re.compile(r"at `\$\.([A-Za-z0-9_]+)")


def method_of(body: bytes) -> str | None:
    """The ``t`` of a request body that failed to validate (error path only)."""
    try:
        return _tag_decoder.decode(body).t
    except (msgspec.DecodeError, RecursionError):
        return None


def _field_of(message: str) -> str | None:
    m = _FIELD_RE.search(message)
    return m.group(1) if m else None


def peek_call_id(payload: bytes) -> int:
    """The ``id`` of an envelope whose body did not decode, read from the map's first
    entries without touching the rest (msgspec writes ``k`` and ``id`` before ``body``);
    0 if the head is not a well-formed envelope head."""
    try:
        pos, entries = _map_header(payload, 0)
        for _ in range(min(entries, 2)):
            pos, key = _short_str(payload, pos)
            if key == "k":
                pos, _kind = _short_str(payload, pos)
            elif key == "id":
                return _uint(payload, pos)
            else:
                return 0
    except (IndexError, ValueError, struct.error):
        return 0
    return 0


def _map_header(b: bytes, pos: int) -> tuple[int, int]:
    h = b[pos]
    if 0x80 <= h <= 0x8F:
        return pos + 1, h & 0x0F
    if h == 0xDE:
        return pos + 3, struct.unpack_from(">H", b, pos + 1)[0]
    raise ValueError("not a map")


def _short_str(b: bytes, pos: int) -> tuple[int, str]:
    h = b[pos]
    if 0xA0 <= h <= 0xBF:
        n, start = h & 0x1F, pos + 1
    elif h == 0xD9:
        n, start = b[pos + 1], pos + 2
    else:
        raise ValueError("not a short string")
    return start + n, b[start : start + n].decode("ascii")


def _uint(b: bytes, pos: int) -> int:
    h = b[pos]
    if h <= 0x7F:
        return h
    fmt = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}.get(h)
    if fmt is None:
        raise ValueError("not an unsigned int")
    value: int = struct.unpack_from(fmt, b, pos + 1)[0]
    return value
