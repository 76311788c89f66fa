"""From a ``LayerParameter`` of a data layer to the plain :class:`DataLayer` a reader is opened with.

Which ``*_param`` fields a reader gets comes from the layer's spec (``field_name()``, and ``extra_field`` where a
reader needs a second block, as SSD's AnnotatedData); which types have a reader, from the readers' registry.
Trainers, the loader, pycaffe and the tests build their :class:`DataLayer` values here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..netstate import State, layer_included, phase_name
from ..plain import plain
from . import READERS, DataLayer


def reader_types() -> frozenset[str]:
    """The data layer types a reader is registered for (importing the built-in readers on first use)."""
    from . import _readers  # noqa: F401  (registers the built-in readers)

    return frozenset(READERS)


def reader_key(type_name: str, python_layer: str = "") -> str:
    """Which reader serves a layer: its type, or for a ``Python`` data layer the ``module.Layer`` name a built-in
    spec reads it under (FCN's ``voc_layers.VOCSegDataLayer``, ...)."""
    return python_layer if type_name == "Python" and python_layer else type_name


def node_reader_key(node: Any) -> str:
    """:func:`reader_key` of an IR node (a ``Python`` layer the caller mapped to their own class has none)."""
    return reader_key(node.type, getattr(node.spec, "python_layer", ""))


def layer_reader_key(layer: Any) -> str:
    """:func:`reader_key` of a ``LayerParameter``."""
    from ..plugins import python_layer_name

    return reader_key(layer.type, python_layer_name(layer) if layer.type == "Python" else "")


def _fields(type_name: str) -> tuple[str | None, str | None]:
    """A data layer type's parameter field and the second field its reader gets (its spec says both)."""
    from ..layers import get_spec

    spec = get_spec(type_name)
    if spec is None:
        return None, None
    return spec.field_name(), getattr(spec, "extra_field", None)


def data_layer(layer: Any, phase: str, rank: int = 0, world: int = 1) -> DataLayer:
    """The plain description of one data layer (a ``caffe_pb2.LayerParameter``) for ``phase``."""
    key = layer_reader_key(layer)
    if key != layer.type:  # a built-in Python data layer: its spec reads the param_str
        from ..layers import get_python_spec

        attrs = get_python_spec(key).attrs(layer)
        param, transform, extra = attrs.param, attrs.transform, None
    else:
        field, extra_field = _fields(layer.type)
        param = plain(getattr(layer, field)) if field else None
        transform = plain(layer.transform_param)
        extra = plain(getattr(layer, extra_field)) if extra_field else None
    if layer.HasField("phase"):  # Net::Init keeps a layer's own phase (its transformer crops by it)
        phase = phase_name(layer.phase)
    return DataLayer(
        name=layer.name,
        type=key,
        tops=tuple(layer.top),
        param=param,
        transform=transform,
        phase=phase,
        rank=rank,
        world=world,
        extra=extra,
    )


def data_layers(
    net: Any, phase: str, rank: int = 0, world: int = 1, stages: Iterable[str] = (), level: int = 0
) -> list[DataLayer]:
    """The layers of ``net`` (a V2 ``NetParameter``) with a reader type that exist in ``phase`` (and the given
    stages/level: Caffe's NetState rules, so a train_val net yields its TRAIN or its TEST data layer)."""
    state = State.from_args(phase, level, stages).merged_with_net(net)
    return [
        data_layer(layer, phase, rank, world)
        for layer in net.layer
        if layer_reader_key(layer) in reader_types() and layer_included(layer, state)
    ]


def top_shapes(layers: list[DataLayer]) -> dict[str, list[int]]:
    """Caffe's top shapes of data layers, found the way Caffe's set-up does it: by reading the first batch
    (a separate reader, closed afterwards). MemoryData's come from its parameters. The result is the
    ``input_shapes`` argument of :func:`prototxt2py.load`/:func:`prototxt2py.graph` for nets whose input
    shapes depend on the data (``Data``, ``ImageData``, ...)."""
    from .loader import _close, open_reader

    shapes: dict[str, list[int]] = {}
    for layer in layers:
        if layer.type == "MemoryData":
            p = layer.param
            shapes.update(zip(layer.tops, ([p.batch_size, p.channels, p.height, p.width], [p.batch_size]),
                              strict=False))
            continue
        source = open_reader(layer, seed=0)
        try:
            batch = source.next_batch()
        finally:
            _close(source)
        shapes.update((top, list(a.shape)) for top, a in zip(layer.tops, batch, strict=True))
    return shapes
