"""Faster R-CNN / R-FCN (rbgirshick/caffe-fast-rcnn ``faster-rcnn``, daijifeng001/caffe-rfcn): ROIPooling,
PSROIPooling, SmoothL1Loss, and py-faster-rcnn's RPN ``ProposalLayer`` (a ``Python`` layer its test nets need;
also spelled ``type: "Proposal"`` as in OpenCV's samples and C++ ports of it).

Written as a third-party plugin: public plugin API only, torch helpers in :mod:`.rcnn_nn`, the ONNX graphs of
PSROIPooling and the proposal layer in :mod:`.ssd_onnx`. Quirks kept: ROI corners round half away from zero and a
bin's maximum is its first in row-major order; the proposal layer's own are on :class:`ProposalLayer`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prototxt2py.layers import (
    LayerSpec,
    PythonDataLayerSpec,
    PythonLayerSpec,
    PythonParamAttrs,
    Shape,
    Unknowable,
    call,
    count,
    legacy_shape,
    plain,
    python_settings,
    register,
)
from prototxt2py.netstate import TEST, TRAIN

from . import ssd_onnx

if TYPE_CHECKING:  # pragma: no cover
    from prototxt2py.ir import Node

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.rcnn_nn"


def _check_ground_truth(spec: LayerSpec, node: Node, truth: Shape) -> None:
    """Rows (x1, y1, x2, y2, class): ``(G, 5)`` as py-faster-rcnn's RoIDataLayer gives them, or R-FCN's
    ``(G, 5, 1, 1)``."""
    if (count(truth, 1) if len(truth) == 4 else (truth[-1] if truth else 0)) < 5:
        raise spec.fail(node, f"ground truth {tuple(truth)} needs rows (x1, y1, x2, y2, class)")


def _check_rois(spec: LayerSpec, node: Node, rois: Shape, features: Shape) -> int:
    if len(features) != 4:  # Caffe would pad a 3-axis blob to (num, channels, height, 1); no real net does
        raise spec.fail(node, f"{spec.type} needs a 4-axis (N, C, H, W) feature bottom, got shape {tuple(features)}")
    if not rois or count(rois, 1) < 5:
        raise spec.fail(node, f"rois {tuple(rois)} need 5 values per ROI (batch index, x1, y1, x2, y2)")
    return rois[0]


@register
class ROIPooling(LayerSpec):
    type = "ROIPooling"
    bottoms = (2, 2)
    family = FAMILY
    onnx_dynamic_sizes = True  # MaxRoiPool reads the feature map's size at run time
    summary = "Fast R-CNN ROI max pooling to (num_rois, C, pooled_h, pooled_w); rois are (batch, x1, y1, x2, y2)"

    def attrs(self, layer):
        p = plain(layer.roi_pooling_param)
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise ValueError("roi_pooling_param.pooled_h and pooled_w must be > 0")
        return p

    def infer_shapes(self, node, in_shapes):
        _, c, _, _ = legacy_shape(in_shapes[0])
        return [(_check_rois(self, node, in_shapes[1], in_shapes[0]), c, node.attrs.pooled_h, node.attrs.pooled_w)]

    def module(self, node):
        p = node.attrs
        return call(f"{NN}:ROIPooling", p.pooled_h, p.pooled_w, p.spatial_scale)

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
        _, c, _, _ = legacy_shape(in_shapes[0])
        if c != p.output_dim * p.group_size**2:
            raise self.fail(node, f"input has {c} channels, need output_dim x group_size^2 = "
                                  f"{p.output_dim * p.group_size**2}")
        return [(_check_rois(self, node, in_shapes[1], in_shapes[0]), p.output_dim, p.group_size, p.group_size)]

    def module(self, node):
        p = node.attrs
        return call(f"{NN}:PSROIPooling", p.output_dim, p.group_size, p.spatial_scale)

    def to_onnx(self, node, ctx):
        ssd_onnx.psroi_pooling(node, ctx)


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
        first = legacy_shape(in_shapes[0])
        for i, s in enumerate(in_shapes[1:], 1):
            if legacy_shape(s)[1:] != first[1:] or (i == 1 and s[0] != first[0]):
                raise self.fail(node, f"bottom {i} {tuple(s)} does not match bottom 0 {tuple(in_shapes[0])}")
        return [()]

    def module(self, node):
        sigma = node.attrs.sigma
        return call(f"{NN}:SmoothL1Loss", **({} if sigma == 1.0 else {"sigma": sigma}))


#: py-faster-rcnn's RPN settings by phase (``cfg.TRAIN``/``cfg.TEST`` in lib/fast_rcnn/config.py): boxes kept
#: before and after NMS, the NMS overlap threshold, the smallest box side at the input image's scale.
RPN_SETTINGS = {TRAIN: (12000, 2000, 0.7, 16), TEST: (6000, 300, 0.7, 16)}

#: ``generate_anchors``' defaults (py-faster-rcnn's ``anchor_scales``, and its fixed ratios)
RPN_SCALES, RPN_RATIOS = (8.0, 16.0, 32.0), (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class ProposalAttrs(PythonParamAttrs):
    """A ProposalLayer: what its ``param_str`` (YAML) says."""

    feat_stride: float
    #: ``generate_anchors(scales=..., ratios=...)``: boxes around the first feature position
    anchors: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class ProposalParamAttrs:
    """A ``Proposal`` layer's plain ``proposal_param``: its anchors and its own RPN settings."""

    feat_stride: float
    anchors: tuple[tuple[float, float, float, float], ...]
    pre_nms_topn: int
    post_nms_topn: int
    nms_thresh: float
    min_size: float


def rpn_anchors(scales: tuple[float, ...], ratios: tuple[float, ...], base_size: int = 16,
                where: str = "python_param.param_str") -> tuple[tuple[float, float, float, float], ...]:
    """py-faster-rcnn's ``generate_anchors``: for each ratio (outer) and scale (inner), a box around the centre
    of the ``base_size`` square, corners counting both edges, in float64. Widths and heights round half to
    even, as ``np.round`` does (Python's ``round`` agrees)."""
    centre = 0.5 * (base_size - 1)
    out = []
    for ratio in ratios:
        w = math.sqrt(base_size * base_size / ratio)
        if not math.isfinite(w * ratio):
            raise ValueError(f"{where}: ratio {ratio!r} gives no finite anchor")
        w = float(round(w))
        h = float(round(w * ratio))
        # the ratio box's centre as _whctrs recomputes it from that box's corners
        cx = (centre - 0.5 * (w - 1)) + 0.5 * (w - 1)
        cy = (centre - 0.5 * (h - 1)) + 0.5 * (h - 1)
        for scale in scales:
            sw, sh = w * scale, h * scale
            out.append((cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1), cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)))
    return tuple(out)


def _number(value: Any, what: str, where: str = "python_param.param_str") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{where}: {what} must be a positive number, got {value!r}")
    return value


def _numbers(value: Any, what: str, where: str = "python_param.param_str") -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not 0 < len(value) <= 64:
        raise ValueError(f"{where}: {what} must be a list of 1 to 64 numbers, got {value!r}")
    return tuple(_number(v, what, where) for v in value)


class _RpnProposals:
    """What both spellings of the RPN proposal layer share: bottoms, shapes, the module and the ONNX graph. A
    spec says where its settings come from (:meth:`settings`); ``node.attrs`` has ``feat_stride`` and
    ``anchors``."""

    bottoms = (3, 3)
    tops = (1, 2)
    family = FAMILY
    onnx_dynamic_sizes = True  # anchors shifted over the score map's run-time size

    def settings(self, node: Node) -> tuple[int, int, float, float]:
        """Boxes kept before and after NMS (<= 0: all), the NMS overlap threshold, the smallest box side."""
        raise NotImplementedError

    def infer_shapes(self, node, in_shapes):
        anchors = len(node.attrs.anchors)
        scores, deltas, info = in_shapes
        if len(scores) != 4 or len(deltas) != 4:
            raise self.fail(node, f"scores {tuple(scores)} and deltas {tuple(deltas)} must be (N, C, H, W)")
        if scores[0] != 1:
            raise self.fail(node, f"the proposal layer takes one image (py-faster-rcnn asserts it), got a batch "
                                  f"of {scores[0]}")
        if scores[1] != 2 * anchors or tuple(deltas) != (deltas[0], 4 * anchors, *scores[2:]):
            raise self.fail(node, f"{anchors} anchors need scores (1, {2 * anchors}, H, W) and deltas "
                                  f"(1, {4 * anchors}, H, W), got {tuple(scores)} and {tuple(deltas)}")
        if not info or count(info, 1) < 3:
            raise self.fail(node, f"im_info {tuple(info)} needs (height, width, scale) per image")
        # one ROI, as Caffe's set-up shapes rois; every forward pass reshapes the tops to the R kept, (R, 5) and
        # (R, 1) (set-up gives the scores (1, 1, 1, 1), which no pass keeps)
        return [(1, 5), (1, 1)][: len(node.tops)]

    def to_onnx(self, node, ctx):
        ssd_onnx.rpn_proposals(node, ctx, *self.settings(node))

    def module(self, node):
        a = node.attrs
        pre, post, thresh, min_size = self.settings(node)
        given = {"pre_nms_top_n": (pre, 6000), "post_nms_top_n": (post, 300), "nms_thresh": (thresh, 0.7),
                 "min_size": (min_size, 16), "scores": (len(node.tops) == 2, False)}
        return call(f"{NN}:ProposalLayer", a.feat_stride, a.anchors,
                    **{k: v for k, (v, default) in given.items() if v != default})


@register
class ProposalLayer(_RpnProposals, PythonLayerSpec):
    """py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` (also R-FCN's), built in so that Faster R-CNN test
    nets run without their Python code: its settings are the ``cfg`` defaults of the layer's phase
    (:data:`RPN_SETTINGS`), as ``tools/test_net.py`` runs it without a ``--cfg`` file."""

    python_layer = "rpn.proposal_layer.ProposalLayer"
    summary = ("py-faster-rcnn RPN proposals (R, 5) from anchor scores, deltas and im_info: clip, min size, "
               "top N, NMS; dynamic size")

    def attrs(self, layer):
        fields, given = python_settings(layer, "py-faster-rcnn's ProposalLayer", "feat_stride")
        scales = _numbers(given.get("scales", RPN_SCALES), "scales")
        ratios = _numbers(given.get("ratios", RPN_RATIOS), "ratios")
        return ProposalAttrs(**fields, feat_stride=_number(given["feat_stride"], "feat_stride"),
                             anchors=rpn_anchors(scales, ratios))

    def settings(self, node):
        return RPN_SETTINGS[TEST if node.phase is None else node.phase]


@register
class Proposal(_RpnProposals, LayerSpec):
    """The C++ spelling of py-faster-rcnn's proposal layer: ``type: "Proposal"`` with a ``proposal_param``, as
    OpenCV's Faster R-CNN samples tell users to replace the ``Python`` layer with, and as C++ ports of the layer
    in Caffe forks register it. The same arithmetic as :class:`ProposalLayer`, with the settings the layer
    names (defaults 6000 / 300 / 0.7 / 16 in both phases; no ``ratio`` or ``scale`` means py-faster-rcnn's
    0.5, 1, 2 and 8, 16, 32). OpenCV's own implementation differs: it skips the size filter and pads the ROIs
    with zeros to ``post_nms_topn`` rows."""

    type = "Proposal"
    summary = ("RPN proposals (R, 5) from anchor scores, deltas and im_info (proposal_param): clip, min size, "
               "top N, NMS; dynamic size")

    def attrs(self, layer):
        p = plain(layer.proposal_param)
        where = "proposal_param"
        stride = _number(p.feat_stride, "feat_stride", where)
        base = int(_number(p.base_size, "base_size", where))
        if base > 1 << 16:
            raise ValueError(f"proposal_param: base_size {base} is larger than 65536")
        scales = _numbers(list(p.scale) or RPN_SCALES, "scale", where)
        ratios = _numbers(list(p.ratio) or RPN_RATIOS, "ratio", where)
        if not 0 <= p.nms_thresh <= 1:  # also refuses NaN
            raise ValueError(f"proposal_param: nms_thresh must be in [0, 1], got {p.nms_thresh!r}")
        return ProposalParamAttrs(stride, rpn_anchors(scales, ratios, base, where), p.pre_nms_topn, p.post_nms_topn,
                                  p.nms_thresh if p.has("nms_thresh") else 0.7, p.min_size)

    def settings(self, node):
        a: ProposalParamAttrs = node.attrs
        return a.pre_nms_topn, a.post_nms_topn, a.nms_thresh, a.min_size



#: py-faster-rcnn's training settings as its end-to-end recipe runs them (lib/fast_rcnn/config.py with
#: experiments/cfgs/faster_rcnn_end2end.yml): anchor labelling and sampling, ROI sampling, target normalization
RPN_TRAIN = {"positive": 0.7, "negative": 0.3, "fg_fraction": 0.5, "batch": 256}
ROI_TRAIN = {"batch": 128, "fg_fraction": 0.25, "fg_thresh": 0.5, "bg_hi": 0.5, "bg_lo": 0.0,
             "means": (0.0, 0.0, 0.0, 0.0), "stds": (0.1, 0.1, 0.2, 0.2)}


@dataclass(frozen=True)
class AnchorTargetAttrs(PythonParamAttrs):
    """An AnchorTargetLayer: its ``param_str`` settings."""

    feat_stride: float
    anchors: tuple[tuple[float, float, float, float], ...]
    allowed_border: float


@register
class AnchorTargetLayer(PythonLayerSpec):
    """py-faster-rcnn's ``rpn.anchor_target_layer.AnchorTargetLayer`` (RPN training targets), built in: the
    layer's code with the end-to-end recipe's settings (:data:`RPN_TRAIN`). Its random sampling draws from
    torch's generator (``torch.manual_seed`` makes it repeatable; numpy's stream is not reproduced)."""

    python_layer = "rpn.anchor_target_layer.AnchorTargetLayer"
    bottoms = (3, 4)  # scores, gt_boxes, im_info (and data, which the layer never reads)
    tops = (4, 4)
    family = FAMILY
    summary = ("py-faster-rcnn RPN training targets: anchor labels (1, 1, A*H, W), regression targets and weights "
               "(1, 4A, H, W); random sampling")

    def attrs(self, layer):
        fields, given = python_settings(layer, "py-faster-rcnn's AnchorTargetLayer", "feat_stride")
        scales = _numbers(given.get("scales", RPN_SCALES), "scales")
        border = given.get("allowed_border", 0)
        if isinstance(border, bool) or not isinstance(border, int | float) or not -1e9 < border < 1e9:
            raise ValueError(f"python_param.param_str: allowed_border must be a number, got {border!r}")
        return AnchorTargetAttrs(**fields, feat_stride=_number(given["feat_stride"], "feat_stride"),
                                 anchors=rpn_anchors(scales, RPN_RATIOS), allowed_border=border)

    def infer_shapes(self, node, in_shapes):
        a: AnchorTargetAttrs = node.attrs
        scores, truth, info = in_shapes[:3]
        if len(scores) != 4 or scores[0] != 1:
            raise self.fail(node, f"scores {tuple(scores)} must be (1, C, H, W): the layer takes one image")
        _check_ground_truth(self, node, truth)
        if not info or count(info, 1) < 3:
            raise self.fail(node, f"im_info {tuple(info)} needs (height, width, scale) per image")
        n, (h, w) = len(a.anchors), scores[2:]
        return [(1, 1, n * h, w), (1, 4 * n, h, w), (1, 4 * n, h, w), (1, 4 * n, h, w)]

    def module(self, node):
        a: AnchorTargetAttrs = node.attrs
        return call(f"{NN}:AnchorTargetLayer", a.feat_stride, a.anchors,
                    **({"allowed_border": a.allowed_border} if a.allowed_border else {}))


@dataclass(frozen=True)
class ProposalTargetAttrs(PythonParamAttrs):
    """A ProposalTargetLayer: its ``num_classes``."""

    num_classes: int


@register
class ProposalTargetLayer(PythonLayerSpec):
    """py-faster-rcnn's ``rpn.proposal_target_layer.ProposalTargetLayer`` (detection head training targets),
    built in with the end-to-end recipe's settings (:data:`ROI_TRAIN`: 128 ROIs, a quarter foreground,
    background overlap in [0, 0.5), targets normalised by the precomputed means and stds). Random sampling
    from torch's generator."""

    python_layer = "rpn.proposal_target_layer.ProposalTargetLayer"
    bottoms = (2, 2)
    tops = (5, 5)
    deploy_bypass = ((0, 0),)  # test nets pool the proposals (test.prototxt: the proposal layer's top is 'rois')
    family = FAMILY
    summary = ("py-faster-rcnn ROI training targets: sampled ROIs (R, 5), labels (R,), class-specific targets and "
               "weights (R, 4K); random sampling")

    def attrs(self, layer):
        fields, given = python_settings(layer, "py-faster-rcnn's ProposalTargetLayer")
        k = given.get("num_classes")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= 1 << 16:
            raise ValueError(f"python_param.param_str needs 'num_classes' (1 to 65536), got {k!r}")
        return ProposalTargetAttrs(**fields, num_classes=k)

    def infer_shapes(self, node, in_shapes):
        k = node.attrs.num_classes
        rois, truth = in_shapes
        if count(rois) % 5 or (rois and rois[-1] != 5):
            raise self.fail(node, f"ROIs {tuple(rois)} need rows (batch index, x1, y1, x2, y2)")
        _check_ground_truth(self, node, truth)
        # Caffe's set-up shapes; each pass gives up to 128 sampled ROIs
        return [(1, 5), (1, 1), (1, 4 * k), (1, 4 * k), (1, 4 * k)]

    def module(self, node):
        return call(f"{NN}:ProposalTargetLayer", node.attrs.num_classes)


@dataclass(frozen=True)
class RoIDataParam:
    """What the RoIDataLayer's reader is opened with (:mod:`prototxt2py.data.roi_data`)."""

    imdb: str  # as train_net.py --imdb names it ("": not given)
    data_path: str  # VOC's ``<devkit>/VOC<year>`` ("": not a VOC imdb)
    split: str
    source: str  # the image set file (the caller's check that the data is there)


@dataclass(frozen=True)
class RoIDataAttrs(PythonParamAttrs):
    """A RoIDataLayer: its ``python_param`` and the dataset its ``param_str`` names."""

    param: RoIDataParam
    transform: Any = None


@register
class RoIDataLayer(PythonDataLayerSpec):
    """py-faster-rcnn's training data layer. py-faster-rcnn hands it a roidb built from the ``--imdb`` of
    ``train_net.py``; here its ``param_str`` names that imdb (``'imdb': 'voc_2007_trainval'``, optionally
    ``'devkit': 'path/VOCdevkit2007'``) and the reader builds the roidb as py-faster-rcnn does. Without it the
    tops are inputs the caller feeds, as before."""

    python_layer = "roi_data_layer.layer.RoIDataLayer"
    tops = (1, None)
    family = FAMILY
    summary = ("py-faster-rcnn's training data: PASCAL VOC images (short side 600), im_info and gt_boxes of the imdb "
               "its param_str names; a net input")

    def attrs(self, layer):
        fields, given = python_settings(layer, "py-faster-rcnn's RoIDataLayer")
        imdb, devkit = given.get("imdb", ""), given.get("devkit", "")
        if not isinstance(imdb, str) or not isinstance(devkit, str):
            raise ValueError(f"python_param.param_str: 'imdb' and 'devkit' must be strings, got {imdb!r}, {devkit!r}")
        m = re.fullmatch(r"voc_(\d{4})_(\w+)", imdb)
        data_path = f"{devkit or f'data/VOCdevkit{m[1]}'}/VOC{m[1]}" if m else ""
        source = f"{data_path}/ImageSets/Main/{m[2]}.txt" if m else ""
        return RoIDataAttrs(**fields, param=RoIDataParam(imdb, data_path, m[2] if m else "", source))

    def infer_shapes(self, node, in_shapes):
        from prototxt2py.layers.data import PYTHON_HINT

        known = {"data": "1,3,H,W", "im_info": "1,3", "gt_boxes": "G,5"}
        hints = " ".join(f"--input {t}={known.get(t, '...')}" for t in node.tops)
        if node.attrs.param.imdb:
            raise Unknowable(f"layer reads the imdb {node.attrs.param.imdb} (py-faster-rcnn), image size and box "
                             f"count known only from the data; give {hints}{PYTHON_HINT}")
        raise Unknowable("layer reads the roidb py-faster-rcnn builds from train_net.py's --imdb: name it in the "
                         "param_str ('imdb': 'voc_2007_trainval') to read PASCAL VOC, or feed the tops: give "
                         f"{hints}{PYTHON_HINT}")
