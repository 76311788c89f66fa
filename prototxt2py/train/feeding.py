"""Feeding a net's data layers from their readers (:mod:`prototxt2py.data`), one batch per forward pass.

A net's data layers are its input layers (their tops are net inputs in the IR). The shapes of their tops are
often only in the data (HDF5 datasets, LMDB Datums), so they are found first, as Caffe's set-up does, by
reading one batch (:func:`prototxt2py.data.layers.top_shapes`), and the net is then built with those shapes.
Batches come from :class:`prototxt2py.data.loader.DataFeed`: readers in loader worker processes (Caffe's
prefetch thread), handing out the batches in the order one reader produces them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import torch

from ..data import DataLayer
from ..data.layers import node_reader_key, reader_types, top_shapes
from ..netstate import phase_name

#: readers whose batches are copies from memory: worker processes would only add transfer costs
IN_MEMORY = frozenset({"HDF5Data", "MemoryData", "DummyData"})


def data_layer_for(node: Any, phase: str, rank: int = 0, world: int = 1) -> DataLayer:
    """The plain description of a data node that a reader is opened with, from the node's plain attrs: every
    reader layer's spec (``layers/data.py``, DummyData in ``layers/structure.py``) keeps its ``*_param`` and
    ``transform_param`` there as ``param`` and ``transform``, so training never reads protobuf messages."""
    a = node.attrs
    if node.own_phase is not None:  # Net::Init keeps a layer's own phase (its transformer crops by it)
        phase = phase_name(node.own_phase)
    return DataLayer(node.name, node_reader_key(node), tuple(node.tops), a.param, a.transform, phase, rank, world,
                     getattr(a, "extra", None))


def is_data_node(node: Any) -> bool:
    """A layer whose tops come from a reader (not an ``Input`` layer, whose blobs the caller provides)."""
    return node_reader_key(node) in reader_types() and node.spec.is_input(node)


class Feeder:
    """Every data layer of one net with its readers; ``next()`` gives the next inputs by blob name.

    ``workers``: loader processes per data layer (``None``: 2, or 0 when every reader copies from memory)."""

    def __init__(self, graph: Any, phase: str, rank: int = 0, world: int = 1, seed: int | None = None,
                 workers: int | None = None, nodes: Iterable[Any] | None = None):
        """``nodes``: the data nodes to read (by default every one of ``graph``)."""
        from ..data.loader import DataFeed

        nodes = [n for n in graph.nodes if is_data_node(n)] if nodes is None else list(nodes)
        self.layers = [data_layer_for(n, phase, rank, world) for n in nodes]
        self._shapes = top_shapes(self.layers) if self.layers else {}
        if workers is None:
            workers = 0 if all(layer.type in IN_MEMORY for layer in self.layers) else 2
        self.workers = workers
        self.feed = DataFeed(self.layers, workers=workers, seed=seed)
        #: Input layers' blobs, when a caller (pycaffe) writes them: Caffe's persistent blobs, fed unchanged to
        #: every pass until written again
        self.held: dict[str, torch.Tensor] = {}

    def shapes(self) -> dict[str, list[int]]:
        """Top shapes of the data layers, for building the net (``input_shapes``)."""
        return dict(self._shapes)

    def next(self, layers: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The data layers' next batch (of ``layers`` only, when given: the others do not advance)."""
        return self.feed.next(layers)

    def next_pass(self) -> dict[str, torch.Tensor]:
        """The inputs of the next forward pass: the data layers' next batch and the held Input blobs."""
        return {**self.next(), **self.held}

    def close(self) -> None:
        self.feed.close()
