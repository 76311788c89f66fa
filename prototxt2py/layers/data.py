"""Caffe's data-reading layers (Data, ImageData, WindowData, HDF5Data, MemoryData), the HDF5Output sink and
``Python`` layers, for the IR and shape inference.

What a prototxt tells about a data layer's tops (Caffe's ``DataLayerSetUp``):

* the batch size always (``*_data_param.batch_size``);
* H and W from ``transform_param.crop_size`` (the crop is taken from the image whatever its size), from
  ImageData's ``new_height``/``new_width`` resize, or MemoryData's declared ``height``/``width``;
* channels from ImageData's ``is_color`` (OpenCV decodes to 3 or 1 channels) or MemoryData's ``channels``;
  a Datum's channel count lives in the database, so Data and WindowData never know it.

Whatever is missing is only in the data, so such a layer raises :class:`Unknowable` with the dims it does
know, for ``--input`` to complete. Labels are ``(batch,)``, MemoryData's too (the shape Caffe's setup gives it;
its forward pass later views the same values as ``(batch, 1, 1, 1)``).

In a deployed net the data layers' tops are net inputs: their torch modules only raise if the caller did not
pass those blobs. ``Python`` layers are user code named by the model file; it is never imported or run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..plain import plain
from .base import LayerSpec, Shape, Unknowable, call, register
from .python import HOW_TO_MAP

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "data"


@dataclass(frozen=True)
class DataAttrs:
    """What the prototxt fixes about a data layer's tops; ``None`` = only the data knows."""

    batch: int
    channels: int | None
    height: int | None
    width: int | None
    source: str
    kind: str  # what ``source`` is, for messages ("LMDB", "image list", ...)
    param: Any = None  # the layer's ``*_param`` and ``transform_param`` as plain values, for the data readers
    transform: Any = None
    extra: Any = None  # a second ``*_param`` some readers need (``DataLayerSpec.extra_field``)


def crop_size(layer: Any) -> int:
    """``transform_param.crop_size`` (0: no crop)."""
    return layer.transform_param.crop_size


#: appended to the ``--input`` hints: what a caller of the Python API (``graph``, ``load``, ``caffe.Net``) passes
PYTHON_HINT = " (from Python: input_shapes={...})"


def input_hint(shape: Sequence[int | None]) -> str:
    """An ``--input`` value for a shape: known dims as numbers, unknown ones as N/C/H/W by position."""
    return ",".join(str(d) if d is not None else "NCHW"[i] for i, d in enumerate(shape))


class DataLayerSpec(LayerSpec):
    """Layers producing net inputs from files: no bottoms; a data top and (usually) a label top."""

    bottoms = (0, 0)
    tops = (2, 2)
    is_data = True
    family = FAMILY
    #: a second ``*_param`` field the reader gets as ``extra`` (SSD's AnnotatedData: ``annotated_data_param``)
    extra_field: str | None = None

    def data_attrs(self, layer: Any) -> DataAttrs:
        raise NotImplementedError

    def label_shape(self, a: DataAttrs) -> tuple[int | None, ...]:
        """Shape of the label top (Caffe's classification labels: one value per item)."""
        return (a.batch,)

    def attrs(self, layer):
        a = self.data_attrs(layer)
        if a.batch <= 0:
            raise ValueError(f"batch_size must be positive, got {a.batch}")
        field = self.field_name()
        param = plain(getattr(layer, field)) if field else None
        extra = plain(getattr(layer, self.extra_field)) if self.extra_field else None
        return replace(a, param=param, transform=plain(layer.transform_param), extra=extra)

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        a: DataAttrs = node.attrs
        shapes = [(a.batch, a.channels, a.height, a.width), self.label_shape(a)][: len(node.tops)]
        if None in (a.channels, a.height, a.width):
            missing = [w for v, w in ((a.height, "image size"), (a.channels, "channel count")) if v is None]
            hints = " ".join(f"--input {t}={input_hint(s)}" for t, s in zip(node.tops, shapes, strict=True))
            raise Unknowable(
                f"layer reads {a.source or '(no source)'} ({a.kind}), {' and '.join(missing)} unknown without the "
                f"data; give {hints}{PYTHON_HINT}",
                shapes=[None, *(s if None not in s else None for s in shapes[1:])],  # a label may be known
            )
        return shapes

    def module(self, node: Node) -> Any:
        return call("NetInput", tuple(node.tops))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """The tops are graph inputs, which the exporter declares: nothing to compute."""


@register
class Data(DataLayerSpec):
    type = "Data"
    tops = (1, 2)
    summary = "batches of Datums from an LMDB/LevelDB (data_param), transformed by transform_param; a net input"

    def data_attrs(self, layer):
        p = layer.data_param
        crop = crop_size(layer) or None
        backend = p.DESCRIPTOR.fields_by_name["backend"].enum_type.values_by_number[p.backend].name
        return DataAttrs(p.batch_size, None, crop, crop, p.source, backend)


@register
class ImageData(DataLayerSpec):
    type = "ImageData"
    summary = "batches of image files listed in image_data_param.source (optional resize, crop); a net input"

    def data_attrs(self, layer):
        p = layer.image_data_param
        if (p.new_height > 0) != (p.new_width > 0):
            raise ValueError("image_data_param: new_height and new_width must be set together")
        crop = crop_size(layer)
        h, w = (crop, crop) if crop else (p.new_height or None, p.new_width or None)
        return DataAttrs(p.batch_size, 3 if p.is_color else 1, h, w, p.source, "image list")


@register
class WindowData(DataLayerSpec):
    type = "WindowData"
    summary = "R-CNN windows cropped and warped to transform_param.crop_size from a window file; a net input"

    def data_attrs(self, layer):
        p = layer.window_data_param
        crop = crop_size(layer)
        if crop <= 0:
            raise ValueError("WindowData needs transform_param.crop_size > 0")
        return DataAttrs(p.batch_size, None, crop, crop, p.source, "window file")


@register
class MemoryData(DataLayerSpec):
    type = "MemoryData"
    summary = "arrays handed in by the caller (memory_data_param batch_size, channels, height, width); a net input"

    def data_attrs(self, layer):
        p = layer.memory_data_param
        if min(p.channels, p.height, p.width) <= 0:
            raise ValueError("memory_data_param: batch_size, channels, height and width must all be positive")
        return DataAttrs(p.batch_size, p.channels, p.height, p.width, "", "memory")


@dataclass(frozen=True)
class HDF5DataAttrs:
    """An HDF5Data layer: what shape inference needs, and its parameters as plain values for the reader."""

    batch_size: int
    source: str
    param: Any  # plain ``hdf5_data_param``
    transform: Any  # plain ``transform_param``: Caffe refuses one on HDF5Data, the reader says so


@register
class HDF5Data(LayerSpec):
    type = "HDF5Data"
    bottoms = (0, 0)
    tops = (1, None)
    is_data = True
    family = FAMILY
    summary = "batches of the HDF5 datasets named by the tops, from the files listed in source; a net input"

    def attrs(self, layer):
        p = layer.hdf5_data_param
        return HDF5DataAttrs(p.batch_size, p.source, plain(p), plain(layer.transform_param))

    def infer_shapes(self, node, in_shapes):
        p = node.attrs
        if p.batch_size <= 0:
            raise self.fail(node, f"hdf5_data_param.batch_size must be positive, got {p.batch_size}")
        hints = " ".join(f"--input {t}={p.batch_size},..." for t in node.tops)
        raise Unknowable(
            f"layer reads {p.source or '(no source)'} (HDF5 file list), dataset shapes unknown without the data; "
            f"give {hints}{PYTHON_HINT}"
        )


    def module(self, node):
        return call("NetInput", tuple(node.tops))

    def to_onnx(self, node, ctx):
        """The tops are graph inputs, which the exporter declares: nothing to compute."""


@register
class HDF5Output(LayerSpec):
    type = "HDF5Output"
    bottoms = (2, 2)
    tops = (0, 0)
    family = FAMILY
    summary = "sink: Caffe writes (data, label) to hdf5_output_param.file_name; writes nothing here"

    def infer_shapes(self, node, in_shapes):
        data, label = in_shapes
        if not data or not label or data[0] != label[0]:
            raise self.fail(node, f"data {tuple(data)} and label {tuple(label)} must have the same first dimension")
        return []

    def module(self, node):
        return call("Sink")


@register
class Python(LayerSpec):
    type = "Python"
    bottoms = (0, None)
    tops = (0, None)
    family = FAMILY
    summary = ("user Python code (python_param module.layer): never imported or run; one without bottoms is a data "
               "layer whose tops are net inputs")

    def is_input(self, node):
        """A Python layer with tops and no bottoms is a data layer (py-faster-rcnn's RoI data, a reader of your own):
        its tops become net inputs, as other data layers', so the rest of the net runs on arrays the caller
        gives. Python layers computing something from bottoms need a mapping (:mod:`.python`)."""
        return not node.bottoms and bool(node.tops)

    def supports(self, backend, node=None):
        return backend == "shape" or (node is not None and self.is_input(node))

    def infer_shapes(self, node, in_shapes):
        p = node.attrs
        if self.is_input(node):
            hints = " ".join(f"--input {t}=..." for t in node.tops)
            name = f"{p.module}.{p.layer}"
            raise Unknowable(f"Python data layer {name} is user code and is not run: its tops are net inputs of "
                             f"unknown shape; give {hints}{PYTHON_HINT}, or run the class: python_layers="
                             f"{{'{name}': {p.layer}}} (caffe.Net, caffe.SGDSolver, prototxt2py.load)")
        raise Unknowable(f"Python layer {p.module}.{p.layer} is user code and is not run; "
                         + self.unsupported_note(node))

    def unsupported_note(self, node):
        name = f"{node.attrs.module}.{node.attrs.layer}"
        return "" if self.is_input(node) else HOW_TO_MAP % (name, name)


    def module(self, node):
        return call("NetInput", tuple(node.tops))  # only for data layers (``supports``)

    def to_onnx(self, node, ctx):
        """Only for data layers: their tops are graph inputs, which the exporter declares."""
