"""Loss layers and Accuracy: scalar (0-axis) tops whose backward reproduces Caffe's, not the textbook gradient.

Caffe facts this module keeps (BVLC master):

* Labels are float blobs read with ``static_cast<int>`` (truncation toward zero), and never get a gradient
  (``LossLayer::AllowForceBackward`` refuses bottom 1; ContrastiveLoss refuses its similarity bottom 2,
  InfogainLoss its H bottom). Modules detach them, so autograd agrees whatever the caller asked for.
* ``normalization`` (FULL / VALID / BATCH_SIZE / NONE) divides by ``max(1, n)``; the legacy ``normalize``
  bool only counts when ``normalization`` is unset (true = VALID, false = BATCH_SIZE).
  SigmoidCrossEntropyLoss defaults to BATCH_SIZE, not the proto default VALID.
* Several backward passes are not the derivative of the forward: SoftmaxWithLoss/InfogainLoss/
  MultinomialLogisticLoss clamp probabilities in the forward log but not in the gradient, ContrastiveLoss
  divides by ``dist + 1e-4``, SigmoidCrossEntropyLoss uses ``sigmoid(x) - t`` even at ``x == 0``. Those use
  ``torch.autograd.Function``s with Caffe's formulas (in :mod:`prototxt2py.nn.losses`); the loss weight
  arrives as the top's gradient (the runtime differentiates ``loss_weight * sum(top)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedLayerError
from ..plain import plain
from . import onnx_losses
from .base import Call, LayerSpec, Shape, call, canonical_axis, count, register

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "losses"


# -- attributes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossAttrs:
    """Normalised ``loss_param`` (+ the class axis where the layer has one); ``normalization`` is Caffe's
    ``NormalizationMode`` name ("FULL", "VALID", "BATCH_SIZE", "NONE")."""

    axis: int = 1
    ignore_label: int | None = None
    normalization: str = "VALID"


@dataclass(frozen=True)
class SoftmaxLossAttrs(LossAttrs):
    """SoftmaxWithLoss: SegNet's per-class weights (``weight_by_label_freqs`` + ``class_weighting``), or None."""

    class_weighting: tuple[float, ...] | None = None


@dataclass(frozen=True)
class InfogainAttrs(LossAttrs):
    """InfogainLoss: ``source`` is the H file Caffe would read when H is not a third bottom."""

    source: str = ""


@dataclass(frozen=True)
class AccuracyAttrs:
    top_k: int
    axis: int
    ignore_label: int | None


@dataclass(frozen=True)
class ContrastiveAttrs:
    margin: float
    legacy_version: bool


def _ignore_label(param: Any) -> int | None:
    """``ignore_label`` of a plain ``loss_param``/``accuracy_param`` when the file sets it."""
    return int(param.ignore_label) if param.has("ignore_label") else None


def normalization_mode(loss_param: Any, default: str) -> str:
    """Caffe's choice: explicit ``normalization``, else legacy ``normalize`` (VALID/BATCH_SIZE), else default.
    The name may be R-FCN's ``PRE_FIXED``, which only that fork's SmoothL1LossOHEM reads."""
    if loss_param.has("normalization"):
        return loss_param.normalization
    if loss_param.has("normalize"):
        return "VALID" if loss_param.normalize else "BATCH_SIZE"
    return default


def _normalization(loss_param: Any, default: str) -> str:
    """:func:`normalization_mode` of the layers Caffe's ``get_normalizer`` serves (no ``PRE_FIXED``: fatal there)."""
    mode = normalization_mode(loss_param, default)
    if mode == "PRE_FIXED":  # R-FCN's fork: divide by pre_fixed_normalizer
        raise ValueError("loss_param normalization: PRE_FIXED (R-FCN's fork) is not supported; use "
                         "normalization: NONE and a loss_weight of 1 / pre_fixed_normalizer")
    return mode


def loss_attrs(layer: Any, axis: int, default: str) -> LossAttrs:
    """A loss layer's ``loss_param`` with its class ``axis``, as Caffe's ``SoftmaxWithLoss`` reads it (no
    ``PRE_FIXED``)."""
    loss = plain(layer.loss_param)
    return LossAttrs(int(axis), _ignore_label(loss), _normalization(loss, default))


def _optional(**kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of a :class:`Call` that differ from the helper's defaults (``None`` = default)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _loss_kwargs(a: LossAttrs, default: str, with_axis: bool = True) -> dict[str, Any]:
    return _optional(
        axis=a.axis if with_axis and a.axis != 1 else None,
        ignore_label=a.ignore_label,
        normalization=a.normalization if a.normalization != default else None,
    )


# -- shape checks shared by the loss specs -----------------------------------------------------------------
def _check_label_count(spec: LayerSpec, node: Node, in_shapes: Sequence[Shape], axis: int) -> int:
    """Class-axis layers: one label per position outside the class axis. Returns the canonical axis."""
    x, label = in_shapes[0], in_shapes[1]
    axis = canonical_axis(node, spec, axis, len(x))
    if count(x, 0, axis) * count(x, axis + 1) != count(label):
        raise spec.fail(
            node,
            f"label count {count(label)} must match the number of predictions {count(x, 0, axis)} x "
            f"{count(x, axis + 1)} of {tuple(x)} outside class axis {axis}",
        )
    return axis


class _LossSpec(LayerSpec):
    """Loss layers: two bottoms with the same first dimension (``LossLayer::Reshape``), a 0-axis loss top."""

    bottoms = (2, 2)
    is_loss = True
    family = FAMILY
    force_backward_refused = frozenset({1})  # LossLayer::AllowForceBackward: the labels

    def check_batch(self, node: Node, in_shapes: Sequence[Shape]) -> None:
        a, b = in_shapes[0], in_shapes[1]
        if not a or not b:
            raise self.fail(node, f"loss bottoms need at least one axis, got {tuple(a)} and {tuple(b)}")
        if a[0] != b[0]:
            raise self.fail(node, f"data and label must have the same first dimension, got {a[0]} and {b[0]}")

    def check_legacy_4d(self, node: Node, shape: Shape, what: str) -> None:
        if len(shape) > 4:
            raise self.fail(node, f"{what} must have at most 4 axes (Caffe reads its num/channels/height/width)")

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        return [()]


# -- SoftmaxWithLoss / InfogainLoss ------------------------------------------------------------------------
@register
class SoftmaxWithLoss(_LossSpec):
    type = "SoftmaxWithLoss"
    tops = (1, 2)
    deploy_head = "Softmax"
    summary = ("softmax over softmax_param.axis + mean negative log-likelihood of the labels "
               "(loss_param ignore_label, normalization FULL/VALID/BATCH_SIZE/NONE, legacy normalize; SegNet's "
               "class_weighting)")

    def attrs(self, layer: Any) -> SoftmaxLossAttrs:
        """SegNet's fork weighs each position's log-likelihood by its label's ``class_weighting`` when
        ``weight_by_label_freqs`` is set (the gradient by the same weight); the normalizer stays a count."""
        if len(layer.top) > 1:
            raise ValueError(
                "SoftmaxWithLoss with a second top is rejected by BVLC Caffe (its internal Softmax inherits the "
                "loss weights); add a separate Softmax layer for the probabilities"
            )
        base = loss_attrs(layer, layer.softmax_param.axis, "VALID")
        loss = plain(layer.loss_param)
        weights = tuple(float(w) for w in loss.class_weighting) if loss.weight_by_label_freqs else None
        return SoftmaxLossAttrs(base.axis, base.ignore_label, base.normalization, weights)

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        axis = _check_label_count(self, node, in_shapes, node.attrs.axis)
        weights = node.attrs.class_weighting
        if weights is not None and len(weights) != in_shapes[0][axis]:
            raise self.fail(node, f"{len(weights)} class_weighting values for {in_shapes[0][axis]} classes "
                                  "(weight_by_label_freqs needs one per class)")
        return [()]

    def module(self, node: Node) -> Call:
        weights = node.attrs.class_weighting
        return call("SoftmaxWithLoss", **_loss_kwargs(node.attrs, "VALID"),
                    **({"class_weighting": weights} if weights is not None else {}))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.softmax_with_loss(node, ctx, self)


@register
class InfogainLoss(_LossSpec):
    type = "InfogainLoss"
    bottoms = (2, 3)
    tops = (1, 2)
    summary = ("softmax + infogain-weighted log loss -sum_l H[y,l] log p_l (H as bottom 2; optional top 1 = "
               "probabilities, needing one loss_weight per top)")

    def attrs(self, layer: Any) -> InfogainAttrs:
        p = plain(layer.infogain_loss_param)
        if layer.loss_param.HasField("normalize"):
            raise ValueError("InfogainLoss: loss_param.normalize is deprecated, use normalization")
        if len(layer.bottom) < 3 and not p.has("source"):
            raise ValueError("InfogainLoss with two bottoms needs infogain_loss_param.source (the H matrix)")
        if len(layer.top) > 1 and len(layer.loss_weight) != len(layer.top):
            raise ValueError("InfogainLoss with a second top needs one loss_weight per top (Caffe's rule)")
        base = loss_attrs(layer, p.axis, "VALID")
        return InfogainAttrs(base.axis, base.ignore_label, base.normalization, p.source)

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        axis = _check_label_count(self, node, in_shapes, node.attrs.axis)
        classes = in_shapes[0][axis]
        if len(in_shapes) > 2 and count(in_shapes[2]) != classes * classes:
            raise self.fail(node, f"H has shape {tuple(in_shapes[2])}, need {classes} x {classes} values")
        return [(), tuple(in_shapes[0])][: len(node.tops)]

    def module(self, node: Node) -> Call:
        if len(node.bottoms) < 3:
            raise UnsupportedLayerError(
                f"InfogainLoss reads H from infogain_loss_param.source ('{node.attrs.source}'),"
                " which prototxt2py does not load; give H as a third bottom (e.g. an Input or Parameter blob)",
                node.location,
                layer=node.name,
            )
        kwargs = _loss_kwargs(node.attrs, "VALID")
        if len(node.tops) > 1:
            kwargs["prob_top"] = True
        return call("InfogainLoss", **kwargs)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.infogain_loss(node, ctx, self)


# -- SigmoidCrossEntropyLoss -------------------------------------------------------------------------------
@register
class SigmoidCrossEntropyLoss(_LossSpec):
    type = "SigmoidCrossEntropyLoss"
    deploy_head = "Sigmoid"  # HED's and multi-label nets' deploy files add it
    summary = ("binary cross-entropy on logits with (soft) targets; ignore_label; normalization defaults to "
               "BATCH_SIZE for this layer")

    def attrs(self, layer: Any) -> LossAttrs:
        return loss_attrs(layer, 1, "BATCH_SIZE")

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        if count(in_shapes[0]) != count(in_shapes[1]):
            raise self.fail(node, f"inputs must have the same count, got {tuple(in_shapes[0])} and "
                                  f"{tuple(in_shapes[1])}")
        return [()]

    def module(self, node: Node) -> Call:
        return call("SigmoidCrossEntropyLoss", **_loss_kwargs(node.attrs, "BATCH_SIZE", with_axis=False))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.sigmoid_cross_entropy_loss(node, ctx)


# -- EuclideanLoss -----------------------------------------------------------------------------------------
@register
class EuclideanLoss(_LossSpec):
    type = "EuclideanLoss"
    commutative_bottoms = True  # euclidean_loss_layer.hpp: gradients to both, the same whatever the order
    summary = "sum((a - b)^2) / (2 N); gradient to both bottoms"
    force_backward_refused = frozenset()  # EuclideanLossLayer::AllowForceBackward: both bottoms

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        if count(in_shapes[0], 1) != count(in_shapes[1], 1):
            raise self.fail(node, f"inputs must have the same dimension, got {tuple(in_shapes[0])} and "
                                  f"{tuple(in_shapes[1])}")
        return [()]

    def module(self, node: Node) -> Call:
        return call("EuclideanLoss")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.euclidean_loss(node, ctx)


# -- HingeLoss ---------------------------------------------------------------------------------------------
@register
class HingeLoss(_LossSpec):
    type = "HingeLoss"
    summary = "one-vs-all hinge loss, hinge_loss_param.norm L1 (default) or L2 (squared)"

    def module(self, node: Node) -> Call:
        norm = node.attrs.norm
        return call("HingeLoss", **({} if norm == "L1" else {"norm": norm}))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.hinge_loss(node, ctx)


# -- MultinomialLogisticLoss -------------------------------------------------------------------------------
@register
class MultinomialLogisticLoss(_LossSpec):
    type = "MultinomialLogisticLoss"
    summary = "-log(p[label]) averaged over the batch, on probabilities (clamped at 1e-20)"

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        label = in_shapes[1]
        self.check_legacy_4d(node, label, "label")
        if count(label, 1) != 1:
            raise self.fail(node, f"label must have one value per sample, got shape {tuple(label)}")
        return [()]

    def module(self, node: Node) -> Call:
        return call("MultinomialLogisticLoss")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.multinomial_logistic_loss(node, ctx)


# -- ContrastiveLoss ---------------------------------------------------------------------------------------
@register
class ContrastiveLoss(_LossSpec):
    type = "ContrastiveLoss"
    bottoms = (3, 3)
    prediction_bottoms = 2  # the two feature vectors; bottom 2 is the similarity label
    force_backward_refused = frozenset({2})  # the similarity labels
    summary = ("siamese contrastive loss on features a, b and similarity y (margin; legacy_version uses "
               "max(margin - d^2, 0))")

    def attrs(self, layer: Any) -> ContrastiveAttrs:
        p = plain(layer.contrastive_loss_param)
        return ContrastiveAttrs(float(p.margin), bool(p.legacy_version))

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        a, b, y = in_shapes
        for shape, what in ((a, "bottom 0"), (b, "bottom 1"), (y, "bottom 2")):
            self.check_legacy_4d(node, shape, what)
        if count(a, 2) != 1 or count(b, 2) != 1 or count(y, 1) != 1:
            raise self.fail(node, f"need features (N, C, 1, 1) and similarity (N, 1, 1, 1), got {tuple(a)}, "
                                  f"{tuple(b)}, {tuple(y)}")
        if count(a, 1) != count(b, 1):
            raise self.fail(node, f"feature bottoms differ in channels: {tuple(a)} vs {tuple(b)}")
        if not y or y[0] < a[0]:
            raise self.fail(node, f"similarity bottom {tuple(y)} has fewer than {a[0]} values")
        return [()]

    def module(self, node: Node) -> Call:
        a: ContrastiveAttrs = node.attrs
        return call("ContrastiveLoss", **_optional(margin=a.margin if a.margin != 1.0 else None,
                                                   legacy_version=a.legacy_version or None))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.contrastive_loss(node, ctx)


# -- Accuracy ----------------------------------------------------------------------------------------------
@register
class Accuracy(LayerSpec):
    type = "Accuracy"
    bottoms = (2, 2)
    tops = (1, 2)
    family = FAMILY
    summary = "top-k classification accuracy over accuracy_param.axis (ignore_label; top 1 = per-class accuracy)"

    def attrs(self, layer: Any) -> AccuracyAttrs:
        p = plain(layer.accuracy_param)
        return AccuracyAttrs(int(p.top_k), int(p.axis), _ignore_label(p))

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        x, label = in_shapes
        if count(label) == 0 or node.attrs.top_k > count(x) // count(label):
            raise self.fail(node, f"top_k {node.attrs.top_k} exceeds the number of classes")
        axis = _check_label_count(self, node, in_shapes, node.attrs.axis)
        return [(), (x[axis],)][: len(node.tops)]

    def module(self, node: Node) -> Call:
        a: AccuracyAttrs = node.attrs
        return call("Accuracy", **_optional(top_k=a.top_k if a.top_k != 1 else None,
                                            axis=a.axis if a.axis != 1 else None, ignore_label=a.ignore_label,
                                            per_class=True if len(node.tops) > 1 else None))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_losses.accuracy(node, ctx, self)
