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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import LayerSpec, Shape, Unknowable, count, register
from .conv import Convolution
from .data import DataAttrs, DataLayerSpec, ImageData, crop_size, input_hint
from .torch_util import CaffeLayer, filler_of

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "forks"
FLT_MAX = 3.4028234663852886e38


def _legacy(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``num()/channels()/height()/width()``: axes 0..3, 1 where the blob has fewer axes."""
    if len(shape) > 4:
        raise ValueError(f"a {len(shape)}-axis blob has no num/channels/height/width")
    return tuple(shape[i] if i < len(shape) else 1 for i in range(4))  # type: ignore[return-value]


def _round_half_away(t: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    t = t.double()
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


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


class _Permute(CaffeLayer):
    def __init__(self, node: Node):
        super().__init__()
        self._node = node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        order = _permute_order(self._node, self._node.spec, x.dim())
        return x.permute(order).contiguous()


@register
class Permute(LayerSpec):
    type = "Permute"
    family = FAMILY
    summary = "transpose axes (SSD): permute_param.order, unlisted axes follow in their order"

    def infer_shapes(self, node, in_shapes):
        shape = in_shapes[0]
        return [tuple(shape[o] for o in _permute_order(node, self, len(shape)))]

    def build_torch(self, node):
        return _Permute(node)

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
    return float(torch.tensor(v, dtype=torch.float32))


def _prior_box_attrs(p: Any) -> PriorBoxAttrs:
    """SSD's ``PriorBoxLayer::LayerSetUp`` checks and derived lists."""
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
    if p.HasField("img_h") or p.HasField("img_w"):
        if p.HasField("img_size"):
            raise ValueError("give either img_size or img_h/img_w, not both")
        img_h, img_w = p.img_h, p.img_w
        if img_h <= 0 or img_w <= 0:
            raise ValueError("img_h and img_w must both be positive")
    elif p.HasField("img_size"):
        if p.img_size <= 0:
            raise ValueError("img_size must be positive")
        img_h = img_w = p.img_size
    else:
        img_h = img_w = 0
    if p.HasField("step_h") or p.HasField("step_w"):
        if p.HasField("step"):
            raise ValueError("give either step or step_h/step_w, not both")
        step_h, step_w = p.step_h, p.step_w
        if step_h <= 0 or step_w <= 0:
            raise ValueError("step_h and step_w must both be positive")
    elif p.HasField("step"):
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


def prior_boxes(a: PriorBoxAttrs, layer_h: int, layer_w: int, img_h: int, img_w: int) -> torch.Tensor:
    """SSD's PriorBox output ``(1, 2, layer_h * layer_w * num_priors * 4)``: normalised corner boxes
    ``(xmin, ymin, xmax, ymax)`` for every cell (row-major) and prior, then their variances.

    Precision follows the layer: box sizes and centres are float32 values, edges are computed in double.
    """
    sizes = []  # (width, height) per prior, in Caffe's order
    for s, m in enumerate(a.min_sizes):
        first = m / 2.0 if a.reduce_boxes else float(m)
        sizes.append((first, first))
        if a.max_sizes:
            side = math.sqrt(m * a.max_sizes[s])
            sizes.append((side, side))
        sizes.extend((m * math.sqrt(ar), m / math.sqrt(ar)) for ar in a.aspect_ratios if abs(ar - 1.0) >= 1e-6)
    wh = torch.tensor(sizes, dtype=torch.float32).double()  # (P, 2)
    f32 = torch.float32
    if a.step_w:
        step_w, step_h = torch.tensor(a.step_w, dtype=f32), torch.tensor(a.step_h, dtype=f32)
    else:  # float(image size) / feature map size, in float
        step_w, step_h = torch.tensor(img_w, dtype=f32) / layer_w, torch.tensor(img_h, dtype=f32) / layer_h
    offset = torch.tensor(a.offset, dtype=f32)
    cx = ((torch.arange(layer_w, dtype=f32) + offset) * step_w).double().view(1, layer_w, 1)
    cy = ((torch.arange(layer_h, dtype=f32) + offset) * step_h).double().view(layer_h, 1, 1)
    half_w, half_h = wh[:, 0] / 2.0, wh[:, 1] / 2.0
    boxes = torch.stack(
        torch.broadcast_tensors((cx - half_w) / img_w, (cy - half_h) / img_h, (cx + half_w) / img_w,
                                (cy + half_h) / img_h), dim=-1).to(f32)  # (H, W, P, 4)
    if a.clip:
        boxes = boxes.clamp(0.0, 1.0)
    variance = torch.tensor(a.variance, dtype=f32).expand(boxes.shape[:-1] + (4,)) if len(a.variance) == 4 \
        else torch.full(boxes.shape, a.variance[0], dtype=f32)
    return torch.stack([boxes.reshape(-1), variance.reshape(-1)]).unsqueeze(0)


class _PriorBox(CaffeLayer):
    """Deterministic boxes from the bottoms' sizes only (no gradient, as in Caffe)."""

    def __init__(self, a: PriorBoxAttrs):
        super().__init__()
        self.a = a

    def forward(self, feature: torch.Tensor, *image: torch.Tensor) -> torch.Tensor:
        _, _, layer_h, layer_w = _legacy(feature.shape)
        if self.a.img_h:
            img_h, img_w = self.a.img_h, self.a.img_w
        else:
            _, _, img_h, img_w = _legacy(image[0].shape)
        return prior_boxes(self.a, layer_h, layer_w, img_h, img_w).to(feature.device)


@register
class PriorBox(LayerSpec):
    type = "PriorBox"
    bottoms = (1, 2)
    family = FAMILY
    summary = "SSD default boxes (1, 2, H*W*num_priors*4) from min/max sizes, aspect ratios, flip, clip, step"

    def attrs(self, layer):
        return _prior_box_attrs(layer.prior_box_param)

    def infer_shapes(self, node, in_shapes):
        a: PriorBoxAttrs = node.attrs
        if a.unsupported:
            raise Unknowable(f"PriorBox with OpenCV's {'/'.join(a.unsupported)} fields is not supported")
        if not a.img_h and len(in_shapes) < 2:
            raise self.fail(node, "PriorBox needs the image blob as bottom 1 unless img_size or img_h/img_w is set")
        _, _, h, w = _legacy(in_shapes[0])
        return [(1, 2, h * w * a.num_priors * 4)]

    def build_torch(self, node):
        if node.attrs.unsupported:
            raise ValueError(f"PriorBox with OpenCV's {'/'.join(node.attrs.unsupported)} fields is not supported")
        return _PriorBox(node.attrs)

    def to_onnx(self, node, ctx):
        """The boxes depend on the bottoms' sizes only, which the export fixes: a constant."""
        a: PriorBoxAttrs = node.attrs
        _, _, h, w = _legacy(ctx.in_shape(0))
        img_h, img_w = (a.img_h, a.img_w) if a.img_h else _legacy(ctx.in_shape(1))[2:]
        ctx.identity(ctx.const(prior_boxes(a, h, w, img_h, img_w).numpy(), "priors"), ctx.output(0))


@dataclass(frozen=True)
class DetectionOutputAttrs:
    num_classes: int
    share_location: bool
    background_label_id: int
    code_type: int  # PriorBoxParameter.CodeType: 1 CORNER, 2 CENTER_SIZE, 3 CORNER_SIZE
    variance_encoded_in_target: bool
    keep_top_k: int
    confidence_threshold: float  # -FLT_MAX when unset: every score passes
    nms_threshold: float
    eta: float
    top_k: int  # -1: no limit

    @property
    def num_loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes


def _decode_boxes(a: DetectionOutputAttrs, loc: torch.Tensor, prior: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """SSD's ``DecodeBBox`` for loc ``(..., P, 4)`` against priors/variances ``(P, 4)``, in float32 as the
    layer (sizes of the decoded boxes stay unclipped)."""
    if a.variance_encoded_in_target:
        var = torch.ones_like(var)
    if a.code_type == 1:  # CORNER
        return prior + var * loc
    pw = prior[:, 2] - prior[:, 0]
    ph = prior[:, 3] - prior[:, 1]
    if a.code_type == 3:  # CORNER_SIZE
        size = torch.stack([pw, ph, pw, ph], dim=-1)
        return prior + var * loc * size
    pcx = ((prior[:, 0] + prior[:, 2]).double() / 2.0).float()
    pcy = ((prior[:, 1] + prior[:, 3]).double() / 2.0).float()
    cx = var[:, 0] * loc[..., 0] * pw + pcx
    cy = var[:, 1] * loc[..., 1] * ph + pcy
    w = torch.exp((var[:, 2] * loc[..., 2]).double()) * pw.double()
    h = torch.exp((var[:, 3] * loc[..., 3]).double()) * ph.double()
    cx, cy = cx.double(), cy.double()
    return torch.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], dim=-1).float()


def _box_size(b: torch.Tensor) -> torch.Tensor:
    """SSD's ``BBoxSize`` of normalised boxes: 0 for inverted boxes."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)


def _jaccard(b: torch.Tensor) -> torch.Tensor:
    """Pairwise SSD ``JaccardOverlap`` (normalised) of boxes ``(..., K, 4)`` -> ``(..., K, K)``."""
    p, q = b.unsqueeze(-2), b.unsqueeze(-3)
    disjoint = (q[..., 0] > p[..., 2]) | (q[..., 2] < p[..., 0]) | (q[..., 1] > p[..., 3]) | (q[..., 3] < p[..., 1])
    iw = torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])
    ih = torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])
    inter = iw * ih
    size = _box_size(b)
    union = size.unsqueeze(-1) + size.unsqueeze(-2) - inter
    hit = ~disjoint & (iw > 0) & (ih > 0)
    return torch.where(hit, inter / torch.where(hit, union, torch.ones_like(union)), torch.zeros_like(inter))


def _nms(a: DetectionOutputAttrs, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD's ``ApplyNMSFast`` for all classes at once: boxes ``(C, P, 4)``, scores ``(C, P)``.

    Returns candidate indices ``(C, K)`` in descending score order (stable, as ``std::stable_sort``) and a
    ``(C, K)`` mask of the kept ones. The greedy pass is sequential over the K ranks only, vectorised over
    classes; the adaptive threshold (``eta < 1``) is kept per class.
    """
    k = scores.shape[1] if a.top_k < 0 else min(a.top_k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    valid = scores.gather(1, order).double() > a.confidence_threshold
    cand = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
    overlap = _jaccard(cand)  # (C, K, K)
    keep = torch.zeros_like(valid)
    threshold = torch.full((scores.shape[0],), a.nms_threshold, dtype=torch.float32)
    eta = torch.tensor(a.eta, dtype=torch.float32)
    for j in range(k):
        suppressed = (keep[:, :j] & (overlap[:, j, :j] > threshold.unsqueeze(1))).any(dim=1)
        kept = valid[:, j] & ~suppressed
        keep[:, j] = kept
        if a.eta < 1:
            threshold = torch.where(kept & (threshold > 0.5), threshold * eta, threshold)
    return order, keep


class _DetectionOutput(CaffeLayer):
    """SSD's DetectionOutput: decode, per-class NMS, keep_top_k per image; rows ``[image, label, score, xmin,
    ymin, xmax, ymax]`` grouped by image, then label, then score. No gradient (Caffe has no backward).

    ``keep_top_k`` ranks the kept boxes by score with a stable sort (Caffe's ``std::sort`` leaves the order of
    exactly equal scores unspecified)."""

    def __init__(self, a: DetectionOutputAttrs):
        super().__init__()
        self.a = a

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        a = self.a
        device = loc.device
        n = loc.shape[0]
        p = prior.shape[2] // 4
        loc = loc.detach().float().reshape(n, p, a.num_loc_classes, 4).transpose(1, 2).cpu()  # (N, L, P, 4)
        conf = conf.detach().float().reshape(n, p, a.num_classes).transpose(1, 2).cpu()  # (N, C, P)
        prior = prior.detach().float().reshape(2, p, 4).cpu()
        classes = torch.tensor([c for c in range(a.num_classes) if c != a.background_label_id], dtype=torch.long)
        rows = []
        for i in range(n):
            decoded = _decode_boxes(a, loc[i], prior[0], prior[1])  # (L, P, 4)
            boxes = decoded.expand(len(classes), -1, -1) if a.share_location else decoded[classes]
            scores = conf[i][classes]
            order, keep = _nms(a, boxes, scores)
            ci, rank = keep.nonzero(as_tuple=True)  # class-major, score order within a class
            idx = order[ci, rank]
            label, score, box_of = classes[ci], scores[ci, idx], boxes[ci, idx]
            if a.keep_top_k > -1 and len(idx) > a.keep_top_k:
                top = torch.sort(score, descending=True, stable=True).indices[: a.keep_top_k]
                top = top[torch.argsort(label[top], stable=True)]  # std::map: labels ascending
                label, score, box_of = label[top], score[top], box_of[top]
            image = torch.full_like(score, float(i))
            rows.append(torch.cat([torch.stack([image, label.float(), score], dim=1), box_of], dim=1))
        out = torch.cat(rows) if rows else torch.zeros(0, 7)
        if len(out) == 0:  # Caffe's "no detections" marker: one row of -1 per image, image id first
            out = torch.full((n, 7), -1.0)
            out[:, 0] = torch.arange(n, dtype=torch.float32)
        return out.view(1, 1, -1, 7).to(device)


@register
class DetectionOutput(LayerSpec):
    type = "DetectionOutput"
    bottoms = (3, 4)
    family = FAMILY
    summary = "SSD detections (1, 1, kept, 7): decode loc against priors, per-class NMS, keep_top_k; dynamic size"

    def attrs(self, layer):
        p = layer.detection_output_param
        if not p.HasField("num_classes"):
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
            confidence_threshold=p.confidence_threshold if p.HasField("confidence_threshold") else -FLT_MAX,
            nms_threshold=nms.nms_threshold,
            eta=nms.eta,
            top_k=nms.top_k if nms.HasField("top_k") else -1,
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

    def build_torch(self, node):
        if node.attrs.code_type not in (1, 2, 3):
            raise ValueError(f"unknown code_type {node.attrs.code_type}")
        return _DetectionOutput(node.attrs)


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


class _Interp(CaffeLayer):
    """Crop by ``-pad_beg`` / ``-pad_end``, then bilinear resize with aligned corners (source coordinate
    ``dst * (in - 1) / (out - 1)`` in float32, exactly torch's ``align_corners=True``)."""

    def __init__(self, a: InterpAttrs):
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_eff, w_eff, h, w = _interp_size(self.a, x.shape[2], x.shape[3])
        b = -self.a.pad_beg
        x = x[:, :, b : b + h_eff, b : b + w_eff]
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


@register
class Interp(LayerSpec):
    type = "Interp"
    family = FAMILY
    summary = "bilinear resize, aligned corners (PSPNet/DeepLab): height/width, zoom_factor, shrink_factor, crop"

    def attrs(self, layer):
        p = layer.interp_param
        if p.pad_beg > 0 or p.pad_end > 0:
            raise ValueError("Interp only supports pad_beg/pad_end <= 0 (cropping)")
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if shrink and not zoom:
            rule = "shrink"
        elif zoom and not shrink:
            rule = "zoom"
        elif p.HasField("height") and p.HasField("width"):
            rule = "size"
        elif shrink and zoom:
            rule = "shrink_zoom"
        else:
            raise ValueError("interp_param needs zoom_factor, shrink_factor, or height and width")
        if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
            raise ValueError("zoom_factor and shrink_factor must be >= 1")
        return InterpAttrs(rule, p.height, p.width, p.zoom_factor, p.shrink_factor, p.pad_beg, p.pad_end)

    def infer_shapes(self, node, in_shapes):
        n, c, h_in, w_in = _legacy(in_shapes[0])
        h_eff, w_eff, h, w = _interp_size(node.attrs, h_in, w_in)
        if min(h_eff, w_eff, h, w) <= 0:
            raise self.fail(node, f"Interp of {h_in}x{w_in} gives input {h_eff}x{w_eff}, output {h}x{w}: "
                                  "sizes must be positive")
        return [(n, c, h, w)]

    def macs(self, node, in_shapes, out_shapes):
        return 4 * count(out_shapes[0])

    def build_torch(self, node):
        return _Interp(node.attrs)

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


class _MaxUnpool(torch.autograd.Function):
    """SegNet's Upsample: top = 0, then ``top[mask[i]] = x[i]`` in increasing i (a later hit overwrites);
    backward gives every bottom element ``top_diff[mask[i]]``, overwritten or not (Caffe's gather)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        n, c, h, w = x.shape
        idx = mask.reshape(n, c, h * w).long()  # float -> int truncates, as static_cast<int>
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= out_h * out_w):
            raise ValueError(f"Upsample mask index out of range for a {out_h}x{out_w} top: check that the scale "
                             "matches the pooling layer that made the mask")
        pos = torch.arange(h * w, device=x.device).expand(n, c, h * w)
        winner = torch.full((n, c, out_h * out_w), -1, dtype=torch.long, device=x.device)
        winner = winner.scatter_reduce(2, idx, pos, reduce="amax")
        flat = x.reshape(n, c, h * w)
        top = torch.where(winner >= 0, flat.gather(2, winner.clamp(min=0)), torch.zeros((), dtype=x.dtype))
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return top.view(n, c, out_h, out_w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (idx,) = ctx.saved_tensors
        n, c = idx.shape[:2]
        return grad.reshape(n, c, -1).gather(2, idx).view(ctx.in_shape), None, None, None


class _Upsample(CaffeLayer):
    def __init__(self, a: UpsampleAttrs):
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        a = self.a
        if not mask:  # YOLO ports: nearest-neighbour repeat
            return x.repeat_interleave(a.scale_h, dim=2).repeat_interleave(a.scale_w, dim=3)
        h, w = _upsample_size(a, x.shape[2], x.shape[3])
        return _MaxUnpool.apply(x, mask[0], h, w)


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
        p = layer.upsample_param
        sized = p.HasField("upsample_h") and p.HasField("upsample_w")
        if not (sized or (not p.HasField("scale") and p.HasField("scale_h") and p.HasField("scale_w"))
                or (not p.HasField("scale_h") and not p.HasField("scale_w"))):
            raise ValueError("upsample_param needs upsample_h and upsample_w, or scale, or scale_h and scale_w")
        scale_h, scale_w = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
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

    def build_torch(self, node):
        return _Upsample(node.attrs)

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
def _roi_batch(rois: torch.Tensor, batch: int) -> torch.Tensor:
    b = rois[:, 0].long()  # float -> int truncates
    if b.numel() and (int(b.min()) < 0 or int(b.max()) >= batch):
        raise ValueError(f"ROI batch index out of range for a batch of {batch}")
    return b


def _first_max(v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor):
    """Combine two (max, argmax) candidates the way a row-major scan with ``>`` does: the larger value,
    on a tie the smaller flat index."""
    take2 = (v2 > v1) | ((v2 == v1) & (i2 < i1))
    return torch.where(take2, v2, v1), torch.where(take2, i2, i1)


def _bit_length(e: torch.Tensor, levels: int) -> torch.Tensor:
    """floor(log2(e)) for e >= 1, exactly (e < 1 gives 0)."""
    k = torch.zeros_like(e)
    for lv in range(1, levels):
        k += (e >= (1 << lv)).long()
    return k


def _shifted(t: torch.Tensor, s: int, dim: int, fill: float) -> torch.Tensor:
    """``t`` moved ``s`` places towards 0 along ``dim``, padded with ``fill`` (never read by a query)."""
    n = t.shape[dim]
    pad = torch.full_like(t.narrow(dim, 0, min(s, n)), fill)
    return torch.cat([t.narrow(dim, s, n - s), pad], dim) if s < n else pad


def _rect_max(x: torch.Tensor, b: torch.Tensor, hs: torch.Tensor, he: torch.Tensor, ws: torch.Tensor,
              we: torch.Tensor, with_index: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max (and, with ``with_index``, first argmax as flat ``h * W + w``) of ``x[b, :, hs:he, ws:we]`` for
    every ROI bin.

    ``b (R,)``, ``hs/he (R, PH)``, ``ws/we (R, PW)``; returns ``(R, C, PH, PW)`` values (0 for empty bins) and
    argmaxes (-1 for empty bins). A 2-D sparse table of power-of-two window maxima, channels last so that a
    lookup reads one contiguous row, answers every bin with four overlapping lookups: the cost does not
    depend on the bin sizes.
    """
    bsz, c, height, width = x.shape
    r, ph, pw = b.shape[0], hs.shape[1], ws.shape[1]
    eh, ew = (he - hs).clamp(min=0), (we - ws).clamp(min=0)
    lh = max(int(eh.max()) if eh.numel() else 1, 1).bit_length()
    lw = max(int(ew.max()) if ew.numel() else 1, 1).bit_length()
    v = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
    i = torch.arange(height * width, dtype=torch.int32, device=x.device).view(1, height, width, 1)
    i = i.expand(bsz, height, width, c) if with_index else None

    def combine(va, ia, s: int, dim: int):
        vb = _shifted(va, s, dim, -math.inf)
        if ia is None:
            return torch.maximum(va, vb), None
        return _first_max(va, ia, vb, _shifted(ia, s, dim, 0))

    row = [(v, i)]
    for j in range(1, lw):
        row.append(combine(*row[-1], 1 << (j - 1), 2))
    levels = [row]
    for k in range(1, lh):
        levels.append([combine(va, ia, 1 << (k - 1), 1) for va, ia in levels[-1]])
    table_v = torch.stack([torch.stack([va for va, _ in lv]) for lv in levels])  # (Lh, Lw, B, H, W, C)
    table_i = torch.stack([torch.stack([ia for _, ia in lv]) for lv in levels]) if with_index else None

    kh = _bit_length(eh, lh).view(r, ph, 1).expand(r, ph, pw)
    kw = _bit_length(ew, lw).view(r, 1, pw).expand(r, ph, pw)
    h1 = hs.clamp(0, height - 1).view(r, ph, 1).expand(r, ph, pw)
    w1 = ws.clamp(0, width - 1).view(r, 1, pw).expand(r, ph, pw)
    h2 = (he.view(r, ph, 1) - (1 << kh)).clamp(0, height - 1)
    w2 = (we.view(r, 1, pw) - (1 << kw)).clamp(0, width - 1)
    cell = ((kh * lw + kw) * bsz + b.view(r, 1, 1)) * height  # row of the flattened (Lh, Lw, B, H, W) table
    rows_v = table_v.view(-1, c)
    rows_i = table_i.view(-1, c) if with_index else None
    best_v = best_i = None
    for hh, ww in ((h1, w1), (h1, w2), (h2, w1), (h2, w2)):
        at = ((cell + hh) * width + ww).reshape(-1)
        cv = rows_v.index_select(0, at)  # (R * PH * PW, C)
        ci = rows_i.index_select(0, at) if with_index else None
        if best_v is None:
            best_v, best_i = cv, ci
        elif with_index:
            best_v, best_i = _first_max(best_v, best_i, cv, ci)
        else:
            best_v = torch.maximum(best_v, cv)
    empty = ((eh.view(r, ph, 1) <= 0) | (ew.view(r, 1, pw) <= 0)).reshape(-1, 1)
    best_v = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), best_v)
    best_v = best_v.view(r, ph, pw, c).permute(0, 3, 1, 2).contiguous()
    if with_index:
        best_i = torch.where(empty, torch.full((), -1, dtype=best_i.dtype, device=x.device), best_i)
        best_i = best_i.view(r, ph, pw, c).permute(0, 3, 1, 2).contiguous()
    return best_v, best_i


def _roi_pool_bins(rois: torch.Tensor, scale: float, ph: int, pw: int, height: int, width: int):
    """Fast R-CNN's bins: ROI corners ``round(coord * scale)``, size ``max(end - start + 1, 1)``, bin p spans
    ``[floor(p * size / n), ceil((p + 1) * size / n))`` (float32) shifted by the start, clipped to the map."""
    f32 = torch.float32
    corners = _round_half_away(rois[:, 1:5].float() * torch.tensor(scale, dtype=f32)).long()
    x1, y1, x2, y2 = corners.unbind(1)
    roi_h = (y2 - y1 + 1).clamp(min=1).to(f32)
    roi_w = (x2 - x1 + 1).clamp(min=1).to(f32)
    bin_h = (roi_h / ph).unsqueeze(1)
    bin_w = (roi_w / pw).unsqueeze(1)
    p_h = torch.arange(ph, dtype=f32, device=rois.device)
    p_w = torch.arange(pw, dtype=f32, device=rois.device)
    hs = (torch.floor(p_h * bin_h).long() + y1.unsqueeze(1)).clamp(0, height)
    he = (torch.ceil((p_h + 1) * bin_h).long() + y1.unsqueeze(1)).clamp(0, height)
    ws = (torch.floor(p_w * bin_w).long() + x1.unsqueeze(1)).clamp(0, width)
    we = (torch.ceil((p_w + 1) * bin_w).long() + x1.unsqueeze(1)).clamp(0, width)
    return hs, he, ws, we


class _ROIPoolFn(torch.autograd.Function):
    """Max pooling over ROI bins; backward sends each top diff to its bin's first maximum (Caffe's argmax),
    nothing to the ROIs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rois: torch.Tensor, ph: int, pw: int, scale: float) -> torch.Tensor:
        rois = rois.reshape(rois.shape[0], -1)
        b = _roi_batch(rois, x.shape[0])
        hs, he, ws, we = _roi_pool_bins(rois, scale, ph, pw, x.shape[2], x.shape[3])
        top, arg = _rect_max(x, b, hs, he, ws, we, with_index=ctx.needs_input_grad[0])
        ctx.save_for_backward(b, arg)
        ctx.in_shape = x.shape
        return top

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        b, arg = ctx.saved_tensors
        bsz, c, h, w = ctx.in_shape
        size = bsz * c * h * w
        base = (b.view(-1, 1, 1, 1) * c + torch.arange(c, device=grad.device).view(1, c, 1, 1)) * (h * w)
        target = torch.where(arg >= 0, base + arg, size)  # empty bins go to a spare slot
        out = torch.zeros(size + 1, dtype=grad.dtype, device=grad.device)
        out.index_add_(0, target.reshape(-1), grad.reshape(-1))
        return out[:size].view(ctx.in_shape), None, None, None, None


class _ROIPooling(CaffeLayer):
    def __init__(self, ph: int, pw: int, scale: float):
        super().__init__()
        self.ph, self.pw, self.scale = ph, pw, scale

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return _ROIPoolFn.apply(x, rois, self.ph, self.pw, self.scale)


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
        p = layer.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise ValueError("roi_pooling_param.pooled_h and pooled_w must be > 0")
        return p

    def infer_shapes(self, node, in_shapes):
        _, c, _, _ = _legacy(in_shapes[0])
        return [(_check_rois(self, node, in_shapes[1]), c, node.attrs.pooled_h, node.attrs.pooled_w)]

    def build_torch(self, node):
        p = node.attrs
        return _ROIPooling(p.pooled_h, p.pooled_w, p.spatial_scale)

    def to_onnx(self, node, ctx):
        """ONNX's ``MaxRoiPool`` is Fast R-CNN's layer (rounded corners, floor/ceil bins, empty bins 0)."""
        p = node.attrs
        rois = ctx.input(1)
        if len(ctx.in_shape(1)) != 2 or ctx.in_shape(1)[1] != 5:
            rois = ctx.reshape(rois, ctx.in_shape(1), [ctx.in_shape(1)[0], -1])
            rois = ctx.slice(rois, [0], [5], [1])
        ctx.add("MaxRoiPool", [ctx.input(0), rois], ctx.output(0), pooled_shape=[p.pooled_h, p.pooled_w],
                spatial_scale=p.spatial_scale)


class _PSROIPooling(CaffeLayer):
    """R-FCN's position-sensitive average pooling: bin (ph, pw) of output channel d averages input channel
    ``(d * G + ph) * G + pw``. Bin sums come from a float64 summed-area table (autograd gives Caffe's
    ``top_diff / bin_area`` spread over the bin)."""

    def __init__(self, output_dim: int, group: int, scale: float):
        super().__init__()
        self.output_dim, self.group, self.scale = output_dim, group, scale

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        g, d = self.group, self.output_dim
        bsz, c, height, width = x.shape
        rois = rois.reshape(rois.shape[0], -1)
        b = _roi_batch(rois, bsz)
        f32 = torch.float32
        scale = torch.tensor(self.scale, dtype=f32)
        rounded = _round_half_away(rois[:, 1:5].float()).float()
        start_w, start_h = rounded[:, 0] * scale, rounded[:, 1] * scale
        end_w, end_h = (rounded[:, 2] + 1) * scale, (rounded[:, 3] + 1) * scale
        tenth = torch.tensor(0.1, dtype=f32)
        bin_w = (torch.maximum(end_w - start_w, tenth) / g).unsqueeze(1)
        bin_h = (torch.maximum(end_h - start_h, tenth) / g).unsqueeze(1)
        p = torch.arange(g, dtype=torch.float64, device=x.device)

        def edges(start: torch.Tensor, size: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
            # the GPU kernel's p * bin + start is one fused multiply-add: exact in float64, rounded once
            lo = (p * size.double() + start.double().unsqueeze(1)).float()
            hi = ((p + 1) * size.double() + start.double().unsqueeze(1)).float()
            return torch.floor(lo).long().clamp(0, limit), torch.ceil(hi).long().clamp(0, limit)

        hs, he = edges(start_h, bin_h, height)
        ws, we = edges(start_w, bin_w, width)
        sat = F.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # (B, C, H+1, W+1)
        r = b.shape[0]
        ch = ((torch.arange(d, device=x.device).view(d, 1, 1) * g + torch.arange(g, device=x.device).view(1, g, 1))
              * g + torch.arange(g, device=x.device).view(1, 1, g)).unsqueeze(0)  # (1, D, G, G)
        bb = b.view(r, 1, 1, 1)
        h0, h1 = hs.view(r, 1, g, 1), he.view(r, 1, g, 1)
        w0, w1 = ws.view(r, 1, 1, g), we.view(r, 1, 1, g)
        total = sat[bb, ch, h1, w1] - sat[bb, ch, h0, w1] - sat[bb, ch, h1, w0] + sat[bb, ch, h0, w0]
        area = ((h1 - h0) * (w1 - w0)).to(torch.float64)
        empty = area <= 0
        mean = total / torch.where(empty, torch.ones_like(area), area)
        return torch.where(empty, torch.zeros_like(mean), mean).to(x.dtype)


@register
class PSROIPooling(LayerSpec):
    type = "PSROIPooling"
    bottoms = (2, 2)
    family = FAMILY
    summary = "R-FCN position-sensitive ROI average pooling to (num_rois, output_dim, group_size, group_size)"

    def attrs(self, layer):
        p = layer.psroi_pooling_param
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

    def build_torch(self, node):
        p = node.attrs
        return _PSROIPooling(p.output_dim, p.group_size, p.spatial_scale)


class _SmoothL1(CaffeLayer):
    """py-faster-rcnn's loss: ``sum(w_out * f(w_in * (a - b))) / num`` with ``f(d) = 0.5 * sigma^2 * d^2`` for
    ``|d| < 1 / sigma^2`` and ``|d| - 0.5 / sigma^2`` otherwise (computed in double, as the kernel). The
    weights get no gradient; both predictions and targets do."""

    def __init__(self, sigma2: float):
        super().__init__()
        self.sigma2 = sigma2

    def forward(self, a: torch.Tensor, b: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        d = a - b
        if weights:
            d = weights[0].detach() * d
        d64 = d.double()
        small = d64.abs() < 1.0 / self.sigma2
        err = torch.where(small, 0.5 * d64 * d64 * self.sigma2, d64.abs() - 0.5 / self.sigma2).to(a.dtype)
        if weights:
            err = weights[1].detach() * err
        return err.sum() / a.shape[0]


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

    def build_torch(self, node):
        sigma = node.attrs.sigma
        return _SmoothL1(_f32(sigma * sigma))  # Caffe keeps sigma^2 as a float


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
    scale_filler: Any
    shift_filler: Any


def _channel_shape(x: torch.Tensor) -> tuple[int, ...]:
    """``(1, C, 1, ...)`` for ``x``: the fork blobs are ``(1, C, 1, 1)`` whatever the bottom's rank."""
    return (1, -1) + (1,) * (x.dim() - 2)


class _SegNetBN(CaffeLayer):
    """SegNet's BN: INFERENCE is ``x * scale + shift`` (statistics folded in); LEARN normalises with the
    batch mean and ``E[x^2] - E[x]^2`` (+1e-9) in any phase, and can output them as tops 2 and 3."""

    def __init__(self, learn: bool, n_tops: int):
        super().__init__()
        self.learn, self.n_tops = learn, n_tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        scale, shift = (t.reshape(_channel_shape(x)) for t in (self.scale, self.shift))
        if not self.learn:
            return x * scale + shift
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x * x).mean(dims, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + 1e-9) * scale + shift
        stats = (mean.reshape(self.shift.shape), var.reshape(self.shift.shape))
        return y if self.n_tops == 1 else (y, *stats[: self.n_tops - 1])


class _PSPNetBN(CaffeLayer):
    """PSPNet's BN: stored statistics in TEST or when frozen (then only the bottom gets a gradient);
    otherwise batch statistics (biased variance) with the moving averages updated as
    ``stat = (1 - momentum) * batch + momentum * stat``."""

    def __init__(self, a: BNAttrs):
        super().__init__()
        self.frozen, self.momentum, self.eps = a.frozen, a.momentum, a.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = (t.reshape(_channel_shape(x)) for t in (self.scale, self.shift))
        if self.frozen:
            scale, shift = scale.detach(), shift.detach()
        if self.frozen or not self.training:
            mean, var = (t.reshape(_channel_shape(x)) for t in (self.mean, self.variance))
        else:
            dims = [0, *range(2, x.dim())]
            mean = x.mean(dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dims, keepdim=True)
            with torch.no_grad():
                self.mean.copy_((1 - self.momentum) * mean.reshape(self.mean.shape) + self.momentum * self.mean)
                self.variance.copy_((1 - self.momentum) * var.reshape(self.variance.shape)
                                    + self.momentum * self.variance)
        return (x - mean) * (var + self.eps).pow(-0.5) * scale + shift


@register
class BN(LayerSpec):
    type = "BN"
    tops = (1, 3)
    family = FAMILY
    blob_names = ("scale", "shift", "mean", "variance")
    summary = "fork batch norm: SegNet (scale, shift; bn_mode) or PSPNet (+ mean, variance; frozen, eps)"

    def attrs(self, layer):
        p = layer.bn_param
        pspnet = any(p.HasField(f) for f in _PSPNET_BN_FIELDS) or len(layer.param) in (3, 4)
        learn = not pspnet and p.bn_mode == p.LEARN
        if len(layer.top) > (3 if learn else 1):
            raise ValueError("only SegNet's BN in LEARN mode has extra tops (batch mean and variance)")
        return BNAttrs(pspnet, learn, p.frozen, p.momentum, p.eps,
                       filler_of(p, "slope_filler" if pspnet else "scale_filler"),
                       filler_of(p, "bias_filler" if pspnet else "shift_filler"))

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

    def build_torch(self, node):
        a: BNAttrs = node.attrs
        shape = node.param_shapes[0]
        module = _PSPNetBN(a) if a.pspnet else _SegNetBN(a.learn, len(node.tops))
        module.add_blob("scale", shape, a.scale_filler)
        module.add_blob("shift", shape, a.shift_filler)
        if a.pspnet:
            module.add_blob("mean", shape, None, trainable=False)
            var_init = _constant_filler(1.0) if a.frozen else None
            module.add_blob("variance", shape, var_init, trainable=False)
        return module

    def to_onnx(self, node, ctx):
        """Inference forms only: SegNet's ``x * scale + shift``, PSPNet's stored statistics (TEST or frozen)
        as ``(x - mean) * (var + eps)^-0.5 * scale + shift``, the inverse std computed in float32 as Caffe."""
        a: BNAttrs = node.attrs
        if a.learn or (a.pspnet and ctx.module.training and not a.frozen):
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


def _constant_filler(value: float) -> Any:
    return caffe_pb2.FillerParameter(type="constant", value=value)


# =========================================================================================================
# ShuffleNet, MobileNet ports, SENet ports: ShuffleChannel, ConvolutionDepthwise, Axpy
# =========================================================================================================
class _ShuffleChannel(CaffeLayer):
    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        return x.reshape(n, self.group, c // self.group, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


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

    def build_torch(self, node):
        return _ShuffleChannel(node.attrs.group)

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


class _Axpy(CaffeLayer):
    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return a.reshape(*a.shape[:2], *([1] * (x.dim() - 2))) * x + y


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

    def build_torch(self, node):
        return _Axpy()

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
