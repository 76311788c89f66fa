"""Protobuf text-format reader that keeps source locations and survives fork fields.

Why not ``google.protobuf.text_format``: it either aborts on the first field a Caffe fork added or drops it
without saying where, and it forgets where each message started. Converting legacy models needs both: a
warning naming ``file:line:col`` for each dropped fork field (with its raw text, for plugins), and the
location of every layer so later errors can point at it.

The reader fills real protobuf messages through their descriptors, so the schema stays the single source
of truth for field names, types and enums.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import Location, ParseError

Path = tuple  # a path of field names and repeated indices, e.g. ("layer", 3, "convolution_param")

#: ``number`` is an atomic group: a shorter match would end next to a digit, ``.``, ``e`` or ``f``, which the
#: look-ahead refuses anyway, and without it a long digit run before a letter backtracks over every digit at every
#: position ``finditer`` tries (minutes for a few thousand digits).
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')
  | (?P<number>(?>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?))(?![\w.]))
  | (?P<ident>-?[A-Za-z_][\w.]*)
  | (?P<punct>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)

_BOOL_WORDS = {"true": True, "t": True, "True": True, "1": True, "false": False, "f": False, "False": False, "0": False}
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
#: How deep messages may nest (protobuf's own parsers stop at 100 as well): deeper input is hostile, and
#: the recursive descent below would otherwise end in a RecursionError.
MAX_DEPTH = 100
#: Fields whose values Caffe keeps in a narrower type than the schema says: blob dims are ``int`` in
#: ``Blob::Reshape``, so a dim beyond int32 would wrap in Caffe and overflow exporters here.
_NARROWED = {"caffe.BlobShape.dim": (-(2**31), 2**31 - 1)}
#: Float fields where an infinite value means something (an open interval); everywhere else an infinite
#: or NaN parameter makes Caffe compute garbage (PriorBox ``min_size: inf``), so it is refused where written.
_INFINITY_OK = frozenset({"caffe.ClipParameter.min", "caffe.ClipParameter.max", "caffe.ThresholdParameter.threshold"})
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


def is_repeated(fd: FieldDescriptor) -> bool:
    """``FieldDescriptor.label`` is gone in protobuf 7; ``is_repeated`` is missing before 5.x."""
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == FieldDescriptor.LABEL_REPEATED


class Token(NamedTuple):
    """One token (a tuple: a large net has hundreds of thousands, and a frozen dataclass is 10x slower to make)."""

    kind: str  # "string", "number", "ident", "punct", "eof"
    text: str
    line: int
    col: int
    pos: int


@dataclass
class DroppedField:
    """A field the schema does not know (typically a fork's), kept as raw text for plugins and warnings."""

    message_type: str
    name: str
    raw: str
    location: Location
    path: Path

    def warning(self) -> str:
        return f"{self.location}: dropped unknown field '{self.name}' in {self.message_type}"


@dataclass
class SourceInfo:
    """Side table produced with a parsed message: where each sub-message started, and what was dropped."""

    file: str
    locations: dict[Path, Location] = field(default_factory=dict)
    dropped: list[DroppedField] = field(default_factory=list)

    def location(self, path: Path) -> Location:
        return self.locations.get(tuple(path), Location(self.file))

    def warnings(self) -> list[str]:
        return [d.warning() for d in self.dropped]

    def dropped_under(self, prefix: Path) -> list[DroppedField]:
        n = len(prefix)
        return [d for d in self.dropped if d.path[:n] == tuple(prefix)]


def iter_tokens(text: str, file: str) -> Iterator[Token]:
    """Lazily yield tokens, so a syntax error is reported at the first bad token, as protoc does.

    ``finditer`` rather than a ``match`` per position (3x faster on large nets): a match that does not start
    where the previous one ended means the characters between fit no token, which is the syntax error."""
    line, line_start, pos = 1, 0, 0
    for m in _TOKEN_RE.finditer(text):
        start = m.start()
        if start != pos:
            raise _bad_character(text, pos, Location(file, line, pos - line_start + 1))
        kind = m.lastgroup
        pos = m.end()
        if kind == "nl":
            line += 1
            line_start = pos
        elif kind != "ws" and kind != "comment":
            yield Token(kind, m.group(), line, start - line_start + 1, start)
    if pos != len(text):
        raise _bad_character(text, pos, Location(file, line, pos - line_start + 1))
    yield Token("eof", "", line, pos - line_start + 1, pos)


def _bad_character(text: str, pos: int, location: Location) -> ParseError:
    if text[pos] in "\"'":  # a string the line ends inside (text-format strings cannot span lines)
        return ParseError("string opened here is not closed on this line (write a line break inside a string as "
                          "\\n)", location)
    return ParseError(f"unexpected character {text[pos]!r}", location)


def tokenize(text: str, file: str) -> list[Token]:
    return list(iter_tokens(text, file))


class _Parser:
    def __init__(self, text: str, file: str, strict: bool):
        self.text = text
        self.file = file
        self.strict = strict
        self._source = iter_tokens(text, file)
        self._ahead: Token = next(self._source)
        self.last: Token = self._ahead
        self.info = SourceInfo(file)
        self.depth = 0

    # -- token helpers -------------------------------------------------------------------------------
    def peek(self) -> Token:
        return self._ahead

    def next(self) -> Token:
        tok = self._ahead
        if tok.kind != "eof":
            self._ahead = next(self._source)
        self.last = tok
        return tok

    def loc(self, tok: Token) -> Location:
        return Location(self.file, tok.line, tok.col)

    def error(self, tok: Token, message: str) -> ParseError:
        return ParseError(message, self.loc(tok))

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.text != text or tok.kind not in ("punct",):
            got = "end of file" if tok.kind == "eof" else repr(_short(tok.text))
            raise self.error(tok, f"expected '{text}', got {got}")
        return tok

    def accept(self, text: str) -> bool:
        tok = self._ahead
        if tok.kind == "punct" and tok.text == text:
            self.next()
            return True
        return False

    # -- messages ------------------------------------------------------------------------------------
    def parse_fields(self, msg: Message, path: Path, close: str | None) -> None:
        desc = msg.DESCRIPTOR
        fields_by_name = desc.fields_by_name
        seen_singular: dict[str, Token] = {}
        counts: dict[str, int] = {}
        while True:
            tok = self.peek()
            if close is None and tok.kind == "eof":
                return
            if close is not None and tok.kind == "punct" and tok.text == close:
                self.next()
                return
            if tok.kind == "eof":
                raise self.error(tok, f"unexpected end of file: '{close}' missing to close {desc.full_name}")
            if tok.kind != "ident":
                raise self.error(tok, f"expected a field name of {desc.full_name}, got {_short(tok.text)!r}")
            self.next()
            name = tok.text
            fd = fields_by_name.get(name)
            if fd is None:
                self.skip_unknown(tok, desc.full_name, path + (name,))
            else:
                if not is_repeated(fd):
                    if name in seen_singular:
                        raise self.error(tok, f"{desc.full_name} has field '{_short(name)}' more than once")
                    seen_singular[name] = tok
                self.parse_field(msg, fd, tok, path, counts)
            # Optional separators between fields.
            if not self.accept(","):
                self.accept(";")

    def parse_field(self, msg: Message, fd: FieldDescriptor, name_tok: Token, path: Path, counts: dict) -> None:
        name = fd.name
        repeated = is_repeated(fd)
        if fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            self.accept(":")
            if self.accept("["):  # repeated message list: name: [ {..}, {..} ]
                if not self.accept("]"):
                    while True:
                        self.parse_submessage(msg, fd, path, counts)
                        if self.accept("]"):
                            break
                        self.expect(",")
                return
            self.parse_submessage(msg, fd, path, counts)
            return
        colon = self.next()
        if colon.kind != "punct" or colon.text != ":":
            raise self.error(colon, f"expected ':' after field '{_short(name)}', got {_short(colon.text)!r}")
        if repeated and self.accept("["):
            container = getattr(msg, name)
            if not self.accept("]"):
                while True:
                    container.append(self.parse_scalar(fd))
                    if self.accept("]"):
                        break
                    self.expect(",")
            return
        value = self.parse_scalar(fd)
        if repeated:
            getattr(msg, name).append(value)
        else:
            setattr(msg, name, value)

    def parse_submessage(self, msg: Message, fd: FieldDescriptor, path: Path, counts: dict) -> None:
        open_tok = self.next()
        if open_tok.kind != "punct" or open_tok.text not in ("{", "<"):
            raise self.error(open_tok, f"expected '{{' to open field '{fd.name}', got {_short(open_tok.text)!r}")
        close = "}" if open_tok.text == "{" else ">"
        if is_repeated(fd):
            index = counts.get(fd.name, 0)
            counts[fd.name] = index + 1
            sub = getattr(msg, fd.name).add()
            sub_path = path + (fd.name, index)
        else:
            sub = getattr(msg, fd.name)
            sub.SetInParent()
            sub_path = path + (fd.name,)
        self.info.locations[sub_path] = self.loc(open_tok)
        if self.depth >= MAX_DEPTH:
            raise self.error(open_tok, f"messages nested more than {MAX_DEPTH} deep")
        self.depth += 1
        self.parse_fields(sub, sub_path, close)
        self.depth -= 1

    # -- scalars -------------------------------------------------------------------------------------
    def parse_scalar(self, fd: FieldDescriptor):
        tok = self.next()
        t = fd.type
        if t == FieldDescriptor.TYPE_STRING or t == FieldDescriptor.TYPE_BYTES:
            if tok.kind != "string":
                raise self.error(tok, f"expected a string for field '{fd.name}', got {_short(tok.text)!r}")
            parts = [self.unquote(tok)]
            while self.peek().kind == "string":
                parts.append(self.unquote(self.next()))
            raw = b"".join(parts)
            if t == FieldDescriptor.TYPE_BYTES:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.error(tok, f"field '{fd.name}' is not valid UTF-8") from None
        if t == FieldDescriptor.TYPE_BOOL:
            if tok.text in _BOOL_WORDS and tok.kind in ("ident", "number"):
                return _BOOL_WORDS[tok.text]
            raise self.error(tok, f"expected true or false for field '{fd.name}', got {_short(tok.text)!r}")
        if t == FieldDescriptor.TYPE_ENUM:
            enum = fd.enum_type
            if tok.kind == "ident":
                value = enum.values_by_name.get(tok.text)
                if value is None:
                    raise self.error(tok, f"unknown value {tok.text!r} for enum {enum.full_name} (field '{fd.name}')")
                return value.number
            if tok.kind == "number":
                number = self.to_int(tok, fd)
                if number not in enum.values_by_number:
                    raise self.error(tok, f"unknown value {number} for enum {enum.full_name} (field '{fd.name}')")
                return number
            raise self.error(tok, f"expected an enum value for field '{fd.name}', got {_short(tok.text)!r}")
        if t in _FLOAT_TYPES:
            value = self.to_float(tok, fd)
            if not math.isfinite(value) and (math.isnan(value) or fd.full_name not in _INFINITY_OK):
                raise self.error(tok, f"field '{fd.name}' is {tok.text!r}, not a finite number (Caffe would "
                                      "compute with it and produce garbage)")
            return value
        if t in _INT_RANGES:
            if tok.kind != "number":
                raise self.error(tok, f"expected an integer for field '{fd.name}', got {_short(tok.text)!r}")
            value = self.to_int(tok, fd)
            narrowed = _narrowed(fd)
            lo, hi = narrowed or _INT_RANGES[t]
            if not lo <= value <= hi:
                why = " (Caffe holds it in a 32-bit int)" if narrowed else ""
                raise self.error(tok, f"integer {_short(value)} out of range for field '{fd.name}'{why}")
            return value
        raise self.error(tok, f"unsupported field type for '{fd.name}'")  # pragma: no cover

    def octal(self, tok: Token) -> int | None:
        """protobuf's tokenizer reads a number that starts with 0 and a digit as octal (``017`` is 15), for float
        fields too, and refuses one with an 8 or 9 (or a fraction) after the zero; None for other numbers."""
        body = tok.text.lstrip("+-")
        if len(body) < 2 or body[0] != "0" or not body[1].isdigit():
            return None
        if body.strip("01234567"):
            raise self.error(tok, f"numbers starting with a leading zero are octal in protobuf's text format (as "
                                  f"Caffe reads it), got {_short(tok.text)!r}")
        return -int(body, 8) if tok.text.startswith("-") else int(body, 8)

    def to_float(self, tok: Token, fd: FieldDescriptor) -> float:
        if tok.kind == "number":
            text = tok.text
            body = text.lstrip("+-")
            if body.lower().startswith("0x") or self.octal(tok) is not None:
                raise self.error(tok, f"expected a decimal number for field '{fd.name}', got {_short(text)!r} "
                                      "(protobuf's text format takes hex and octal in integer fields only)")
            try:
                return float(text.rstrip("fF"))
            except (ValueError, OverflowError):
                raise self.error(tok, f"number {_short(text)} does not fit field '{fd.name}'") from None
        if tok.kind == "ident":
            word = tok.text.lower().lstrip("-")
            sign = -1.0 if tok.text.startswith("-") else 1.0
            if word in ("inf", "infinity", "inff", "infinityf"):
                return sign * math.inf
            if word in ("nan", "nanf"):
                return math.nan
        raise self.error(tok, f"expected a number for field '{fd.name}', got {_short(tok.text)!r}")

    def to_int(self, tok: Token, fd: FieldDescriptor) -> int:
        text = tok.text
        octal = self.octal(tok)
        if octal is not None:
            return octal
        try:
            if text.lower().lstrip("+-").startswith("0x"):
                return int(text, 16)
            return int(text, 10)
        except ValueError:
            raise self.error(tok, f"expected an integer for field '{fd.name}', got {text!r}") from None

    def unquote(self, tok: Token) -> bytes:
        body = tok.text[1:-1]
        if "\\" not in body:
            return body.encode("utf-8")
        out = bytearray()
        i = 0
        while i < len(body):
            c = body[i]
            if c != "\\":
                out += c.encode("utf-8")
                i += 1
                continue
            i += 1
            e = body[i]
            if e in _ESCAPES:
                out += _ESCAPES[e].encode()
                i += 1
            elif e in "01234567":
                j = i
                while j < len(body) and j < i + 3 and body[j] in "01234567":
                    j += 1
                out.append(int(body[i:j], 8) & 0xFF)
                i = j
            elif e in "xX":
                j = i + 1
                while j < len(body) and j < i + 3 and body[j] in "0123456789abcdefABCDEF":
                    j += 1
                if j == i + 1:
                    raise self.error(tok, f"escape '\\{e}' without hex digits in string")
                out.append(int(body[i + 1 : j], 16))
                i = j
            else:
                raise self.error(tok, f"invalid escape '\\{e}' in string")
        return bytes(out)

    # -- unknown fields ------------------------------------------------------------------------------
    def skip_unknown(self, name_tok: Token, message_type: str, path: Path) -> None:
        """Skip the value of an unknown field, recording its raw text; still reject broken syntax."""
        if self.strict:
            raise self.error(name_tok, f"{message_type} has no field named '{name_tok.text}'")
        start = name_tok.pos
        colon = self.accept(":")
        tok = self.peek()
        if tok.kind == "punct" and tok.text in ("{", "<"):
            self.skip_block()
        elif tok.kind == "punct" and tok.text == "[":
            self.next()
            depth = 1
            while depth:
                t = self.next()
                if t.kind == "eof":
                    raise self.error(t, "unexpected end of file inside '[' list")
                if t.kind == "punct" and t.text in "[{<":
                    depth += 1
                elif t.kind == "punct" and t.text in "]}>":
                    depth -= 1
        else:
            if not colon:
                raise self.error(tok, f"expected ':' or '{{' after field '{_short(name_tok.text)}', "
                                      f"got {_short(tok.text)!r}")
            t = self.next()
            if t.kind not in ("string", "number", "ident"):
                raise self.error(t, f"expected a value for field '{_short(name_tok.text)}', got {_short(t.text)!r}")
            while t.kind == "string" and self.peek().kind == "string":
                t = self.next()
        end_tok = self.last
        raw = self.text[start : end_tok.pos + len(end_tok.text)]
        self.info.dropped.append(DroppedField(message_type, name_tok.text, raw, self.loc(name_tok), path))

    def skip_block(self) -> None:
        open_tok = self.next()
        stack = ["}" if open_tok.text == "{" else ">"]
        while stack:
            t = self.next()
            if t.kind == "eof":
                raise self.error(open_tok, f"'{open_tok.text}' opened here is never closed")
            if t.kind == "punct":
                if t.text in "{<":
                    stack.append("}" if t.text == "{" else ">")
                elif t.text in "}>":
                    if t.text != stack[-1]:
                        raise self.error(t, f"expected '{stack[-1]}', got '{t.text}'")
                    stack.pop()


_narrowed_cache: dict[FieldDescriptor, tuple[int, int] | None] = {}


def _narrowed(fd: FieldDescriptor) -> tuple[int, int] | None:
    """``_NARROWED`` by descriptor (``fd.full_name`` costs microseconds; this runs for every integer)."""
    try:
        return _narrowed_cache[fd]
    except KeyError:
        _narrowed_cache[fd] = _NARROWED.get(fd.full_name)
        return _narrowed_cache[fd]


def _short(text: object, limit: int = 40) -> str:
    """A value quoted in an error, cut to ``limit`` characters (a 10 000-digit number is one line too)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse(text: str, message: Message, file: str = "<string>", strict: bool = False) -> SourceInfo:
    """Parse protobuf text ``text`` into ``message`` (merged), returning locations and dropped fields.

    With ``strict`` an unknown field is an error (as in Caffe's own reader); otherwise it is dropped and
    reported in ``SourceInfo.dropped``.
    """
    parser = _Parser(text, file, strict)
    parser.parse_fields(message, (), None)
    return parser.info


def iter_top_level_names(text: str, file: str = "<string>", limit: int = 64) -> Iterator[str]:
    """Names of the first top-level fields of a text-format file (lazily), used to tell nets from solvers."""
    depth = 0
    count = 0
    prev: Token | None = None
    for tok in iter_tokens(text, file):
        if prev is not None and depth == 0 and prev.kind == "ident" and tok.kind == "punct" and tok.text in ":{<":
            yield prev.text
            count += 1
            if count >= limit:
                return
        if tok.kind == "punct" and tok.text in "{<[":
            depth += 1
        elif tok.kind == "punct" and tok.text in "}>]":
            depth -= 1
        prev = tok
