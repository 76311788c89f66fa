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
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import Location
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


def read_solverstate_h5(path: str | os.PathLike) -> SolverState:
    h5py = _h5py()
    file = str(path)
    if not Path(file).is_file():
        raise SolverError("solver state file not found", Location(file))
    try:
        with h5py.File(file, "r") as h5:
            it = int(np.asarray(h5["iter"]).ravel()[0])
            step = int(np.asarray(h5["current_step"]).ravel()[0])
            learned = None
            if "learned_net" in h5:
                raw = h5["learned_net"][()]
                learned = os.fsdecode(raw) if isinstance(raw, bytes) else str(raw)  # a file name, any bytes
            group = h5["history"]
            history = [np.asarray(group[str(i)], dtype=np.float32) for i in range(len(group))]
    except (OSError, KeyError) as e:
        raise SolverError(f"not a Caffe HDF5 solver state: {e}", Location(file)) from None
    return SolverState(it, learned, step, history)
