"""Layers of Caffe forks found in published nets: SSD (Permute, PriorBox, DetectionOutput, MultiBoxLoss,
AnnotatedData), PSPNet (Interp, BN), SegNet (Upsample, BN, DenseImageData), HED (ImageLabelmapData), Faster
R-CNN / R-FCN (ROIPooling, PSROIPooling, SmoothL1Loss), ShuffleNet (ShuffleChannel), MobileNet ports
(ConvolutionDepthwise) and SENet ports (Axpy).

Each follows its fork's own source (weiliu89/caffe ``ssd``, hszhao/PSPNet, alexgkendall/caffe-segnet,
rbgirshick/caffe-fast-rcnn ``faster-rcnn``, daijifeng001/caffe-rfcn, yonghenglh6's depthwise layer), including
its quirks: PriorBox truncates ``min_size``/``max_size`` to integers, ROIPooling rounds half away from zero
and takes the first maximum in row-major order, Interp is bilinear with aligned corners after an optional crop,
SegNet's Upsample writes later mask hits over earlier ones but sends every bottom its top's gradient.
Where a standard ONNX op has the same definition (Transpose, Resize, MaxUnpool, MaxRoiPool) the layer exports.
The torch modules are :mod:`prototxt2py.nn.forks` helpers, or stock ``nn.Upsample``/``nn.ChannelShuffle`` where
those compute exactly the fork's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..plain import Filler, plain
from .base import LayerSpec, Shape, Unknowable, call, count, register
from .conv import Convolution
from .data import DataAttrs, DataLayerSpec, ImageData, crop_size, input_hint
from .prior_boxes import prior_boxes

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "forks"
FLT_MAX = 3.4028234663852886e38


def _legacy(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``num()/channels()/height()/width()``: axes 0..3, 1 where the blob has fewer axes."""
    if len(shape) > 4:
        raise ValueError(f"a {len(shape)}-axis blob has no num/channels/height/width")
    return tuple(shape[i] if i < len(shape) else 1 for i in range(4))  # type: ignore[return-value]


# =========================================================================================================
# SSD: Permute, PriorBox, DetectionOutput, MultiBoxLoss, AnnotatedData
# =========================================================================================================
def _permute_order(node: Node, spec: LayerSpec, ndim: int) -> tuple[int, ...]:
    """SSD's rule: the listed axes first, then every unlisted axis in increasing order."""
    given = list(node.attrs.order)
    if any(o >= ndim for o in given):
        raise spec.fail(node, f"permute order {given} names an axis >= {ndim}")
    if len(set(given)) != len(given):
        raise spec.fail(node, f"permute order {given} repeats an axis")
    return (*given, *(i for i in range(ndim) if i not in given))


@register
class Permute(LayerSpec):
    type = "Permute"
    family = FAMILY
    summary = "transpose axes (SSD): permute_param.order, unlisted axes follow in their order"

    def infer_shapes(self, node, in_shapes):
        shape = in_shapes[0]
        return [tuple(shape[o] for o in _permute_order(node, self, len(shape)))]

    def module(self, node):
        return call("Permute", _permute_order(node, self, len(node.in_shapes[0])))

    def to_onnx(self, node, ctx):
        perm = _permute_order(node, self, len(ctx.in_shape(0)))
        ctx.add("Transpose", [ctx.input(0)], ctx.output(0), perm=list(perm))


@dataclass(frozen=True)
class PriorBoxAttrs:
    min_sizes: tuple[int, ...]  # the SSD layer truncates sizes to int when it draws the boxes
    max_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]  # 1 first, duplicates dropped, 1/ar after ar with flip (float32 values)
    clip: bool
    variance: tuple[float, ...]  # one value for all coordinates, or four
    img_h: int  # 0: from bottom 1
    img_w: int
    step_h: float  # 0: image size / feature map size
    step_w: float
    offset: float
    reduce_boxes: bool  # MobileNet-SSD: the first box of each min_size is min_size / 2
    unsupported: tuple[str, ...]  # OpenCV's explicit box fields

    @property
    def num_priors(self) -> int:
        return len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)


def _f32(v: float) -> float:
    """``v`` rounded to a float32 value, as the fork keeps it."""
    return float(np.float32(v))


def _prior_box_attrs(p: Any) -> PriorBoxAttrs:
    """SSD's ``PriorBoxLayer::LayerSetUp`` checks and derived lists, from the plain ``prior_box_param``."""
    if not p.min_size or any(m <= 0 for m in p.min_size):
        raise ValueError("prior_box_param needs positive min_size values")
    if p.max_size:
        if len(p.max_size) != len(p.min_size):
            raise ValueError(f"{len(p.max_size)} max_size for {len(p.min_size)} min_size values (must match)")
        if any(mx <= mn for mn, mx in zip(p.min_size, p.max_size, strict=True)):
            raise ValueError("every max_size must be greater than its min_size")
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(ar)
            if p.flip:
                ratios.append(_f32(1.0 / ar))
    if len(p.variance) > 1 and len(p.variance) != 4:
        raise ValueError(f"prior_box_param needs 1 or 4 variance values, got {len(p.variance)}")
    if any(v <= 0 for v in p.variance):
        raise ValueError("variance values must be positive")
    if p.has("img_h") or p.has("img_w"):
        if p.has("img_size"):
            raise ValueError("give either img_size or img_h/img_w, not both")
        img_h, img_w = p.img_h, p.img_w
        if img_h <= 0 or img_w <= 0:
            raise ValueError("img_h and img_w must both be positive")
    elif p.has("img_size"):
        if p.img_size <= 0:
            raise ValueError("img_size must be positive")
        img_h = img_w = p.img_size
    else:
        img_h = img_w = 0
    if p.has("step_h") or p.has("step_w"):
        if p.has("step"):
            raise ValueError("give either step or step_h/step_w, not both")
        step_h, step_w = p.step_h, p.step_w
        if step_h <= 0 or step_w <= 0:
            raise ValueError("step_h and step_w must both be positive")
    elif p.has("step"):
        if p.step <= 0:
            raise ValueError("step must be positive")
        step_h = step_w = p.step
    else:
        step_h = step_w = 0.0
    return PriorBoxAttrs(
        min_sizes=tuple(int(m) for m in p.min_size),
        max_sizes=tuple(int(m) for m in p.max_size),
        aspect_ratios=tuple(ratios),
        clip=p.clip,
        variance=tuple(p.variance) or (0.1,),
        img_h=img_h,
        img_w=img_w,
        step_h=step_h,
        step_w=step_w,
        offset=p.offset,
        reduce_boxes=p.reduce_boxes,
        unsupported=tuple(f for f in ("offset_h", "offset_w", "width", "height") if getattr(p, f)),
    )


@register
class PriorBox(LayerSpec):
    type = "PriorBox"
    bottoms = (1, 2)
    family = FAMILY
    summary = "SSD default boxes (1, 2, H*W*num_priors*4) from min/max sizes, aspect ratios, flip, clip, step"

    def attrs(self, layer):
        return _prior_box_attrs(plain(layer.prior_box_param))

    def infer_shapes(self, node, in_shapes):
        a: PriorBoxAttrs = node.attrs
        if a.unsupported:
            raise Unknowable(f"PriorBox with OpenCV's {'/'.join(a.unsupported)} fields is not supported")
        if not a.img_h and len(in_shapes) < 2:
            raise self.fail(node, "PriorBox needs the image blob as bottom 1 unless img_size or img_h/img_w is set")
        _, _, h, w = _legacy(in_shapes[0])
        return [(1, 2, h * w * a.num_priors * 4)]

    def module(self, node):
        a: PriorBoxAttrs = node.attrs
        if a.unsupported:
            raise ValueError(f"PriorBox with OpenCV's {'/'.join(a.unsupported)} fields is not supported")
        given = {
            "max_sizes": a.max_sizes or None,
            "aspect_ratios": a.aspect_ratios if a.aspect_ratios != (1.0,) else None,
            "clip": a.clip or None,
            "variance": a.variance if a.variance != (0.1,) else None,
            "img_h": a.img_h or None,
            "img_w": a.img_w or None,
            "step_h": a.step_h or None,
            "step_w": a.step_w or None,
            "offset": a.offset if a.offset != 0.5 else None,
            "reduce_boxes": a.reduce_boxes or None,
        }
        return call("PriorBox", a.min_sizes, **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        """The boxes depend on the bottoms' sizes only, which the export fixes: a constant (computed by the
        runtime module's arithmetic, in numpy)."""
        a: PriorBoxAttrs = node.attrs
        _, _, h, w = _legacy(ctx.in_shape(0))
        img_h, img_w = (a.img_h, a.img_w) if a.img_h else _legacy(ctx.in_shape(1))[2:]
        priors = prior_boxes(a, h, w, img_h, img_w)  # numpy: the export never imports torch
        ctx.identity(ctx.const(priors, "priors"), ctx.output(0))


@dataclass(frozen=True)
class DetectionOutputAttrs:
    num_classes: int
    share_location: bool
    background_label_id: int
    code_type: str  # PriorBoxParameter.CodeType: "CORNER", "CENTER_SIZE" or "CORNER_SIZE"
    variance_encoded_in_target: bool
    keep_top_k: int
    confidence_threshold: float  # -FLT_MAX when unset: every score passes
    nms_threshold: float
    eta: float
    top_k: int  # -1: no limit

    @property
    def num_loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes


@register
class DetectionOutput(LayerSpec):
    type = "DetectionOutput"
    bottoms = (3, 4)
    family = FAMILY
    summary = "SSD detections (1, 1, kept, 7): decode loc against priors, per-class NMS, keep_top_k; dynamic size"

    def attrs(self, layer):
        p = plain(layer.detection_output_param)
        if not p.has("num_classes"):
            raise ValueError("detection_output_param.num_classes is required")
        nms = p.nms_param
        if nms.nms_threshold < 0 or not 0 < nms.eta <= 1:
            raise ValueError("nms_threshold must be >= 0 and eta in (0, 1]")
        return DetectionOutputAttrs(
            num_classes=p.num_classes,
            share_location=p.share_location,
            background_label_id=p.background_label_id,
            code_type=p.code_type,
            variance_encoded_in_target=p.variance_encoded_in_target,
            keep_top_k=p.keep_top_k,
            confidence_threshold=p.confidence_threshold if p.has("confidence_threshold") else -FLT_MAX,
            nms_threshold=nms.nms_threshold,
            eta=nms.eta,
            top_k=nms.top_k if nms.has("top_k") else -1,
        )

    def infer_shapes(self, node, in_shapes):
        a: DetectionOutputAttrs = node.attrs
        loc, conf, prior = in_shapes[:3]
        if loc[0] != conf[0]:
            raise self.fail(node, f"loc {tuple(loc)} and conf {tuple(conf)} must have the same batch size")
        num_priors = _legacy(prior)[2] // 4
        if _legacy(loc)[1] != num_priors * a.num_loc_classes * 4:
            raise self.fail(node, f"loc has {_legacy(loc)[1]} channels, need {num_priors} priors x "
                                  f"{a.num_loc_classes} x 4")
        if _legacy(conf)[1] != num_priors * a.num_classes:
            raise self.fail(node, f"conf has {_legacy(conf)[1]} channels, need {num_priors} priors x "
                                  f"{a.num_classes} classes")
        most = f"at most keep_top_k={a.keep_top_k} per image" if a.keep_top_k > -1 else "no keep_top_k limit"
        raise Unknowable(f"DetectionOutput keeps a data-dependent number of boxes after NMS ({most}): top is "
                         f"(1, 1, kept, 7)")

    def module(self, node):
        a: DetectionOutputAttrs = node.attrs
        given = {
            "share_location": None if a.share_location else False,
            "background_label_id": a.background_label_id or None,
            "code_type": None if a.code_type == "CORNER" else a.code_type,
            "variance_encoded_in_target": a.variance_encoded_in_target or None,
            "keep_top_k": None if a.keep_top_k == -1 else a.keep_top_k,
            "confidence_threshold": None if a.confidence_threshold == -FLT_MAX else a.confidence_threshold,
            "nms_threshold": a.nms_threshold,
            "eta": None if a.eta == 1.0 else a.eta,
            "top_k": None if a.top_k == -1 else a.top_k,
        }
        return call("DetectionOutput", a.num_classes, **{k: v for k, v in given.items() if v is not None})


@register
class MultiBoxLoss(LayerSpec):
    type = "MultiBoxLoss"
    bottoms = (4, 4)
    is_loss = True
    family = FAMILY
    summary = "SSD training loss (matching, hard negative mining): shapes only, no backend"

    def infer_shapes(self, node, in_shapes):
        p = node.attrs
        loc, conf, prior = in_shapes[:3]
        num_priors = _legacy(prior)[2] // 4
        loc_classes = 1 if p.share_location else p.num_classes
        if _legacy(loc)[1] != num_priors * loc_classes * 4 or _legacy(conf)[1] != num_priors * p.num_classes:
            raise self.fail(node, f"loc {tuple(loc)} / conf {tuple(conf)} do not match {num_priors} priors and "
                                  f"{p.num_classes} classes")
        return [()]


@register
class AnnotatedData(DataLayerSpec):
    type = "AnnotatedData"
    family = FAMILY
    tops = (1, 2)
    summary = "SSD: images + boxes from an LMDB of AnnotatedDatum (data_param, resize_param); a net input"

    def data_attrs(self, layer):
        p = layer.data_param
        r = layer.transform_param.resize_param
        crop = crop_size(layer)
        if crop:
            h, w = crop, crop
        elif r.resize_mode == r.WARP:  # other modes keep the aspect ratio: the size depends on the image
            h, w = r.height or None, r.width or None
        else:
            h = w = None
        return DataAttrs(p.batch_size, None, h, w, p.source, "LMDB of AnnotatedDatum")

    def infer_shapes(self, node, in_shapes):
        a: DataAttrs = node.attrs
        hint = f"--input {node.tops[0]}={input_hint((a.batch, a.channels, a.height, a.width))}"
        if len(node.tops) > 1:
            raise Unknowable(f"layer reads {a.source} (LMDB of AnnotatedDatum), its label top holds a data-dependent "
                             f"number of boxes (1, 1, B, 8); give {hint} --input {node.tops[1]}=1,1,B,8")
        return super().infer_shapes(node, in_shapes)


# =========================================================================================================
# PSPNet / DeepLab: Interp
# =========================================================================================================
@dataclass(frozen=True)
class InterpAttrs:
    rule: str  # "shrink", "zoom", "size" or "shrink_zoom": which fields decide (Caffe's order of tests)
    height: int
    width: int
    zoom: int
    shrink: int
    pad_beg: int  # <= 0: crop
    pad_end: int


def _interp_size(a: InterpAttrs, h_in: int, w_in: int) -> tuple[int, int, int, int]:
    """(effective input h, w after cropping, output h, w), PSPNet's ``InterpLayer::Reshape``."""
    h_eff, w_eff = h_in + a.pad_beg + a.pad_end, w_in + a.pad_beg + a.pad_end
    if a.rule == "size":
        h, w = a.height, a.width
    else:
        h, w = h_eff, w_eff
        if a.rule in ("shrink", "shrink_zoom"):
            h, w = (h - 1) // a.shrink + 1, (w - 1) // a.shrink + 1
        if a.rule in ("zoom", "shrink_zoom"):
            h, w = h + (h - 1) * (a.zoom - 1), w + (w - 1) * (a.zoom - 1)
    return h_eff, w_eff, h, w


@register
class Interp(LayerSpec):
    type = "Interp"
    family = FAMILY
    summary = "bilinear resize, aligned corners (PSPNet/DeepLab): height/width, zoom_factor, shrink_factor, crop"

    def attrs(self, layer):
        p = plain(layer.interp_param)
        if p.pad_beg > 0 or p.pad_end > 0:
            raise ValueError("Interp only supports pad_beg/pad_end <= 0 (cropping)")
        shrink, zoom = p.has("shrink_factor"), p.has("zoom_factor")
        if shrink and not zoom:
            rule = "shrink"
        elif zoom and not shrink:
            rule = "zoom"
        elif p.has("height") and p.has("width"):
            rule = "size"
        elif shrink and zoom:
            rule = "shrink_zoom"
        else:
            raise ValueError("interp_param needs zoom_factor, shrink_factor, or height and width")
        if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
            raise ValueError("zoom_factor and shrink_factor must be >= 1")
        return InterpAttrs(rule, p.height, p.width, p.zoom_factor, p.shrink_factor, p.pad_beg, p.pad_end)

    def infer_shapes(self, node, in_shapes):
        if len(in_shapes[0]) != 4:  # Caffe would read it as (num, channels, height, width), 1 for missing axes;
            # no real net feeds Interp anything but an image blob, and the runtime/ONNX forms need 4 axes
            raise self.fail(node, f"Interp needs a 4-axis (N, C, H, W) bottom, got shape {tuple(in_shapes[0])}")
        n, c, h_in, w_in = _legacy(in_shapes[0])
        h_eff, w_eff, h, w = _interp_size(node.attrs, h_in, w_in)
        if min(h_eff, w_eff, h, w) <= 0:
            raise self.fail(node, f"Interp of {h_in}x{w_in} gives input {h_eff}x{w_eff}, output {h}x{w}: "
                                  "sizes must be positive")
        return [(n, c, h, w)]

    def macs(self, node, in_shapes, out_shapes):
        return 4 * count(out_shapes[0])

    def module(self, node):
        """``nn.Upsample`` (bilinear, aligned corners) to a fixed size without a crop; else :class:`Interp`,
        which crops and derives the size from the input's."""
        a: InterpAttrs = node.attrs
        if a.rule == "size" and a.pad_beg == a.pad_end == 0:
            return call("nn.Upsample", size=(a.height, a.width), mode="bilinear", align_corners=True)
        given = {
            "size": (a.height, a.width) if a.rule == "size" else None,
            "zoom_factor": a.zoom if a.rule in ("zoom", "shrink_zoom") and a.zoom != 1 else None,
            "shrink_factor": a.shrink if a.rule in ("shrink", "shrink_zoom") and a.shrink != 1 else None,
            "pad_beg": a.pad_beg or None,
            "pad_end": a.pad_end or None,
        }
        return call("Interp", **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        """Slice (the crop), then ``Resize`` linear with ``align_corners`` (a 1-pixel output reads pixel 0)."""
        a: InterpAttrs = node.attrs
        n, c, h_in, w_in = _legacy(ctx.in_shape(0))
        h_eff, w_eff, h, w = _interp_size(a, h_in, w_in)
        x = ctx.input(0)
        if (h_eff, w_eff) != (h_in, w_in):
            x = ctx.slice(x, [-a.pad_beg] * 2, [-a.pad_beg + h_eff, -a.pad_beg + w_eff], [2, 3])
        ctx.add("Resize", [x, "", "", _onnx_sizes(ctx, x, (h, w))], ctx.output(0), mode="linear",
                coordinate_transformation_mode="align_corners")


def _onnx_sizes(ctx: Any, x: str, hw: tuple[int, int]) -> str:
    """``Resize``'s sizes input: N and C of ``x`` (read at run time with a dynamic batch), then ``hw``."""
    if not ctx.dynamic_batch:
        return ctx.ints([*ctx.in_shape(0)[:2], *hw], "sizes")
    nc = ctx.slice(ctx.add("Shape", [x]), [0], [2], [0])
    return ctx.add("Concat", [nc, ctx.ints(hw, "hw")], axis=0)


# =========================================================================================================
# SegNet / YOLO: Upsample
# =========================================================================================================
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
        return call("SegNetUpsample", **{k: v for k, v in given.items() if v is not None})

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
        if ctx.dynamic_batch:
            ctx.unsupported("unpooling indices need a fixed batch size")
        out_h, out_w = _upsample_size(a, h, w)
        offsets = (np.arange(n * c, dtype=np.int64) * (out_h * out_w)).reshape(n, c, 1, 1)
        index = ctx.add("Add", [ctx.add("Cast", [ctx.input(1)], to=ctx.INT64), ctx.const(offsets, "plane")])
        if out_h < h or out_w < w:
            ctx.unsupported(f"unpooling {h}x{w} to a smaller {out_h}x{out_w}")
        # a 1x1 kernel makes MaxUnpool's own size rule give the input size, which output_shape may exceed
        ctx.add("MaxUnpool", [ctx.input(0), index, ctx.ints([n, c, out_h, out_w], "shape")], ctx.output(0),
                kernel_shape=[1, 1], strides=[1, 1])


# =========================================================================================================
# Faster R-CNN / R-FCN: ROIPooling, PSROIPooling, SmoothL1Loss
# =========================================================================================================
def _check_rois(spec: LayerSpec, node: Node, rois: Shape) -> int:
    if not rois or count(rois, 1) < 5:
        raise spec.fail(node, f"rois {tuple(rois)} need 5 values per ROI (batch index, x1, y1, x2, y2)")
    return rois[0]


@register
class ROIPooling(LayerSpec):
    type = "ROIPooling"
    bottoms = (2, 2)
    family = FAMILY
    summary = "Fast R-CNN ROI max pooling to (num_rois, C, pooled_h, pooled_w); rois are (batch, x1, y1, x2, y2)"

    def attrs(self, layer):
        p = plain(layer.roi_pooling_param)
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise ValueError("roi_pooling_param.pooled_h and pooled_w must be > 0")
        return p

    def infer_shapes(self, node, in_shapes):
        _, c, _, _ = _legacy(in_shapes[0])
        return [(_check_rois(self, node, in_shapes[1]), c, node.attrs.pooled_h, node.attrs.pooled_w)]

    def module(self, node):
        p = node.attrs
        return call("ROIPooling", p.pooled_h, p.pooled_w, p.spatial_scale)

    def to_onnx(self, node, ctx):
        """ONNX's ``MaxRoiPool`` is Fast R-CNN's layer (rounded corners, floor/ceil bins, empty bins 0)."""
        p = node.attrs
        rois = ctx.input(1)
        if len(ctx.in_shape(1)) != 2 or ctx.in_shape(1)[1] != 5:
            rois = ctx.reshape(rois, ctx.in_shape(1), [ctx.in_shape(1)[0], -1])
            rois = ctx.slice(rois, [0], [5], [1])
        ctx.add("MaxRoiPool", [ctx.input(0), rois], ctx.output(0), pooled_shape=[p.pooled_h, p.pooled_w],
                spatial_scale=p.spatial_scale)


@register
class PSROIPooling(LayerSpec):
    type = "PSROIPooling"
    bottoms = (2, 2)
    family = FAMILY
    summary = "R-FCN position-sensitive ROI average pooling to (num_rois, output_dim, group_size, group_size)"

    def attrs(self, layer):
        p = plain(layer.psroi_pooling_param)
        if p.output_dim <= 0 or p.group_size <= 0:
            raise ValueError("psroi_pooling_param.output_dim and group_size must be > 0")
        return p

    def infer_shapes(self, node, in_shapes):
        p = node.attrs
        _, c, _, _ = _legacy(in_shapes[0])
        if c != p.output_dim * p.group_size**2:
            raise self.fail(node, f"input has {c} channels, need output_dim x group_size^2 = "
                                  f"{p.output_dim * p.group_size**2}")
        return [(_check_rois(self, node, in_shapes[1]), p.output_dim, p.group_size, p.group_size)]

    def module(self, node):
        p = node.attrs
        return call("PSROIPooling", p.output_dim, p.group_size, p.spatial_scale)


@register
class SmoothL1Loss(LayerSpec):
    type = "SmoothL1Loss"
    bottoms = (2, 4)
    is_loss = True
    family = FAMILY
    summary = "Faster R-CNN smooth L1 (sigma), optional inside/outside weights (4 bottoms), divided by num"

    def infer_shapes(self, node, in_shapes):
        if len(in_shapes) == 3:
            raise self.fail(node, "SmoothL1Loss takes 2 bottoms, or 4 with both inside and outside weights")
        first = _legacy(in_shapes[0])
        for i, s in enumerate(in_shapes[1:], 1):
            if _legacy(s)[1:] != first[1:] or (i == 1 and s[0] != first[0]):
                raise self.fail(node, f"bottom {i} {tuple(s)} does not match bottom 0 {tuple(in_shapes[0])}")
        return [()]

    def module(self, node):
        sigma = node.attrs.sigma
        return call("SmoothL1Loss", **({} if sigma == 1.0 else {"sigma": sigma}))


# =========================================================================================================
# PSPNet / SegNet: BN
# =========================================================================================================
_PSPNET_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")


@dataclass(frozen=True)
class BNAttrs:
    pspnet: bool  # PSPNet's 4-blob layer; else SegNet's 2-blob layer
    learn: bool  # SegNet bn_mode LEARN (batch statistics in every phase)
    frozen: bool  # PSPNet: stored statistics, no parameter gradients
    momentum: float
    eps: float
    scale_filler: Filler | None
    shift_filler: Filler | None


@register
class BN(LayerSpec):
    type = "BN"
    tops = (1, 3)
    family = FAMILY
    blob_names = ("scale", "shift", "mean", "variance")
    summary = "fork batch norm: SegNet (scale, shift; bn_mode) or PSPNet (+ mean, variance; frozen, eps)"

    def attrs(self, layer):
        p = plain(layer.bn_param)
        pspnet = any(p.has(f) for f in _PSPNET_BN_FIELDS) or len(layer.param) in (3, 4)
        learn = not pspnet and p.bn_mode == "LEARN"
        if len(layer.top) > (3 if learn else 1):
            raise ValueError("only SegNet's BN in LEARN mode has extra tops (batch mean and variance)")

        def given(name: str) -> Filler | None:
            return getattr(p, name) if p.has(name) else None

        return BNAttrs(pspnet, learn, p.frozen, p.momentum, p.eps,
                       given("slope_filler" if pspnet else "scale_filler"),
                       given("bias_filler" if pspnet else "shift_filler"))

    def infer_shapes(self, node, in_shapes):
        x = in_shapes[0]
        if len(x) < 2:
            raise self.fail(node, f"BN needs a channel axis, got {tuple(x)}")
        stat = (1, x[1], 1, 1)
        return [tuple(x), stat, stat][: len(node.tops)]

    def param_shapes(self, node, in_shapes):
        stat = (1, in_shapes[0][1], 1, 1)
        return [stat] * (4 if node.attrs.pspnet else 2)

    def macs(self, node, in_shapes, out_shapes):
        return 2 * count(in_shapes[0])

    def module(self, node):
        a: BNAttrs = node.attrs
        channels = node.param_shapes[0][1]
        if a.pspnet:
            given = {"frozen": a.frozen or None, "momentum": a.momentum, "eps": a.eps}
            return call("PSPNetBN", channels, **{k: v for k, v in given.items() if v is not None})
        given = {"learn": a.learn or None, "num_tops": len(node.tops) if len(node.tops) > 1 else None}
        return call("SegNetBN", channels, **{k: v for k, v in given.items() if v is not None})

    def fillers(self, node):
        """scale, shift by the layer's fillers; PSPNet's variance starts at 1 when frozen (else 0)."""
        a: BNAttrs = node.attrs
        stats = [None, Filler(type="constant", value=1.0) if a.frozen else None]
        return [a.scale_filler, a.shift_filler, *(stats if a.pspnet else [])]

    def to_onnx(self, node, ctx):
        """Inference forms only: SegNet's ``x * scale + shift``, PSPNet's stored statistics (TEST or frozen)
        as ``(x - mean) * (var + eps)^-0.5 * scale + shift``, the inverse std computed in float32 as Caffe."""
        a: BNAttrs = node.attrs
        if a.learn or (a.pspnet and ctx.training and not a.frozen):
            ctx.unsupported("BN normalising with batch statistics (SegNet LEARN mode, PSPNet TRAIN unfrozen)")
        rank = len(ctx.in_shape(0))

        def per_channel(array: np.ndarray, hint: str) -> str:
            return ctx.broadcast_const(array.reshape(-1), 1, rank, hint)

        x = ctx.input(0)
        if a.pspnet:
            var = ctx.param(3).astype(np.float32)
            inv_std = np.power(var + np.float32(a.eps), np.float32(-0.5), dtype=np.float32)
            x = ctx.add("Sub", [x, per_channel(ctx.param(2), "mean")])
            x = ctx.add("Mul", [x, per_channel(inv_std, "inv_std")])
        x = ctx.add("Mul", [x, per_channel(ctx.param(0), "scale")])
        ctx.add("Add", [x, per_channel(ctx.param(1), "shift")], ctx.output(0))


# =========================================================================================================
# ShuffleNet, MobileNet ports, SENet ports: ShuffleChannel, ConvolutionDepthwise, Axpy
# =========================================================================================================
@register
class ShuffleChannel(LayerSpec):
    type = "ShuffleChannel"
    family = FAMILY
    summary = "ShuffleNet channel shuffle: (g, C/g) channel grid transposed (shuffle_channel_param.group)"

    def infer_shapes(self, node, in_shapes):
        x = in_shapes[0]
        g = node.attrs.group
        if len(x) < 2 or g <= 0 or x[1] % g:
            raise self.fail(node, f"channels of {tuple(x)} not divisible by group {g}")
        return [tuple(x)]

    def module(self, node):
        """``nn.ChannelShuffle`` (the same grid transpose) where it accepts the blob: more than two axes."""
        if len(node.in_shapes[0]) > 2:
            return call("nn.ChannelShuffle", node.attrs.group)
        return call("ShuffleChannel", node.attrs.group)

    def to_onnx(self, node, ctx):
        shape = ctx.in_shape(0)
        g = node.attrs.group
        grid = [shape[0], g, shape[1] // g, *shape[2:]]
        x = ctx.reshape(ctx.input(0), shape, grid)
        x = ctx.add("Transpose", [x], perm=[0, 2, 1, *range(3, len(grid))])
        ctx.reshape(x, [shape[0], shape[1] // g, g, *shape[2:]], shape, ctx.output(0))


@register
class ConvolutionDepthwise(Convolution):
    """One filter per input channel: Convolution with ``group = num_output = C_in`` (the fork ignores
    ``num_output`` and ``group``); weight ``(C, 1, kh, kw)``."""

    type = "ConvolutionDepthwise"
    aliases = ("DepthwiseConvolution",)
    bottoms = (1, 1)
    tops = (1, 1)
    family = FAMILY
    summary = "depthwise convolution (MobileNet ports): Convolution with group = num_output = input channels"

    def attrs(self, layer):
        if layer.convolution_param.num_output <= 0:  # the fork never reads num_output; the conv attrs need one
            copy = type(layer)()
            copy.CopyFrom(layer)
            copy.convolution_param.num_output = 1
            layer = copy
        return super().attrs(layer)

    def _grouped(self, node: Node, shape: Sequence[int]) -> Node:
        """The node as the Convolution it is: ``group = num_output = `` the input's channels."""
        c = shape[self.geometry(node, shape)[0]]
        return replace(node, attrs=replace(node.attrs, group=c, num_output=c))

    def infer_shapes(self, node, in_shapes):
        return super().infer_shapes(self._grouped(node, in_shapes[0]), in_shapes)

    def param_shapes(self, node, in_shapes):
        return super().param_shapes(self._grouped(node, in_shapes[0]), in_shapes)

    def macs(self, node, in_shapes, out_shapes):
        return super().macs(self._grouped(node, in_shapes[0]), in_shapes, out_shapes)

    def to_onnx(self, node, ctx):
        return super().to_onnx(self._grouped(node, ctx.in_shape(0)), ctx)

    def plain_convolution(self, node, in_shape):
        return super().plain_convolution(self._grouped(node, in_shape), in_shape)

    def module(self, node):
        c = node.param_shapes[0][0]  # weight (C, 1, kh, kw)
        return super().module(replace(node, attrs=replace(node.attrs, group=c, num_output=c)))


@register
class Axpy(LayerSpec):
    type = "Axpy"
    bottoms = (3, 3)
    family = FAMILY
    summary = "a * x + y with a per-channel scale a (N, C, 1, 1) (SENet ports)"

    def infer_shapes(self, node, in_shapes):
        a, x, y = in_shapes
        if len(x) < 2 or len(a) < 2 or tuple(a[:2]) != tuple(x[:2]) or count(a) != x[0] * x[1]:
            raise self.fail(node, f"scale {tuple(a)} must be (N, C, 1, 1) for x {tuple(x)}")
        if tuple(y) != tuple(x):
            raise self.fail(node, f"y {tuple(y)} must have the shape of x {tuple(x)}")
        return [tuple(x)]

    def macs(self, node, in_shapes, out_shapes):
        return count(out_shapes[0])

    def module(self, node):
        return call("Axpy")

    def to_onnx(self, node, ctx):
        a_shape, x_shape = ctx.in_shape(0), ctx.in_shape(1)
        scale = ctx.reshape(ctx.input(0), a_shape, [*x_shape[:2], *([1] * (len(x_shape) - 2))])
        ctx.add("Add", [ctx.add("Mul", [scale, ctx.input(1)]), ctx.input(2)], ctx.output(0))


# =========================================================================================================
# SegNet, HED: DenseImageData, ImageLabelmapData
# =========================================================================================================
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


@register
class ImageLabelmapData(ImageData):
    type = "ImageLabelmapData"
    family = FAMILY
    summary = "HED: images and edge maps (N, 1, H, W) from a list of file pairs (image_data_param); a net input"

    def label_shape(self, a):
        return (a.batch, 1, a.height, a.width)
