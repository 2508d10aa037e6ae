"""A streaming JSON deserializer that fails the way serde_json does.

Firecracker parses request bodies with ``serde_json::from_slice::<T>()`` on structs marked
``deny_unknown_fields``. The error texts a client sees depend on *when* serde notices a
problem (it streams: an unknown key is reported before a later syntax error) and carry
``at line L column C`` where C counts the bytes consumed on that line. This module is a
small recursive-descent deserializer driven by a schema, so the double reports the same
first error, with the same words, as the real binary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class SerdeError(Exception):
    """A serde_json error: ``str()`` is the full ``msg at line L column C`` text."""


# ---------------------------------------------------------------------------------------------
# Schema


class Ty:
    expecting = "a value"

    def visit(self, p: Parser) -> Any:
        raise NotImplementedError


@dataclass
class Int(Ty):
    name: str  # u8, u16, u32, u64, usize
    bits: int

    @property
    def expecting(self) -> str:  # type: ignore[override]
        return self.name

    def visit(self, p: Parser) -> Any:
        kind, val = p.scalar()
        if kind == "int":
            if val < 0 or val >= (1 << self.bits):
                p.fail(f"invalid value: integer `{val}`, expected {self.name}")
            return val
        p.invalid_type(kind, val, self.name)
        return None


class Bool(Ty):
    expecting = "a boolean"

    def visit(self, p: Parser) -> Any:
        kind, val = p.scalar()
        if kind != "bool":
            p.invalid_type(kind, val, self.expecting)
        return val


class Str(Ty):
    expecting = "a string"

    def visit(self, p: Parser) -> Any:
        kind, val = p.scalar()
        if kind != "str":
            p.invalid_type(kind, val, self.expecting)
        return val


@dataclass
class Custom(Ty):
    """A string parsed by a custom deserializer; ``check`` returns the value or raises."""

    check: Callable[[str], Any]
    expecting: str = "a string"

    def visit(self, p: Parser) -> Any:
        kind, val = p.scalar()
        if kind != "str":
            p.invalid_type(kind, val, self.expecting)
        try:
            return self.check(val)
        except ValueError as e:
            p.fail(str(e))
        return None


@dataclass
class Enum(Ty):
    name: str
    variants: list[str]

    @property
    def expecting(self) -> str:  # type: ignore[override]
        return f"enum {self.name}"

    def visit(self, p: Parser) -> Any:
        kind, val = p.scalar()
        if kind != "str":
            p.invalid_type(kind, val, "variant identifier")
        if val not in self.variants:
            p.fail(f"unknown variant `{val}`, {one_of(self.variants)}")
        return val


@dataclass
class Opt(Ty):
    inner: Ty

    @property
    def expecting(self) -> str:  # type: ignore[override]
        return "option"

    def visit(self, p: Parser) -> Any:
        if p.peek_null():
            return None
        return self.inner.visit(p)


class AnyJson(Ty):
    def visit(self, p: Parser) -> Any:
        return p.any_value()


@dataclass
class Map(Ty):
    value: Ty
    expecting: str = "a map"

    def visit(self, p: Parser) -> Any:
        out: dict[str, Any] = {}
        for key in p.object_keys(self.expecting):
            p.colon()
            out[key] = self.value.visit(p)
        return out


@dataclass
class Seq(Ty):
    item: Ty
    expecting: str = "a sequence"

    def visit(self, p: Parser) -> Any:
        return list(p.array_items(self.item, self.expecting))


@dataclass
class F:
    """A struct field. ``default`` is used when absent; ``required`` fields have none."""

    ty: Ty
    required: bool = False
    default: Any = None


@dataclass
class Struct(Ty):
    name: str
    fields: dict[str, F] = field(default_factory=dict)
    deny_unknown: bool = True

    @property
    def expecting(self) -> str:  # type: ignore[override]
        return f"struct {self.name}"

    def visit(self, p: Parser) -> Any:
        out: dict[str, Any] = {}
        seen: set[str] = set()
        for key in p.object_keys(self.expecting):
            spec = self.fields.get(key)
            if spec is None:
                if self.deny_unknown:
                    names = one_of(list(self.fields), "there are no fields")
                    p.fail(f"unknown field `{key}`, {names}")
                p.colon()
                p.any_value()
                continue
            if key in seen:
                p.fail(f"duplicate field `{key}`")
            seen.add(key)
            p.colon()
            out[key] = spec.ty.visit(p)
        for name, spec in self.fields.items():
            if name in out:
                continue
            if spec.required:
                p.fail(f"missing field `{name}`")
            out[name] = spec.default
        return out


def one_of(names: list[str], none: str = "expected nothing") -> str:
    quoted = [f"`{n}`" for n in names]
    if not quoted:
        return none
    if len(quoted) == 1:
        return f"expected {quoted[0]}"
    if len(quoted) == 2:
        return f"expected {quoted[0]} or {quoted[1]}"
    return "expected one of " + ", ".join(quoted)


U8, U16, U32, U64, USIZE = (
    Int("u8", 8),
    Int("u16", 16),
    Int("u32", 32),
    Int("u64", 64),
    Int("usize", 64),
)


# ---------------------------------------------------------------------------------------------
# Parser


_WS = b" \t\n\r"


class Parser:
    def __init__(self, data: bytes) -> None:
        self.s = data
        self.i = 0

    # -- positions and errors ----------------------------------------------------------------

    def where(self, idx: int | None = None) -> str:
        end = self.i if idx is None else idx
        line = self.s.count(b"\n", 0, end) + 1
        col = end - (self.s.rfind(b"\n", 0, end) + 1)
        return f"line {line} column {col}"

    def fail(self, msg: str, idx: int | None = None) -> None:
        raise SerdeError(f"{msg} at {self.where(idx)}")

    def invalid_type(self, kind: str, val: Any, expecting: str) -> None:
        self.fail(f"invalid type: {describe(kind, val)}, expected {expecting}")

    # -- lexing ------------------------------------------------------------------------------

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1

    def peek(self) -> int | None:
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else None

    def peek_null(self) -> bool:
        if self.peek() == ord("n"):
            self.literal(b"null")
            return True
        return False

    def literal(self, word: bytes) -> None:
        for ch in word:
            if self.i >= len(self.s):
                self.fail("EOF while parsing a value")
            if self.s[self.i] != ch:
                self.i += 1
                self.fail("expected ident")
            self.i += 1

    def string(self) -> str:
        # at opening quote
        self.i += 1
        out = bytearray()
        while True:
            if self.i >= len(self.s):
                self.fail("EOF while parsing a string")
            c = self.s[self.i]
            self.i += 1
            if c == 0x22:
                break
            if c == 0x5C:
                if self.i >= len(self.s):
                    self.fail("EOF while parsing a string")
                e = self.s[self.i]
                self.i += 1
                simple = {
                    0x22: 0x22,
                    0x5C: 0x5C,
                    0x2F: 0x2F,
                    0x62: 8,
                    0x66: 12,
                    0x6E: 10,
                    0x72: 13,
                    0x74: 9,
                }
                if e in simple:
                    out.append(simple[e])
                elif e == 0x75:
                    hexd = self.s[self.i : self.i + 4]
                    try:
                        cp = int(hexd.decode("ascii"), 16)
                    except ValueError:
                        self.i += len(hexd)
                        self.fail("invalid escape")
                    self.i += 4
                    out += chr(cp).encode("utf-8", "surrogatepass")
                else:
                    self.fail("invalid escape")
            elif c < 0x20:
                self.fail("control character (\\u0000-\\u001F) found while parsing a string")
            else:
                out.append(c)
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("invalid unicode code point")
        return ""

    def number(self) -> tuple[str, Any]:
        start = self.i
        if self.s[self.i] == ord("-"):
            self.i += 1
        digits = self.i
        while self.i < len(self.s) and chr(self.s[self.i]).isdigit():
            self.i += 1
        if self.i == digits:
            self.fail("invalid number")
        is_float = False
        if self.i < len(self.s) and self.s[self.i] in b".eE":
            is_float = True
            self.i += 1
            while self.i < len(self.s) and self.s[self.i] in b"0123456789+-eE":
                self.i += 1
        text = self.s[start : self.i].decode("ascii")
        try:
            return ("float", float(text)) if is_float else ("int", int(text))
        except ValueError:
            self.fail("invalid number")
        return ("int", 0)

    def scalar(self) -> tuple[str, Any]:
        """Consume one value; containers are consumed whole and reported as map/sequence."""
        c = self.peek()
        if c is None:
            self.fail("EOF while parsing a value")
        assert c is not None
        if c == 0x22:
            return "str", self.string()
        if c == ord("t"):
            self.literal(b"true")
            return "bool", True
        if c == ord("f"):
            self.literal(b"false")
            return "bool", False
        if c == ord("n"):
            self.literal(b"null")
            return "null", None
        if c == ord("-") or chr(c).isdigit():
            return self.number()
        if c == ord("{"):
            # serde reports invalid type for a map at its opening brace
            self.i += 1
            return "map", None
        if c == ord("["):
            self.i += 1
            return "seq", None
        self.i += 1
        self.fail("expected value")
        return "null", None

    def any_value(self) -> Any:
        c = self.peek()
        if c == ord("{"):
            out: dict[str, Any] = {}
            for k in self.object_keys("any"):
                self.colon()
                out[k] = self.any_value()
            return out
        if c == ord("["):
            return list(self.array_items(AnyJson(), "any"))
        _, val = self.scalar()
        return val

    def object_keys(self, expecting: str) -> Any:
        c = self.peek()
        if c != ord("{"):
            kind, val = self.scalar()
            self.invalid_type(kind, val, expecting)
        self.i += 1
        first = True
        while True:
            c = self.peek()
            if c is None:
                self.fail("EOF while parsing an object")
            if c == ord("}"):
                self.i += 1
                return
            if not first:
                if c != ord(","):
                    self.i += 1
                    self.fail("expected `,` or `}`")
                self.i += 1
                c = self.peek()
                if c == ord("}"):
                    self.i += 1
                    self.fail("trailing comma")
            if c is None:
                self.fail("EOF while parsing an object")
            if c != 0x22:
                self.i += 1
                self.fail("key must be a string")
            key = self.string()
            first = False
            # serde reports field-level errors (unknown/duplicate) right after the key
            yield key

    def colon(self) -> None:
        c = self.peek()
        if c is None:
            self.fail("EOF while parsing an object")
        if c != ord(":"):
            self.i += 1
            self.fail("expected `:`")
        self.i += 1

    def array_items(self, item: Ty, expecting: str) -> Any:
        c = self.peek()
        if c != ord("["):
            kind, val = self.scalar()
            self.invalid_type(kind, val, expecting)
        self.i += 1
        first = True
        while True:
            c = self.peek()
            if c is None:
                self.fail("EOF while parsing a list")
            if c == ord("]"):
                self.i += 1
                return
            if not first:
                if c != ord(","):
                    self.i += 1
                    self.fail("expected `,` or `]`")
                self.i += 1
            first = False
            yield item.visit(self)

    def finish(self) -> None:
        self.ws()
        if self.i < len(self.s):
            self.i += 1
            self.fail("trailing characters")


def describe(kind: str, val: Any) -> str:
    if kind == "str":
        return f'string "{val}"'
    if kind == "int":
        return f"integer `{val}`"
    if kind == "float":
        return f"floating point `{val}`"
    if kind == "bool":
        return f"boolean `{'true' if val else 'false'}`"
    if kind == "null":
        return "null"
    if kind == "map":
        return "map"
    return "sequence"


def from_slice(ty: Ty, data: bytes) -> Any:
    """``serde_json::from_slice::<ty>(data)``: the value, or SerdeError with serde's text."""
    p = Parser(data)
    out = ty.visit(p)
    p.finish()
    return out
