"""The data layers of a ``caffe.Net`` read their sources, as Caffe's do.

In Caffe, ``caffe.Net("train_val.prototxt", caffe.TEST)`` opens every data layer's source when the net is built
and each ``forward()`` that runs a data layer reads its next batch: pycaffe scripts evaluate a TEST net by calling
``net.forward()`` ``test_iter`` times and reading the accuracy blob. Left unread, such a loop silently scores
zeros. So the readers a solver's nets use (:class:`~prototxt2py.train.feeding.Feeder`, in this process) fill
these nets too. Caffe stops at a source that does not exist; here such a layer reads nothing and its tops are
blobs the caller fills (net surgery on a train_val far from its data), with a warning unless the caller gave
their shapes (``input_shapes``), which says that intent. ``MemoryData`` (``set_input_arrays``) and
``DummyData`` (its own fill) are served by the net itself. Each net's readers draw their seed from torch's
generator, as Caffe's transformers and shuffles seed themselves from its global RNG: two TRAIN nets crop and
mirror differently, and ``caffe.set_random_seed`` (``torch.manual_seed``) makes both reproducible.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection
from typing import Any

import torch

from ..data.layers import node_reader_key, reader_types

#: the reader types the net serves itself (the others read a ``source``: a database, an image or HDF5 list, a
#: window file, an annoset)
SERVED_BY_THE_NET = frozenset({"MemoryData", "DummyData"})
#: the data layer types whose reader opens a source
READ_SOURCE = reader_types() - SERVED_BY_THE_NET


def open_readers(skeleton: Any, phase: str, given: Collection[str]) -> Any:
    """A :class:`~prototxt2py.train.feeding.Feeder` over the data layers of ``skeleton`` (the net's graph
    before shapes) whose sources exist, or None if there is none. ``given``: blob names whose shapes the caller
    gave; a layer whose source is missing is warned about unless every top is among them."""
    from ..train.feeding import Feeder, is_data_node

    readable = []
    for node in skeleton.nodes:
        if node_reader_key(node) not in READ_SOURCE or not is_data_node(node):
            continue
        source = str(node.attrs.param.source)
        if source and os.path.exists(source):
            readable.append(node)
        elif not set(node.tops) <= set(given):
            tops = ", ".join(f"net.blobs['{t}']" for t in node.tops)
            what = f"its source '{source}' does not exist" if source else "it names no source"
            warnings.warn(f"caffe.Net: {node.type} layer '{node.name}' reads nothing: {what} (Caffe would stop "
                          f"here); fill {tops} yourself", UserWarning, stacklevel=3)
    if not readable:
        return None
    seed = int(torch.randint(0, 1 << 31, (1,)).item())
    return Feeder(skeleton, phase, seed=seed, workers=0, nodes=readable)
