"""``snapshot_format: HDF5``: Caffe's ``.caffemodel.h5`` and ``.solverstate.h5`` (needs h5py); the weights are
read back by :mod:`..hdf5_weights`, as every reader of weights does.

Layouts, as Caffe's ``Net::ToHDF5`` and ``SnapshotSolverStateToHDF5`` write them:

* weights: group ``data``, one group per layer (every layer, even without blobs), datasets ``"0"``, ``"1"``, ...
  holding the blobs a layer *owns* (blobs shared through ``param { name }`` are stored with their owner only);
* solver state: int datasets ``iter`` and ``current_step`` (shape ``(1,)``), string ``learned_net``, and group
  ``history`` with datasets ``"0"``, ``"1"``, ... in Caffe's history order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .. import hdf5_weights
from ..errors import Location
from ..hdf5_weights import blob_dataset, member
from .errors import SolverError
from .snapshot import SolverState


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise SolverError("snapshot_format HDF5 needs h5py: pip install 'prototxt2py[train]'") from None
    return h5py


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def write_caffemodel_h5(net: Any, f: IO[bytes]) -> None:
    """``Net::ToHDF5`` (without diffs) into an open binary file."""
    from ..hdf5_weights import write_weights_h5

    blobs = [[_array(getattr(module, n)) for n in getattr(module, "blob_names", ())] for _, module in net.node_layers()]
    write_weights_h5(_h5py(), f, net.graph, blobs)


def write_solverstate_h5(f: IO[bytes], it: int, learned_net: str, current_step: int,
                         history: list[torch.Tensor]) -> None:
    h5py = _h5py()
    with h5py.File(f, "w") as h5:
        h5.create_dataset("iter", data=np.array([it], dtype=np.int32))
        _write_c_string(h5py, h5, "learned_net", os.fsencode(learned_net))
        h5.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        group = h5.create_group("history")
        for i, h in enumerate(history):
            group.create_dataset(str(i), data=_array(h))


def _write_c_string(h5py: Any, h5: Any, name: str, value: bytes) -> None:
    """A scalar string dataset as ``H5LTmake_dataset_string`` writes it: ``len + 1`` bytes, NUL-terminated.
    Caffe's ``hdf5_load_string`` reads it into a buffer of the stored size and takes it as a C string, so a
    string stored without its NUL (numpy's ``bytes_``) is read past its end there."""
    kind = h5py.h5t.C_S1.copy()
    kind.set_size(len(value) + 1)
    kind.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.h5d.create(h5.id, name.encode(), kind, h5py.h5s.create(h5py.h5s.SCALAR))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(value + b"\0", dtype=f"S{len(value) + 1}"))


STATE_LAYOUT = ("Caffe's layout is int datasets iter and current_step, a string dataset learned_net and a group "
                "history of float datasets 0, 1, ...")


def read_solverstate_h5(path: str | os.PathLike, sizes: Sequence[int] | None = None) -> SolverState:
    """Caffe's ``RestoreSolverStateFromHDF5`` reads. ``sizes``: the element counts of the solver's history blobs;
    a history dataset of another count (or any, when the count of datasets differs) is not read but stood in for
    by a zero-stride array of its shape, which the caller refuses by that shape: a file of a few KB may declare
    a never-written dataset of billions of values."""
    h5py = _h5py()
    file = str(path)
    loc = Location(file)
    if not Path(file).is_file():
        raise SolverError("solver state file not found", loc)
    try:
        with h5py.File(file, "r") as h5:
            it = _int_dataset(h5py, h5, "iter", loc)
            step = _int_dataset(h5py, h5, "current_step", loc)
            learned = _string_dataset(h5py, h5, "learned_net", loc) if "learned_net" in h5 else None
            group = member(h5py, h5, "history", loc, SolverError) if "history" in h5 else None
            if not isinstance(group, h5py.Group):
                raise SolverError(f"'history' is missing or not a group ({STATE_LAYOUT})", loc)
            fits = sizes is None or len(group) == len(sizes)
            history = []
            for i in range(len(group)):
                if str(i) not in group:
                    raise SolverError(f"group 'history' has no dataset '{i}' ({STATE_LAYOUT})", loc)
                ds = blob_dataset(h5py, member(h5py, group, str(i), loc, SolverError), loc, SolverError, STATE_LAYOUT)
                read = fits and (sizes is None or ds.size == sizes[i])
                history.append(hdf5_weights.read_blob(ds) if read else np.broadcast_to(np.float32(0), ds.shape))
    except OSError as e:
        raise SolverError(f"not a Caffe HDF5 solver state: {e}", loc) from None
    return SolverState(it, learned, step, history)


def _int_dataset(h5py: Any, h5: Any, name: str, loc: Location) -> int:
    """``hdf5_load_int``: one integer (Caffe's ``H5LTread_dataset_int`` converts a float dataset's value)."""
    obj = member(h5py, h5, name, loc, SolverError) if name in h5 else None
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biuf" or obj.size != 1:
        raise SolverError(f"'{name}' is not one number ({STATE_LAYOUT})", loc)
    value = np.asarray(obj).ravel()[0]
    if not (np.isfinite(value) and float(value).is_integer() and -2**31 <= value < 2**31):
        raise SolverError(f"'{name}' is {value}, not a 32-bit integer", loc)
    return int(value)


def _string_dataset(h5py: Any, h5: Any, name: str, loc: Location) -> str:
    """``hdf5_load_string``: a file name, any bytes, up to its NUL."""
    obj = member(h5py, h5, name, loc, SolverError)
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "SOU" or obj.size != 1:
        raise SolverError(f"'{name}' is not one string ({STATE_LAYOUT})", loc)
    raw = np.asarray(obj).ravel()[0]
    if not isinstance(raw, (bytes, str)):  # an object reference or a variable-length array, not text
        raise SolverError(f"'{name}' is not one string ({STATE_LAYOUT})", loc)
    raw = raw.encode() if isinstance(raw, str) else bytes(raw)
    return os.fsdecode(raw.split(b"\0", 1)[0])
