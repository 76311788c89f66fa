"""Protobuf messages as plain, frozen Python values.

Layer specs, runtime modules, code generation and every backend work on plain values, never on protobuf
messages (as onnx's reference evaluator binds attributes once and its op code never sees the message).
:func:`plain` turns a ``*_param`` message into a frozen dataclass generated once per message type from the
descriptor: scalars with Caffe's defaults applied, enums as their names (``"MAX"``), repeated fields as
tuples, sub-messages as plain values too (``FillerParameter`` as :class:`Filler`). Which optional fields were
written in the file is kept (``value.has("kernel_h")``), because Caffe sometimes derives values from presence.

Generated classes live in this module's namespace (``prototxt2py.plain.ConvolutionParameter``), so the values
pickle and deep-copy like any dataclass.
"""

from __future__ import annotations

import dataclasses
import keyword
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .textformat import is_repeated

__all__ = ["Filler", "Plain", "filler", "plain", "plain_class"]


@dataclass(frozen=True)
class Plain:
    """Base of generated plain values. ``_present`` holds the names of the fields set in the file."""

    _present: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def has(self, name: str) -> bool:
        """Whether the file set ``name`` (protobuf's ``HasField``; a repeated field: non-empty)."""
        return name in self._present

    def replace(self, **changes: Any) -> Plain:
        """A copy with some fields changed (they count as present)."""
        return dataclasses.replace(self, _present=self._present | frozenset(changes), **changes)


@dataclass(frozen=True)
class Filler:
    """Caffe's ``FillerParameter`` as plain values (Caffe's defaults: constant 0)."""

    type: str = "constant"
    value: float = 0.0
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    sparse: int = -1
    variance_norm: str = "FAN_IN"
    diag_val: tuple[float, ...] = ()  # FlowNet2's ``diagonal`` filler


_CLASSES: dict[str, type] = {}
_SCALAR_TYPES = {
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_BYTES: bytes,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_DOUBLE: float,
}


def _attr(name: str) -> str:
    """Attribute name of a field: a Python keyword gets a trailing underscore (ELU's ``lambda`` -> ``lambda_``);
    ``has()`` keeps the schema's spelling."""
    return f"{name}_" if keyword.iskeyword(name) else name




def _default(fd: FieldDescriptor) -> Any:
    if is_repeated(fd):
        return ()
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return None
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values_by_number[fd.default_value].name
    kind = _SCALAR_TYPES.get(fd.type, int)
    return kind(fd.default_value)


def plain_class(descriptor: Descriptor) -> type:
    """The frozen dataclass for a message type (made once, registered in this module for pickling)."""
    key = descriptor.full_name
    cls = _CLASSES.get(key)
    if cls is None:
        fields = [(_attr(fd.name), Any, field(default=_default(fd))) for fd in descriptor.fields]
        cls = dataclasses.make_dataclass(descriptor.name, fields, bases=(Plain,), frozen=True)
        cls.__module__ = __name__
        _CLASSES[key] = cls
        setattr(sys.modules[__name__], descriptor.name, cls)
    return cls


def _value(fd: FieldDescriptor, v: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return plain(v)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(v)
        return ev.name if ev is not None else int(v)
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return shortest_float32(v)
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return float(v)
    return v


def shortest_float32(v: float) -> float:
    """The shortest decimal that rounds to the same float32 as ``v`` (``0.9`` for float32 0.9, not
    0.8999999761581421): the value Caffe computes with, written as the file wrote it. Torch casts a Python
    scalar to a float32 tensor's type, so kernels see exactly Caffe's float32."""
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")) or v == 0.0:
        return v
    target = struct.pack("<f", v)
    for digits in range(1, 10):
        candidate = float(f"{v:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == target:
                return candidate
        except OverflowError:  # rounded past FLT_MAX
            continue
    return v


def plain(msg: Any) -> Any:
    """A protobuf message as a plain frozen value (``None`` stays ``None``)."""
    if msg is None:
        return None
    descriptor = msg.DESCRIPTOR
    if descriptor.name == "FillerParameter":
        return filler(msg)
    values: dict[str, Any] = {}
    present = []
    for fd, v in msg.ListFields():
        present.append(fd.name)
        if is_repeated(fd):
            values[_attr(fd.name)] = tuple(_value(fd, x) for x in v)
        else:
            values[_attr(fd.name)] = _value(fd, v)
    # Unset sub-messages read as their defaults, as protobuf does (``p.weight_filler.type`` is "constant").
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not is_repeated(fd):
            if _attr(fd.name) not in values:
                values[_attr(fd.name)] = plain(getattr(msg, fd.name))
    return plain_class(descriptor)(_present=frozenset(present), **values)


def filler(msg: Any) -> Filler | None:
    """A ``FillerParameter`` as a :class:`Filler`."""
    if msg is None:
        return None
    enum = msg.DESCRIPTOR.fields_by_name["variance_norm"].enum_type
    return Filler(
        type=msg.type,
        value=float(msg.value),
        min=float(msg.min),
        max=float(msg.max),
        mean=float(msg.mean),
        std=float(msg.std),
        sparse=int(msg.sparse),
        variance_norm=enum.values_by_number[msg.variance_norm].name,
        diag_val=tuple(float(v) for v in msg.diag_val),
    )


def __getattr__(name: str) -> type:
    """Plain classes are made on first use; a fresh process unpickling a plain value (a data-loader worker)
    asks for its class by name before any was made, so make it from Caffe's schema then."""
    from .proto import caffe_pb2

    descriptor = caffe_pb2.DESCRIPTOR.message_types_by_name.get(name)
    if descriptor is None:
        raise AttributeError(name)
    return plain_class(descriptor)
