"""Caffe's HDF5 weights format (``Net::ToHDF5`` / ``CopyTrainedLayersFromHDF5``), via h5py.

Layout: group ``data``, one sub-group per layer (in net order, also for layers without parameters), one
dataset per parameter blob named by its index. A blob shared through ``param { name }`` is written only by its
owner; reading skips missing datasets of shared blobs, as Caffe does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from ..errors import Location, WeightsError
from ..fsutil import atomic_output
from ..hdf5_weights import blob_dataset, expect_group, member, read_blob, require_h5py, write_weights_h5

if TYPE_CHECKING:  # pragma: no cover
    from ._net import Net


def _h5py():
    return require_h5py("HDF5 weights")


def save_params(net: Net, filename: str | os.PathLike) -> None:
    h5py = _h5py()
    blobs = [[b.tensor().detach().cpu().numpy() for b in layer.blobs] for layer in net.layers]
    with atomic_output(filename, "w+b") as f:
        write_weights_h5(h5py, f, net._graph, blobs, Location(os.fspath(filename)))


def load_params(net: Net, filename: str | os.PathLike) -> None:
    h5py = _h5py()
    loc = Location(os.fspath(filename))
    try:
        h5 = h5py.File(os.fspath(filename), "r")
    except OSError as e:
        raise WeightsError(f"not an HDF5 file: {e}", loc) from None
    with h5:
        if "data" not in h5:
            raise WeightsError("no 'data' group (not a Caffe HDF5 weights file)", loc)
        plan = []
        data = expect_group(h5py, member(h5py, h5, "data", loc), loc)
        for name in data:
            if name not in net._layer_names:
                continue  # Caffe ignores layers the net lacks
            group = expect_group(h5py, member(h5py, data, name, loc), loc)
            # the last layer of the name, as Net::Init's layer_names_index_ (a binary file fills the first)
            i = len(net._layer_names) - 1 - net._layer_names[::-1].index(name)
            blobs, node = net.layers[i].blobs, net._graph.nodes[i]
            if len(group) > len(blobs):
                raise WeightsError(f"Incompatible number of blobs for layer {name}: {len(group)} in the file, "
                                   f"{len(blobs)} in the net", loc, layer=name)
            for k, blob in enumerate(blobs):
                if str(k) not in group:
                    if k < len(node.params) and node.params[k].owner is not None:
                        continue
                    raise WeightsError(f"Incompatible number of blobs for layer {name}: blob {k} is missing",
                                       loc, layer=name)
                dataset = blob_dataset(h5py, member(h5py, group, str(k), loc), loc)
                if list(dataset.shape) != blob.shape:  # checked before the read: the file may declare any size
                    raise WeightsError(f"blob {k} has shape {dataset.shape} in the file, the net expects "
                                       f"{tuple(blob.shape)}", loc, layer=name)
                plan.append((blob, read_blob(dataset)))
        with torch.no_grad():
            for blob, arr in plan:
                blob.tensor().copy_(torch.from_numpy(arr))
