"""Resource guards in one place: sizes from model files are checked before anything is allocated.

Model files are untrusted. A two-line prototxt can declare a blob of 10^12 elements, a Tile to the same, or
a pooling window whose ONNX expansion needs tens of GB; a 1 GB random file can be handed to any command. The
checks here turn each of those into one :class:`~prototxt2py.errors.ResourceLimitError` line *before* the
allocation, instead of a process killed by the kernel.

Defaults follow Caffe where Caffe has a limit (``Blob::Reshape`` refuses a blob of more than ``INT_MAX``
elements and holds each dim in an ``int``) and are generous elsewhere. Every limit can be raised:

* per process, with an environment variable (``PROTOTXT2PY_MAX_BLOB_ELEMENTS=4e9``; ``0`` or ``none`` means
  no limit), read when the limits are first used;
* from Python, ``prototxt2py.limits.configure(max_blob_elements=...)`` or, for a block,
  ``with prototxt2py.limits.override(max_param_bytes=64 << 30): ...``.

The shape checks are plain functions of shapes so that shape inference (``ir``), the runtime and the ONNX
exporter can all call them at the point where a size becomes known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .errors import Location, ResourceLimitError, ShapeError

INT32_MAX = 2**31 - 1

#: field name -> (environment variable, default). ``None`` as a value means "no limit".
_SPEC: dict[str, tuple[str, int | None]] = {
    # Caffe's own limit (Blob::Reshape: "blob size exceeds INT_MAX"); also what 32-bit indexing survives.
    "max_blob_elements": ("PROTOTXT2PY_MAX_BLOB_ELEMENTS", INT32_MAX),
    # The largest known Caffe models hold about 0.6 GB of weights; 16 GiB leaves room for anything real.
    "max_param_bytes": ("PROTOTXT2PY_MAX_PARAM_BYTES", 16 << 30),
    # One temporary of one step (an exporter's Im2col/pooling expansion, a Tile at run time).
    "max_temp_bytes": ("PROTOTXT2PY_MAX_TEMP_BYTES", 8 << 30),
    # Text nets: parsing takes about 17 bytes of memory per byte of text and is pure Python (about 1 MB/s);
    # the biggest real prototxts are well under 1 MB. Text weights (``blobs { data: ... }``) need it raised.
    "max_text_bytes": ("PROTOTXT2PY_MAX_TEXT_BYTES", 16 << 20),
    # Binary protobuf messages are limited to 2 GiB by protobuf itself.
    "max_binary_bytes": ("PROTOTXT2PY_MAX_BINARY_BYTES", (2 << 30) - 1),
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """The limits in force. ``None`` disables one."""

    max_blob_elements: int | None = _SPEC["max_blob_elements"][1]
    max_param_bytes: int | None = _SPEC["max_param_bytes"][1]
    max_temp_bytes: int | None = _SPEC["max_temp_bytes"][1]
    max_text_bytes: int | None = _SPEC["max_text_bytes"][1]
    max_binary_bytes: int | None = _SPEC["max_binary_bytes"][1]


def _parse_env(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    text = raw.strip().lower()
    if text in ("0", "none", "off", "unlimited", "inf"):
        return None
    try:
        value = int(float(text)) if any(c in text for c in ".e") else int(text, 0)
    except (ValueError, OverflowError):
        raise ResourceLimitError(f"environment variable {name}={raw!r} is not a number (or 'none')") from None
    if value < 0:
        raise ResourceLimitError(f"environment variable {name}={raw!r} is negative")
    return value


def from_environment() -> Limits:
    """Defaults, with every ``PROTOTXT2PY_MAX_*`` variable that is set applied."""
    return Limits(**{key: _parse_env(env, default) for key, (env, default) in _SPEC.items()})


_current: Limits | None = None


def current() -> Limits:
    global _current
    if _current is None:
        _current = from_environment()
    return _current


def configure(**changes: int | None) -> Limits:
    """Change limits for the rest of the process (``None`` = no limit). Returns the new limits."""
    global _current
    _current = dataclasses.replace(current(), **changes)
    return _current


@contextlib.contextmanager
def override(**changes: int | None) -> Iterator[Limits]:
    """Change limits inside a ``with`` block only."""
    global _current
    saved = current()
    _current = dataclasses.replace(saved, **changes)
    try:
        yield _current
    finally:
        _current = saved


def _raise_hint(key: str) -> str:
    return f"raise it with {_SPEC[key][0]}=N or prototxt2py.limits.configure({key}=N)"


def _human(nbytes: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} bytes"


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about {float(n):.2g}"


def _fmt_shape(shape: Sequence[int]) -> str:
    dims = [str(d) for d in shape]
    if len(dims) > 8:
        dims = dims[:8] + [f"... {len(dims)} axes"]
    return "(" + ", ".join(dims) + ")"


# -- files -------------------------------------------------------------------------------------------------
def check_file_size(size: int, kind: str, location: Location | None = None) -> None:
    """``kind`` is "text" or "binary": refuse a file bigger than its limit before reading it."""
    key = "max_text_bytes" if kind == "text" else "max_binary_bytes"
    limit = getattr(current(), key)
    if limit is not None and size > limit:
        raise ResourceLimitError(f"{kind} file of {_human(size)} is over the {_human(limit)} limit for {kind} "
                                 f"model files; {_raise_hint(key)}", location)


# -- shapes ------------------------------------------------------------------------------------------------
def check_shape(shape: Sequence[Any], what: str, *, layer: str | None = None,
                location: Location | None = None) -> int:
    """Every dim an integer in ``[0, INT32_MAX]`` (Caffe's ``int`` dims) and the element count within
    ``max_blob_elements``. ``what`` names the shape in the message ("top 'conv1'"). Returns the count."""
    count = 1
    for axis, d in enumerate(shape):
        if isinstance(d, bool) or not isinstance(d, int):
            try:
                ok = float(d).is_integer()
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                raise ResourceLimitError(f"{what}: dim {axis} is {d!r}, not an integer", location, layer)
            d = int(d)
        if d < 0:
            raise ResourceLimitError(f"{what}: dim {axis} is negative ({d}) in shape {_fmt_shape(shape)}",
                                     location, layer)
        if d > INT32_MAX:
            raise ResourceLimitError(f"{what}: dim {axis} = {d} is beyond Caffe's 32-bit int dims (shape "
                                     f"{_fmt_shape(shape)})", location, layer)
        count *= d
    limit = current().max_blob_elements
    if limit is not None and count > limit:
        raise ResourceLimitError(f"{what}: shape {_fmt_shape(shape)} has {_count(count)} elements, over the limit of "
                                 f"{limit:,} (Caffe's INT_MAX); {_raise_hint('max_blob_elements')}", location, layer)
    return count


def check_node_shapes(node: Any, out_shapes: Iterable[Sequence[int] | None]) -> None:
    """Call right after a layer's output shapes are inferred (``None`` = unknown shape, skipped)."""
    tops = list(getattr(node, "tops", ()))
    for i, shape in enumerate(out_shapes):
        if shape is None:
            continue
        name = tops[i] if i < len(tops) else str(i)
        layer, location = getattr(node, "name", None), getattr(node, "location", None)
        if not check_shape(shape, f"top '{name}'", layer=layer, location=location) and shape:
            # Caffe allows a blob with a 0 dim, but no layer computes anything from one; torch and ONNX
            # reject many of them (reshapes with -1, reductions), so an empty blob is refused where it appears
            raise ShapeError(f"top '{name}' would be empty: shape {_fmt_shape(shape)} has a 0 dim", location,
                             layer=layer)


def check_param_shapes(node: Any, param_shapes: Iterable[Sequence[int] | None]) -> int:
    """Parameter blobs of one layer: each a valid blob shape. Returns their element count."""
    total = 0
    for i, shape in enumerate(param_shapes):
        if shape is None:
            continue
        total += check_shape(shape, f"parameter blob {i}", layer=getattr(node, "name", None),
                             location=getattr(node, "location", None))
    return total


def check_param_bytes(total_elements: int, itemsize: int = 4, location: Location | None = None) -> None:
    """All parameters of a net together, before the runtime allocates them."""
    limit = current().max_param_bytes
    nbytes = total_elements * itemsize
    if limit is not None and nbytes > limit:
        raise ResourceLimitError(f"the net's parameters need {_human(nbytes)} ({_count(total_elements)} values), over "
                                 f"the {_human(limit)} limit; {_raise_hint('max_param_bytes')}", location)


def check_temporary(shape_or_elements: Sequence[int] | int, what: str, *, itemsize: int = 4,
                    layer: str | None = None, location: Location | None = None) -> None:
    """One temporary array of a step (an exporter's constant, a runtime expansion) before it is made."""
    if isinstance(shape_or_elements, int):
        elements = shape_or_elements
    else:
        elements = math.prod(int(d) for d in shape_or_elements)
    limit = current().max_temp_bytes
    nbytes = elements * itemsize
    if elements < 0 or (limit is not None and nbytes > limit):
        raise ResourceLimitError(f"{what} would need {_human(max(nbytes, 0))}, over the {_human(limit or 0)} limit "
                                 f"for one temporary; {_raise_hint('max_temp_bytes')}", location, layer)


def check_graph(graph: Any) -> None:
    """Everything about a built IR graph at once: every blob shape, every parameter shape and their total.

    For callers that get a finished graph (the CLI before building a runtime); shape inference itself should
    call :func:`check_node_shapes` per node so that the first offending layer is named."""
    total = 0
    for node in graph.nodes:
        shapes = [graph.values[v].shape for v in node.outputs]
        check_node_shapes(node, shapes)
        total += check_param_shapes(node, getattr(node, "param_shapes", ()) or ())
    check_param_bytes(total)
