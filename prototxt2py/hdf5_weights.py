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

from . import limits
from .errors import InputFileError, Location, Prototxt2pyError, WeightsError
from .fsutil import open_regular
from .weights import MAX_BLOB_AXES, Blob, filled_layers

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


def member(h5py: Any, group: Any, name: str, loc: Location, error: type[Prototxt2pyError] = WeightsError) -> Any:
    """``group[name]``, refusing what Caffe's writers never make and a hostile file can: an external link (which
    would open another file of this machine) and a link that leads nowhere (h5py raises ``KeyError`` or yields
    None for it)."""
    where = f"'{group.name.rstrip('/')}/{name}'"
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise error(f"{where} is an external link to {link.filename!r}: the file must hold its own data", loc)
    try:
        obj = group[name]
    except (KeyError, OSError, ValueError, RuntimeError):  # RuntimeError: a soft link that loops
        obj = None
    if obj is None:
        raise error(f"{where} cannot be opened (a link that leads nowhere?)", loc)
    return obj


def blob_dataset(h5py: Any, obj: Any, loc: Location, error: type[Prototxt2pyError] = WeightsError,
                 layout: str = LAYOUT) -> Any:
    """``obj`` if it can be a Caffe blob, checked without reading it: a dataset of real numbers (no strings,
    compound or complex, as ``hdf5_load_nd_dataset`` refuses them) with at most ``kMaxBlobAxes`` axes and a shape
    within the blob limits (a file of a few KB may declare a never-written dataset of billions of values)."""
    if not isinstance(obj, h5py.Dataset):
        raise error(f"'{obj.name}' is a {type(obj).__name__.lower()}, expected a dataset ({layout})", loc)
    if obj.dtype.kind not in "biuf":
        raise error(f"dataset '{obj.name}' has dtype {obj.dtype}, expected real numbers ({layout})", loc)
    if obj.shape is None:  # a null dataspace (h5py.Empty)
        raise error(f"dataset '{obj.name}' is empty (a null dataspace, no values at all)", loc)
    if len(obj.shape) > MAX_BLOB_AXES:
        raise error(f"dataset '{obj.name}' has {len(obj.shape)} axes (Caffe allows {MAX_BLOB_AXES})", loc)
    limits.check_shape(tuple(obj.shape), f"dataset '{obj.name}'", location=loc)
    return obj


def read_blob(obj: Any) -> np.ndarray:
    """The values of a dataset :func:`blob_dataset` accepted, as float32 (read only once its shape is known to
    fit: the read allocates what the file declares)."""
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
    owners (the file stores them with the owner only), so the count a reader checks is the layer's own.

    As ``CopyTrainedLayersFromHDF5``, only the groups of layers the net fills are read, each dataset once its
    shape is found equal to the blob's (``hdf5_load_nd_dataset`` without reshape); a group the net lacks is
    listed (its layer is reported as extra) with zero-stride stand-ins of its datasets' shapes, never read."""
    h5py = require_h5py("reading HDF5 weights")
    file = os.fspath(path)
    loc = Location(file)
    try:
        with h5py.File(file, "r") as h5:
            if "data" not in h5:
                raise WeightsError(f"no 'data' group (not a Caffe HDF5 weights file; {LAYOUT})", loc)
            data = expect_group(h5py, member(h5py, h5, "data", loc), loc)
            in_net = {node.name for node in graph.nodes}
            stored, unread = {}, []
            for name in data:
                try:
                    stored[name] = _layer_datasets(h5py, expect_group(h5py, member(h5py, data, name, loc), loc), loc)
                except Prototxt2pyError:
                    if name in in_net:
                        raise
                    unread.append(name)  # Caffe never opens a layer the net lacks ("Ignoring source layer")
            out = _match(graph, stored, loc)
            out.update({name: [Blob(np.zeros(0, np.float32))] for name in unread})  # listed as extra, ignored
            return out
    except OSError as e:
        raise WeightsError(f"not a readable HDF5 weights file: {e}", loc) from None


def _match(graph: Any, stored: dict[str, dict[int, Any]], loc: Location) -> dict[str, list[Blob]]:
    """Line the datasets up with the graph's layers (see :func:`read_caffemodel_h5`), reading the ones it uses."""
    filled = filled_layers(graph, hdf5=True)  # a repeated name's group fills its last layer (layer_names_index_)
    named = [(node, u) for node, u in zip(graph.nodes, graph.unique_names(), strict=True) if u in filled]
    groups = {u: node.name for node, u in named}  # unique name of a filled layer -> its group
    by_group = {node.name: node for node, _ in named}
    values: dict[tuple[str, int], np.ndarray] = {}

    def read(group: str, k: int) -> np.ndarray:
        """Dataset ``k`` of a filled layer's group, read once, after its shape is checked against that layer's."""
        if (group, k) not in values:
            ds, node = stored[group][k], by_group[group]
            shape = node.param_shapes[k] if k < len(node.param_shapes) else None
            want = None if shape is None else tuple(shape)
            if want is not None and tuple(ds.shape) != want:
                raise WeightsError(f"blob {k} has shape {tuple(ds.shape)} in the weights file, the net expects "
                                   f"{want} (Caffe: dimensions mismatch)", loc, layer=node.name)
            values[group, k] = read_blob(ds)
        return values[group, k]

    out: dict[str, list[Blob]] = {}
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
            group = groups.get(owner[0], "") if owner is not None else ""
            if i in arrays:
                blobs.append(Blob(read(node.name, i)))
            elif owner is not None and owner[1] in stored.get(group, {}):  # shared: stored with its owner
                blobs.append(Blob(read(group, owner[1])))
            else:  # a blob of its own the file lacks; or a shared one its owner's group lacks, which Caffe keeps
                why = " (shared, and its owner's group lacks it)" if owner is not None else ""
                raise WeightsError(f"Incompatible number of blobs for layer {node.name}: dataset {i} is missing{why}",
                                   loc, layer=node.name)
        out[node.name] = blobs
    out.update({name: [Blob(np.broadcast_to(np.float32(0), datasets[k].shape)) for k in sorted(datasets)]
                for name, datasets in stored.items() if name not in out})
    return out


def _layer_datasets(h5py: Any, group: Any, loc: Location) -> dict[int, Any]:
    """A layer group's datasets by blob index, checked but not read. Caffe reads datasets ``0``, ``1``, ... by
    number, skipping one a layer shares from another (``Net::ToHDF5`` stored it with its owner), so only numbered
    links are a layout it reads: another link (a nested group from a layer name with ``/``) is refused."""
    blobs: dict[int, Any] = {}
    for name in group:
        if not (name.isascii() and name.isdigit()) or str(int(name)) != name:
            raise WeightsError(f"group '{group.name}' holds '{name}', expected datasets named 0, 1, ... ({LAYOUT}; a "
                               "layer name with '/' nests groups)", loc)
        blobs[int(name)] = blob_dataset(h5py, member(h5py, group, name, loc), loc)
    return blobs
