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


def resolve(target: str) -> Any:
    """The class a :class:`Call` target names: ``"nn.X"`` is ``torch.nn.X``; other names are helpers."""
    if target.startswith("nn."):
        from torch import nn

        return getattr(nn, target[3:])
    return helpers()[target]
