"""The plugin API: what a third party (or a built-in fork module) uses to add Caffe layer types.

A plugin is a module that defines :class:`~prototxt2py.layers.LayerSpec` subclasses and registers them with
``@register``; everything is imported from :mod:`prototxt2py.layers`, which re-exports this module::

    from prototxt2py.layers import LayerSpec, call, register

    @register
    class Scale2(LayerSpec):
        type = "Scale2"                       # the layer's ``type`` in prototxt files
        def attrs(self, layer):               # plain values, read once (here from a field our schema lacks)
            block = layer.unknown.get_message("scale2_param", required=True)
            return block.get_float("factor", 1.0)
        def module(self, node):               # a helper class of the plugin's own (installed) module
            return call("my_plugin.nn:Scale2Module", node.attrs)
        def to_onnx(self, node, ctx): ...

Installed packages announce plugins through the entry point group :data:`ENTRY_POINT_GROUP`
(``[project.entry-points."prototxt2py.layers"] my_plugin = "my_plugin"``): the group is loaded the first time
a layer type is looked up and not found (:func:`load_entry_points`), and a plugin that fails to load is an
error naming the entry point and its distribution, never skipped.

What this module adds to the spec contract of :mod:`prototxt2py.layers.base`:

* :class:`LayerSource` -- what ``attrs(layer)`` receives: the ``LayerParameter`` (its fields read as
  usual) plus ``layer.unknown``, the fields our ``caffe.proto`` lacks, parsed without a schema into a
  :class:`RawMessage` whose getters report errors at the field's ``file:line:col``;
* ``Python`` layers by explicit mapping only (:func:`python_layer_spec`): the model file names a module
  (``python_param.module``) that is never imported; the caller maps ``"module.Layer"`` to a spec or a torch
  module, in ``prototxt2py.load(..., python_layers=...)`` or with a registered :class:`PythonLayerSpec`.

This module imports nothing from :mod:`prototxt2py.layers` at import time, so that the layers package can
re-export it before its own family modules (which are plugins too) import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import Location, ParseError, Prototxt2pyError
from .textformat import DroppedField, iter_tokens

if TYPE_CHECKING:  # pragma: no cover
    from .layers.base import LayerSpec

#: Entry point group of installed plugin packages.
ENTRY_POINT_GROUP = "prototxt2py.layers"


class PluginError(Prototxt2pyError):
    """A plugin could not be loaded (import error, duplicate registration, ...), or a mapping is invalid."""


# -- entry points ------------------------------------------------------------------------------------------
_entry_points_loaded = False
_entry_point_failure: PluginError | None = None


def load_entry_points() -> bool:
    """Load every ``prototxt2py.layers`` entry point, once per process. Returns whether this call loaded
    them (False when done before, so a caller knows whether another registry lookup can help).

    The value of an entry point is a module (importing it registers its specs) or a callable taking no
    arguments (called once; it registers). A failure is a :class:`PluginError` naming the entry point and
    its distribution; it is raised again by every later call, so a broken plugin is never silently missing.
    """
    global _entry_points_loaded, _entry_point_failure
    if _entry_point_failure is not None:
        raise _entry_point_failure
    if _entry_points_loaded:
        return False
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    seen: set[tuple[str, str]] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in seen:  # one distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as e:  # any failure of third-party code: reported with its origin, never skipped
            _entry_point_failure = PluginError(
                f"plugin entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) of distribution "
                f"{_distribution(ep)} failed to load: {type(e).__name__}: {e}")
            raise _entry_point_failure from e
    return True


def _distribution(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "'(unknown)'"
    return f"'{dist.name} {dist.version}'"


# -- raw text of fields our schema lacks -----------------------------------------------------------------------
_REQUIRED: Any = object()


@dataclass(frozen=True)
class RawField:
    """One field of a :class:`RawMessage`: its name, its value as written, and where it was written.

    ``kind`` is the token kind: ``"string"`` (value: the unquoted text), ``"number"`` (value: the literal's
    text), ``"ident"`` (an enum name, ``true``/``false``, ``inf``) or ``"message"`` (value: a RawMessage)."""

    name: str
    kind: str
    value: Any
    location: Location  # of the value (of the name for a message)
    name_location: Location


class RawMessage:
    """A text-format message read without a schema (a fork's ``xxx_param { ... }`` our ``caffe.proto``
    lacks). Getters convert one field at a time and raise :class:`~prototxt2py.errors.ParseError` at the
    field's ``file:line:col`` when a value does not fit; :meth:`check_fields` refuses names the plugin does
    not know, as protobuf's own parser would."""

    def __init__(self, name: str, fields: Sequence[RawField], location: Location, layer: str | None = None):
        self.name = name
        self.fields = tuple(fields)
        self.location = location
        self.layer = layer

    def __repr__(self) -> str:
        return f"RawMessage({self.name!r}, {[f.name for f in self.fields]})"

    # -- structure ----------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def names(self) -> list[str]:
        """Field names in order of first appearance."""
        return list(dict.fromkeys(f.name for f in self.fields))

    def all(self, name: str) -> list[RawField]:
        return [f for f in self.fields if f.name == name]

    def error(self, message: str, where: RawField | Location | None = None) -> ParseError:
        loc = where.location if isinstance(where, RawField) else where or self.location
        return ParseError(message, loc, layer=self.layer)

    def check_fields(self, allowed: Sequence[str]) -> None:
        """Refuse any field not in ``allowed`` (a misspelt field would otherwise silently keep its default)."""
        for f in self.fields:
            if f.name not in allowed:
                raise self.error(f"{self.name} has no field named '{f.name}' (expected one of: "
                                 f"{', '.join(allowed)})", f.name_location)

    def _one(self, name: str, default: Any) -> RawField | None:
        found = self.all(name)
        if len(found) > 1:
            raise self.error(f"{self.name} has field '{name}' more than once", found[1].name_location)
        if not found:
            if default is _REQUIRED:
                raise self.error(f"{self.name} needs field '{name}'")
            return None
        return found[0]

    # -- single values --------------------------------------------------------------------------------
    def get_int(self, name: str, default: Any = _REQUIRED) -> int:
        f = self._one(name, default)
        return default if f is None else self._int(f)

    def get_float(self, name: str, default: Any = _REQUIRED) -> float:
        f = self._one(name, default)
        return default if f is None else self._float(f)

    def get_bool(self, name: str, default: Any = _REQUIRED) -> bool:
        f = self._one(name, default)
        return default if f is None else self._bool(f)

    def get_str(self, name: str, default: Any = _REQUIRED) -> str:
        f = self._one(name, default)
        return default if f is None else self._str(f)

    def get_enum(self, name: str, choices: Sequence[str], default: Any = _REQUIRED) -> str:
        """An enum value by name (as protobuf writes enums); numbers index ``choices``."""
        f = self._one(name, default)
        return default if f is None else self._enum(f, choices)

    def get_message(self, name: str, default: Any = None, *, required: bool = False) -> RawMessage | None:
        f = self._one(name, _REQUIRED if required else default)
        if f is None:
            return default
        if f.kind != "message":
            raise self.error(f"field '{name}' of {self.name} must be a message {{ ... }}, got {_short(f.value)}", f)
        return f.value

    # -- repeated values ------------------------------------------------------------------------------
    def get_ints(self, name: str) -> tuple[int, ...]:
        return tuple(self._int(f) for f in self.all(name))

    def get_floats(self, name: str) -> tuple[float, ...]:
        return tuple(self._float(f) for f in self.all(name))

    def get_strs(self, name: str) -> tuple[str, ...]:
        return tuple(self._str(f) for f in self.all(name))

    def get_messages(self, name: str) -> tuple[RawMessage, ...]:
        out = []
        for f in self.all(name):
            if f.kind != "message":
                raise self.error(f"field '{name}' of {self.name} must be a message {{ ... }}", f)
            out.append(f.value)
        return tuple(out)

    # -- conversions ----------------------------------------------------------------------------------
    def _int(self, f: RawField) -> int:
        text = f.value if f.kind == "number" else None
        try:
            if text is None:
                raise ValueError
            value = int(text, 16) if text.lower().lstrip("+-").startswith("0x") else int(text, 10)
        except ValueError:
            raise self.error(f"expected an integer for field '{f.name}' of {self.name}, got "
                             f"{_short(f.value)}", f) from None
        if not -(2**63) <= value < 2**64:
            raise self.error(f"integer {_short(text)} out of range for field '{f.name}'", f)
        return value

    def _float(self, f: RawField) -> float:
        value = math.nan
        if f.kind == "number":
            text = f.value
            try:
                value = float(int(text, 16)) if text.lower().lstrip("+-").startswith("0x") else float(text.rstrip("fF"))
            except (ValueError, OverflowError):
                raise self.error(f"number {_short(text)} does not fit field '{f.name}'", f) from None
        elif f.kind != "ident" or f.value.lower().lstrip("-") not in ("inf", "infinity", "nan"):
            raise self.error(f"expected a number for field '{f.name}' of {self.name}, got {_short(f.value)}", f)
        if not math.isfinite(value):
            raise self.error(f"field '{f.name}' of {self.name} is {_short(f.value)}, not a finite number", f)
        return value

    def _bool(self, f: RawField) -> bool:
        words = {"true": True, "True": True, "t": True, "1": True, "false": False, "False": False, "f": False,
                 "0": False}
        if f.kind in ("ident", "number") and f.value in words:
            return words[f.value]
        raise self.error(f"expected true or false for field '{f.name}' of {self.name}, got {_short(f.value)}", f)

    def _str(self, f: RawField) -> str:
        if f.kind != "string":
            raise self.error(f"expected a quoted string for field '{f.name}' of {self.name}, got "
                             f"{_short(f.value)}", f)
        return f.value

    def _enum(self, f: RawField, choices: Sequence[str]) -> str:
        if f.kind == "ident" and f.value in choices:
            return f.value
        if f.kind == "number" and f.value.isdigit() and int(f.value) < len(choices):
            return choices[int(f.value)]
        raise self.error(f"unknown value {_short(f.value)} for field '{f.name}' of {self.name} (expected one "
                         f"of: {', '.join(choices)})", f)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


#: How deep a schemaless block may nest (as the schema reader's limit).
_MAX_DEPTH = 100


def parse_dropped(dropped: Sequence[DroppedField], name: str, layer: str | None = None,
                  location: Location | None = None) -> RawMessage:
    """The dropped fields (raw text as :mod:`prototxt2py.textformat` kept it) as one :class:`RawMessage`
    called ``name``: each field's value parsed without a schema, locations in the model file."""
    fields: list[RawField] = []
    for d in dropped:
        fields += _parse_field_text(d, layer)
    return RawMessage(name, fields, location or (dropped[0].location if dropped else Location()), layer)


def _parse_field_text(d: DroppedField, layer: str | None) -> list[RawField]:
    base = d.location

    def loc(tok: Any) -> Location:
        if base.line is None:
            return Location(base.file)
        col = (base.col or 1) + tok.col - 1 if tok.line == 1 else tok.col
        return Location(base.file, base.line + tok.line - 1, col)

    tokens = [t for t in iter_tokens(d.raw, base.file)]
    pos = 0

    def peek() -> Any:
        return tokens[pos]

    def take() -> Any:
        nonlocal pos
        tok = tokens[pos]
        if tok.kind != "eof":
            pos += 1
        return tok

    def fail(tok: Any, message: str) -> ParseError:
        return ParseError(message, loc(tok), layer=layer)

    def punct(tok: Any, chars: str) -> bool:
        return tok.kind == "punct" and tok.text in chars

    def message_body(name: str, open_tok: Any, depth: int) -> RawMessage:
        if depth > _MAX_DEPTH:
            raise fail(open_tok, f"messages nested more than {_MAX_DEPTH} deep")
        close = "}" if open_tok.text == "{" else ">"
        inner: list[RawField] = []
        while True:
            tok = peek()
            if punct(tok, close):
                take()
                return RawMessage(name, inner, loc(open_tok), layer)
            if tok.kind == "eof":
                raise fail(open_tok, f"'{open_tok.text}' opened here is never closed")
            inner += field(depth)
            if punct(peek(), ",;"):
                take()

    def value(name: str, name_tok: Any, depth: int) -> RawField:
        tok = take()
        if punct(tok, "{<"):
            return RawField(name, "message", message_body(name, tok, depth + 1), loc(name_tok), loc(name_tok))
        if tok.kind == "string":
            text = tok.text[1:-1]
            while peek().kind == "string":
                text += take().text[1:-1]
            if "\\" in text:
                text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
            return RawField(name, "string", text, loc(tok), loc(name_tok))
        if tok.kind in ("number", "ident"):
            return RawField(name, tok.kind, tok.text, loc(tok), loc(name_tok))
        raise fail(tok, f"expected a value for field '{name}', got {_short(tok.text)}")

    def field(depth: int) -> list[RawField]:
        name_tok = take()
        if name_tok.kind != "ident":
            raise fail(name_tok, f"expected a field name, got {_short(name_tok.text)}")
        colon = punct(peek(), ":")
        if colon:
            take()
        if punct(peek(), "["):
            take()
            out: list[RawField] = []
            if punct(peek(), "]"):
                take()
                return out
            while True:
                out.append(value(name_tok.text, name_tok, depth))
                sep = take()
                if punct(sep, "]"):
                    return out
                if not punct(sep, ","):
                    raise fail(sep, f"expected ',' or ']' in the list of field '{name_tok.text}'")
        if not colon and not punct(peek(), "{<"):
            raise fail(peek(), f"expected ':' or '{{' after field '{_short(name_tok.text)}'")
        return [value(name_tok.text, name_tok, depth)]

    return field(0)


class LayerSource:
    """What a spec's ``attrs(layer)`` receives: the layer's ``LayerParameter`` (every attribute is read from
    it: ``layer.convolution_param``, ``layer.HasField(...)``), plus the fields our schema lacks, which the
    text reader kept as raw text, parsed here on request:

    * ``layer.unknown`` -- fields of the layer itself (a fork's ``xxx_param { ... }``), as a RawMessage;
    * ``layer.unknown_in("convolution_param")`` -- fields a fork added inside a message our schema has.
    """

    __slots__ = ("_dropped", "_location", "_message")

    def __init__(self, message: Any, dropped: Sequence[DroppedField] = (), location: Location | None = None):
        self._message = message
        self._dropped = tuple(dropped)
        self._location = location or Location()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    @property
    def message(self) -> Any:
        """The ``caffe_pb2.LayerParameter`` itself."""
        return self._message

    @property
    def location(self) -> Location:
        return self._location

    @property
    def unknown(self) -> RawMessage:
        return self.unknown_in()

    def unknown_in(self, *path: str) -> RawMessage:
        """The dropped fields directly inside the sub-message at ``path`` (none: the layer itself)."""
        chosen = [d for d in self._dropped if len(d.path) >= 3 and tuple(d.path[2:-1]) == path]
        name = ".".join(("LayerParameter", *path))
        return parse_dropped(chosen, name, self._message.name or None, self._location)


# -- Python layers --------------------------------------------------------------------------------------------
def python_layer_name(layer: Any) -> str:
    """``module.Layer`` of a ``Python`` layer, as pycaffe would import it (it never is here)."""
    p = layer.python_param
    return f"{p.module}.{p.layer}"


def python_layer_spec(name: str, target: Any) -> LayerSpec:
    """The spec of ``Python`` layers named ``name`` (``"module.Layer"``) for a caller's mapping:

    * a :class:`~prototxt2py.layers.LayerSpec` subclass (instance of one): used as is, with every hook
      (shapes, ONNX, generated code) it defines;
    * a ``torch.nn.Module`` class or any factory ``f(param_str) -> nn.Module``: called with the layer's
      ``python_param.param_str`` (what Caffe hands the layer's ``setup``); ``forward`` takes the bottoms and
      returns one tensor or a tuple, one per top. Shapes are inferred by running the module on meta tensors;
      the module's direct parameters are the layer's blobs, in registration order;
    * a pycaffe layer class (``class L(caffe.Layer)`` with ``setup``, ``reshape``, ``forward``, ``backward``):
      run as Caffe's ``PythonLayer`` runs it (see :mod:`prototxt2py.caffe._python_layer`).
    """
    from .layers.base import LayerSpec

    if isinstance(target, LayerSpec):
        return target
    if isinstance(target, type) and issubclass(target, LayerSpec):
        return target()
    if not callable(target):
        raise PluginError(f"python_layers['{name}'] must be a LayerSpec subclass, an nn.Module class or a factory "
                          f"returning an nn.Module, got {type(target).__name__}")
    if isinstance(target, type) and any(hasattr(target, m) for m in ("setup", "reshape", "forward", "backward")):
        from .caffe._python_layer import PycaffePythonLayer, is_pycaffe_layer

        if is_pycaffe_layer(target):
            return PycaffePythonLayer(name, target)
    from .layers.python import ModulePythonLayer

    return ModulePythonLayer(name, target)


def python_specs(mapping: Mapping[str, Any] | None) -> dict[str, LayerSpec]:
    """A caller's ``python_layers`` mapping as specs (checked once, before the net is built)."""
    out: dict[str, LayerSpec] = {}
    for name, target in (mapping or {}).items():
        if not isinstance(name, str) or "." not in name:
            raise PluginError(f"python_layers keys are 'module.Layer' (python_param.module + '.' + "
                              f"python_param.layer), got {name!r}")
        out[name] = python_layer_spec(name, target)
    return out
