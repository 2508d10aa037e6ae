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

import struct
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec

from ..errors import FcdError, ProtocolError, from_code

MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")

T = TypeVar("T")


class Request(msgspec.Struct, tag_field="t", kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every RPC request; subclasses set ``tag="daemon.method"``."""


class Reply(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every RPC result."""


class Done(Reply, frozen=True):
    """Result of a call that returns nothing but success."""


class Call(msgspec.Struct, tag="call", tag_field="k", frozen=True):
    id: int
    body: msgspec.Raw


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
    """One daemon's method set: the union of its request Structs, decoded by tag."""

    def __init__(self, name: str, requests: Iterable[type[Request]]) -> None:
        self.name = name
        self.requests = tuple(requests)
        if not self.requests:
            raise ValueError("a protocol needs at least one request type")
        union: Any = self.requests[0]
        for r in self.requests[1:]:
            union = union | r
        self._request_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(union)

    # --- client side -------------------------------------------------------------
    @staticmethod
    def encode_call(call_id: int, request: Request) -> bytes:
        body = msgspec.Raw(_encoder.encode(request))
        return frame(_encoder.encode(Call(call_id, body)))

    @staticmethod
    def decode_result(body: msgspec.Raw, result_type: type[T]) -> T:
        try:
            return msgspec.msgpack.decode(body, type=result_type)
        except msgspec.DecodeError as e:  # ValidationError is a DecodeError
            raise ProtocolError(f"malformed {result_type.__name__} reply: {e}") from None

    # --- server side -------------------------------------------------------------
    def decode_request(self, body: msgspec.Raw) -> Request:
        try:
            req: Request = self._request_decoder.decode(body)
        except msgspec.ValidationError as e:
            raise ProtocolError(f"invalid request: {e}") from None
        except msgspec.DecodeError as e:
            raise ProtocolError(f"malformed request: {e}") from None
        return req

    @staticmethod
    def encode_result(call_id: int, result: msgspec.Struct) -> bytes:
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
