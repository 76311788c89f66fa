"""``prototxt2py upgrade``: legacy net text, net binary or solver in, current format out (atomically)."""

from __future__ import annotations

import os

from google.protobuf import text_format

from . import textformat, upgrade
from .errors import Location, ParseError
from .fsutil import write_bytes_atomic, write_text_atomic
from .proto import caffe_pb2
from .reader import decode_text, looks_binary, parse_binary_net, read_binary_message, read_bytes, read_head, text_kind


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
        write_text_atomic(dst, text_format.MessageToString(solver))
        return "solver", report
    if kind != "net":
        raise ParseError(f"this is a {kind} file; nothing to upgrade", Location(file))
    net = caffe_pb2.NetParameter()
    info = textformat.parse(text, net, file)
    report = upgrade.upgrade_net(net, file=file, source=info)
    report.warnings[:0] = info.warnings()
    write_text_atomic(dst, text_format.MessageToString(net))
    return "text net", report
