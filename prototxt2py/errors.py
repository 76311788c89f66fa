"""Error types that carry a location, so every user-facing failure names file, line/column or layer.

The CLI turns any :class:`Prototxt2pyError` into a single line on stderr and exit code 1; anything else
escaping is a bug in this package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Everything ``str.splitlines`` breaks on, every other C0/C1 control character, and the Unicode format
#: characters that reorder text on a terminal (bidi overrides): names from model files are data, and an
#: error line must stay one line that shows what is really there.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` with every line break and control character written as a visible escape (``\\n``,
    ``\\x1b``, ``\\u2028``), so that names from hostile files cannot forge extra output lines."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                           else f"\\u{ord(m.group()):04x}"), text)


@dataclass(frozen=True)
class Location:
    """Where something came from: a file (or ``<string>``), and optionally a 1-based line and column."""

    file: str = "<string>"
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class Prototxt2pyError(Exception):
    """Base class of every error meant for the user. ``str(err)`` is one complete line."""

    def __init__(self, message: str, location: Location | None = None, layer: str | None = None):
        self.message = message
        self.location = location
        self.layer = layer
        super().__init__(self._render())

    def _render(self) -> str:
        # Escaped here, centrally: messages embed names from model files (layers, blobs, fields, paths).
        prefix = f"{self.location}: " if self.location else ""
        where = f"layer '{self.layer}': " if self.layer else ""
        return one_line(f"{prefix}{where}{self.message}")


class InputFileError(Prototxt2pyError):
    """A file is missing, unreadable, empty, or of the wrong kind (binary given as text, ...)."""


class ParseError(Prototxt2pyError):
    """Text-format syntax error or a value that does not fit the schema."""


class UpgradeError(Prototxt2pyError):
    """A legacy file that Caffe itself would refuse to upgrade."""


class GraphError(Prototxt2pyError):
    """The net is not a valid graph: missing bottoms, duplicate tops, bad NetState rules, ..."""


class UnsupportedLayerError(Prototxt2pyError):
    """One or more layer types have no spec (or no implementation for the requested backend)."""


class ShapeError(Prototxt2pyError):
    """Shape inference failed: incompatible bottoms or parameters."""


class UnknownInputError(ShapeError):
    """A shape given for a blob that is no input of the net (``blob``; the net's ``inputs``)."""

    def __init__(self, message: str, location: Location | None, blob: str, inputs: list[str]):
        super().__init__(message, location)
        self.blob, self.inputs = blob, inputs


class ForwardError(ShapeError, RuntimeError):
    """A forward pass failed at a layer, typically on inputs of a shape the net's weights or layers do not take.
    Also a ``RuntimeError``, which is what torch raises for such a failure."""


class WeightsError(Prototxt2pyError):
    """A weights file is truncated, corrupt, or does not match the net."""


class ResourceLimitError(Prototxt2pyError):
    """A size beyond a resource limit (blob elements, dimensions, parameter bytes, file size, temporaries):
    refused before anything is allocated. The message names the environment variable that raises it."""
