"""Parameter blobs as numpy arrays, without torch: what the commands that compute nothing need.

``convert --to onnx|caffemodel|safetensors`` only moves arrays from one file format to another; importing torch
for that (1-2 s) would cost more than the conversion. This module gives each layer's blobs as numpy arrays:

* :func:`read_blobs` reads a ``.caffemodel``: the framing walk of :mod:`.weights` finds every packed array, and
  float32 arrays (nearly every real file) become read-only **views over a memory map of the file**: no read,
  no copy; pages are touched only when a writer copies them out. ``double_data`` and files that need protobuf
  decoding (unpacked arrays) give converted float32 copies. Legacy V1 files keep their 4-D shapes here.
* :class:`GraphBlobs` lines those arrays up with an IR graph, as ``CaffeNet.from_weights`` does with tensors:
  matched by layer name, counts and shapes checked with the same messages (legacy 4-D blobs accepted where
  Caffe accepts them), blobs shared through ``param { name }`` are one array, and the blobs the file lacks
  (or all of them, without a file) are filled by Caffe's fillers (:func:`~.fillers.fill_array`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import Location, Prototxt2pyError, WeightsError
from .fillers import fill_array
from .weights import (
    Blob,
    LayerRefs,
    LoadReport,
    _fits,
    _InlineRef,
    _open_refs,
    adjusted_blobs,
    as_float32,
    check_blobless,
    check_matches,
    check_repeats,
    extra_layers,
    filled_layers,
)

_FLOAT = np.dtype(np.float32)


def read_stored(path: str | os.PathLike) -> dict[str, list[Blob]]:
    """Layer name -> its blobs (array with the shape stored in the file, and whether that shape came from the
    legacy 4-D fields). Float32 arrays are read-only views over a memory map of the file, which stays mapped
    as long as one of them is alive."""
    fd, mm, refs = _open_refs(path)
    if mm is None:
        return {}
    os.close(fd)  # the map keeps the file open
    out = LayerRefs()
    out.repeats = refs.repeats
    for name, blobs in refs.items():
        arrays = []
        for i, ref in enumerate(blobs):
            if isinstance(ref, _InlineRef):
                array = np.asarray(ref.values, dtype=_FLOAT)
            elif ref.count == 0:
                array = np.zeros(0, dtype=_FLOAT)
            else:
                array = np.frombuffer(mm, dtype=ref.dtype, count=ref.count, offset=ref.offset)
                if ref.dtype != "<f4":
                    array = as_float32(array)
            try:
                arrays.append(Blob(array.reshape(ref.shape), ref.legacy))
            except ValueError:  # no values, dims whose product of sizes numpy cannot index (0 x INT_MAX x INT_MAX)
                raise WeightsError(f"blob {i} has shape {ref.shape}, which numpy cannot hold even empty",
                                   Location(str(path)), layer=name) from None
        out[name] = arrays
    return out


def read_blobs(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs as float32 numpy arrays in Caffe's blob order (see :func:`read_stored`), for the
    layers that have any."""
    return {name: [b.array for b in blobs] for name, blobs in read_stored(path).items() if blobs}


class GraphBlobs:
    """Every layer's parameter blobs for an IR graph, as float32 numpy arrays in Caffe's blob order.

    ``weights``: a ``.caffemodel`` path, a mapping layer -> arrays (or :class:`~.weights.Blob`), or None (every
    blob from its filler). Problems with the file raise :class:`WeightsError` before anything is returned;
    ``report`` lists the layers loaded, missing (left to their fillers) and extra, as the runtime's
    ``load_report`` does. ``rng`` drives the random fillers."""

    def __init__(self, graph: Any, weights: str | os.PathLike | Mapping[str, Sequence[Any]] | None = None,
                 rng: np.random.Generator | None = None):
        self.graph = graph
        self.report = LoadReport()
        self._rng = rng
        graph.require_param_shapes()
        # a layer named like an earlier one (Caffe allows it) keeps blobs of its own, under its unique name
        self._own_name = {id(n): u for n, u in zip(graph.nodes, graph.unique_names(), strict=True)}
        self._by_unique = {u: n for n, u in zip(graph.nodes, graph.unique_names(), strict=True)}  # param owners
        self._shapes: dict[tuple[str, int], tuple[int, ...]] = {}
        for n in graph.nodes:
            for i, s in enumerate(n.param_shapes):
                self._shapes.setdefault(self._own_key(n, i), tuple(s))
        hdf5 = False
        if weights is None:
            stored: Mapping[str, Sequence[Any]] = {}
            loc = None
        elif isinstance(weights, Mapping):
            stored, loc = weights, None
        else:
            from .hdf5_weights import is_hdf5, read_caffemodel_h5

            loc = Location(str(weights))
            hdf5 = is_hdf5(weights)
            stored = read_caffemodel_h5(weights, graph) if hdf5 else read_stored(weights)
        self._filled = filled_layers(graph, hdf5)
        self._arrays: dict[tuple[str, int], np.ndarray] = {}
        self._load(stored, loc, weights is not None)

    def _own_key(self, node: Any, i: int) -> tuple[str, int]:
        """The key of a layer's own blob ``i``: (layer name, i), the name made unique where it repeats."""
        return self._unique(node), i

    def _unique(self, node: Any) -> str:
        """The layer's unique name (a node of another graph of the same net counts as the first of its name)."""
        return self._own_name.get(id(node), node.name)

    # -- matching the file to the graph ------------------------------------------------------------------
    def _targets(self, node: Any) -> list[tuple[tuple[str, int], tuple[int, ...]]]:
        """(sharing key, target shape) per blob: a blob shared through ``param { name }`` is its owner's, with
        the owner's shape (as in Caffe, where the sharer's blob *is* the owner's)."""
        out = []
        for i, shape in enumerate(node.param_shapes):
            owner = node.params[i].owner if i < len(node.params) else None
            key = (owner[0], owner[1]) if owner is not None else self._own_key(node, i)
            out.append((key, self._shapes.get(key, tuple(shape))))
        return out

    def _load(self, stored: Mapping[str, Sequence[Any]], loc: Location | None, have_file: bool) -> None:
        report = self.report
        for node in self.graph.nodes:
            filled = self._unique(node) in self._filled
            if filled:
                check_repeats(stored, node.name, [t for _, t in self._targets(node)], loc)
            if not node.param_shapes:
                check_blobless(node, stored.get(node.name) if filled else None, loc)
                continue
            if not filled:  # Caffe copies weights into one layer of a name only (see filled_layers)
                report.repeated.append(node.name)
                continue
            blobs = stored.get(node.name)
            if blobs is None:
                report.missing.append(node.name)
                continue
            names = self.names(node)
            if node.spec.overrides("adjust_blobs"):
                blobs = adjusted_blobs(node, [b.array if isinstance(b, Blob) else np.asarray(b) for b in blobs], loc)
            if len(blobs) != len(names):
                raise WeightsError(f"weights file has {len(blobs)} blobs for this layer, the net expects "
                                   f"{len(names)}", loc, layer=node.name)
            for i, ((key, target), blob) in enumerate(zip(self._targets(node), blobs, strict=True)):
                array, legacy = (blob.array, blob.legacy) if isinstance(blob, Blob) else (np.asarray(blob), False)
                if not _fits(target, tuple(array.shape), legacy):
                    raise WeightsError(f"blob {i} ({names[i]}) has shape {tuple(array.shape)} in the weights file, "
                                       f"the net expects {target}", loc, layer=node.name)
                self._arrays[key] = np.asarray(array, dtype=_FLOAT).reshape(target)  # later layers win, as in Caffe
            report.loaded.append(node.name)
        if have_file:
            check_matches(report, stored, loc)
        report.extra = extra_layers(self.graph, stored)
        if not have_file:
            report.missing, report.repeated = [], []  # nothing was asked of a file

    # -- what writers ask for --------------------------------------------------------------------------------
    @staticmethod
    def names(node: Any) -> tuple[str, ...]:
        """The layer's blob names in Caffe's order (attribute names of the runtime module)."""
        return tuple(node.spec.node_blob_names(node))

    def blobs(self, node: Any) -> list[np.ndarray]:
        """The layer's blobs, float32 with Caffe's shapes; a blob shared with another layer is the same array
        object for both (writers store it once), or a view of it in this layer's shape where the two differ."""
        targets = self._targets(node)
        if any(key not in self._arrays for key, _ in targets):
            self._fill(node)
        # share_mode: PERMISSIVE shares blobs of equal size and other shapes: each layer sees its own shape
        return [_as_shape(self._arrays[key], shape) for (key, _), shape in zip(targets, node.param_shapes, strict=True)]

    def _fill(self, node: Any) -> None:
        """Fill the blobs no file provided, with their owners' fillers (Caffe fills a shared blob once, as the
        owner's)."""
        for key, target in self._targets(node):
            if key in self._arrays:
                continue
            owner = self._by_unique.get(key[0], node) if key[0] != self._unique(node) else node
            try:
                filler = list(owner.spec.fillers(owner))[key[1]]
                self._arrays[key] = fill_array(target, filler, self._rng)
            except Prototxt2pyError:
                raise
            except (ValueError, TypeError, IndexError) as e:
                raise Prototxt2pyError(f"cannot fill parameter blob {key[1]}: {e}", owner.location,
                                       layer=owner.name) from None


class NetBlobs:
    """The same interface over a runtime ``CaffeNet``: its parameter tensors as float32 numpy arrays (a shared
    tensor gives one array)."""

    def __init__(self, net: Any):
        self.net = net
        self.graph = net.graph
        self._modules = dict(zip((id(n) for n in net.graph.nodes), net.layers.values(), strict=True))
        self._arrays: dict[int, np.ndarray] = {}

    def module(self, node: Any) -> Any:
        return self._modules[id(node)]

    def names(self, node: Any) -> tuple[str, ...]:
        return tuple(getattr(self.module(node), "blob_names", ()))

    def blobs(self, node: Any) -> list[np.ndarray]:
        module, out = self.module(node), []
        for name in self.names(node):
            tensor = getattr(module, name)
            array = self._arrays.get(id(tensor))
            if array is None:
                array = tensor.detach().float().cpu().numpy()  # bfloat16 has no numpy type: convert first
                self._arrays[id(tensor)] = array
            out.append(array)
        return out


def blobs_for(source: Any, weights: str | os.PathLike | Mapping[str, Sequence[Any]] | None = None
              ) -> GraphBlobs | NetBlobs:
    """The blob provider for a runtime net (its tensors) or an IR graph (``weights`` or fillers)."""
    if hasattr(source, "layer_blobs"):
        if weights is not None:
            raise TypeError("weights are given with a graph; a net already holds its own")
        return NetBlobs(source)
    return GraphBlobs(source, weights)


def _as_shape(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``array`` itself if it has ``shape``, else a view of it in that shape (same size: the IR checked)."""
    return array if array.shape == tuple(shape) else array.reshape(tuple(shape))
