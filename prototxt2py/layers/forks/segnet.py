"""SegNet (alexgkendall/caffe-segnet): Upsample (max-unpooling with the pooling mask; with one bottom, YOLO ports'
nearest repeat) and DenseImageData (images and label maps from a list of file pairs).

Written as a third-party plugin: public plugin API only, the torch helper in :mod:`.segnet_nn`. Quirk kept:
a later mask hit overwrites an earlier one, but every bottom gets its top's gradient. SegNet's ``BN`` is in
:mod:`.bn` (PSPNet uses the same type name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prototxt2py.layers import LayerSpec, call, plain, register
from prototxt2py.layers.data import DataAttrs, DataLayerSpec, crop_size

from ...lazy_numpy import np

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.segnet_nn"


@dataclass(frozen=True)
class UpsampleAttrs:
    out_h: int  # 0: from the scale
    out_w: int
    scale_h: int
    scale_w: int
    pad_out_h: bool
    pad_out_w: bool


def _upsample_size(a: UpsampleAttrs, h: int, w: int) -> tuple[int, int]:
    if a.out_h:
        return a.out_h, a.out_w
    return h * a.scale_h - int(a.pad_out_h), w * a.scale_w - int(a.pad_out_w)


@register
class Upsample(LayerSpec):
    type = "Upsample"
    bottoms = (1, 2)
    family = FAMILY
    onnx_dynamic_sizes = True  # Resize by scales; unpooling computes its sizes and plane offsets at run time
    summary = "SegNet max-unpooling (x, pool mask) to upsample_h/w or scale; one bottom: nearest repeat (YOLO)"

    def attrs(self, layer):
        p = plain(layer.upsample_param)
        sized = p.has("upsample_h") and p.has("upsample_w")
        if not (sized or (not p.has("scale") and p.has("scale_h") and p.has("scale_w"))
                or (not p.has("scale_h") and not p.has("scale_w"))):
            raise ValueError("upsample_param needs upsample_h and upsample_w, or scale, or scale_h and scale_w")
        scale_h, scale_w = (p.scale_h, p.scale_w) if p.has("scale_h") else (p.scale, p.scale)
        if sized:
            if p.upsample_h <= 1 or p.upsample_w <= 1:
                raise ValueError("upsample_h and upsample_w must be > 1")
        elif scale_h <= 1 or scale_w <= 1:
            raise ValueError("the upsampling scale must be > 1")
        if (p.pad_out_h and scale_h != 2) or (p.pad_out_w and scale_w != 2):
            raise ValueError("pad_out_h/pad_out_w need a scale of 2")
        return UpsampleAttrs(p.upsample_h if sized else 0, p.upsample_w if sized else 0, scale_h, scale_w,
                             p.pad_out_h, p.pad_out_w)

    def infer_shapes(self, node, in_shapes):
        x = in_shapes[0]
        if len(x) != 4:
            raise self.fail(node, f"Upsample needs a 4-axis bottom, got {tuple(x)}")
        a: UpsampleAttrs = node.attrs
        if len(in_shapes) == 1:
            if a.out_h:
                raise self.fail(node, "one-bottom (nearest) Upsample takes scale or scale_h/scale_w, not upsample_h/w")
            return [(x[0], x[1], x[2] * a.scale_h, x[3] * a.scale_w)]
        if tuple(in_shapes[1]) != tuple(x):
            raise self.fail(node, f"mask {tuple(in_shapes[1])} must have the shape of the bottom {tuple(x)}")
        return [(x[0], x[1], *_upsample_size(a, x[2], x[3]))]

    def module(self, node):
        """Nearest by power-of-two scales (YOLO's 2) is ``nn.Upsample``: torch's source index
        ``floor(dst * (1 / scale))`` is exact then. Other scales and unpooling are :class:`SegNetUpsample`."""
        a: UpsampleAttrs = node.attrs
        if len(node.bottoms) == 1 and all(s & (s - 1) == 0 for s in (a.scale_h, a.scale_w)):
            factor = float(a.scale_h) if a.scale_h == a.scale_w else (float(a.scale_h), float(a.scale_w))
            return call("nn.Upsample", scale_factor=factor, mode="nearest")
        given = {
            "scale_h": a.scale_h if a.scale_h != 2 and not a.out_h else None,
            "scale_w": a.scale_w if a.scale_w != 2 and not a.out_h else None,
            "upsample_h": a.out_h or None,
            "upsample_w": a.out_w or None,
            "pad_out_h": a.pad_out_h or None,
            "pad_out_w": a.pad_out_w or None,
        }
        return call(f"{NN}:SegNetUpsample", **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        """Nearest: ``Resize`` by the integer scales. Unpooling: ``MaxUnpool``, whose indices count over the
        whole tensor, so each plane's offset is added to the mask (a later hit overwrites, as in Caffe)."""
        a: UpsampleAttrs = node.attrs
        n, c, h, w = ctx.in_shape(0)
        if ctx.num_inputs == 1:
            scales = ctx.const(np.array([1, 1, a.scale_h, a.scale_w], dtype=np.float32), "scales")
            ctx.add("Resize", [ctx.input(0), "", scales], ctx.output(0), mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            return
        out_h, out_w = _upsample_size(a, h, w)
        if out_h < h or out_w < w:  # (MaxUnpool's output may not be smaller than its input, in any path)
            ctx.unsupported(f"unpooling {h}x{w} to a smaller {out_h}x{out_w}")
        if ctx.dynamic_batch:
            _unpool_sized(ctx, a)
            return
        offsets = (np.arange(n * c, dtype=np.int64) * (out_h * out_w)).reshape(n, c, 1, 1)
        index = ctx.add("Add", [ctx.add("Cast", [ctx.input(1)], to=ctx.INT64), ctx.const(offsets, "plane")])
        # a 1x1 kernel makes MaxUnpool's own size rule give the input size, which output_shape may exceed
        ctx.add("MaxUnpool", [ctx.input(0), index, ctx.ints([n, c, out_h, out_w], "shape")], ctx.output(0),
                kernel_shape=[1, 1], strides=[1, 1])




def _unpool_sized(ctx: Any, a: UpsampleAttrs) -> None:
    """Unpooling when the batch (and maybe height/width) are symbolic: the output size (``upsample_h/w``, or
    ``in * scale - pad_out``) and each plane's index offset are computed from the run-time shape."""
    x = ctx.input(0)
    nc = ctx.dims(x, 0, 2)
    if a.out_h:
        out_hw = ctx.ints([a.out_h, a.out_w], "out_hw")
    else:
        out_hw = ctx.add("Sub", [ctx.add("Mul", [ctx.dims(x, 2, 4), ctx.ints([a.scale_h, a.scale_w], "scale")]),
                                 ctx.ints([int(a.pad_out_h), int(a.pad_out_w)], "pad_out")])
    planes = ctx.reduce("ReduceProd", nc, [0], keepdims=False)
    area = ctx.reduce("ReduceProd", out_hw, [0], keepdims=False)
    offsets = ctx.add("Mul", [ctx.add("Range", [ctx.const(np.int64(0)), planes, ctx.const(np.int64(1))]), area])
    offsets = ctx.add("Reshape", [offsets, ctx.concat_ints([nc, [1, 1]], "plane_shape")])
    index = ctx.add("Add", [ctx.add("Cast", [ctx.input(1)], to=ctx.INT64), offsets])
    ctx.add("MaxUnpool", [x, index, ctx.concat_ints([nc, out_hw], "shape")], ctx.output(0),
            kernel_shape=[1, 1], strides=[1, 1])


@register
class DenseImageData(DataLayerSpec):
    type = "DenseImageData"
    family = FAMILY
    summary = "SegNet: images and label maps (N, 1, H, W) from a list of file pairs; a net input"

    def data_attrs(self, layer):
        p = layer.dense_image_data_param
        if (p.new_height > 0) != (p.new_width > 0) or (p.crop_height > 0) != (p.crop_width > 0):
            raise ValueError("dense_image_data_param: new_height/new_width and crop_height/crop_width go in pairs")
        crop = crop_size(layer)
        if crop:
            h, w = crop, crop
        elif p.crop_height:
            h, w = p.crop_height, p.crop_width
        else:
            h, w = p.new_height or None, p.new_width or None
        return DataAttrs(p.batch_size, 3 if p.is_color else 1, h, w, p.source, "image/label list")

    def label_shape(self, a):
        return (a.batch, 1, a.height, a.width)
