"""Reading model files: text or binary nets, solvers; upgrade to the current format; source locations.

This is the only module that turns bytes on disk into ``caffe_pb2`` messages. It checks the file before
anything else (missing, empty, binary given where text is expected, a solver given as a net) so that the
user gets one clear line instead of a parser error from deep inside.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import limits, textformat, upgrade
from .errors import GraphError, InputFileError, Location, ParseError, ResourceLimitError
from .fsutil import note_input
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
        """The fields dropped (except a registered spec's own parameter block, which it reads) and the upgrade's
        warnings and errors."""
        claimed = self._claimed() if self.info and self.info.dropped else set()
        out = [d.warning() for d in self.info.dropped if id(d) not in claimed] if self.info else []
        if self.report:
            out += self.report.warnings + self.report.errors
        return out

    def _claimed(self) -> set[int]:
        """Dropped layer-level fields that the layer's spec declares as its own parameter block."""
        from .errors import Prototxt2pyError
        from .layers import get_spec

        claimed = set()
        for layer, dropped in zip(self.net.layer, self.dropped, strict=False):
            top_level = [d for d in dropped if len(d.path) == 3]
            if not top_level:
                continue
            try:
                spec = get_spec(layer.type)
            except Prototxt2pyError:  # a plugin that fails to load: reported where a spec is needed, not here
                spec = None
            claimed.update(id(d) for d in top_level if spec is not None and spec.own_field(d.name))
        return claimed


#: How much of a file is looked at to tell text from binary before anything else is read.
SNIFF_BYTES = 4096


def _open_regular(path: str | os.PathLike) -> tuple[Any, int]:
    """An open binary file object and its size; missing files, directories, devices and FIFOs refused
    (reading ``/dev/zero`` or a FIFO would never end)."""
    p = Path(path)
    loc = Location(str(path))
    try:
        info = p.stat()
    except FileNotFoundError:
        raise InputFileError("no such file", loc) from None
    except OSError as e:
        raise InputFileError(f"cannot read: {e.strerror}", loc) from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError("is a directory, expected a file", loc)
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError("not a regular file (a device, FIFO or socket?)", loc)
    try:
        f = p.open("rb")
    except OSError as e:
        raise InputFileError(f"cannot read: {e.strerror}", loc) from None
    note_input(f.fileno())
    return f, os.fstat(f.fileno()).st_size


def read_head(path: str | os.PathLike, size: int = SNIFF_BYTES) -> tuple[bytes, int]:
    """The first ``size`` bytes of a file and the file's size: enough to refuse most wrong inputs cheaply."""
    f, total = _open_regular(path)
    with f:
        try:
            return f.read(size), total
        except OSError as e:
            raise InputFileError(f"cannot read: {e.strerror}", Location(str(path))) from None


def read_bytes(path: str | os.PathLike, limit: int | None = None, kind: str = "binary") -> bytes:
    """The whole file, refused first (without reading it) when it is bigger than ``limit`` or the
    ``kind`` ("text"/"binary") limit of :mod:`prototxt2py.limits`."""
    loc = Location(str(path))
    f, total = _open_regular(path)
    with f:
        if limit is not None and total > limit:
            raise ResourceLimitError(f"file of {total:,} bytes is over the {limit:,}-byte limit for this input", loc)
        limits.check_file_size(total, kind, loc)
        try:
            data = f.read()
        except OSError as e:
            raise InputFileError(f"cannot read: {e.strerror}", loc) from None
    if not data or data.isspace():  # isspace: no copy of a big file, unlike strip()
        raise InputFileError("file is empty", loc)
    return data


def read_binary_message(path: str | os.PathLike, descriptor: Any) -> bytes:
    """A binary protobuf file's bytes, read only after its size and top-level framing passed (walked on a
    memory map, so random bytes are refused at the cost of a few fields, not of reading the file)."""
    loc = Location(str(path))
    f, total = _open_regular(path)
    with f:
        limits.check_file_size(total, "binary", loc)
        if total == 0:
            raise InputFileError("file is empty", loc)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if not binary_framing_ok(mm, descriptor):
                raise ParseError(f"not a valid binary {descriptor.name} (truncated or corrupt?)", loc)
        try:
            return f.read()
        except OSError as e:
            raise InputFileError(f"cannot read: {e.strerror}", loc) from None


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def looks_binary(data: bytes) -> bool:
    """Protobuf binaries almost always hold NUL or control bytes early; text prototxts never do."""
    head = data[:4096]
    if head.startswith(_UTF16_BOMS):  # text saved as UTF-16 (a Windows editor's "Unicode"): NULs, yet text
        return False
    if b"\x00" in head:
        return True
    # Bytes that are not UTF-8 are no sign of a binary: a prototxt written in Latin-1 (a comment "réseau")
    # reads in Caffe, whose text parser takes any byte in comments; a binary's lengths and keys give several
    # controls, where one stray control byte in a text is that text's syntax error (reported at its line:col).
    return sum(1 for b in head if b < 32 and b not in (9, 10, 13, 12)) >= 2


def decode_text(data: bytes, file: str) -> str:
    if data.startswith(_UTF16_BOMS):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def text_kind(text: str, file: str, default: str = "net") -> str:
    """``net``, ``solver`` or ``labelmap`` from the first top-level field name only one of them has; ``default``
    when none is telling (or the text does not parse)."""
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
    return default


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
    # the upgrade made the net-level inputs a first layer (not when they had no shapes: then they are dropped)
    inserted = upgrade.STEP_INPUT_LAYER in report.steps and bool(len(raw.input_shape) or len(raw.input_dim))
    generated = info.location(("input_shape", 0)) if inserted else None
    locations, dropped = _map_origins(net, before, file, generated)
    check_names(net, locations)
    return NetSource(net, file, fmt, locations, dropped, info, report, raw)


def read_net(path: str | os.PathLike, *, allow_binary: bool = False) -> NetSource:
    """Read a net definition file (text; binary only with ``allow_binary``)."""
    file = str(path)
    head, _size = read_head(path)
    if looks_binary(head):
        if not allow_binary:
            raise InputFileError(
                "this is a binary protobuf file (a .caffemodel?), expected a text .prototxt net definition",
                Location(file),
            )
        return read_net_binary_data(read_binary_message(path, caffe_pb2.NetParameter.DESCRIPTOR), file)
    data = read_bytes(path, kind="text")
    text = decode_text(data, file)
    kind = text_kind(text, file)
    if kind != "net":
        raise InputFileError(f"this is a {kind} file, expected a net definition (.prototxt)", Location(file))
    return read_net_text(text, file)


def read_net_binary_data(data: bytes, file: str) -> NetSource:
    net = parse_binary_net(data, file)
    fmt = "binary"
    report = upgrade.upgrade_net(net, file=file)
    check_names(net, [Location(file)] * len(net.layer))
    return NetSource(net, file, fmt, [Location(file)] * len(net.layer), [[] for _ in net.layer], None, report)


def parse_binary_net(data: bytes, file: str) -> Any:
    """A binary NetParameter, checked as the text reader checks text: valid UTF-8 names, finite parameters,
    int32 blob dims. The framing is walked first (cheap, no copies) so that random bytes are refused before
    protobuf decodes anything."""
    net = caffe_pb2.NetParameter()
    if not binary_framing_ok(data, caffe_pb2.NetParameter.DESCRIPTOR):
        raise ParseError("not a valid binary NetParameter (truncated or corrupt?)", Location(file))
    try:
        net.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError (various classes across versions), or on invalid UTF-8
        raise ParseError("not a valid binary NetParameter (truncated, corrupt, or names that are not UTF-8)",
                         Location(file)) from None
    check_values(net, file)
    return net


def read_solver(path: str | os.PathLike) -> tuple[Any, SourceInfo, upgrade.UpgradeReport]:
    file = str(path)
    head, _size = read_head(path)
    if looks_binary(head):
        raise InputFileError("this is a binary file, expected a text solver .prototxt", Location(file))
    text = decode_text(read_bytes(path, kind="text"), file)
    kind = text_kind(text, file, default="solver")
    if kind != "solver":  # its fields would all be dropped as unknown, leaving an empty solver
        raise InputFileError(f"this is a {kind} file, expected a solver definition (.prototxt)", Location(file))
    solver = caffe_pb2.SolverParameter()
    info = textformat.parse(text, solver, file)
    report = upgrade.upgrade_solver(solver, file)
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


def _map_origins(net: Any, origins: dict[str, deque], file: str,
                 generated_input: Location | None = None) -> tuple[list[Location], list[list[DroppedField]]]:
    """Each upgraded layer's location, matched by name in file order. ``generated_input``: the location of the
    net-level inputs when the upgrade made them the first layer (named "input": a layer of the file may have
    that name too, and keeps its own location)."""
    locations, dropped = [], []
    for i, layer in enumerate(net.layer):
        if i == 0 and generated_input is not None:
            locations.append(generated_input)
            dropped.append([])
            continue
        queue = origins.get(layer.name)
        if queue:
            loc, drops = queue.popleft()
        else:
            loc, drops = Location(file), []
        locations.append(loc)
        dropped.append(drops)
    return locations, dropped


# -- checks shared by text and binary nets ----------------------------------------------------------------
def check_names(net: Any, locations: list[Location]) -> None:
    """An empty blob name is no name: Caffe would make a blob called "" and exporters an ONNX value without
    a name (which means "absent" there). Refused with the layer's location."""
    for i, name in enumerate(net.input):
        if not name:
            raise GraphError(f"net input {i} has an empty name", locations[0] if locations else None)
    for layer, loc in zip(net.layer, locations, strict=False):
        for kind in ("bottom", "top"):
            for i, blob in enumerate(getattr(layer, kind)):
                if not blob:
                    raise GraphError(f"{kind} {i} has an empty blob name", loc, layer=layer.name)


#: Float fields where an infinity is meaningful (kept in step with ``textformat._INFINITY_OK``).
_INFINITY_OK = textformat._INFINITY_OK
_SKIP_MESSAGES = frozenset({"caffe.BlobProto"})  # stored weights may hold anything; they are data


def check_values(msg: Any, file: str) -> None:
    """Non-finite layer parameters and dims beyond int32 in a binary message (the text reader refuses them
    where they are written). Weight blobs are not looked at."""

    def walk(m: Any, layer: str | None) -> None:
        if m.DESCRIPTOR.full_name in _SKIP_MESSAGES:
            return
        for fd, value in m.ListFields():
            name = fd.full_name
            here = layer
            if fd.message_type is not None:
                items = value if textformat.is_repeated(fd) else [value]
                for item in items:
                    named = fd.message_type.full_name in _LAYER_TYPES and isinstance(item.name, str) and item.name
                    sub_layer = item.name if named else here
                    walk(item, sub_layer)
                continue
            values = value if textformat.is_repeated(fd) else [value]
            if fd.type == fd.TYPE_STRING and any(isinstance(v, bytes) for v in values):
                # proto2 strings are not validated by protobuf: invalid UTF-8 comes back as bytes
                raise ParseError(f"field '{fd.name}' is not valid UTF-8", Location(file),
                                 layer if isinstance(layer, str) else None)
            if fd.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
                for v in values:
                    if not math.isfinite(v) and (math.isnan(v) or name not in _INFINITY_OK):
                        raise ParseError(f"field '{fd.name}' is {v}, not a finite number", Location(file), layer)
            lo_hi = textformat._NARROWED.get(name)
            if lo_hi is not None:
                for v in values:
                    if not lo_hi[0] <= v <= lo_hi[1]:
                        raise ParseError(f"integer {v} out of range for field '{fd.name}' (Caffe holds it in a "
                                         "32-bit int)", Location(file), layer)

    walk(msg, None)


_LAYER_TYPES = frozenset({"caffe.LayerParameter", "caffe.V1LayerParameter", "caffe.V0LayerParameter"})


def binary_framing_ok(data: Any, descriptor: Any, depth: int = 0) -> bool:
    """Whether the top level of ``data`` is a plausible serialisation of ``descriptor``: every key a field of
    the message with its wire type, every length inside the buffer. Only top-level framing is walked (the
    cost is per field, never per byte), which refuses random bytes within a few fields."""
    from .wire import framing_fields

    by_number = descriptor.fields_by_number
    wire_of = {}
    for number, fd in by_number.items():
        if fd.type in (fd.TYPE_MESSAGE, fd.TYPE_STRING, fd.TYPE_BYTES):
            wire = {2}
        elif fd.type in (fd.TYPE_FLOAT, fd.TYPE_FIXED32, fd.TYPE_SFIXED32):
            wire = {5, 2}
        elif fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FIXED64, fd.TYPE_SFIXED64):
            wire = {1, 2}
        elif fd.type == fd.TYPE_GROUP:
            wire = {3}
        else:
            wire = {0, 2}
        wire_of[number] = wire
    try:
        for number, wire, _value in framing_fields(data):
            if number in wire_of and wire not in wire_of[number]:
                return False
    except ValueError:
        return False
    return True
