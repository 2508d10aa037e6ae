"""Sans-IO RPC codec: bytes in, typed messages out; nothing here touches a socket.

Wire format: each frame is a 4-byte big-endian payload length followed by the
payload, a MessagePack-encoded envelope (:class:`Call`, :class:`Result` or
:class:`Failure`, told apart by the ``k`` tag). A call's ``body`` is one
request Struct tagged by method name (``t``); it is decoded in a second step
against the daemon's own union, so an unknown or malformed method still gets
an error reply addressed to the right request id.

Frames larger than ``MAX_FRAME`` (1 MiB) are a protocol error; the stream
cannot be resynchronised after one, so the transport closes the connection.
"""

from __future__ import annotations

import enum
import struct
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from ..errors import FcdError, ProtocolError, from_code
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
        self._reply_decoders: dict[type[Request[Any]], msgspec.msgpack.Decoder[Any]] = {
            r: msgspec.msgpack.Decoder(r.reply) for r in self.requests
        }

    # --- client side -------------------------------------------------------------
    def encode_call(self, call_id: int, request: Request[Any], rid: str | None = None) -> bytes:
        if type(request) not in self._reply_decoders:
            raise ProtocolError(f"{type(request).__name__} is not a {self.name} request")
        body = msgspec.Raw(_encoder.encode(request))
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
        return result

    # --- server side -------------------------------------------------------------
    def decode_request(self, body: msgspec.Raw) -> Request[Any]:
        try:
            req: Request[Any] = self._request_decoder.decode(body)
        except msgspec.ValidationError as e:
            raise ProtocolError(f"invalid request: {e}") from None
        except msgspec.DecodeError as e:
            raise ProtocolError(f"malformed request: {e}") from None
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


def decode_envelope(payload: bytes) -> Envelope:
    try:
        env: Envelope = _envelope_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed frame: {e}") from None
    return env
