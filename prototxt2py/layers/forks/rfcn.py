"""R-FCN (daijifeng001/caffe-rfcn, Microsoft/caffe, trained with py-R-FCN): its online hard example mining
(OHEM) layers, and the settings py-R-FCN runs py-faster-rcnn's Python training layers with.

OHEM: ``SoftmaxWithLossOHEM`` and ``SmoothL1LossOHEM`` give each ROI's loss as their last top;
``BoxAnnotatorOHEM`` keeps the ``roi_per_img`` ROIs of each image with the highest summed loss (the others get
the ignore label and zero box weights), and the net's real losses train on those. The fork has CUDA code only;
the modules (:mod:`.rfcn_nn`) follow it, including SmoothL1LossOHEM's gradient, which is ``f'(w (a - b))``
without the weight's factor, and its ``PRE_FIXED`` normalization (``pre_fixed_normalizer``).

py-R-FCN keeps py-faster-rcnn's layer modules and changes their ``cfg`` (experiments/cfgs/rfcn_end2end.yml and
rfcn_end2end_ohem.yml) and shapes. A net holding ``PSROIPooling`` (R-FCN's type) was written for it, so
(dialects, :func:`~prototxt2py.layers.register_dialect`): training proposals keep 6000 boxes before NMS and 300
after; ``ProposalTargetLayer`` gives 4-axis tops, takes background ROIs from overlap 0.1 and, with
``num_classes: 2`` (the class-agnostic nets: ``AGNOSTIC: True``), puts every foreground target in columns 4-7.
A net also holding ``BoxAnnotatorOHEM`` follows the OHEM recipe: every ROI within the overlap thresholds is kept
(``BATCH_SIZE: -1``) with background from overlap 0, and the RPN trains on targets normalised by (0, 0, 0, 0) /
(0.1, 0.1, 0.2, 0.2) (``RPN_NORMALIZE_TARGETS``), which the training proposals undo.

Written as a third-party plugin: public plugin API and the built-in specs it extends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prototxt2py.layers import LayerSpec, call, legacy_shape, plain, register, register_dialect
from prototxt2py.layers.losses import SoftmaxLossAttrs, SoftmaxWithLoss, loss_attrs, normalization_mode
from prototxt2py.netstate import TRAIN

from .rcnn import AnchorTargetLayer, ProposalLayer, ProposalTargetLayer

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.rfcn_nn"
RCNN_NN = "prototxt2py.layers.forks.rcnn_nn"


def _changed(**given: tuple[Any, Any]) -> dict[str, Any]:
    """The keyword arguments, given as ``(value, the helper's default)``, whose value is not the default."""
    return {k: v for k, (v, default) in given.items() if v != default}


# -- OHEM layers ---------------------------------------------------------------------------------------------------
@register
class SoftmaxWithLossOHEM(SoftmaxWithLoss):
    type = "SoftmaxWithLossOHEM"
    tops = (1, 3)
    deploy_head = None
    family = FAMILY
    summary = ("R-FCN OHEM: SoftmaxWithLoss with the probabilities and each position's loss (shaped like the labels) "
               "as tops 1 and 2")
    to_onnx = LayerSpec.to_onnx  # a training layer: no ONNX form

    def attrs(self, layer):
        a = loss_attrs(layer, layer.softmax_param.axis, "VALID")  # PRE_FIXED is fatal in the fork's too
        return SoftmaxLossAttrs(a.axis, a.ignore_label, a.normalization)

    def infer_shapes(self, node, in_shapes):
        super().infer_shapes(node, in_shapes)
        return [(), tuple(in_shapes[0]), tuple(in_shapes[1])][: len(node.tops)]

    def module(self, node):
        a: SoftmaxLossAttrs = node.attrs
        return call(f"{NN}:SoftmaxWithLossOHEM", **_changed(tops=(len(node.tops), 1), axis=(a.axis, 1),
                                                            ignore_label=(a.ignore_label, None),
                                                            normalization=(a.normalization, "VALID")))


@dataclass(frozen=True)
class SmoothL1OhemAttrs:
    normalization: str  # the fork's NormalizationMode by name
    pre_fixed: float  # loss_param.pre_fixed_normalizer


@register
class SmoothL1LossOHEM(LayerSpec):
    type = "SmoothL1LossOHEM"
    bottoms = (2, 3)
    tops = (1, 2)
    is_loss = True
    family = FAMILY
    summary = ("R-FCN OHEM: smooth L1 (sigma 1) of w * (a - b) over loss_param's normalizer (PRE_FIXED: "
               "pre_fixed_normalizer); top 1: each ROI's loss (N, 1, H, W)")

    def attrs(self, layer):
        loss = plain(layer.loss_param)
        return SmoothL1OhemAttrs(normalization_mode(loss, "VALID"), float(loss.pre_fixed_normalizer))

    def infer_shapes(self, node, in_shapes):
        if any(len(s) > 4 or not s for s in in_shapes):
            raise self.fail(node, f"bottoms {[tuple(s) for s in in_shapes]} must have 1 to 4 axes (the fork reads "
                                  "num, channels, height, width)")
        first = legacy_shape(in_shapes[0])
        for i, s in enumerate(in_shapes[1:], 1):
            if legacy_shape(s) != first:
                raise self.fail(node, f"bottom {i} {tuple(s)} does not match bottom 0 {tuple(in_shapes[0])}")
        return [(), (first[0], 1, *first[2:])][: len(node.tops)]

    def module(self, node):
        a: SmoothL1OhemAttrs = node.attrs
        return call(f"{NN}:SmoothL1LossOHEM", **_changed(tops=(len(node.tops), 1),
                                                         normalization=(a.normalization, "VALID"),
                                                         pre_fixed=(a.pre_fixed, 1.0)))


@dataclass(frozen=True)
class BoxAnnotatorAttrs:
    roi_per_img: int
    ignore_label: int


@register
class BoxAnnotatorOHEM(LayerSpec):
    type = "BoxAnnotatorOHEM"
    bottoms = (4, 4)
    tops = (2, 2)
    family = FAMILY
    summary = ("R-FCN OHEM: keeps the labels and box weights of each image's roi_per_img ROIs with the highest "
               "loss; the others get ignore_label and zero weights")

    def attrs(self, layer):
        p = plain(layer.box_annotator_ohem_param)
        if not p.has("roi_per_img") or p.roi_per_img <= 0:
            raise ValueError("box_annotator_ohem_param.roi_per_img must be set and greater than 0, got "
                             f"{p.roi_per_img if p.has('roi_per_img') else 'none'}")
        return BoxAnnotatorAttrs(int(p.roi_per_img), int(p.ignore_label))

    def infer_shapes(self, node, in_shapes):
        if any(len(s) > 4 or not s for s in in_shapes):
            raise self.fail(node, f"bottoms {[tuple(s) for s in in_shapes]} must have 1 to 4 axes")
        rois, loss, labels, weights = (legacy_shape(s) for s in in_shapes)
        if rois[1] != 5:
            raise self.fail(node, f"rois {tuple(in_shapes[0])} need 5 values per ROI (batch index, x1, y1, x2, y2)")
        place = (rois[0], 1, *rois[2:])
        for what, s in (("loss", loss), ("labels", labels)):
            if s != place:
                raise self.fail(node, f"{what} {tuple(s)} must be one value per ROI {place}")
        if (weights[0], *weights[2:]) != (rois[0], *rois[2:]):
            raise self.fail(node, f"box weights {tuple(weights)} must have one row per ROI ({rois[0]}, C, "
                                  f"{rois[2]}, {rois[3]})")
        return [place, tuple(weights)]

    def module(self, node):
        a: BoxAnnotatorAttrs = node.attrs
        return call(f"{NN}:BoxAnnotatorOHEM", a.roi_per_img, **({} if a.ignore_label == -1 else
                                                                 {"ignore_label": a.ignore_label}))


# -- py-R-FCN's settings of py-faster-rcnn's layers ----------------------------------------------------------------
#: Training proposals in both recipes (RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N; NMS and min size as before).
RFCN_RPN_TRAIN = (6000, 300, 0.7, 16)
#: RPN_NORMALIZE_MEANS / RPN_NORMALIZE_STDS, used when the OHEM recipe sets RPN_NORMALIZE_TARGETS.
RPN_TARGET_NORMALIZATION = ((0.0, 0.0, 0.0, 0.0), (0.1, 0.1, 0.2, 0.2))


@register_dialect("PSROIPooling")
class RfcnProposalLayer(ProposalLayer):
    """py-R-FCN's ProposalLayer: 6000 / 300 boxes in training."""

    summary = "py-R-FCN RPN proposals: py-faster-rcnn's, keeping 6000 / 300 boxes in training"

    def settings(self, node):
        return RFCN_RPN_TRAIN if node.phase == TRAIN else super().settings(node)


@register_dialect("PSROIPooling")
class RfcnProposalTargetLayer(ProposalTargetLayer):
    """py-R-FCN's ProposalTargetLayer (rfcn_end2end.yml): 128 ROIs, background overlap in [0.1, 0.5), 4-axis
    tops, class-agnostic targets for ``num_classes: 2``."""

    summary = ("py-R-FCN ROI training targets: (R, 5, 1, 1) ROIs, labels (R, 1, 1, 1), targets and weights "
               "(R, 4K, 1, 1); class-agnostic with num_classes 2")
    #: ``cfg.TRAIN.BATCH_SIZE`` (-1: all) and ``BG_THRESH_LO``
    batch, bg_lo = 128, 0.1

    def infer_shapes(self, node, in_shapes):
        return [(*s, 1, 1) for s in super().infer_shapes(node, in_shapes)]

    def module(self, node):
        k = node.attrs.num_classes
        return call(f"{RCNN_NN}:ProposalTargetLayer", k, **({} if self.batch == 128 else {"batch": self.batch}),
                    bg_lo=self.bg_lo, agnostic=k == 2, legacy_4d=True)


@register_dialect("BoxAnnotatorOHEM")
class RfcnOhemProposalLayer(RfcnProposalLayer):
    """py-R-FCN's ProposalLayer in the OHEM recipe: training deltas un-normalised first."""

    def module(self, node):
        base = super().module(node)
        if node.phase != TRAIN:
            return base
        means, stds = RPN_TARGET_NORMALIZATION
        return call(base.target, *base.args, **dict(base.kwargs), delta_means=means, delta_stds=stds)


@register_dialect("BoxAnnotatorOHEM")
class RfcnOhemAnchorTargetLayer(AnchorTargetLayer):
    """py-R-FCN's AnchorTargetLayer in the OHEM recipe: targets normalised."""

    summary = "py-R-FCN RPN training targets (OHEM recipe): py-faster-rcnn's, targets normalised by the RPN stds"

    def module(self, node):
        base = super().module(node)
        means, stds = RPN_TARGET_NORMALIZATION
        return call(base.target, *base.args, **dict(base.kwargs), target_means=means, target_stds=stds)


@register_dialect("BoxAnnotatorOHEM")
class RfcnOhemProposalTargetLayer(RfcnProposalTargetLayer):
    """py-R-FCN's ProposalTargetLayer in the OHEM recipe: every ROI within the thresholds, background from 0."""

    batch, bg_lo = -1, 0.0

