"""The torch modules the runtime runs and the generated code contains: one source for both.

A layer spec describes its module as a :class:`~prototxt2py.layers.base.Call` of plain values: a stock
``torch.nn`` class (``"nn.Conv2d"``) where one expresses Caffe's semantics exactly, else one of the helper
classes defined in this package. The runtime builds ``Call``s on the meta device and fills the blobs; the code
generator (:mod:`prototxt2py.backends.codegen`) writes the same ``Call``s as source and copies the helper
classes it needs (and only those) verbatim from these files.

Rules for the files of this package, checked by ``tests/test_nn_package.py``:

* import only ``torch``, ``math`` and the standard library (no numpy, nothing from ``prototxt2py``);
* every top-level name is unique across the package (the generated file is one namespace);
* constructors take plain values (ints, floats, bools, strings, tuples of those) and create their parameter
  blobs with ``torch.zeros`` (free on the meta device); no other tensor state: constants are derived in
  ``forward``, so building on the meta device and ``to_empty`` loses nothing;
* formatted for ruff's default line length (88), since the generated file must pass ``ruff format --check``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def module_names() -> list[str]:
    """The modules of this package, sorted (the order their sources are scanned)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
    )


_HELPERS: dict[str, Any] | None = None


def helpers() -> dict[str, Any]:
    """Helper class name -> class, over every module of the package."""
    global _HELPERS
    if _HELPERS is None:
        found: dict[str, Any] = {}
        for name in module_names():
            module = importlib.import_module(f"{__name__}.{name}")
            for attr, value in vars(module).items():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    found[attr] = value
        _HELPERS = found
    return _HELPERS


#: Objects a caller handed over for ``Call`` targets (``python_layers`` mappings), by target string: found
#: here first, so a class defined in a script or a test resolves without importing anything.
OBJECTS: dict[str, Any] = {}


def register_object(target: str, obj: Any) -> str:
    """Make ``target`` (``"module:qualname"``) resolve to ``obj``; a different object already holding that
    name gets a numbered variant. Returns the target to use."""
    name, i = target, 1
    while OBJECTS.get(name, obj) is not obj:
        i += 1
        name = f"{target}#{i}"
    OBJECTS[name] = obj
    return name


def resolve(target: str) -> Any:
    """The class a :class:`Call` target names: ``"nn.X"`` is ``torch.nn.X``; ``"package.module:Class"`` is
    ``Class`` of that installed module (a plugin's helper; targets come from installed spec code, never from
    model files); other names are helpers of this package."""
    if target.startswith("nn."):
        from torch import nn

        return getattr(nn, target[3:])
    if ":" in target:
        if target in OBJECTS:
            return OBJECTS[target]
        module_name, _, qualname = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    return helpers()[target]
