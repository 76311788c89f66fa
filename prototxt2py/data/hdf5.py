"""Caffe's ``HDF5Data`` reader: the datasets named by the layer's tops, from the files listed in ``source``.

Caffe's order, reproduced exactly (``hdf5_data_layer.cpp``): the list file holds whitespace-separated paths
(relative to the working directory, as Caffe opens them); one file is in memory at a time; rows are taken
sequentially; at the end of a file the next one is loaded, and after the last one the first again (a batch may
straddle files and the wrap-around). With ``shuffle`` the file order is permuted at start and at every
wrap-around, and the rows of a file at every load and at every end of a single file (Caffe's
``std::random_shuffle`` cannot be reproduced; the permutations here come from torch's seeded generator).

Under torchrun (``world > 1``) in TRAIN phase every rank walks the same global row sequence and keeps the
rows whose global offset ``% world == rank`` (Caffe's ``Skip()`` for multi-GPU training), so ``world`` ranks of
batch ``B`` together see exactly the rows one process of batch ``world * B`` sees.

Values are converted to float32 as Caffe's ``hdf5_load_nd_dataset`` does (integer datasets included).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import limits
from ..errors import ResourceLimitError
from ..fsutil import open_regular
from . import DataError, DataLayer, register_reader
from .seeding import base_seed, stream


def _h5py(layer: str | None = None) -> Any:
    from ._deps import require

    return require("h5py", "HDF5Data", layer)


def read_list(source: str, layer: str) -> list[str]:
    """The file names of an HDF5 list file: Caffe's ``source_file >> line`` reads tokens separated by C-locale
    whitespace (a no-break space is part of a name)."""
    if not source:
        raise DataError("hdf5_data_param.source is not set", layer=layer)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"HDF5 list file not found: {source} (paths are relative to the working directory "
                        f"{os.getcwd()})", layer=layer)
    try:
        with open_regular(path, "rb") as f:  # C-locale whitespace (bytes.split), the names' own bytes kept
            names = [os.fsdecode(token) for token in f.read().split()]
    except OSError as e:
        raise DataError(f"cannot read HDF5 list file {source}: {e.strerror}", layer=layer) from None
    if not names:
        raise DataError(f"HDF5 list file {source} names no file", layer=layer)
    return names


def load_file(filename: str, tops: tuple[str, ...], layer: str) -> list[np.ndarray]:
    """Every top's dataset of one file, as float32 arrays with the same first dimension."""
    h5py = _h5py(layer)
    if not Path(filename).is_file():
        raise DataError(f"HDF5 file not found: {filename} (listed in the source; relative to the working "
                        f"directory {os.getcwd()})", layer=layer)
    try:
        with h5py.File(filename, "r") as f:
            datasets = []
            for top in tops:
                if top in f and not isinstance(f[top], h5py.Dataset):
                    raise DataError(f"'{top}' in HDF5 file {filename} is a {type(f[top]).__name__.lower()}, not a "
                                    "dataset", layer=layer)
                if top not in f:
                    raise DataError(f"HDF5 file {filename} has no dataset '{top}' (it has: "
                                    f"{', '.join(sorted(f.keys())) or 'nothing'})", layer=layer)
                ds = f[top]
                if ds.dtype.kind not in "fiub":
                    raise DataError(f"dataset '{top}' of {filename} has type {ds.dtype}, expected numbers",
                                    layer=layer)
                if ds.ndim < 1:
                    raise DataError(f"dataset '{top}' of {filename} must have at least 1 axis", layer=layer)
                try:  # Blob::Reshape's limits, before the read allocates what the file declares
                    limits.check_shape(ds.shape, f"dataset '{top}' of {filename}", layer=layer)
                except ResourceLimitError as e:
                    raise DataError(e.message, layer=layer) from None
                datasets.append(ds)
            rows = {top: ds.shape[0] for top, ds in zip(tops, datasets, strict=True)}
            if len(set(rows.values())) > 1:
                first, other = next(iter(rows)), next(t for t in rows if rows[t] != rows[tops[0]])
                raise DataError(f"datasets of {filename} have different row counts ('{first}' {rows[first]}, "
                                f"'{other}' {rows[other]})", layer=layer)
            arrays = [np.ascontiguousarray(ds[()], dtype=np.float32) for ds in datasets]
    except (OSError, KeyError, RuntimeError) as e:  # a soft or external link to nothing, or one that loops
        raise DataError(f"cannot read HDF5 file {filename}: {e}", layer=layer) from None
    if arrays[0].shape[0] == 0:
        raise DataError(f"HDF5 file {filename} has no rows", layer=layer)
    return arrays


class HDF5Source:
    """A cursor over the listed files, in Caffe's row order (see the module docstring)."""

    def __init__(self, layer: DataLayer, seed: int | None = None):
        p = layer.param
        self.layer = layer
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise DataError(f"hdf5_data_param.batch_size must be positive, got {self.batch_size}", layer=layer.name)
        if layer.transform is not None and layer.transform._present:  # Caffe: has_transform_param()
            raise DataError("HDF5Data does not transform data: remove transform_param", layer=layer.name)
        self.shuffle = bool(p.shuffle)
        self.files = read_list(p.source, layer.name)
        self.file_order = list(range(len(self.files)))
        # which rows are read depends only on the seed and the layer: every rank and loader worker agrees
        self._rng = stream(base_seed(seed), layer.name, "shuffle")
        if self.shuffle:
            self._rng.shuffle(self.file_order)
        self.current_file = 0
        self._load(self.file_order[0])
        self.current_row = 0
        self.offset = 0  # rows walked, all ranks together (Caffe's offset_)
        self.skip_others = layer.phase == "TRAIN" and layer.world > 1

    def _load(self, index: int) -> None:
        self.blobs = load_file(self.files[index], self.layer.tops, self.layer.name)
        self.rows = np.arange(self.blobs[0].shape[0])
        if self.shuffle:
            self._rng.shuffle(self.rows)
        if hasattr(self, "shapes"):  # Caffe's tops keep the first file's shapes and copy later rows flat
            if [math.prod(b.shape[1:]) for b in self.blobs] != [math.prod(s) for s in self.shapes]:
                raise DataError(f"HDF5 file {self.files[index]} has row shapes {[b.shape[1:] for b in self.blobs]}, "
                                f"the first file had {self.shapes}", layer=self.layer.name)
            self.blobs = [b.reshape(len(b), *s) for b, s in zip(self.blobs, self.shapes, strict=True)]
        self.shapes = [b.shape[1:] for b in self.blobs]

    def _next(self) -> None:
        self.current_row += 1
        if self.current_row == len(self.rows):
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self._rng.shuffle(self.file_order)
                self._load(self.file_order[self.current_file])
            self.current_row = 0
            if self.shuffle:
                self._rng.shuffle(self.rows)
        self.offset += 1

    def _skip(self) -> bool:
        return self.skip_others and self.offset % self.layer.world != self.layer.rank

    def _advance(self, n: int) -> None:
        """Pass over ``n`` kept rows (the loader's ``skip_batches``: no copying)."""
        for _ in range(n):
            while self._skip():
                self._next()
            self._next()

    def skip_batches(self, n: int) -> None:
        """Pass over ``n`` batches without copying them (loader workers stride over the batch sequence)."""
        self._advance(n * self.batch_size)

    def top_shapes(self) -> list[tuple[int, ...]]:
        """Caffe's top shapes: ``(batch_size, *row shape)`` of each dataset."""
        return [(self.batch_size, *s) for s in self.shapes]

    def next_batch(self) -> list[np.ndarray]:
        out = [np.empty(s, dtype=np.float32) for s in self.top_shapes()]
        i = 0
        while i < self.batch_size:
            while self._skip():
                self._next()
            # copy the longest run of consecutive kept rows of the current file at once
            n = 1
            if not self.shuffle and not self.skip_others:
                n = min(self.batch_size - i, len(self.rows) - self.current_row)
            row = self.current_row
            for o, b in zip(out, self.blobs, strict=True):
                if n == 1:
                    o[i] = b[self.rows[row]]
                else:
                    o[i:i + n] = b[row:row + n]
            for _ in range(n):
                self._next()
            i += n
        return out


@register_reader("HDF5Data")
def open_hdf5(layer: DataLayer, seed: int | None = None) -> HDF5Source:
    return HDF5Source(layer, seed)
