"""Caffe's HDF5 weights (``.caffemodel.h5``, ``Net::ToHDF5`` / ``CopyTrainedLayersFromHDF5``), read with h5py and
without torch, for every reader of weights: the runtime's loader, the torch-free blob store of ``convert``, the
solver and pycaffe's ``Net.load_hdf5``; and written (:func:`write_weights_h5`) by solver snapshots and pycaffe's
``Net.save_hdf5``.

Layout: group ``data``, one group per layer (every layer, even without blobs), datasets ``"0"``, ``"1"``, ...
holding the blobs a layer *owns*: a blob shared through ``param { name }`` is stored with its owner only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import InputFileError, Location, WeightsError
from .fsutil import open_regular
from .weights import Blob, filled_layers

#: the first 8 bytes of an HDF5 file (Caffe's files have no user block before it)
SIGNATURE = b"\x89HDF\r\n\x1a\n"
LAYOUT = "Caffe's layout is group /data, a group per layer, a float dataset per blob named 0, 1, ..."


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file: Caffe's ``CopyTrainedLayersFrom`` tells the formats apart by content."""
    try:
        with open_regular(path) as f:
            return f.read(8) == SIGNATURE
    except OSError:  # unreadable, a FIFO, a device: the binary reader reports it
        return False


def require_h5py(purpose: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise InputFileError(f"{purpose} needs h5py: pip install 'prototxt2py[train]'") from None
    return h5py


def expect_group(h5py: Any, obj: Any, loc: Location) -> Any:
    """``obj`` if it is a group: an HDF5 file of another layout (an HDF5Data source, say) is refused by name."""
    if not isinstance(obj, h5py.Group):
        raise WeightsError(f"'{obj.name}' is a {type(obj).__name__.lower()}, expected a group ({LAYOUT})", loc)
    return obj


def blob_array(h5py: Any, obj: Any, loc: Location) -> np.ndarray:
    """One parameter blob as float32: only real numbers are a Caffe blob (no strings, compound or complex)."""
    if not isinstance(obj, h5py.Dataset):
        raise WeightsError(f"'{obj.name}' is a {type(obj).__name__.lower()}, expected a dataset ({LAYOUT})", loc)
    if obj.dtype.kind not in "biuf":
        raise WeightsError(f"dataset '{obj.name}' has dtype {obj.dtype}, expected real numbers ({LAYOUT})", loc)
    return np.asarray(obj, dtype=np.float32)


def write_weights_h5(h5py: Any, f: Any, graph: Any, layer_blobs: Any, where: Location | None = None) -> None:
    """Caffe's ``Net::ToHDF5`` without diffs into ``f`` (an open binary file): ``layer_blobs`` holds each node's
    blobs as float32 arrays, in the graph's order. Caffe stops on a layer name that repeats (one group per
    name); here that is refused before anything is written only where the later layer owns blobs that would be
    lost, as a binary ``.caffemodel`` can hold them."""
    layers = list(zip(graph.nodes, layer_blobs, strict=True))
    check_layer_names(graph, where)
    seen: set[str] = set()
    for node, blobs in layers:
        if node.name in seen and _owned(node, blobs):
            raise WeightsError(f"a layer named '{node.name}' comes earlier in the net: HDF5 weights hold one group per "
                               "layer name, so both layers' blobs cannot be stored (rename one, or write a binary "
                               ".caffemodel)", where, layer=node.name)
        seen.add(node.name)
    with h5py.File(f, "w") as h5:
        data = h5.create_group("data")
        for node, blobs in layers:
            group = data.require_group(node.name)
            for k, array in _owned(node, blobs):
                group.create_dataset(str(k), data=array)


def check_layer_names(graph: Any, where: Location | None = None) -> None:
    """Refuse a net whose layer names HDF5 cannot hold as one group each: ``/`` separates groups (Caffe's
    ``H5Gcreate2`` fails, or nests ``conv1/scale`` inside ``conv1``, whose reader then refuses the file), and
    ``.`` or an empty name is no link name. MobileNet and SSD nets name layers ``conv1/bn``."""
    for node in graph.nodes:
        if "/" in node.name or node.name in ("", "."):
            raise WeightsError(f"HDF5 weights cannot hold layer '{node.name}': a layer name with '/' (or '.' or "
                               "an empty name) is not one HDF5 group; write a binary .caffemodel (snapshot_format: "
                               "BINARYPROTO)", where, layer=node.name)


def _owned(node: Any, blobs: Any) -> list[tuple[int, Any]]:
    """(index, array) of the blobs a layer owns: one shared through ``param { name }`` is stored with its owner."""
    return [(k, a) for k, a in enumerate(blobs) if not (k < len(node.params) and node.params[k].owner is not None)]


def read_caffemodel_h5(path: str | os.PathLike, graph: Any) -> dict[str, list[Blob]]:
    """Layer name -> blobs, as a binary caffemodel gives them: the blobs a layer shares are filled in from their
    owners (the file stores them with the owner only), so the count a reader checks is the layer's own."""
    h5py = require_h5py("reading HDF5 weights")
    file = os.fspath(path)
    loc = Location(file)
    stored: dict[str, dict[int, np.ndarray]] = {}
    try:
        with h5py.File(file, "r") as h5:
            if "data" not in h5:
                raise WeightsError(f"no 'data' group (not a Caffe HDF5 weights file; {LAYOUT})", loc)
            for name, group in expect_group(h5py, h5["data"], loc).items():
                group = expect_group(h5py, group, loc)
                stored[name] = _layer_blobs(h5py, group, loc)
    except OSError as e:
        raise WeightsError(f"not a readable HDF5 weights file: {e}", loc) from None
    out: dict[str, list[Blob]] = {}
    filled = filled_layers(graph, hdf5=True)  # a repeated name's group fills its last layer (layer_names_index_)
    named = [(node, u) for node, u in zip(graph.nodes, graph.unique_names(), strict=True) if u in filled]
    groups = {u: node.name for node, u in named}  # unique name of a filled layer -> its group
    for node, _ in named:
        arrays = stored.get(node.name)
        if arrays is None:
            continue
        if len(arrays) > len(node.param_shapes):  # CHECK_LE(num_source_params, target_blobs.size())
            raise WeightsError(f"Incompatible number of blobs for layer {node.name}: {len(arrays)} datasets in the "
                               f"file, {len(node.param_shapes)} blobs in the net", loc, layer=node.name)
        blobs = []
        for i in range(len(node.param_shapes)):
            owner = node.params[i].owner if i < len(node.params) else None
            held = stored.get(groups.get(owner[0], ""), {}) if owner is not None else {}
            if i in arrays:
                blobs.append(Blob(arrays[i]))
            elif owner is not None and owner[1] in held:  # shared: stored with its owner (Net::ToHDF5)
                blobs.append(Blob(held[owner[1]]))
            else:  # a blob of its own the file lacks; or a shared one its owner's group lacks, which Caffe keeps
                why = " (shared, and its owner's group lacks it)" if owner is not None else ""
                raise WeightsError(f"Incompatible number of blobs for layer {node.name}: dataset {i} is missing{why}",
                                   loc, layer=node.name)
        out[node.name] = blobs
    out.update({name: [Blob(arrays[k]) for k in sorted(arrays)] for name, arrays in stored.items()
                if name not in out})
    return out


def _layer_blobs(h5py: Any, group: Any, loc: Location) -> dict[int, np.ndarray]:
    """A layer group's datasets by blob index. Caffe reads datasets ``0``, ``1``, ... by number, skipping one a
    layer shares from another (``Net::ToHDF5`` stored it with its owner), so only numbered links are a layout
    it reads: another link (a nested group from a layer name with ``/``) is refused."""
    blobs: dict[int, np.ndarray] = {}
    for name in group:
        if not name.isdigit() or str(int(name)) != name:
            raise WeightsError(f"group '{group.name}' holds '{name}', expected datasets named 0, 1, ... ({LAYOUT}; a "
                               "layer name with '/' nests groups)", loc)
        blobs[int(name)] = blob_array(h5py, group[name], loc)
    return blobs
