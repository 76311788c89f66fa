"""``prototxt2py upgrade``: legacy net text, net binary or solver in, current format out (atomically)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from google.protobuf import text_encoding
from google.protobuf.descriptor import FieldDescriptor

from . import textformat, upgrade
from .errors import Location, ParseError
from .fsutil import write_bytes_atomic, write_text_atomic
from .proto import caffe_pb2
from .reader import decode_text, looks_binary, parse_binary_net, read_binary_message, read_bytes, read_head, text_kind


def caffe_text(message: Any) -> str:
    """``message`` in text format as Caffe's C++ writes it (``TextFormat::Print``: the upgrade tools' output),
    so the two can be diffed byte for byte. The layout is protobuf's (fields in number order, two-space
    indents); numbers are C++'s: floats as ``FloatToBuffer`` (``%.6g``, or ``%.9g`` where that does not read
    back), doubles as ``DoubleToBuffer`` (``%.15g`` or ``%.17g``), where Python writes ``1.0`` or
    ``104.00699``."""
    lines: list[str] = []
    _print_fields(message, "", lines)
    return "".join(line + "\n" for line in lines)


def _print_fields(message: Any, indent: str, out: list[str]) -> None:
    for fd, value in message.ListFields():
        for v in value if textformat.is_repeated(fd) else (value,):
            if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                out.append(f"{indent}{fd.name} {{")
                _print_fields(v, indent + "  ", out)
                out.append(f"{indent}}}")
            else:
                out.append(f"{indent}{fd.name}: {_scalar(fd, v)}")


def _scalar(fd: Any, value: Any) -> str:
    if fd.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        return '"' + text_encoding.CEscape(raw, as_utf8=False) + '"'
    if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        known = fd.enum_type.values_by_number.get(value)
        return known.name if known is not None else str(value)
    if fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "true" if value else "false"
    if fd.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return _c_number(value, np.float32, 6)
    if fd.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return _c_number(value, np.float64, 15)
    return str(value)


def _c_number(value: float, kind: Any, digits: int) -> str:
    """protobuf's ``FloatToBuffer``/``DoubleToBuffer``: ``%.{digits}g``, with 2 or 3 more digits when that does
    not read back as the same ``kind``; ``inf``, ``-inf``, ``nan`` spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    exact = kind(value)
    text = f"{float(exact):.{digits}g}"
    if kind(text) != exact:
        text = f"{float(exact):.{digits + (3 if kind is np.float32 else 2)}g}"
    return text


def upgrade_file(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[str, upgrade.UpgradeReport]:
    """Detect what ``src`` holds from its content, upgrade it, write ``dst``. Returns (kind, report)."""
    file = str(src)
    head, _size = read_head(src)
    if looks_binary(head):
        net = parse_binary_net(read_binary_message(src, caffe_pb2.NetParameter.DESCRIPTOR), file)
        report = upgrade.upgrade_net(net, file=file)
        write_bytes_atomic(dst, net.SerializeToString())
        return "binary net", report
    text = decode_text(read_bytes(src, kind="text"), file)
    kind = text_kind(text, file)
    if kind == "solver":
        solver = caffe_pb2.SolverParameter()
        textformat.parse(text, solver, file, strict=True)
        report = upgrade.upgrade_solver(solver, file)
        write_text_atomic(dst, caffe_text(solver))
        return "solver", report
    if kind != "net":
        raise ParseError(f"this is a {kind} file; nothing to upgrade", Location(file))
    net = caffe_pb2.NetParameter()
    info = textformat.parse(text, net, file)
    report = upgrade.upgrade_net(net, file=file, source=info)
    report.warnings[:0] = info.warnings()
    write_text_atomic(dst, caffe_text(net))
    return "text net", report
