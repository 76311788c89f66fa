"""Standard-op ONNX graphs for SSD's ``DetectionOutput``, R-FCN's ``PSROIPooling`` and py-faster-rcnn's
``ProposalLayer``.

Plain functions over the exporter's :class:`~prototxt2py.backends.onnx_export.OnnxContext`; the layer specs in
:mod:`.ssd` and :mod:`.rcnn` delegate to them. Only numpy is imported, so the layer modules stay torch-
and onnx-free.

DetectionOutput (weiliu89/caffe ``ssd``: ``DetectionOutputLayer::Forward_cpu``, ``bbox_util.cpp``) maps onto
ONNX ops whose definitions coincide with SSD's on every point that decides which boxes are kept:

* ``GetMaxScoreIndex`` keeps scores ``> confidence_threshold``, stable-sorts them descending and keeps
  ``top_k``: ``TopK`` breaks ties by the lower index (a stable sort), and thresholding after it keeps the
  same set, so ``TopK`` (k = ``top_k`` or all priors) runs first and ``NonMaxSuppression``'s
  ``score_threshold`` (also a strict ``>``) filters;
* ``ApplyNMSFast`` keeps a box whose ``JaccardOverlap`` with every kept box is ``<= nms_threshold`` (0 for
  a box whose corners cross, see :func:`_nms_boxes`):
  ``NonMaxSuppression`` suppresses at IoU ``> iou_threshold``, visits candidates by score with ties to the
  lower index, and computes IoU in float32 as ``inter / (area1 + area2 - inter)`` (SSD's formula; the
  coordinate order [x1, y1, x2, y2] versus ONNX's [y1, x1, y2, x2] only swaps the factors of a product).
  Boxes differ per class after ``TopK``, so each (image, class) becomes its own NMS batch entry;
* the adaptive threshold (``eta < 1`` with ``nms_threshold > 0.5``) has no ONNX equivalent and is refused.

Rows come out in Caffe's order: image, then label ascending (``std::map``), then NMS order (score
descending, ties by prior index). ``keep_top_k`` ranks an image's kept boxes by score with ties in that
order (the runtime's stable sort; Caffe's ``std::sort`` leaves exact ties unspecified), and the survivors
keep Caffe's row order. With no detection at all the output is Caffe's ``(1, 1, N, 7)`` of -1 with the image
index in column 0. Box decoding follows ``DecodeBBox`` operation by operation in float32, with
``CENTER_SIZE``'s ``exp`` and corner arithmetic in double as the C++ does (``float`` width and height).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...lazy_numpy import np

if TYPE_CHECKING:  # pragma: no cover
    from prototxt2py.ir import Node

#: ONNX ``TensorProto.DOUBLE`` (the context names FLOAT and INT64 only; onnx is not imported here).
DOUBLE = 11


def _legacy(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``num()/channels()/height()/width()``."""
    return tuple(shape[i] if i < len(shape) else 1 for i in range(4))  # type: ignore[return-value]


def _col(ctx: Any, x: str, i: int) -> str:
    """Coordinate ``i`` of boxes ``(..., 4)``, keeping the last axis."""
    return ctx.slice(x, [i], [i + 1], [-1])


def _double(ctx: Any, x: str) -> str:
    return ctx.add("Cast", [x], to=DOUBLE)


def _float(ctx: Any, x: str) -> str:
    return ctx.add("Cast", [x], to=ctx.FLOAT)


def _decode(ctx: Any, a: Any, loc: str, prior: str, var: str) -> str:
    """SSD's ``DecodeBBox`` of loc ``(N, L, P, 4)`` against priors and variances ``(P, 4)`` (unclipped)."""
    encoded = a.variance_encoded_in_target  # the C++ then leaves the variances out; x * 1 would be the same

    def scaled(x: str) -> str:
        return x if encoded else ctx.add("Mul", [var, x])

    if a.code_type == "CORNER":
        return ctx.add("Add", [prior, scaled(loc)])
    x1, y1, x2, y2 = (_col(ctx, prior, i) for i in range(4))
    pw, ph = ctx.add("Sub", [x2, x1]), ctx.add("Sub", [y2, y1])
    if a.code_type == "CORNER_SIZE":
        size = ctx.add("Concat", [pw, ph, pw, ph], axis=-1)
        return ctx.add("Add", [prior, ctx.add("Mul", [scaled(loc), size])])
    two = ctx.scalar(2.0)
    if a.normalized_bbox:
        pcx = ctx.add("Div", [ctx.add("Add", [x1, x2]), two])  # float halving is exact, as the double one
        pcy = ctx.add("Div", [ctx.add("Add", [y1, y2]), two])
    else:  # OpenCV: sides count both edges, centre xmin + side / 2 (the double sum, stored as float)
        one = ctx.scalar(1.0)
        pw, ph = ctx.add("Add", [pw, one]), ctx.add("Add", [ph, one])
        half = ctx.double(0.5, "half")
        pcx, pcy = (_float(ctx, ctx.add("Add", [_double(ctx, c), ctx.add("Mul", [_double(ctx, side), half])]))
                    for c, side in ((x1, pw), (y1, ph)))
    v = scaled(loc)
    cx = ctx.add("Add", [ctx.add("Mul", [_col(ctx, v, 0), pw]), pcx])
    cy = ctx.add("Add", [ctx.add("Mul", [_col(ctx, v, 1), ph]), pcy])

    def side(i: int, prior_side: str) -> str:
        """``float w = exp(v * loc) * prior_w`` with the double ``exp``, then halved in double."""
        w = _float(ctx, ctx.add("Mul", [ctx.add("Exp", [_double(ctx, _col(ctx, v, i))]), _double(ctx, prior_side)]))
        return ctx.add("Div", [_double(ctx, w), _double(ctx, two)])

    half_w, half_h = side(2, pw), side(3, ph)
    cx, cy = _double(ctx, cx), _double(ctx, cy)
    corners = [ctx.add("Sub", [cx, half_w]), ctx.add("Sub", [cy, half_h]), ctx.add("Add", [cx, half_w]),
               ctx.add("Add", [cy, half_h])]
    return _float(ctx, ctx.add("Concat", corners, axis=-1))


def _nms_boxes(ctx: Any, boxes: str, normalized: bool = True) -> str:
    """The boxes ``NonMaxSuppression`` compares: SSD's ``JaccardOverlap`` of a box whose corners cross
    (``xmin > xmax`` or ``ymin > ymax``, from CORNER/CORNER_SIZE offsets) is 0 with every box, while ONNX
    reorders corners first; such a box becomes the point at its first corner, whose overlap is 0 there too.
    Pixel boxes (``normalized_bbox: false``) count both edges: their far corners move out by one."""
    if not normalized:
        boxes = ctx.add("Add", [boxes, ctx.const(np.array([0, 0, 1, 1], np.float32), "far_corners")])
    x1, y1, x2, y2 = (_col(ctx, boxes, i) for i in range(4))
    crossed = ctx.add("Or", [ctx.add("Greater", [x1, x2]), ctx.add("Greater", [y1, y2])])
    point = ctx.add("Concat", [x1, y1, x1, y1], axis=-1)
    return ctx.add("Where", [crossed, point, boxes])


def _sort(ctx: Any, values: str, count: str, largest: bool) -> tuple[str, str]:
    """Stable sort of a 1-D tensor of ``count`` elements: (sorted values, permutation)."""
    order = ctx.tmp("order")
    out = ctx.add("TopK", [values, count], [ctx.tmp("sorted"), order], axis=0, largest=int(largest), sorted=1)
    return out, order


def _rank_in_image(ctx: Any, image: str, score: str, count: str, batch: str) -> tuple[str, str]:
    """For kept boxes in Caffe's row order: the permutation sorting them by (image, score descending, row)
    and each sorted box's rank by score within its image."""
    _, by_score = _sort(ctx, score, count, largest=True)
    image_by_score = ctx.add("Gather", [image, by_score])
    _, by_image = _sort(ctx, image_by_score, count, largest=False)
    perm = ctx.add("Gather", [by_score, by_image])
    sorted_image = ctx.add("Gather", [image, perm])
    # first position of each image in the sorted list: exclusive cumulative counts per image
    images = ctx.add("Range", [ctx.const(np.int64(0)), ctx.add("Squeeze", [batch, ctx.ints([0])]),
                               ctx.const(np.int64(1))])
    hits = ctx.add("Equal", [ctx.add("Unsqueeze", [sorted_image, ctx.ints([1])]),
                             ctx.add("Unsqueeze", [images, ctx.ints([0])])])
    counts = ctx.add("ReduceSum", [ctx.add("Cast", [hits], to=ctx.INT64), ctx.ints([0])], keepdims=0)
    starts = ctx.add("CumSum", [counts, ctx.const(np.int64(0))], exclusive=1)
    position = ctx.add("Range", [ctx.const(np.int64(0)), ctx.add("Squeeze", [count, ctx.ints([0])]),
                                 ctx.const(np.int64(1))])
    rank = ctx.add("Sub", [position, ctx.add("Gather", [starts, sorted_image])])
    return perm, rank


def detection_output(node: Node, ctx: Any) -> None:
    """``DetectionOutput`` as ONNX ops (see the module docstring); top ``(1, 1, kept, 7)``."""
    a = node.attrs
    if a.eta < 1 and a.nms_threshold > 0.5:
        ctx.unsupported(f"adaptive NMS (eta {a.eta} < 1 with nms_threshold {a.nms_threshold} > 0.5) has no "
                        f"standard ONNX equivalent")
    num_priors = _legacy(ctx.in_shape(2))[2] // 4
    num_loc, num_classes = a.num_loc_classes, a.num_classes
    labels = [c for c in range(num_classes) if c != a.background_label_id]
    loc_in, conf_in = ctx.input(0), ctx.input(1)
    batch = ctx.slice(ctx.add("Shape", [loc_in]), [0], [1], [0])  # (1,) int64
    if not labels or a.top_k == 0:  # no class besides the background, or no candidate: Caffe's empty rows
        return _finish(ctx, ctx.const(np.zeros((0, 7), np.float32), "none"), batch)
    # the number of priors as an int list (static) or a (1,) tensor: priors whose count is known only at run
    # time (SSD with symbolic sizes; Faster R-CNN's ROIs as priors, after a proposal layer) take it from the
    # prior blob's third axis
    p_dims: list[int] | str = [num_priors]
    if ctx.sizes_vary or ctx.variable_first:
        if len(ctx.in_shape(2)) < 3:
            ctx.unsupported(f"priors {tuple(ctx.in_shape(2))} with a size known only at run time need 3 axes")
        p_dims = ctx.add("Div", [ctx.dims(ctx.input(2), 2, 3), ctx.ints([4])])

    # priors (Caffe reads the first 2 * P * 4 values: boxes, then variances; without variances (OpenCV's
    # (1, 1, P * 4) priors) only with variance_encoded_in_target, which never reads them)
    rows = 1 if _legacy(ctx.in_shape(2))[1] == 1 else 2
    prior = ctx.add("Reshape", [ctx.input(2), ctx.ints([-1])])
    size = ctx.add("Mul", [p_dims, ctx.ints([4 * rows])]) if isinstance(p_dims, str) else [4 * rows * num_priors]
    prior = ctx.add("Slice", [prior, ctx.ints([0]), ctx.concat_ints([size]), ctx.ints([0])])
    prior = ctx.add("Reshape", [prior, ctx.concat_ints([[rows], p_dims, [4]])])
    boxes_p = ctx.add("Gather", [prior, ctx.const(np.int64(0))], axis=0)
    var_p = boxes_p if rows == 1 else ctx.add("Gather", [prior, ctx.const(np.int64(1))], axis=0)
    loc = ctx.add("Reshape", [loc_in, ctx.concat_ints([[-1], p_dims, [num_loc, 4]])])
    loc = ctx.add("Transpose", [loc], perm=[0, 2, 1, 3])  # (N, L, P, 4)
    decoded = _decode(ctx, a, loc, boxes_p, var_p)

    # candidates per (image, class): scores sorted (stable), top_k of them, their boxes
    conf = ctx.add("Reshape", [conf_in, ctx.concat_ints([[-1], p_dims, [num_classes]])])
    conf = ctx.add("Transpose", [conf], perm=[0, 2, 1])  # (N, C, P)
    label_table = ctx.const(np.array(labels, np.int64), "labels")
    if len(labels) < num_classes:
        conf = ctx.add("Gather", [conf, label_table], axis=1)
        if num_loc > 1:
            decoded = ctx.add("Gather", [decoded, label_table], axis=1)
    n_lab = len(labels)
    if isinstance(p_dims, str):  # k as a (1,) tensor
        k_dims = p_dims if a.top_k < 0 else ctx.add("Min", [p_dims, ctx.ints([a.top_k])])
        k_scalar = ctx.add("Squeeze", [k_dims, ctx.ints([0])])
    else:
        k = num_priors if a.top_k < 0 else min(a.top_k, num_priors)
        k_dims, k_scalar = ctx.ints([k]), ctx.const(np.int64(k))
    scores = ctx.tmp("scores")
    index = ctx.tmp("index")
    ctx.add("TopK", [conf, k_dims], [scores, index], axis=-1, largest=1, sorted=1)  # (N, C', K)
    if num_loc == 1:
        decoded = ctx.add("Expand", [decoded, ctx.ints([1, n_lab, 1, 1])])
    gather_at = ctx.add("Expand", [ctx.add("Unsqueeze", [index, ctx.ints([3])]), ctx.ints([1, 1, 1, 4])])
    cand = ctx.add("GatherElements", [decoded, gather_at], axis=2)  # (N, C', K, 4)

    # NMS with each (image, class) as its own batch entry
    nms_in = [_nms_boxes(ctx, ctx.add("Reshape", [cand, ctx.concat_ints([[-1], k_dims, [4]])]), a.normalized_bbox),
              ctx.add("Reshape", [scores, ctx.concat_ints([[-1, 1], k_dims])]),
              k_dims, ctx.const(np.array([min(a.nms_threshold, 1.0)], np.float32), "iou")]
    if a.confidence_threshold > -3.4e38:
        nms_in.append(ctx.const(np.array([a.confidence_threshold], np.float32), "score_threshold"))
    selected = ctx.add("NonMaxSuppression", nms_in)  # (M, 3): entry, 0, rank among the candidates
    entry = ctx.add("Squeeze", [ctx.slice(selected, [0], [1], [1]), ctx.ints([1])])
    rank = ctx.add("Squeeze", [ctx.slice(selected, [2], [3], [1]), ctx.ints([1])])
    # Caffe's row order = (image, label, NMS order) = flat candidate index, ascending
    flat = ctx.add("Add", [ctx.add("Mul", [entry, k_scalar]), rank])
    count = ctx.add("Shape", [flat])
    flat, _ = _sort(ctx, flat, count, largest=False)
    if a.keep_top_k > -1:
        entry = ctx.add("Div", [flat, k_scalar])
        image = ctx.add("Div", [entry, ctx.const(np.int64(n_lab))])
        score = ctx.add("Gather", [ctx.add("Reshape", [scores, ctx.ints([-1])]), flat])
        perm, place = _rank_in_image(ctx, image, score, count, batch)
        kept = ctx.add("Compress", [perm, ctx.add("Less", [place, ctx.const(np.int64(a.keep_top_k))])], axis=0)
        kept, _ = _sort(ctx, kept, ctx.add("Shape", [kept]), largest=False)  # back to Caffe's row order
        flat = ctx.add("Gather", [flat, kept])
    entry = ctx.add("Div", [flat, k_scalar])
    image = ctx.add("Div", [entry, ctx.const(np.int64(n_lab))])
    label = ctx.add("Gather", [label_table, ctx.add("Mod", [entry, ctx.const(np.int64(n_lab))])])
    score = ctx.add("Gather", [ctx.add("Reshape", [scores, ctx.ints([-1])]), flat])
    box = ctx.add("Gather", [ctx.add("Reshape", [cand, ctx.ints([-1, 4])]), flat], axis=0)

    def column(x: str) -> str:
        return ctx.add("Unsqueeze", [x, ctx.ints([1])])

    rows = ctx.add("Concat", [column(_float(ctx, image)), column(_float(ctx, label)), column(score), box], axis=1)
    _finish(ctx, rows, batch)


def _finish(ctx: Any, rows: str, batch: str) -> None:
    """``rows`` as ``(1, 1, M, 7)``, or Caffe's "no detections" rows ``[i, -1, ..., -1]`` per image when M = 0."""
    images = ctx.add("Range", [ctx.const(np.float32(0.0)), _float(ctx, ctx.add("Squeeze", [batch, ctx.ints([0])])),
                               ctx.const(np.float32(1.0))])
    minus = ctx.add("Expand", [ctx.const(np.full((1, 6), -1.0, np.float32), "minus"),
                               ctx.add("Concat", [batch, ctx.ints([6])], axis=0)])
    fake = ctx.add("Concat", [ctx.add("Unsqueeze", [images, ctx.ints([1])]), minus], axis=1)
    found = ctx.slice(ctx.add("Shape", [rows]), [0], [1], [0])
    none = ctx.add("Cast", [ctx.add("Equal", [found, ctx.ints([0])])], to=ctx.INT64)
    end = ctx.add("Add", [found, ctx.add("Mul", [none, batch])])
    both = ctx.add("Concat", [rows, fake], axis=0)
    out = ctx.add("Slice", [both, ctx.ints([0]), end, ctx.ints([0])])
    ctx.add("Reshape", [out, ctx.ints([1, 1, -1, 7])], ctx.output(0))


# ---------------------------------------------------------------------------------------------------------
# PSROIPooling (R-FCN)
# ---------------------------------------------------------------------------------------------------------
def psroi_pooling(node: Node, ctx: Any) -> None:
    """R-FCN's position-sensitive average pooling as the runtime computes it (see
    :class:`.rcnn_nn.PSROIPooling`): corners rounded half away from zero, bin edges from float32
    sizes with ``p * bin + start`` rounded once, floor/ceil and clamped, then each bin's mean from a float64
    summed-area table (empty bins 0). Bin (ph, pw) of output channel d reads input channel
    ``(d * G + ph) * G + pw``."""
    p = node.attrs
    g, d = p.group_size, p.output_dim
    _, _, height, width = _legacy(ctx.in_shape(0))
    rois = ctx.add("Reshape", [ctx.input(1), ctx.ints([0, -1])])
    batch = ctx.add("Cast", [ctx.slice(rois, [0], [1], [1])], to=ctx.INT64)  # (R, 1), float -> int truncates
    corners = _double(ctx, ctx.slice(rois, [1], [5], [1]))  # (R, 4)
    half = ctx.add("Cast", [ctx.scalar(0.5)], to=DOUBLE)
    rounded = ctx.add("Mul", [ctx.add("Sign", [corners]),
                              ctx.add("Floor", [ctx.add("Add", [ctx.add("Abs", [corners]), half])])])
    rounded = _float(ctx, rounded)
    scale = ctx.scalar(p.spatial_scale)
    x1, y1, x2, y2 = (ctx.slice(rounded, [i], [i + 1], [1]) for i in range(4))  # (R, 1) each
    one = ctx.scalar(1.0)
    start_w, start_h = ctx.add("Mul", [x1, scale]), ctx.add("Mul", [y1, scale])
    end_w = ctx.add("Mul", [ctx.add("Add", [x2, one]), scale])
    end_h = ctx.add("Mul", [ctx.add("Add", [y2, one]), scale])
    tenth, groups = ctx.scalar(0.1), ctx.scalar(float(g))
    bin_w = ctx.add("Div", [ctx.add("Max", [ctx.add("Sub", [end_w, start_w]), tenth]), groups])
    bin_h = ctx.add("Div", [ctx.add("Max", [ctx.add("Sub", [end_h, start_h]), tenth]), groups])
    steps = ctx.add("Cast", [ctx.const(np.arange(g, dtype=np.float32).reshape(1, g), "bins")], to=DOUBLE)
    steps1 = ctx.add("Cast", [ctx.const(np.arange(1, g + 1, dtype=np.float32).reshape(1, g), "bins1")], to=DOUBLE)

    def edges(start: str, size: str, limit: int) -> tuple[str, str]:
        s, z = _double(ctx, start), _double(ctx, size)
        lo = _float(ctx, ctx.add("Add", [ctx.add("Mul", [steps, z]), s]))
        hi = _float(ctx, ctx.add("Add", [ctx.add("Mul", [steps1, z]), s]))
        zero, top = ctx.scalar(0.0), ctx.scalar(float(limit))

        def clamp(x: str) -> str:
            return ctx.add("Cast", [ctx.add("Min", [ctx.add("Max", [x, zero]), top])], to=ctx.INT64)

        return clamp(ctx.add("Floor", [lo])), clamp(ctx.add("Ceil", [hi]))  # (R, G) each

    hs, he = edges(start_h, bin_h, height)
    ws, we = edges(start_w, bin_w, width)
    x = _double(ctx, ctx.input(0))
    sat = ctx.add("CumSum", [ctx.add("CumSum", [x, ctx.const(np.int64(2))]), ctx.const(np.int64(3))])
    sat = ctx.add("Pad", [sat, ctx.ints([0, 0, 1, 1, 0, 0, 0, 0])])  # (B, C, H + 1, W + 1)
    sat = ctx.add("Reshape", [sat, ctx.ints([-1])])
    # flat index of (image, channel of output (d, ph, pw), row, column) in the table, by broadcasting
    channels = (np.arange(d).reshape(d, 1, 1) * g + np.arange(g).reshape(1, g, 1)) * g + np.arange(g).reshape(1, 1, g)
    plane = ctx.add("Add", [ctx.add("Mul", [ctx.add("Reshape", [batch, ctx.ints([-1, 1, 1, 1])]),
                                            ctx.const(np.int64(d * g * g))]),
                            ctx.const(channels.reshape(1, d, g, g).astype(np.int64), "channels")])  # (R, D, G, G)
    plane = ctx.add("Mul", [plane, ctx.const(np.int64((height + 1) * (width + 1)))])

    def rows(t: str) -> str:
        return ctx.add("Mul", [ctx.add("Reshape", [t, ctx.ints([-1, 1, g, 1])]), ctx.const(np.int64(width + 1))])

    def cols(t: str) -> str:
        return ctx.add("Reshape", [t, ctx.ints([-1, 1, 1, g])])

    def at(h: str, w: str) -> str:
        return ctx.add("Gather", [sat, ctx.add("Add", [ctx.add("Add", [plane, h]), w])])  # (R, D, G, G)

    h0, h1, w0, w1 = rows(hs), rows(he), cols(ws), cols(we)
    total = ctx.add("Add", [ctx.add("Sub", [ctx.add("Sub", [at(h1, w1), at(h0, w1)]), at(h1, w0)]), at(h0, w0)])
    area = ctx.add("Mul", [ctx.add("Sub", [ctx.add("Reshape", [he, ctx.ints([-1, 1, g, 1])]),
                                           ctx.add("Reshape", [hs, ctx.ints([-1, 1, g, 1])])]),
                           ctx.add("Sub", [ctx.add("Reshape", [we, ctx.ints([-1, 1, 1, g])]),
                                           ctx.add("Reshape", [ws, ctx.ints([-1, 1, 1, g])])])])
    empty = ctx.add("LessOrEqual", [area, ctx.const(np.int64(0))])
    safe = _double(ctx, ctx.add("Max", [area, ctx.const(np.int64(1))]))
    mean = ctx.add("Div", [total, safe])
    zero = ctx.add("Cast", [ctx.scalar(0.0)], to=DOUBLE)
    ctx.add("Cast", [ctx.add("Where", [empty, zero, mean])], ctx.output(0), to=ctx.FLOAT)


def rpn_proposals(node: Node, ctx: Any, pre: int, post: int, threshold: float, min_size: float) -> None:
    """py-faster-rcnn's ``ProposalLayer`` as ONNX ops, step for step as :class:`.rcnn_nn.ProposalLayer`: the
    anchors shifted over the score map's run-time size (in double, as the module), the exponential in double;
    the size filter is ``NonZero``; the cut to ``pre`` is ``TopK`` over the reversed scores (``TopK`` puts the
    lower index first on ties, numpy's reversed argsort the higher); the NMS is ``NonMaxSuppression`` over boxes
    whose far corners move out by one pixel (Caffe counts both edges), fed in the reverse of that order so that
    its own tie rule (lower index first) visits tied boxes as the module does. ROIs come out with a first axis
    known only at run time; nothing depends on the export's input size."""
    a = node.attrs
    count = len(a.anchors)
    # anchors at every position of the score map: (H * W * A, 4), float64 then float32
    dims, stride = ctx.shape_of(ctx.input(0)), ctx.double(a.feat_stride, "stride")

    def shifts(axis: int) -> str:
        size = ctx.add("Squeeze", [ctx.slice(dims, [axis], [axis + 1], [0]), ctx.ints([0])])
        steps = ctx.add("Range", [ctx.const(np.int64(0)), size, ctx.const(np.int64(1))])
        return ctx.add("Mul", [_double(ctx, steps), stride])

    sy = ctx.add("Unsqueeze", [shifts(2), ctx.ints([1])])  # (H, 1)
    sx = ctx.add("Unsqueeze", [shifts(3), ctx.ints([0])])  # (1, W)
    plane = ctx.slice(dims, [2], [4], [0])
    gx, gy = (ctx.add("Expand", [t, plane]) for t in (sx, sy))
    per_position = ctx.add("Concat", [ctx.add("Reshape", [t, ctx.ints([-1, 1, 1])]) for t in (gx, gy, gx, gy)],
                           axis=2)  # (H * W, 1, 4)
    anchors = ctx.add("Add", [per_position, ctx.double(np.array(a.anchors).reshape(1, count, 4), "anchors")])
    anchors = _float(ctx, ctx.add("Reshape", [anchors, ctx.ints([-1, 4])]))
    x1a, y1a, x2a, y2a = (ctx.add("Gather", [anchors, ctx.const(np.int64(i))], axis=1) for i in range(4))
    one, half = ctx.scalar(1.0), ctx.scalar(0.5)
    w = ctx.add("Add", [ctx.add("Sub", [x2a, x1a]), one])
    h = ctx.add("Add", [ctx.add("Sub", [y2a, y1a]), one])
    cx = ctx.add("Add", [x1a, ctx.add("Mul", [half, w])])
    cy = ctx.add("Add", [y1a, ctx.add("Mul", [half, h])])

    fg = ctx.slice(ctx.input(0), [count], [2 * count], [1])
    fg = ctx.add("Reshape", [ctx.add("Transpose", [fg], perm=[0, 2, 3, 1]), ctx.ints([-1])])
    d = ctx.add("Reshape", [ctx.add("Transpose", [ctx.input(1)], perm=[0, 2, 3, 1]), ctx.ints([-1, 4])])
    dx, dy, dw, dh = (ctx.add("Gather", [d, ctx.const(np.int64(i))], axis=1) for i in range(4))
    px = ctx.add("Add", [ctx.add("Mul", [dx, w]), cx])
    py = ctx.add("Add", [ctx.add("Mul", [dy, h]), cy])
    pw = ctx.add("Mul", [_float(ctx, ctx.add("Exp", [_double(ctx, dw)])), w])
    ph = ctx.add("Mul", [_float(ctx, ctx.add("Exp", [_double(ctx, dh)])), h])
    info = ctx.add("Reshape", [ctx.input(2), ctx.ints([-1])])  # the first image's (height, width, scale)
    item = [ctx.add("Gather", [info, ctx.const(np.int64(i))]) for i in range(3)]
    limit_y, limit_x = (ctx.add("Sub", [item[i], one]) for i in (0, 1))
    zero = ctx.scalar(0.0)

    def clipped(centre: str, size: str, sign: str, limit: str) -> str:
        edge = ctx.add(sign, [centre, ctx.add("Mul", [half, size])])
        return ctx.add("Max", [ctx.add("Min", [edge, limit]), zero])

    x1, y1 = clipped(px, pw, "Sub", limit_x), clipped(py, ph, "Sub", limit_y)
    x2, y2 = clipped(px, pw, "Add", limit_x), clipped(py, ph, "Add", limit_y)
    least = ctx.add("Mul", [ctx.scalar(float(min_size)), item[2]])
    sides = [ctx.add("Add", [ctx.add("Sub", [far, near]), one]) for near, far in ((x1, x2), (y1, y2))]
    big = ctx.add("And", [ctx.add("GreaterOrEqual", [s, least]) for s in sides])
    kept = ctx.add("Squeeze", [ctx.add("NonZero", [big]), ctx.ints([0])])
    boxes = ctx.add("Gather", [ctx.add("Concat", [ctx.add("Unsqueeze", [c, ctx.ints([1])]) for c in
                                                  (x1, y1, x2, y2)], axis=1), kept], axis=0)
    fg = ctx.add("Gather", [fg, kept])

    total = ctx.shape_of(fg)
    k = total if pre <= 0 else ctx.add("Min", [total, ctx.ints([pre])])
    reverse = np.iinfo(np.int64).min
    _, top = _sort(ctx, ctx.slice(fg, [-1], [reverse], [0], [-1]), k, largest=True)
    top = ctx.add("Sub", [ctx.add("Sub", [total, ctx.ints([1])]), top])  # back to indices of fg
    top = ctx.slice(top, [-1], [reverse], [0], [-1])
    boxes, fg = ctx.add("Gather", [boxes, top], axis=0), ctx.add("Gather", [fg, top])
    wide = ctx.add("Add", [boxes, ctx.const(np.array([0, 0, 1, 1], np.float32), "far_edges")])
    most = post if post > 0 else np.iinfo(np.int64).max
    chosen = ctx.add("NonMaxSuppression", [ctx.add("Unsqueeze", [wide, ctx.ints([0])]),
                                           ctx.add("Unsqueeze", [fg, ctx.ints([0, 1])]), ctx.ints([most]),
                                           ctx.const(np.array([threshold], np.float32), "threshold")])
    pick = ctx.add("Gather", [chosen, ctx.const(np.int64(2))], axis=1)
    picked = ctx.add("Gather", [boxes, pick], axis=0)
    batch = ctx.add("ConstantOfShape", [ctx.concat_ints([ctx.shape_of(pick), [1]])])  # float32 zeros
    ctx.add("Concat", [batch, picked], ctx.output(0), axis=1)
    ctx.variable_first_axis(0, f"{node.name}_rois")
    if ctx.num_outputs > 1:
        ctx.add("Unsqueeze", [ctx.add("Gather", [fg, pick]), ctx.ints([1])], ctx.output(1))
        ctx.variable_first_axis(1, f"{node.name}_rois")
