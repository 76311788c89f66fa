"""SSD (weiliu89/caffe, branch ``ssd``): Permute, PriorBox, DetectionOutput, DetectionEvaluate, MultiBoxLoss,
AnnotatedData.

Written as a third-party plugin: public plugin API only, torch helpers in :mod:`.ssd_nn`, the standard-op ONNX
graphs of DetectionOutput in :mod:`.ssd_onnx`. Quirks kept: PriorBox truncates ``min_size``/``max_size`` to
integers; DetectionOutput's rows follow Caffe's order (image, label, NMS order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prototxt2py.layers import LayerSpec, Unknowable, call, count, legacy_shape, plain, register
from prototxt2py.layers.data import DataAttrs, DataLayerSpec, crop_size, input_hint

from ...lazy_numpy import np
from . import ssd_onnx, ssd_priors

if TYPE_CHECKING:  # pragma: no cover
    from prototxt2py.ir import Node

FAMILY = "forks"
FLT_MAX = 3.4028234663852886e38

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.ssd_nn"


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
    onnx_dynamic_sizes = True  # Transpose
    summary = "transpose axes (SSD): permute_param.order, unlisted axes follow in their order"

    def infer_shapes(self, node, in_shapes):
        shape = in_shapes[0]
        return [tuple(shape[o] for o in _permute_order(node, self, len(shape)))]

    def module(self, node):
        return call(f"{NN}:Permute", _permute_order(node, self, len(node.in_shapes[0])))

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
    if any(not ar > 0 for ar in p.aspect_ratio):  # the fork takes sqrt(ar) and 1/ar: inf or NaN boxes
        raise ValueError(f"aspect_ratio values must be positive, got {', '.join(f'{ar:g}' for ar in p.aspect_ratio)}")
    ratios = [1.0]
    for ar in map(_f32, p.aspect_ratio):  # the fork's ``float ar``: duplicates judged on float32 differences
        if all(abs(_f32(ar - r)) >= 1e-6 for r in ratios):
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
    onnx_dynamic_sizes = True  # the boxes are computed from the run-time sizes when they change
    summary = "SSD default boxes (1, 2, H*W*num_priors*4) from min/max sizes, aspect ratios, flip, clip, step"

    def attrs(self, layer):
        return _prior_box_attrs(plain(layer.prior_box_param))

    def infer_shapes(self, node, in_shapes):
        a: PriorBoxAttrs = node.attrs
        if a.unsupported:
            raise Unknowable(f"PriorBox with OpenCV's {'/'.join(a.unsupported)} fields is not supported")
        if not a.img_h and len(in_shapes) < 2:
            raise self.fail(node, "PriorBox needs the image blob as bottom 1 unless img_size or img_h/img_w is set")
        _, _, h, w = legacy_shape(in_shapes[0])
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
        return call(f"{NN}:PriorBox", a.min_sizes, **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        """The boxes depend on the bottoms' sizes only, which the export fixes: a constant (the runtime
        module's arithmetic, in numpy: the export never imports torch)."""
        a: PriorBoxAttrs = node.attrs
        if ctx.dynamic_sizes and ctx.sizes_vary:
            _prior_boxes_sized(ctx, a)
            return
        _, _, h, w = legacy_shape(ctx.in_shape(0))
        img_h, img_w = (a.img_h, a.img_w) if a.img_h else legacy_shape(ctx.in_shape(1))[2:]
        priors = ssd_priors.prior_boxes(a, h, w, img_h, img_w)
        ctx.identity(ctx.const(priors, "priors"), ctx.output(0))


def _prior_boxes_sized(ctx: Any, a: PriorBoxAttrs) -> None:
    """PriorBox with symbolic sizes (``--dynamic``): the runtime module's arithmetic as ONNX ops on the
    run-time feature map and image sizes, in the same precisions (steps and centres in float32, box edges in
    double, then float32), so the boxes equal the constant a fixed-size export would hold."""
    if any(len(ctx.in_shape(i)) != 4 for i in range(ctx.num_inputs)):
        ctx.fixed_sizes_only("PriorBox of blobs without 4 axes with symbolic sizes")
    double = ctx.DOUBLE
    sizes = ssd_priors.prior_sizes(a)  # (width, height) per prior, as the runtime module's
    half = np.array(sizes, dtype=np.float32) / np.float32(2.0)  # (P, 2): exact, so float32 holds the doubles
    layer = ctx.dims(ctx.input(0), 2, 4)  # (H, W)
    image = ctx.ints([a.img_h, a.img_w], "image") if a.img_h else ctx.dims(ctx.input(1), 2, 4)
    if a.step_w:
        step = ctx.const(np.array([a.step_h, a.step_w], dtype=np.float32), "step")
    else:  # float(image size) / feature map size, in float32
        step = ctx.add("Div", [ctx.add("Cast", [image], to=ctx.FLOAT), ctx.add("Cast", [layer], to=ctx.FLOAT)])
    image_d = ctx.add("Cast", [image], to=double)
    centres, scales = [], []
    for axis in (0, 1):  # rows (y), then columns (x)
        def pick(t: str, i: int = axis) -> str:
            return ctx.add("Gather", [t, ctx.const(np.int64(i))], axis=0)
        cells = ctx.add("Cast", [ctx.add("Range", [ctx.const(np.int64(0)), pick(layer), ctx.const(np.int64(1))])],
                        to=ctx.FLOAT)
        centre = ctx.add("Mul", [ctx.add("Add", [cells, ctx.scalar(a.offset)]), pick(step)])
        centres.append(ctx.add("Cast", [centre], to=double))
        scales.append(pick(image_d))
    cy = ctx.add("Unsqueeze", [centres[0], ctx.ints([1, 2], "axes")])  # (H, 1, 1)
    cx = ctx.add("Unsqueeze", [centres[1], ctx.ints([0, 2], "axes")])  # (1, W, 1)
    grid = ctx.concat_ints([layer, [len(sizes)]], "grid")  # (H, W, P)
    edges = []
    for centre, column, scale, op in ((cx, 0, scales[1], "Sub"), (cy, 1, scales[0], "Sub"),
                                      (cx, 0, scales[1], "Add"), (cy, 1, scales[0], "Add")):
        half_size = ctx.add("Cast", [ctx.const(half[:, column].copy(), "half")], to=double)
        edge = ctx.add("Div", [ctx.add(op, [centre, half_size]), scale])
        edges.append(ctx.add("Unsqueeze", [ctx.add("Expand", [edge, grid]), ctx.ints([3], "axes")]))
    boxes = ctx.add("Cast", [ctx.add("Concat", edges, axis=3)], to=ctx.FLOAT)  # (H, W, P, 4)
    if a.clip:
        boxes = ctx.add("Clip", [boxes, ctx.scalar(0.0), ctx.scalar(1.0)])
    variance = np.array(a.variance if len(a.variance) == 4 else a.variance[:1], dtype=np.float32)
    variance = ctx.add("Expand", [ctx.const(variance, "variance"), ctx.shape_of(boxes)])
    flat = [ctx.add("Reshape", [t, ctx.ints([1, 1, -1], "row")]) for t in (boxes, variance)]
    ctx.add("Concat", flat, ctx.output(0), axis=1)


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
    normalized_bbox: bool = True  # OpenCV's field: False for priors in pixels (Faster R-CNN ROIs)

    @property
    def num_loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes


@register
class DetectionOutput(LayerSpec):
    type = "DetectionOutput"
    bottoms = (3, 4)
    family = FAMILY
    onnx_dynamic_sizes = True  # the number of priors comes from the prior blob at run time when it changes
    summary = "SSD detections (1, 1, kept, 7): decode loc against priors, per-class NMS, keep_top_k; dynamic size"

    def attrs(self, layer):
        p = plain(layer.detection_output_param)
        if not p.has("num_classes"):
            raise ValueError("detection_output_param.num_classes is required")
        nms = p.nms_param
        if nms.nms_threshold < 0 or not 0 < nms.eta <= 1:
            raise ValueError("nms_threshold must be >= 0 and eta in (0, 1]")
        if p.share_location and p.background_label_id == -1:  # shared boxes are label -1, skipped as background
            raise ValueError("share_location with background_label_id -1: the fork finds no location predictions "
                             "(LOG(FATAL) 'Could not find location predictions for label -1')")
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
            normalized_bbox=p.normalized_bbox,
        )

    def infer_shapes(self, node, in_shapes):
        a: DetectionOutputAttrs = node.attrs
        loc, conf, prior = in_shapes[:3]
        if loc[0] != conf[0]:
            raise self.fail(node, f"loc {tuple(loc)} and conf {tuple(conf)} must have the same batch size")
        _, channels, height, _ = legacy_shape(prior)
        num_priors = height // 4
        if channels < 2 and not a.variance_encoded_in_target:
            raise self.fail(node, f"priors {tuple(prior)} have no variances (1, 2, P*4 boxes then variances), "
                                  f"which decoding needs without variance_encoded_in_target")
        # per image, Caffe reads exactly these many values (it checks channels(); the flattened SSD blobs are
        # (N, values), and any other layout would leave values unread or read past the image)
        per_image = (math.prod(loc[1:]), math.prod(conf[1:]))
        if per_image[0] != num_priors * a.num_loc_classes * 4:
            raise self.fail(node, f"loc {tuple(loc)} has {per_image[0]} values per image, need {num_priors} priors x "
                                  f"{a.num_loc_classes} x 4")
        if per_image[1] != num_priors * a.num_classes:
            raise self.fail(node, f"conf {tuple(conf)} has {per_image[1]} values per image, need {num_priors} "
                                  f"priors x {a.num_classes} classes")
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
            "normalized_bbox": None if a.normalized_bbox else False,
        }
        return call(f"{NN}:DetectionOutput", a.num_classes, **{k: v for k, v in given.items() if v is not None})

    def onnx_top_shapes(self, node):
        return [(1, 1, "detections", 7)]

    def to_onnx(self, node, ctx):
        ssd_onnx.detection_output(node, ctx)


@register
class DetectionEvaluate(LayerSpec):
    type = "DetectionEvaluate"
    bottoms = (2, 2)
    family = FAMILY
    summary = ("SSD TEST metric: per-class ground-truth counts and per-detection true/false positives, the rows "
               "mAP is computed from (1, 1, classes + detections, 5); dynamic size")

    def attrs(self, layer):
        p = plain(layer.detection_evaluate_param)
        if not p.has("num_classes"):
            raise ValueError("detection_evaluate_param.num_classes is required")
        if not p.overlap_threshold > 0:
            raise ValueError(f"overlap_threshold must be > 0, got {p.overlap_threshold}")
        return p

    def infer_shapes(self, node, in_shapes):
        det, gt = (legacy_shape(s) for s in in_shapes)
        if det[:2] != (1, 1) or det[3] != 7 or gt[:2] != (1, 1) or gt[3] != 8:
            raise self.fail(node, f"needs detections (1, 1, D, 7) and ground truth (1, 1, G, 8), got "
                                  f"{tuple(in_shapes[0])} and {tuple(in_shapes[1])}")
        raise Unknowable("DetectionEvaluate has one row per class and one per detection: top is (1, 1, R, 5)")

    def module(self, node):
        p = node.attrs
        given = {"background_label_id": p.background_label_id, "overlap_threshold": p.overlap_threshold,
                 "evaluate_difficult_gt": p.evaluate_difficult_gt}
        defaults = {"background_label_id": 0, "overlap_threshold": 0.5, "evaluate_difficult_gt": True}
        given = {k: v for k, v in given.items() if v != defaults[k]}
        if p.name_size_file:
            given["sizes"] = self._name_sizes(node, p.name_size_file)
            if given["sizes"] and p.has("resize_param"):
                r = p.resize_param
                if r.height <= 0 or r.width <= 0:
                    raise self.fail(node, f"resize_param needs height and width > 0, got {r.height} x {r.width}")
                given["resize"] = (r.resize_mode, r.height, r.width, r.height_scale, r.width_scale)
        return call(f"{NN}:DetectionEvaluate", p.num_classes, **given)

    #: a name size file longer than this is refused (VOC's test set takes 100 KB, COCO's test-dev 600 KB)
    NAME_SIZE_BYTES = 64 << 20

    def _name_sizes(self, node, path: str) -> tuple[tuple[int, int], ...]:
        """``name height width`` per image, read as the C++ ``infile >> name >> height >> width`` loop does
        (relative to the working directory; the first entry that is not two integers ends it)."""
        from prototxt2py.fsutil import open_regular

        try:
            with open_regular(path) as f:
                text = f.read(self.NAME_SIZE_BYTES + 1)
        except OSError as e:
            raise self.fail(node, f"failed to open name size file '{path}': {e.strerror or e}") from None
        if len(text) > self.NAME_SIZE_BYTES:
            raise self.fail(node, f"name size file '{path}' is over {self.NAME_SIZE_BYTES >> 20} MB")
        words = text.split()
        sizes = []
        for i in range(0, len(words) - 2, 3):
            try:
                sizes.append((int(words[i + 1]), int(words[i + 2])))
            except ValueError:
                break
        return tuple(sizes)


@dataclass(frozen=True)
class MultiBoxLossAttrs:
    """The plain ``multibox_loss_param`` (enums as names) and the loss normalization of ``loss_param``."""

    num_classes: int
    share_location: bool
    background_label_id: int
    loc_loss_type: str  # "SMOOTH_L1" or "L2"
    conf_loss_type: str  # "SOFTMAX" or "LOGISTIC"
    loc_weight: float
    match_type: str  # "PER_PREDICTION" or "BIPARTITE"
    overlap_threshold: float
    use_difficult_gt: bool
    mining_type: str  # "MAX_NEGATIVE" or "NONE"
    neg_pos_ratio: float
    neg_overlap: float
    code_type: str
    encode_variance_in_target: bool
    map_object_to_agnostic: bool
    ignore_cross_boundary_bbox: bool
    normalization: str  # loss_param: "VALID", "FULL", "BATCH_SIZE" or "NONE"


@register
class MultiBoxLoss(LayerSpec):
    """SSD's training loss (weiliu89/caffe ``ssd``, ``MultiBoxLossLayer`` and ``bbox_util.cpp``): priors matched
    to ground truth, hard negatives mined by confidence loss, smooth L1 (or L2) on the matched boxes' encoded
    offsets plus softmax (or logistic) loss on the matched and mined priors, over the normalizer. Bottoms: loc,
    conf, priors (1, 2, P*4), ground truth (1, 1, G, 8) rows ``[image, label, instance, xmin, ymin, xmax, ymax,
    difficult]``. Refused: what the fork's SSD models do not use and no test pins (matching on decoded
    predictions, HARD_EXAMPLE mining, NMS during mining, ``bp_inside``)."""

    type = "MultiBoxLoss"
    bottoms = (4, 4)
    is_loss = True
    prediction_bottoms = 3  # loc, conf and the priors; bottom 3 is the ground truth
    force_backward_refused = frozenset({1})  # LossLayer's default, which the fork keeps
    family = FAMILY
    summary = "SSD training loss: prior matching, hard negative mining, smooth L1 + softmax over the matches"

    def attrs(self, layer):
        p = plain(layer.multibox_loss_param)
        if not p.has("num_classes") or p.num_classes < 1:
            raise ValueError("multibox_loss_param.num_classes is required (at least 1)")
        unsupported = [what for what, used in (
            ("use_prior_for_matching: false (matching decoded predictions)", not p.use_prior_for_matching),
            ("mining_type: HARD_EXAMPLE", p.mining_type == "HARD_EXAMPLE"),
            ("nms_param (NMS while mining)", p.has("nms_param") and p.nms_param.nms_threshold > 0),
            ("bp_inside", p.bp_inside)) if used]
        if unsupported:
            raise ValueError(f"MultiBoxLoss with {', '.join(unsupported)} is not implemented")
        mining = p.mining_type
        if p.has("do_neg_mining") and p.do_neg_mining != (mining != "NONE"):
            raise ValueError(f"do_neg_mining {p.do_neg_mining} contradicts mining_type {mining} (the fork checks)")
        if mining != "NONE" and not p.share_location:
            raise ValueError("negative mining needs share_location (the fork checks)")
        if p.conf_loss_type == "SOFTMAX" and not 0 <= p.background_label_id < p.num_classes:
            raise ValueError(f"background_label_id {p.background_label_id} must be in [0, {p.num_classes}) for "
                             "the softmax loss")
        loss = plain(layer.loss_param)
        if loss.has("normalization") or not loss.has("normalize"):
            normalization = loss.normalization
        else:
            normalization = "VALID" if loss.normalize else "BATCH_SIZE"
        return MultiBoxLossAttrs(
            p.num_classes, p.share_location, p.background_label_id, p.loc_loss_type, p.conf_loss_type,
            p.loc_weight, p.match_type, p.overlap_threshold, p.use_difficult_gt, mining, p.neg_pos_ratio,
            p.neg_overlap, p.code_type, p.encode_variance_in_target, p.map_object_to_agnostic,
            p.ignore_cross_boundary_bbox, normalization)

    def infer_shapes(self, node, in_shapes):
        p: MultiBoxLossAttrs = node.attrs
        loc, conf, prior, truth = in_shapes
        num_priors = legacy_shape(prior)[2] // 4
        loc_classes = 1 if p.share_location else p.num_classes
        if legacy_shape(loc)[1] != num_priors * loc_classes * 4 or legacy_shape(conf)[1] != num_priors * p.num_classes:
            raise self.fail(node, f"loc {tuple(loc)} / conf {tuple(conf)} do not match {num_priors} priors and "
                                  f"{p.num_classes} classes")
        if loc[0] != conf[0]:
            raise self.fail(node, f"loc {tuple(loc)} and conf {tuple(conf)} must have the same batch size")
        if legacy_shape(prior)[1] < 2 or count(prior) < 8 * num_priors:
            raise self.fail(node, f"priors {tuple(prior)} need boxes then variances (1, 2, P*4)")
        if count(truth) % 8 or legacy_shape(truth)[3] != 8:
            raise self.fail(node, f"ground truth {tuple(truth)} needs rows of 8 (1, 1, G, 8)")
        return [()]

    def module(self, node):
        p: MultiBoxLossAttrs = node.attrs
        defaults = MULTIBOX_DEFAULTS
        given = {k: getattr(p, k) for k in defaults if getattr(p, k) != defaults[k]}
        # propagate_down: false on loc or conf leaves that term out of the loss (the fork adds each only when
        # it propagates)
        given.update({k: False for k, i in (("loc_term", 0), ("conf_term", 1)) if i in node.stop_gradient})
        return call(f"{NN}:MultiBoxLoss", p.num_classes, **given)


#: The module's keyword defaults (the fork's proto defaults), left out of generated code.
MULTIBOX_DEFAULTS = {
    "share_location": True, "background_label_id": 0, "loc_loss_type": "SMOOTH_L1", "conf_loss_type": "SOFTMAX",
    "loc_weight": 1.0, "match_type": "PER_PREDICTION", "overlap_threshold": 0.5, "use_difficult_gt": True,
    "mining_type": "MAX_NEGATIVE", "neg_pos_ratio": 3.0, "neg_overlap": 0.5, "code_type": "CORNER",
    "encode_variance_in_target": False, "map_object_to_agnostic": False, "ignore_cross_boundary_bbox": False,
    "normalization": "VALID",
}


@register
class AnnotatedData(DataLayerSpec):
    type = "AnnotatedData"
    family = FAMILY
    tops = (1, 2)
    param_field = "data_param"
    extra_field = "annotated_data_param"
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
