"""Layer specs: one place per Caffe layer type, registered by type name -- and the public plugin API.

A plugin (a third party's, or a built-in fork module) imports what it needs from here: the spec contract
(:class:`LayerSpec`, :func:`register`, :func:`call`, :class:`Unknowable`...) and the plugin helpers of
:mod:`prototxt2py.plugins` (raw text of fields our schema lacks, ``Python`` layer specs). The names are bound
before the family modules below are imported, so those modules use exactly this public API.

The family modules are imported explicitly: a missing or broken one is an import error, never skipped.
Installed plugins are loaded through the ``prototxt2py.layers`` entry point group on the first lookup of a
type that is not registered (:func:`get_spec`).
"""

from __future__ import annotations

from ..fillers import DiagonalFiller
from ..plain import Filler, plain
from ..plugins import (
    ENTRY_POINT_GROUP,
    LayerSource,
    PluginError,
    RawField,
    RawMessage,
    load_entry_points,
    python_layer_name,
    python_layer_spec,
)
from .base import (
    PYTHON_REGISTRY,
    REGISTRY,
    Call,
    ChannelAffine,
    LayerSpec,
    MaybeShape,
    PostOp,
    RegistrationError,
    Shape,
    Unknowable,
    call,
    canonical_axis,
    count,
    get_python_spec,
    get_spec,
    legacy_shape,
    register,
    register_dialect,
)
from .python import PythonDataLayerSpec, PythonLayerSpec, PythonParamAttrs, param_str_mapping, python_settings

# isort: split
# The families, after the API names above (they import them from here), in a fixed order.
from . import (
    conv,
    data,
    elementwise,
    forks,
    inputs,
    losses,
    normalization,
    pooling,
    recurrent,
    structure,
)

FAMILY_MODULES = (inputs, conv, pooling, elementwise, normalization, structure, losses, recurrent, data, forks)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Filler",
    "PYTHON_REGISTRY",
    "REGISTRY",
    "Call",
    "ChannelAffine",
    "DiagonalFiller",
    "LayerSource",
    "LayerSpec",
    "MaybeShape",
    "PluginError",
    "PostOp",
    "PythonDataLayerSpec",
    "PythonLayerSpec",
    "PythonParamAttrs",
    "RawField",
    "RawMessage",
    "RegistrationError",
    "Shape",
    "Unknowable",
    "call",
    "canonical_axis",
    "count",
    "get_python_spec",
    "get_spec",
    "legacy_shape",
    "param_str_mapping",
    "plain",
    "load_entry_points",
    "python_layer_name",
    "python_layer_spec",
    "python_settings",
    "register",
    "register_dialect",
]
