"""YOLO in Caffe (eric612/MobileNet-YOLO, and the darknet YOLOv3 / YOLOv3-tiny / MobileNet-YOLOv2/v3 nets
converted for it): ``Yolov3DetectionOutput`` and YOLOv2's ``YoloDetectionOutput`` (one or two square bottoms), as
the fork's CPU forward computes them. The nearest ``Upsample`` (one bottom, ``scale``) is the SegNet spec's
one-bottom form; YOLOv2's ``Region`` / ``Reorg`` have no spec.

One image per pass: the fork gives every box image id 0 and runs one NMS over the whole batch (and its GPU path
reads later images at the first bottom's offsets), so a batch is refused. Gaussian YOLOv3's ``gaussian_box`` is
refused.

In ONNX the boxes are decoded with standard ops and suppressed by one class-agnostic ``NonMaxSuppression``
(which suppresses at IoU ``>`` its threshold: the fork's ``>=`` becomes the next float below; it never suppresses
boxes that do not overlap, so ``nms_threshold <= 0``, where the fork suppresses every later box, is refused).

Written as a third-party plugin: public plugin API only; the torch helpers in :mod:`.yolo_nn`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prototxt2py.layers import LayerSpec, Unknowable, call, plain, register

from ...lazy_numpy import np

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.yolo_nn"


@dataclass(frozen=True)
class YoloV2Attrs:
    """YOLOv2's settings; YOLOv3's add the anchor masks and scales."""

    num_classes: int
    num_box: int
    confidence_threshold: float
    nms_threshold: float
    biases: tuple[float, ...]


@dataclass(frozen=True)
class YoloAttrs(YoloV2Attrs):
    anchors_scale: tuple[int, ...]
    mask: tuple[int, ...]
    groups: int  # masks per bottom: len(mask) // mask_group_num
    scales: int  # mask_group_num: the number of bottoms


@register
class Yolov3DetectionOutput(LayerSpec):
    type = "Yolov3DetectionOutput"
    bottoms = (1, None)
    family = FAMILY
    summary = ("YOLOv3 box decoding and class-agnostic NMS over one bottom per scale (MobileNet-YOLO): rows "
               "[0, label, score, xmin, ymin, xmax, ymax]; one image per pass")

    def attrs(self, layer):
        p = plain(layer.yolov3_detection_output_param)
        if not p.has("num_classes"):
            raise ValueError("yolov3_detection_output_param.num_classes is required")
        if p.gaussian_box:
            raise ValueError("gaussian_box (Gaussian YOLOv3) is not built in")
        if p.mask_group_num < 1 or p.num_box < 1:
            raise ValueError(f"mask_group_num and num_box must be at least 1, got {p.mask_group_num} and "
                             f"{p.num_box}")
        return YoloAttrs(int(p.num_classes), int(p.num_box), float(p.confidence_threshold), float(p.nms_threshold),
                         tuple(float(b) for b in p.biases), tuple(int(s) for s in p.anchors_scale),
                         tuple(int(m) for m in p.mask), len(p.mask) // p.mask_group_num, int(p.mask_group_num))

    def infer_shapes(self, node, in_shapes):
        a: YoloAttrs = node.attrs
        if len(in_shapes) != a.scales:
            raise self.fail(node, f"mask_group_num {a.scales} needs as many bottoms, got {len(in_shapes)}")
        if len(a.anchors_scale) < a.scales:
            raise self.fail(node, f"anchors_scale has {len(a.anchors_scale)} values for {a.scales} bottoms")
        channels = a.num_box * (5 + a.num_classes)
        for t, shape in enumerate(in_shapes):
            if len(shape) != 4 or shape[1] != channels:
                raise self.fail(node, f"bottom {t} {tuple(shape)} must be (1, num_box x (5 + num_classes) = "
                                      f"{channels}, H, W)")
            if shape[0] != 1:
                raise self.fail(node, f"bottom {t} holds {shape[0]} images: the fork decodes one image per pass "
                                      "(it gives every box image id 0 and suppresses across the batch)")
            last = t * a.groups + a.num_box - 1
            if last >= len(a.mask):
                raise self.fail(node, f"bottom {t} reads mask[{last}], but mask has {len(a.mask)} values")
            for m in a.mask[t * a.groups : t * a.groups + a.num_box]:
                if 2 * m + 1 >= len(a.biases):
                    raise self.fail(node, f"mask value {m} reads biases[{2 * m + 1}], but biases has "
                                          f"{len(a.biases)} values")
        raise Unknowable("Yolov3DetectionOutput keeps a data-dependent number of boxes after NMS: top is "
                         "(1, 1, kept, 7)")

    def module(self, node):
        a: YoloAttrs = node.attrs
        return call(f"{NN}:Yolov3DetectionOutput", a.num_classes, a.num_box, a.confidence_threshold,
                    a.nms_threshold, a.biases, a.anchors_scale, a.mask, a.groups)

    def onnx_top_shapes(self, node):
        return [(1, 1, "detections", 7)]

    def to_onnx(self, node, ctx):
        """Candidates in the fork's order (bottom, position, anchor, class) with their boxes, scores and labels,
        one ``NonMaxSuppression`` over all of them, the kept rows in score order."""
        a: YoloAttrs = node.attrs
        parts = [_yolo_candidates(ctx, a, t, *ctx.in_shape(t)[2:]) for t in range(a.scales)]
        total = sum(ctx.in_shape(t)[2] * ctx.in_shape(t)[3] for t in range(a.scales)) * a.num_box * a.num_classes
        _onnx_nms_rows(ctx, parts, total, a.nms_threshold, np.float32(a.confidence_threshold))


def _onnx_nms_rows(ctx, parts: list[tuple[str, str, str]], total: int, nms_threshold: float, score_above) -> None:
    """The fork's sort, class-agnostic NMS and rows over candidates ``(boxes (K, 4) centre form, scores (K,),
    labels (K,) as class + 1)``: one ``NonMaxSuppression`` (IoU > the float below ``nms_threshold``: the fork's
    ``>=``; scores ``> score_above``), the kept rows in score order, Caffe's -1 row when none is kept (the rows with
    that row appended, cut to ``max(kept, 1)``)."""
    if nms_threshold <= 0:
        ctx.unsupported("nms_threshold <= 0 suppresses boxes that do not overlap, which ONNX's "
                        "NonMaxSuppression never does")
    box, score, label = (ctx.add("Concat", list(column), axis=0) for column in zip(*parts, strict=True))
    below = np.nextafter(np.float32(nms_threshold), np.float32(-np.inf))
    selected = ctx.add("NonMaxSuppression", [
        ctx.add("Unsqueeze", [box, ctx.ints([0])]),
        ctx.reshape(score, (total,), [1, 1, total]),
        ctx.const(np.array([total], np.int64), "max_boxes"),
        ctx.const(np.array([below], np.float32), "iou"),
        ctx.const(np.array([score_above], np.float32), "score_threshold"),
    ], center_point_box=1)
    kept = ctx.add("Squeeze", [ctx.slice(selected, [2], [3], [1]), ctx.ints([1])])
    kept_box = ctx.add("Gather", [box, kept], axis=0)
    x, y, bw, bh = (ctx.slice(kept_box, [i], [i + 1], [1]) for i in range(4))
    half_w, half_h = ctx.add("Div", [bw, ctx.scalar(2.0)]), ctx.add("Div", [bh, ctx.scalar(2.0)])
    corners = [ctx.add("Sub", [x, half_w]), ctx.add("Sub", [y, half_h]), ctx.add("Add", [x, half_w]),
               ctx.add("Add", [y, half_h])]
    kept_score = ctx.add("Unsqueeze", [ctx.add("Gather", [score, kept], axis=0), ctx.ints([1])])
    kept_label = ctx.add("Unsqueeze", [ctx.add("Gather", [label, kept], axis=0), ctx.ints([1])])
    image = ctx.add("Mul", [kept_score, ctx.scalar(0.0)])
    rows = ctx.add("Concat", [image, kept_label, kept_score, *corners], axis=1)
    none = ctx.const(np.array([[0, -1, -1, -1, -1, -1, -1]], np.float32), "no_detection")
    count = ctx.add("Max", [ctx.add("Shape", [kept]), ctx.ints([1])])
    rows = ctx.add("Slice", [ctx.add("Concat", [rows, none], axis=0), ctx.ints([0]), count, ctx.ints([0])])
    ctx.add("Reshape", [rows, ctx.ints([1, 1, -1, 7])], ctx.output(0))


def _yolo_candidates(ctx, a: YoloAttrs, t: int, h: int, w: int) -> tuple[str, str, str]:
    """One bottom's candidates ``(S * A * C, 4)`` boxes (centre, size), scores and labels (class + 1, float),
    positions outermost, then anchors, then classes, as the fork visits them."""
    length, size, anchors = 5 + a.num_classes, h * w, a.num_box
    x = ctx.reshape(ctx.input(t), ctx.in_shape(t), [anchors, length, size])
    sig = ctx.add("Sigmoid", [x])
    net_w, net_h = w * a.anchors_scale[t], h * a.anchors_scale[t]
    masks = [a.mask[t * a.groups + n] for n in range(anchors)]
    bias_w = np.array([a.biases[2 * m] for m in masks], np.float32).reshape(anchors, 1, 1)
    bias_h = np.array([a.biases[2 * m + 1] for m in masks], np.float32).reshape(anchors, 1, 1)
    pos = np.arange(size)
    cols = (pos % w).astype(np.float32).reshape(1, 1, size)
    rows = (pos // w).astype(np.float32).reshape(1, 1, size)
    bx = ctx.add("Div", [ctx.add("Add", [ctx.const(cols, "cols"), ctx.slice(sig, [0], [1], [1])]), ctx.scalar(w)])
    by = ctx.add("Div", [ctx.add("Add", [ctx.const(rows, "rows"), ctx.slice(sig, [1], [2], [1])]), ctx.scalar(h)])
    bw = ctx.add("Div", [ctx.add("Mul", [ctx.add("Exp", [ctx.slice(x, [2], [3], [1])]), ctx.const(bias_w, "bias_w")]),
                         ctx.scalar(net_w)])
    bh = ctx.add("Div", [ctx.add("Mul", [ctx.add("Exp", [ctx.slice(x, [3], [4], [1])]), ctx.const(bias_h, "bias_h")]),
                         ctx.scalar(net_h)])
    box = ctx.add("Concat", [bx, by, bw, bh], axis=1)  # (A, 4, S)
    box = ctx.add("Transpose", [box], perm=[2, 0, 1])  # (S, A, 4)
    box = ctx.add("Expand", [ctx.add("Unsqueeze", [box, ctx.ints([2])]),
                             ctx.ints([size, anchors, a.num_classes, 4])])
    box = ctx.reshape(box, (size, anchors, a.num_classes, 4), [size * anchors * a.num_classes, 4])
    score = ctx.add("Mul", [ctx.slice(sig, [5], [length], [1]), ctx.slice(sig, [4], [5], [1])])  # (A, C, S)
    score = ctx.reshape(ctx.add("Transpose", [score], perm=[2, 0, 1]), (size, anchors, a.num_classes),
                        [size * anchors * a.num_classes])
    label = np.tile(np.arange(1, a.num_classes + 1, dtype=np.float32), size * anchors)
    return box, score, ctx.const(label, "labels")


@register
class YoloDetectionOutput(LayerSpec):
    type = "YoloDetectionOutput"
    bottoms = (1, 2)
    family = FAMILY
    summary = ("YOLOv2 box decoding (softmax classes, one box per cell and anchor) and class-agnostic NMS over one "
               "or two square bottoms (MobileNet-YOLO); one image per pass")

    def attrs(self, layer):
        p = plain(layer.yolo_detection_output_param)
        if not p.has("num_classes"):
            raise ValueError("yolo_detection_output_param.num_classes is required")
        if p.coords != 4:
            raise ValueError(f"coords {p.coords} is not supported (the fork decodes 4)")
        if p.num_box < 1:
            raise ValueError(f"num_box must be at least 1, got {p.num_box}")
        return YoloV2Attrs(int(p.num_classes), int(p.num_box), float(p.confidence_threshold),
                           float(p.nms_threshold), tuple(float(b) for b in p.biases))

    def infer_shapes(self, node, in_shapes):
        a: YoloV2Attrs = node.attrs
        channels = a.num_box * (5 + a.num_classes)
        for t, shape in enumerate(in_shapes):
            if len(shape) != 4 or shape[1] != channels:
                raise self.fail(node, f"bottom {t} {tuple(shape)} must be (1, num_box x (5 + num_classes) = "
                                      f"{channels}, S, S)")
            if shape[2] != shape[3]:
                raise self.fail(node, f"bottom {t} is {shape[2]}x{shape[3]}: the fork takes its width as the side "
                                      "of a square grid")
            if shape[0] != 1:
                raise self.fail(node, f"bottom {t} holds {shape[0]} images: the fork decodes one image per pass "
                                      "(it gives every box image id 0 and suppresses across the batch)")
        if len(a.biases) < 2 * a.num_box:
            raise self.fail(node, f"{a.num_box} anchors need {2 * a.num_box} biases, got {len(a.biases)}")
        raise Unknowable("YoloDetectionOutput keeps a data-dependent number of boxes after NMS: top is "
                         "(1, 1, kept, 7)")

    def module(self, node):
        a: YoloV2Attrs = node.attrs
        return call(f"{NN}:YoloDetectionOutput", a.num_classes, a.num_box, a.confidence_threshold, a.nms_threshold,
                    a.biases)

    def onnx_top_shapes(self, node):
        return [(1, 1, "detections", 7)]

    def to_onnx(self, node, ctx):
        """One candidate per cell and anchor (the softmax's best class), kept at ``>= confidence_threshold``
        (``NonMaxSuppression``'s ``>`` the float below), then YOLOv3's NMS and rows."""
        a: YoloV2Attrs = node.attrs
        parts = [_yolo_v2_candidates(ctx, a, t, ctx.in_shape(t)[2]) for t in range(ctx.num_inputs)]
        total = sum(ctx.in_shape(t)[2] ** 2 for t in range(ctx.num_inputs)) * a.num_box
        score_above = np.nextafter(np.float32(a.confidence_threshold), np.float32(-np.inf))
        _onnx_nms_rows(ctx, parts, total, a.nms_threshold, score_above)


def _yolo_v2_candidates(ctx, a: YoloV2Attrs, t: int, side: int) -> tuple[str, str, str]:
    """One bottom's ``S * S * A`` candidates (cells outermost, then anchors): boxes, scores, labels (class + 1)."""
    length, size, anchors = 5 + a.num_classes, side * side, a.num_box
    x = ctx.reshape(ctx.input(t), ctx.in_shape(t), [anchors, length, size])
    x = ctx.add("Transpose", [x], perm=[2, 0, 1])  # (S*S, A, L)
    sig = ctx.add("Sigmoid", [ctx.slice(x, [0], [2], [2])])
    pos = np.arange(size)
    cells = np.stack([pos % side, pos // side], -1).astype(np.float32).reshape(size, 1, 2)
    centre = ctx.add("Div", [ctx.add("Add", [ctx.const(cells, "cells"), sig]), ctx.scalar(side)])
    bias = np.asarray(a.biases[: 2 * anchors], np.float32).reshape(1, anchors, 2)
    extent = ctx.add("Div", [ctx.add("Mul", [ctx.add("Exp", [ctx.slice(x, [2], [4], [2])]), ctx.const(bias, "bias")]),
                             ctx.scalar(side)])
    box = ctx.reshape(ctx.add("Concat", [centre, extent], axis=2), (size, anchors, 4), [size * anchors, 4])
    probs = ctx.add("Softmax", [ctx.slice(x, [5], [length], [2])], axis=2)
    best = ctx.reduce("ReduceMax", probs, [2], keepdims=False)
    label = ctx.add("Cast", [ctx.add("ArgMax", [probs], axis=2, keepdims=0)], to=ctx.FLOAT)
    label = ctx.add("Add", [label, ctx.scalar(1.0)])
    obj = ctx.add("Sigmoid", [ctx.add("Squeeze", [ctx.slice(x, [4], [5], [2]), ctx.ints([2])])])
    score = ctx.add("Mul", [obj, best])
    flat = [size * anchors]
    return box, ctx.reshape(score, (size, anchors), flat), ctx.reshape(label, (size, anchors), flat)
