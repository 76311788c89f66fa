"""Caffe's ``MemoryData`` layer: arrays handed in from Python (``layers/memory_data_layer.cpp``).

:meth:`MemoryData.reset` is pycaffe's ``net.set_input_arrays(data, labels)``: the arrays are served as they are,
``batch_size`` rows per pass, wrapping around; Caffe does *not* apply ``transform_param`` on this path.
:meth:`MemoryData.add_images` is Caffe's ``AddMatVector``/``AddDatumVector``: images are transformed first.
The label top has the layer's set-up shape ``(batch,)`` (Caffe's Forward reshapes it to ``(batch, 1, 1, 1)``;
the values are the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import DataError, DataLayer, register_reader
from .seeding import base_seed, stream
from .transformer import DataTransformer


@register_reader("MemoryData")
class MemoryData:
    """A ``MemoryData`` layer's source, fed by :meth:`reset` or :meth:`add_images`."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer = layer
        p = layer.param
        self.batch_size = int(p.batch_size) if p is not None else 0
        self.shape = (int(p.channels), int(p.height), int(p.width)) if p is not None else (0, 0, 0)
        if self.batch_size * int(np.prod(self.shape)) <= 0:
            raise DataError(
                "batch_size, channels, height and width must be specified and positive in memory_data_param",
                layer=layer.name,
            )
        if len(layer.tops) != 2:
            raise DataError(f"a MemoryData layer has 2 tops (data, label), not {len(layer.tops)}", layer=layer.name)
        self._seed = base_seed(seed)
        self._worker = worker
        self._transformer: DataTransformer | None = None
        self.data: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.pos = 0

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Serve ``data`` (n, C, H, W) and ``labels`` (n,) untransformed; n must be a multiple of batch_size."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(-1)
        n = data.shape[0] if data.ndim else 0
        if data.ndim != 4 or data.shape[1:] != self.shape:
            raise DataError(
                f"data must be (n, {', '.join(map(str, self.shape))}), got {tuple(data.shape)}", layer=self.layer.name
            )
        if labels.shape[0] != n:
            raise DataError(f"{n} data items but {labels.shape[0]} labels", layer=self.layer.name)
        if n == 0 or n % self.batch_size:
            raise DataError(f"the number of items ({n}) must be a positive multiple of batch_size "
                            f"({self.batch_size})", layer=self.layer.name)
        self.data, self.labels, self.pos = data, labels, 0

    def add_images(self, images: Sequence[np.ndarray], labels: Sequence[int]) -> None:
        """Transform ``(C, H, W)`` images with ``transform_param`` (Caffe's AddMatVector/AddDatumVector) and serve
        them. Their transformed shape must be the layer's (channels, height, width)."""
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels", layer=self.layer.name)
        if self._transformer is None:
            rng = stream(self._seed, self.layer.name, "transform", self.layer.rank, self._worker)
            self._transformer = DataTransformer(self.layer.transform, self.layer.phase, rng, self.layer.name)
        out = np.empty((len(images), *self.shape), dtype=np.float32)
        for i, img in enumerate(images):
            self._transformer(np.asarray(img), out[i])
        self.reset(out, np.asarray(labels, dtype=np.float32))

    def next_batch(self) -> list[np.ndarray]:
        if self.data is None or self.labels is None:
            raise DataError("MemoryData needs arrays: call reset(data, labels) (set_input_arrays) first",
                            layer=self.layer.name)
        b = self.batch_size
        batch = [self.data[self.pos : self.pos + b].copy(), self.labels[self.pos : self.pos + b].copy()]
        self.pos = (self.pos + b) % self.data.shape[0]
        return batch
