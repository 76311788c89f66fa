"""Layer specs: one place per Caffe layer type, registered by type name.

Each family module below registers its specs on import. To add a layer type, add a spec class with
``@register`` to the family module it belongs to (or a new module listed here, or a plugin).
"""

from __future__ import annotations

import importlib

from .base import REGISTRY, LayerSpec, MaybeShape, Shape, Unknowable, canonical_axis, count, get_spec, register

FAMILY_MODULES = (
    "inputs",
    "conv",
    "pooling",
    "elementwise",
    "normalization",
    "structure",
    "losses",
    "recurrent",
    "data",
    "forks",
)

for _name in FAMILY_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # a family not written yet
        if _e.name != f"{__name__}.{_name}":
            raise

__all__ = [
    "REGISTRY",
    "LayerSpec",
    "MaybeShape",
    "Shape",
    "Unknowable",
    "canonical_axis",
    "count",
    "get_spec",
    "register",
]
