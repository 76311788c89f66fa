"""Readers behind Caffe's data layers (Data, ImageData, HDF5Data, MemoryData, DummyData, WindowData), SSD's
AnnotatedData and FCN's ``Python`` data layers (registered under their ``module.Layer`` names).

The IR and every inference backend treat a data layer's tops as net inputs; training (``prototxt2py.train``)
feeds them from the readers registered here. A reader is made from plain values only (see
:mod:`prototxt2py.plain`): the layer's own ``*_param`` and its ``transform_param``, never protobuf messages.
Optional dependencies (lmdb, h5py, Pillow/OpenCV) are imported by the reader that needs them, on first use.

Contract of a source: ``next_batch()`` returns one float32 numpy array per top of the layer, in the layer's
top order and with Caffe's top shapes; a source keeps its own cursor (Caffe's wrap-around, per-phase state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import Prototxt2pyError


class DataError(Prototxt2pyError):
    """A data source is missing, unreadable, or does not match its layer."""


class BatchSource(Protocol):
    def next_batch(self) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class DataLayer:
    """What a reader is opened with: plain values of one data layer."""

    name: str
    type: str
    tops: tuple[str, ...]
    param: Any  # plain value of the layer's ``*_param`` (e.g. ``hdf5_data_param``)
    transform: Any  # plain value of ``transform_param``
    phase: str  # "TRAIN" or "TEST"
    rank: int = 0  # this process's rank and the world size, for sharding under torchrun
    world: int = 1
    extra: Any = None  # plain value of a second ``*_param`` (AnnotatedData's ``annotated_data_param``)


#: layer type -> factory
READERS: dict[str, Callable[[DataLayer], BatchSource]] = {}


def register_reader(type_name: str) -> Callable[[Callable[[DataLayer], BatchSource]], Callable]:
    """Decorator: the factory opening a source for layers of ``type_name``."""

    def deco(factory: Callable[[DataLayer], BatchSource]) -> Callable[[DataLayer], BatchSource]:
        READERS[type_name] = factory
        return factory

    return deco


def open_source(layer: DataLayer) -> BatchSource:
    """Open the reader of ``layer`` (importing the reader modules on first use)."""
    from . import _readers  # noqa: F401  (registers the built-in readers)

    factory = READERS.get(layer.type)
    if factory is None:
        raise DataError(f"no reader for data layer type '{layer.type}'", layer=layer.name)
    return factory(layer)
