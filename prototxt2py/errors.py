"""Error types that carry a location, so every user-facing failure names file, line/column or layer.

The CLI turns any :class:`Prototxt2pyError` into a single line on stderr and exit code 1; anything else
escaping is a bug in this package.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        prefix = f"{self.location}: " if self.location else ""
        where = f"layer '{self.layer}': " if self.layer else ""
        return f"{prefix}{where}{self.message}"


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


class WeightsError(Prototxt2pyError):
    """A weights file is truncated, corrupt, or does not match the net."""
