"""Weights I/O: ``.caffemodel`` <-> the PyTorch runtime, matched by layer name as Caffe does.

Blob shapes come from ``shape`` or the legacy ``num/channels/height/width`` fields (V1 files); Caffe accepts
a legacy 4-D blob for a target whose shape, left-padded with 1s to 4 axes, is the same, and so do we.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import Location, WeightsError
from .reader import read_bytes


@dataclass
class Blob:
    """One stored blob: its array (float32) and whether its shape came from the legacy 4-D fields."""

    array: np.ndarray
    legacy: bool = False


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # net layers with blobs that the file lacks
    extra: list[str] = field(default_factory=list)  # file layers with blobs that the net lacks

    def warnings(self) -> list[str]:
        out = []
        if self.missing:
            out.append("layers without weights in the file (left at their fillers): " + ", ".join(self.missing))
        if self.extra:
            out.append("layers in the weights file that the net does not have (ignored): " + ", ".join(self.extra))
        return out


def _blob_array(blob: Any, where: str) -> Blob:
    legacy = not blob.HasField("shape") and any(
        blob.HasField(f) for f in ("num", "channels", "height", "width")
    )
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif legacy:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = (len(blob.data) or len(blob.double_data),)
    if len(blob.data):
        arr = np.asarray(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        arr = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        arr = np.zeros(0, dtype=np.float32)
    expected = int(np.prod(shape)) if shape else 1
    if arr.size != expected:
        raise WeightsError(f"blob of {where} declares shape {shape} but holds {arr.size} values", None)
    return Blob(arr.reshape(shape), legacy)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[Blob]]:
    """Layer name -> its blobs, from a V2 (``layer``) or V1 (``layers``) binary NetParameter."""
    from .proto import caffe_pb2

    data = read_bytes(path)
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except Exception:
        raise WeightsError("not a valid .caffemodel (truncated or corrupt protobuf)", Location(str(path))) from None
    out: dict[str, list[Blob]] = {}
    for entries in (net.layer, net.layers):
        for layer in entries:
            if len(layer.blobs):
                out[layer.name] = [_blob_array(b, f"layer '{layer.name}'") for b in layer.blobs]
    if not out and not len(net.layer) and not len(net.layers):
        raise WeightsError("file holds no layers: not a .caffemodel?", Location(str(path)))
    return out


def _fits(target: tuple[int, ...], blob: Blob) -> bool:
    got = blob.array.shape
    if target == got:
        return True
    if blob.legacy and len(target) <= 4:
        return (1,) * (4 - len(target)) + target == got
    return False


def load_weights(net: Any, weights: Mapping[str, list[Blob]] | str | os.PathLike, file: str = "") -> LoadReport:
    """Copy stored blobs into a ``CaffeNet``'s layer modules, by layer name; shapes are checked."""
    if not isinstance(weights, Mapping):
        file = str(weights)
        weights = read_caffemodel(weights)
    report = LoadReport()
    loc = Location(file) if file else None
    for node in net.graph.nodes:
        module = net.layer(node.name)
        names = getattr(module, "blob_names", ())
        if not names:
            continue
        blobs = weights.get(node.name)
        if blobs is None:
            report.missing.append(node.name)
            continue
        if len(blobs) != len(names):
            raise WeightsError(
                f"weights file has {len(blobs)} blobs for this layer, the net expects {len(names)}", loc,
                layer=node.name,
            )
        with torch.no_grad():
            for i, (name, blob) in enumerate(zip(names, blobs, strict=True)):
                target = getattr(module, name)
                if not _fits(tuple(target.shape), blob):
                    raise WeightsError(
                        f"blob {i} ({name}) has shape {tuple(blob.array.shape)} in the weights file, "
                        f"the net expects {tuple(target.shape)}",
                        loc,
                        layer=node.name,
                    )
                target.copy_(torch.from_numpy(blob.array.reshape(tuple(target.shape))))
        report.loaded.append(node.name)
    known = {n.name for n in net.graph.nodes}
    report.extra = [name for name in weights if name not in known]
    return report
