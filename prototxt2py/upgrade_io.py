"""``prototxt2py upgrade``: legacy net text, net binary or solver in, current format out (atomically)."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from google.protobuf import text_format

from . import textformat, upgrade
from .errors import Location, ParseError
from .fsutil import write_bytes_atomic, write_text_atomic
from .proto import caffe_pb2
from .reader import decode_text, looks_binary, parse_binary_net, read_binary_message, read_bytes, read_head, text_kind

#: A float field's value that Python's text format writes as ``1.0``; C++'s writes what ``%g`` gives.
_WHOLE_FLOAT = re.compile(r"(?m)^(\s*\w+: )(-?\d+)\.0$")


def caffe_text(message: Any) -> str:
    """``message`` in text format as Caffe's C++ writes it (the upgrade tools' output), so the two can be
    diffed: floats as protobuf's ``SimpleFtoa`` (``%.6g``, or ``%.9g`` where that does not round-trip), i.e.
    ``lr_mult: 1`` and ``1e+10`` where Python writes ``1.0`` and ``10000000000.0``."""

    def ftoa(m: re.Match[str]) -> str:
        value = np.float32(m.group(2))
        for precision in (6, 9):
            text = f"{value:.{precision}g}"
            if np.float32(text) == value:
                break
        return m.group(1) + text

    return _WHOLE_FLOAT.sub(ftoa, text_format.MessageToString(message))


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
