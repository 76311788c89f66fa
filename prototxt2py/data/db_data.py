"""Caffe's ``Data`` layer: batches of Datums from an LMDB or LevelDB (``layers/data_layer.cpp``).

Records are read in key order; at the end of the database the cursor wraps to the first record, so a batch may
straddle the end. The top shape is taken from the first record of every batch; with no ``crop_size`` every
record of a batch must have that shape. Under several processes (``world > 1``) in TRAIN each rank keeps only
the records whose running offset is ``rank`` modulo ``world``, as Caffe's multi-GPU ``Skip()`` does; TEST nets
read everything on every rank. ``rand_skip`` is ignored, as in Caffe 1.0: its Data layer stopped reading the field
when multi-GPU training moved to the rank stride (older Caffe skipped a random number of records at the start).
"""

from __future__ import annotations

import warnings

import numpy as np

from . import DataError, DataLayer, register_reader
from .datum import datum_image, parse_datum
from .db import Cursor
from .seeding import base_seed, stream
from .transformer import DataTransformer


@register_reader("Data")
class DbData:
    """A ``Data`` layer's source: ``next_batch()`` -> ``[data (N, C, H, W)]`` or ``[data, label (N,)]``."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer = layer
        p = layer.param
        if p is None or not p.source:
            raise DataError("data_param.source is not set", layer=layer.name)
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise DataError("data_param.batch_size must be positive", layer=layer.name)
        if len(layer.tops) not in (1, 2):
            raise DataError(f"a Data layer has 1 or 2 tops, not {len(layer.tops)}", layer=layer.name)
        seed = base_seed(seed)
        self.transformer = DataTransformer(
            layer.transform, layer.phase, stream(seed, layer.name, "transform", layer.rank, worker), layer.name
        )
        self.cursor = Cursor(p.source, p.backend, layer=layer.name)
        if not self.cursor.valid():
            raise DataError(f"data source '{p.source}' holds no records", layer=layer.name)
        self._warned = False
        self.offset = 0  # records passed so far (Caffe's offset_, for the rank stride)
        self.stride = layer.world if layer.phase == "TRAIN" and layer.world > 1 else 1

    def _next(self) -> None:
        self.cursor.next()
        if not self.cursor.valid():
            self.cursor.seek_first()
        self.offset += 1

    def _to_kept(self) -> None:
        while self.stride > 1 and self.offset % self.stride != self.layer.rank:
            self._next()

    def next_batch(self) -> list[np.ndarray]:
        force_color, force_gray = self.transformer.force_color, self.transformer.force_gray
        imgs = []
        labels = np.empty((self.batch_size,), dtype=np.float32)
        for i in range(self.batch_size):
            self._to_kept()
            key = self.cursor.key().decode("utf-8", "replace")
            with self.cursor.naming_records():
                datum = parse_datum(self.cursor.value(), key, self.layer.name)
                if (force_color or force_gray) and not datum.encoded and not self._warned:
                    self._warned = True  # Caffe logs this too, and ignores the flags
                    warnings.warn(f"layer '{self.layer.name}': force_color and force_gray only apply to encoded "
                                  "Datums", stacklevel=2)
                imgs.append(datum_image(datum, force_color, force_gray, key, self.layer.name))
            labels[i] = datum.label
            self._next()
        return [self.transformer.batch(imgs), labels][: len(self.layer.tops)]

    def skip_batches(self, n: int) -> None:
        """Pass over ``n`` batches without decoding them (loader workers take every k-th batch)."""
        for _ in range(n * self.batch_size):
            self._to_kept()
            self._next()

    def close(self) -> None:
        self.cursor.close()
