"""Caffe's ``DummyData`` layer: tops of fixed shapes filled by ``data_filler`` (``layers/dummy_data_layer.cpp``).

Shapes come from ``shape`` (one for all tops or one per top) or the legacy ``num``/``channels``/``height``/
``width`` fields (each once or once per top); fillers are 0 (constant 0), 1 (for all tops) or one per top.
As in Caffe, a top with a ``constant`` filler is filled once; every other filler draws anew on each pass.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import fillers
from ..plain import Filler
from . import DataError, DataLayer, register_reader
from .seeding import base_seed


def _per_top(values: tuple, n: int, what: str, layer: str) -> list:
    if len(values) == 1:
        return [values[0]] * n
    if len(values) != n:
        raise DataError(f"specify '{what}' once, or once per top blob ({n}); specified {len(values)}", layer=layer)
    return list(values)


@register_reader("DummyData")
class DummyData:
    """A ``DummyData`` layer's source: ``next_batch()`` -> one array per top."""

    independent_batches = True  # every batch is a fresh random draw: loader workers need not skip

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer = layer
        p = layer.param
        n = len(layer.tops)
        name = layer.name
        data_fillers = tuple(p.data_filler) if p is not None else ()
        if len(data_fillers) not in (0, 1, n):
            raise DataError(
                f"number of data fillers must be 0, 1 or equal to the number of tops: {n}; "
                f"you specified {len(data_fillers)}",
                layer=name,
            )
        self.fillers = _per_top(data_fillers or (Filler(),), n, "data_filler", name)
        legacy = p is not None and any(getattr(p, f) for f in ("num", "channels", "height", "width"))
        if legacy:
            if p.shape:
                raise DataError("both shape and legacy num/channels/height/width were specified", layer=name)
            dims = [_per_top(tuple(getattr(p, f)), n, f, name) for f in ("num", "channels", "height", "width")]
            self.shapes = [tuple(int(d[i]) for d in dims) for i in range(n)]
        else:
            shapes = _per_top(tuple(p.shape) if p is not None else (), n, "shape", name)
            self.shapes = [tuple(int(d) for d in s.dim) for s in shapes]
        if any(d < 0 for s in self.shapes for d in s):
            raise DataError(f"negative dimension in shapes {self.shapes}", layer=name)
        self.generator = torch.Generator().manual_seed(base_seed(seed) + 7919 * (layer.rank + 1) + worker)
        self._constant: dict[int, np.ndarray] = {}
        for i, (shape, f) in enumerate(zip(self.shapes, self.fillers, strict=True)):
            if f.type == "constant":
                self._constant[i] = self._fill(shape, f)

    def _fill(self, shape: tuple[int, ...], f: Filler) -> np.ndarray:
        try:
            return fillers.fill(shape, f, self.generator).numpy()
        except ValueError as e:
            raise DataError(f"data_filler: {e}", layer=self.layer.name) from None

    def next_batch(self) -> list[np.ndarray]:
        out = []
        for i, (shape, f) in enumerate(zip(self.shapes, self.fillers, strict=True)):
            const = self._constant.get(i)
            out.append(const.copy() if const is not None else self._fill(shape, f))
        return out
