"""Feeding a net's data layers from their readers (:mod:`prototxt2py.data`), one batch per forward pass.

A net's data layers are its input layers (their tops are net inputs in the IR). The shapes of their tops are
often only in the data (HDF5 datasets, LMDB Datums), so a :class:`Feeder` opens every source first, reads the
first batch to learn the shapes (kept for the first forward pass), and the net is then built with those shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import DataError, DataLayer, open_source
from ..plain import plain

#: data layer type -> the LayerParameter field holding its parameters
PARAM_FIELDS = {
    "Data": "data_param",
    "ImageData": "image_data_param",
    "HDF5Data": "hdf5_data_param",
    "WindowData": "window_data_param",
    "MemoryData": "memory_data_param",
    "DummyData": "dummy_data_param",
    "AnnotatedData": "data_param",
}


def data_layer_for(node: Any, phase: str, rank: int = 0, world: int = 1) -> DataLayer:
    """The plain description of a data node that a reader is opened with.

    The only place that reads a data node's protobuf message (until the IR exposes plain values)."""
    proto = node.proto
    field = PARAM_FIELDS.get(node.type)
    param = plain(getattr(proto, field)) if field and hasattr(proto, field) else None
    transform = plain(proto.transform_param) if proto.HasField("transform_param") else None
    return DataLayer(node.name, node.type, tuple(node.tops), param, transform, phase, rank, world)


def is_data_node(node: Any) -> bool:
    """A layer whose tops come from a reader (not an ``Input`` layer, whose blobs the caller provides)."""
    return bool(getattr(node.spec, "is_data", False)) and node.spec.is_input(node) and node.type != "Input"


class Feeder:
    """Every data layer of one net with its open source; ``next()`` gives the next inputs by blob name."""

    def __init__(self, graph: Any, phase: str, rank: int = 0, world: int = 1):
        self.sources: list[tuple[tuple[str, ...], Any]] = []
        self._pending: list[list[np.ndarray]] | None = []
        for node in graph.nodes:
            if not is_data_node(node):
                continue
            source = open_source(data_layer_for(node, phase, rank, world))
            first = source.next_batch()
            if len(first) != len(node.tops):
                raise DataError(f"reader gave {len(first)} arrays for {len(node.tops)} tops", layer=node.name)
            self.sources.append((tuple(node.tops), source))
            self._pending.append(first)

    def shapes(self) -> dict[str, list[int]]:
        """Top shapes of the first batches, for building the net (``input_shapes``)."""
        pending = self._pending or []
        return {top: list(a.shape) for (tops, _), arrays in zip(self.sources, pending, strict=True)
                for top, a in zip(tops, arrays, strict=True)}

    def next(self) -> dict[str, torch.Tensor]:
        """The inputs of the next forward pass (the first call returns the batches read at opening)."""
        batches = self._pending if self._pending is not None else [s.next_batch() for _, s in self.sources]
        self._pending = None
        return {top: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                for (tops, _), arrays in zip(self.sources, batches, strict=True)
                for top, a in zip(tops, arrays, strict=True)}
