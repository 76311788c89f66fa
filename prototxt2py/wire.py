"""Protobuf wire-format framing, walked without decoding: keys, varints, where each length-delimited field
is. Used to read ``.caffemodel`` files without materialising their arrays (``weights``) and to refuse random
bytes before protobuf copies and decodes a whole file (``reader``). Torch-free, so refusing a bad file does
not cost importing torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5


class _Corrupt(ValueError):
    pass


class _NonCanonical(_Corrupt):
    """Legal protobuf the framing walk does not handle (unpacked float arrays): decoded by protobuf instead."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos  # a 10th byte carries 1 bit; protobuf drops the rest
        shift += 7


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value or (start, end) for LEN fields). Keys and most lengths are
    one-byte varints: that case is decoded inline (the walk is per field, in Python)."""
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Corrupt("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == _LEN:
            n = buf[pos] if pos < end else 0x80
            if n < 0x80:
                pos += 1
            else:
                n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt("length runs past the end of its message")
            yield number, wire, (pos, pos + n)
            pos += n
        elif wire == _I32:
            if pos + 4 > end:
                raise _Corrupt("truncated fixed32")
            yield number, wire, (pos, pos + 4)
            pos += 4
        elif wire == _I64:
            if pos + 8 > end:
                raise _Corrupt("truncated fixed64")
            yield number, wire, (pos, pos + 8)
            pos += 8
        else:
            raise _Corrupt(f"unsupported wire type {wire}")


def framing_fields(buf) -> Iterator[tuple[int, int, Any]]:
    """Top-level fields of a serialised message, as :func:`_fields` (raises ``ValueError`` when corrupt)."""
    return _fields(buf, 0, len(buf))


def _signed64(v: int) -> int:
    """An int64 field's varint as the signed value protobuf reads (negative numbers take ten bytes)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf, start: int, end: int) -> list[int]:
    out = []
    while start < end:
        v, start = _varint(buf, start, end)
        out.append(_signed64(v))
    return out


def _signed32(v: int) -> int:
    """An int32 field's varint as protobuf reads it: the low 32 bits, two's complement."""
    v &= 0xFFFF_FFFF
    return v - (1 << 32) if v >= 1 << 31 else v
