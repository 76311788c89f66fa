"""From a ``LayerParameter`` of a data layer to the plain :class:`DataLayer` a reader is opened with.

This is the one place that knows which ``*_param`` field belongs to which data layer type; trainers, the
loader and the tests build their :class:`DataLayer` values here.
"""

from __future__ import annotations

from typing import Any

from ..plain import plain
from . import DataLayer

#: data layer type -> the LayerParameter field holding its parameters
PARAM_FIELDS = {
    "Data": "data_param",
    "ImageData": "image_data_param",
    "HDF5Data": "hdf5_data_param",
    "MemoryData": "memory_data_param",
    "DummyData": "dummy_data_param",
    "WindowData": "window_data_param",
}


def data_layer(layer: Any, phase: str, rank: int = 0, world: int = 1) -> DataLayer:
    """The plain description of one data layer (a ``caffe_pb2.LayerParameter``) for ``phase``."""
    field = PARAM_FIELDS.get(layer.type)
    param = plain(getattr(layer, field)) if field else None
    return DataLayer(
        name=layer.name,
        type=layer.type,
        tops=tuple(layer.top),
        param=param,
        transform=plain(layer.transform_param),
        phase=phase,
        rank=rank,
        world=world,
    )


def data_layers(net: Any, phase: str, rank: int = 0, world: int = 1) -> list[DataLayer]:
    """Every layer of ``net`` (a ``NetParameter``, already filtered to one phase) that has a reader type."""
    return [data_layer(layer, phase, rank, world) for layer in net.layer if layer.type in PARAM_FIELDS]
