"""Reading model files: text or binary nets, solvers; upgrade to the current format; source locations.

This is the only module that turns bytes on disk into ``caffe_pb2`` messages. It checks the file before
anything else (missing, empty, binary given where text is expected, a solver given as a net) so that the
user gets one clear line instead of a parser error from deep inside.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import textformat, upgrade
from .errors import InputFileError, Location, ParseError
from .proto import caffe_pb2
from .textformat import DroppedField, SourceInfo

#: Top-level fields only a SolverParameter has (used to tell solvers from nets).
_SOLVER_FIELDS = frozenset(
    f.name for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields
) - frozenset(f.name for f in caffe_pb2.NetParameter.DESCRIPTOR.fields)
_NET_FIELDS = frozenset(f.name for f in caffe_pb2.NetParameter.DESCRIPTOR.fields) - frozenset(
    f.name for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields
)


@dataclass
class NetSource:
    """A net read from a file and upgraded to the current (V2) format."""

    net: Any  # caffe_pb2.NetParameter
    file: str
    format: str  # "V0", "V1", "V2" or "binary"
    locations: list[Location] = field(default_factory=list)  # aligned with net.layer
    dropped: list[list[DroppedField]] = field(default_factory=list)  # aligned with net.layer
    info: SourceInfo | None = None
    report: upgrade.UpgradeReport | None = None
    raw: Any = None  # the message as written, before the upgrade (text files only)

    @property
    def warnings(self) -> list[str]:
        out = self.info.warnings() if self.info else []
        if self.report:
            out += self.report.warnings + self.report.errors
        return out


def read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise InputFileError("no such file", Location(str(path)))
    if p.is_dir():
        raise InputFileError("is a directory, expected a file", Location(str(path)))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputFileError(f"cannot read: {e.strerror}", Location(str(path))) from None
    if not data.strip():
        raise InputFileError("file is empty", Location(str(path)))
    return data


def looks_binary(data: bytes) -> bool:
    """Protobuf binaries almost always hold NUL or control bytes early; text prototxts never do."""
    head = data[:4096]
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 13, 12))
    if controls > 0:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # a multi-byte char cut at the 4 KiB boundary is fine
    return False


def decode_text(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def text_kind(text: str, file: str) -> str:
    """``net``, ``solver`` or ``labelmap`` from the top-level field names."""
    try:
        for name in textformat.iter_top_level_names(text, file):
            if name in _NET_FIELDS:
                return "net"
            if name in _SOLVER_FIELDS:
                return "solver"
            if name == "item":
                return "labelmap"
    except ParseError:
        pass  # the real parse reports the syntax error with its location
    return "net"


def text_format_version(net: Any) -> str:
    if len(net.layers):
        return "V0" if any(entry.HasField("layer") for entry in net.layers) else "V1"
    return "V2"


def read_net_text(text: str, file: str = "<string>") -> NetSource:
    """Parse a text net, upgrade it, and map source locations onto the upgraded layers."""
    net = caffe_pb2.NetParameter()
    info = textformat.parse(text, net, file)
    fmt = text_format_version(net)
    before = _layer_origins(net, info, fmt)
    raw = caffe_pb2.NetParameter()
    raw.CopyFrom(net)
    report = upgrade.upgrade_net(net, file=file, source=info)
    locations, dropped = _map_origins(net, before, file)
    return NetSource(net, file, fmt, locations, dropped, info, report, raw)


def read_net(path: str | os.PathLike, *, allow_binary: bool = False) -> NetSource:
    """Read a net definition file (text; binary only with ``allow_binary``)."""
    file = str(path)
    data = read_bytes(path)
    if looks_binary(data):
        if not allow_binary:
            raise InputFileError(
                "this is a binary protobuf file (a .caffemodel?), expected a text .prototxt net definition",
                Location(file),
            )
        return read_net_binary_data(data, file)
    text = decode_text(data, file)
    kind = text_kind(text, file)
    if kind != "net":
        raise InputFileError(f"this is a {kind} file, expected a net definition (.prototxt)", Location(file))
    return read_net_text(text, file)


def read_net_binary_data(data: bytes, file: str) -> NetSource:
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError (various classes across versions)
        raise ParseError("not a valid binary NetParameter (truncated or corrupt?)", Location(file)) from None
    fmt = "binary"
    report = upgrade.upgrade_net(net, file=file)
    return NetSource(net, file, fmt, [Location(file)] * len(net.layer), [[] for _ in net.layer], None, report)


def read_solver(path: str | os.PathLike) -> tuple[Any, SourceInfo, upgrade.UpgradeReport]:
    file = str(path)
    data = read_bytes(path)
    if looks_binary(data):
        raise InputFileError("this is a binary file, expected a text solver .prototxt", Location(file))
    text = decode_text(data, file)
    solver = caffe_pb2.SolverParameter()
    info = textformat.parse(text, solver, file)
    report = upgrade.upgrade_solver(solver)
    return solver, info, report


# -- locations across the upgrade --------------------------------------------------------------------------
def _layer_origins(net: Any, info: SourceInfo, fmt: str) -> dict[str, deque]:
    """Layer name -> queue of (location, dropped fields) in file order, before the upgrade renumbers."""
    origins: dict[str, deque] = defaultdict(deque)
    field_name = "layer" if fmt == "V2" else "layers"
    for i, entry in enumerate(getattr(net, field_name)):
        path = (field_name, i)
        name = entry.layer.name if fmt == "V0" else entry.name
        origins[name].append((info.location(path), info.dropped_under(path)))
    return origins


def _map_origins(net: Any, origins: dict[str, deque], file: str) -> tuple[list[Location], list[list[DroppedField]]]:
    locations, dropped = [], []
    for layer in net.layer:
        queue = origins.get(layer.name)
        if queue:
            loc, drops = queue.popleft()
        else:
            loc, drops = Location(file), []
        locations.append(loc)
        dropped.append(drops)
    return locations, dropped
