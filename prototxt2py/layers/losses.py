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
  ``torch.autograd.Function``s with Caffe's formulas; the loss weight arrives as the top's gradient
  (the runtime differentiates ``loss_weight * sum(top)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import UnsupportedLayerError
from .base import LayerSpec, Shape, canonical_axis, count, register
from .torch_util import CaffeLayer

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "losses"

# LossParameter.NormalizationMode
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3
# Caffe's clamps before log: FLT_MIN in SoftmaxWithLoss, kLOG_THRESHOLD elsewhere.
FLT_MIN = 1.1754943508222875e-38
LOG_THRESHOLD = 1e-20


# -- attributes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossAttrs:
    """Normalised ``loss_param`` (+ the class axis where the layer has one)."""

    axis: int = 1
    ignore_label: int | None = None
    normalization: int = VALID


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
    return int(param.ignore_label) if param.HasField("ignore_label") else None


def _normalization(loss_param: Any, default: int) -> int:
    """Caffe's choice: explicit ``normalization``, else legacy ``normalize`` (VALID/BATCH_SIZE), else default."""
    if loss_param.HasField("normalization"):
        return int(loss_param.normalization)
    if loss_param.HasField("normalize"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return default


def _normalizer(mode: int, outer: int, inner: int, valid: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Caffe's ``get_normalizer`` as a 0-axis tensor (no host sync for VALID): ``max(1, n)``."""
    if mode == VALID and valid is not None:
        n = valid.sum().to(like.dtype)
    else:
        n = torch.tensor(
            {FULL: outer * inner, VALID: outer * inner, BATCH_SIZE: outer, NONE: 1}[mode], dtype=like.dtype,
            device=like.device,
        )
    return n.clamp_min(1.0)


def _int_labels(label: torch.Tensor, ignore: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels as Caffe reads them (``static_cast<int>``), with ignored positions replaced by class 0 so they
    can index safely, and the mask of counted positions (``None`` when there is no ignore_label)."""
    index = label.detach().to(torch.int64)
    if ignore is None:
        return index, None
    valid = index != ignore
    return torch.where(valid, index, torch.zeros_like(index)), valid


def _split_axis(x: torch.Tensor, axis: int) -> tuple[int, int, int]:
    """(outer, classes, inner) around ``axis`` (already canonical for ``x``)."""
    return count(x.shape, 0, axis), x.shape[axis], count(x.shape, axis + 1)


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
class _SoftmaxLossFn(torch.autograd.Function):
    """``-sum_l H[y, l] log(max(p_l, floor))`` over counted positions / normalizer, with p = softmax over
    the class axis; ``H`` = identity (``None``) for SoftmaxWithLoss. Caffe's gradient ignores the floor:
    ``p * rowsum(H)[y] - H[y]`` (``p - onehot(y)`` without H), zero at ignored positions."""

    @staticmethod
    def forward(ctx: Any, x3: torch.Tensor, index: torch.Tensor, valid: torch.Tensor | None,
                h: torch.Tensor | None, floor: float, norm: torch.Tensor) -> torch.Tensor:
        prob = torch.softmax(x3, dim=1)
        if h is None:
            per = -torch.log(prob.gather(1, index.unsqueeze(1)).squeeze(1).clamp_min(floor))
        else:
            rows = h[index].permute(0, 2, 1)  # (outer, classes, inner): row H[y] at every position
            per = -(rows * torch.log(prob.clamp_min(floor))).sum(dim=1)
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
        ctx.save_for_backward(prob, index, valid, h, norm)
        return per.sum() / norm

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        prob, index, valid, h, norm = ctx.saved_tensors
        if h is None:
            diff = prob.scatter_add(1, index.unsqueeze(1), torch.full_like(prob[:, :1], -1.0))
        else:
            diff = prob * h.sum(dim=1)[index].unsqueeze(1) - h[index].permute(0, 2, 1)
        if valid is not None:
            diff = torch.where(valid.unsqueeze(1), diff, torch.zeros_like(diff))
        return diff * (grad / norm), None, None, None, None, None


class SoftmaxLoss(CaffeLayer):
    """SoftmaxWithLoss (``h`` absent) or InfogainLoss (H as third bottom, optional softmax top)."""

    def __init__(self, attrs: LossAttrs, floor: float, prob_top: bool = False):
        super().__init__()
        self.attrs = attrs
        self.floor = floor
        self.prob_top = prob_top

    def forward(self, x: torch.Tensor, label: torch.Tensor, h: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        axis = self.attrs.axis % x.dim()
        outer, classes, inner = _split_axis(x, axis)
        x3 = x.reshape(outer, classes, inner)
        index, valid = _int_labels(label.reshape(outer, inner), self.attrs.ignore_label)
        norm = _normalizer(self.attrs.normalization, outer, inner, valid, x)
        hm = None if h is None else h.detach().reshape(classes, classes).to(x.dtype)
        loss = _SoftmaxLossFn.apply(x3, index, valid, hm, self.floor, norm)
        if self.prob_top:  # Caffe shares the softmax data into top 1 and never reads that top's diff
            return loss, torch.softmax(x.detach(), dim=axis)
        return loss


@register
class SoftmaxWithLoss(_LossSpec):
    type = "SoftmaxWithLoss"
    tops = (1, 2)
    summary = ("softmax over softmax_param.axis + mean negative log-likelihood of the labels "
               "(loss_param ignore_label, normalization FULL/VALID/BATCH_SIZE/NONE, legacy normalize)")

    def attrs(self, layer: Any) -> LossAttrs:
        if len(layer.top) > 1:
            raise ValueError(
                "SoftmaxWithLoss with a second top is rejected by BVLC Caffe (its internal Softmax inherits the "
                "loss weights); add a separate Softmax layer for the probabilities"
            )
        return LossAttrs(int(layer.softmax_param.axis), _ignore_label(layer.loss_param),
                         _normalization(layer.loss_param, VALID))

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        _check_label_count(self, node, in_shapes, node.attrs.axis)
        return [()]

    def build_torch(self, node: Node) -> torch.nn.Module:
        return SoftmaxLoss(node.attrs, FLT_MIN)


@register
class InfogainLoss(_LossSpec):
    type = "InfogainLoss"
    bottoms = (2, 3)
    tops = (1, 2)
    summary = ("softmax + infogain-weighted log loss -sum_l H[y,l] log p_l (H as bottom 2; optional top 1 = "
               "probabilities, needing one loss_weight per top)")

    def attrs(self, layer: Any) -> LossAttrs:
        p = layer.infogain_loss_param
        if layer.loss_param.HasField("normalize"):
            raise ValueError("InfogainLoss: loss_param.normalize is deprecated, use normalization")
        if len(layer.bottom) < 3 and not p.HasField("source"):
            raise ValueError("InfogainLoss with two bottoms needs infogain_loss_param.source (the H matrix)")
        if len(layer.top) > 1 and len(layer.loss_weight) != len(layer.top):
            raise ValueError("InfogainLoss with a second top needs one loss_weight per top (Caffe's rule)")
        return LossAttrs(int(p.axis), _ignore_label(layer.loss_param), _normalization(layer.loss_param, VALID))

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        axis = _check_label_count(self, node, in_shapes, node.attrs.axis)
        classes = in_shapes[0][axis]
        if len(in_shapes) > 2 and count(in_shapes[2]) != classes * classes:
            raise self.fail(node, f"H has shape {tuple(in_shapes[2])}, need {classes} x {classes} values")
        return [(), tuple(in_shapes[0])][: len(node.tops)]

    def build_torch(self, node: Node) -> torch.nn.Module:
        if len(node.bottoms) < 3:
            raise UnsupportedLayerError(
                f"InfogainLoss reads H from infogain_loss_param.source ('{node.proto.infogain_loss_param.source}'),"
                " which prototxt2py does not load; give H as a third bottom (e.g. an Input or Parameter blob)",
                node.location,
                layer=node.name,
            )
        return SoftmaxLoss(node.attrs, LOG_THRESHOLD, prob_top=len(node.tops) > 1)


# -- SigmoidCrossEntropyLoss -------------------------------------------------------------------------------
class _SigmoidCEFn(torch.autograd.Function):
    """Caffe's stable form ``-(x (t - [x>=0]) - log(1 + exp(x - 2x[x>=0])))``; gradient ``sigmoid(x) - t``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                norm: torch.Tensor) -> torch.Tensor:
        pos = (x >= 0).to(x.dtype)
        per = x * (target - pos) - torch.log1p(torch.exp(x - 2 * x * pos))
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
        ctx.save_for_backward(x, target, valid, norm)
        return -per.sum() / norm

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, target, valid, norm = ctx.saved_tensors
        diff = torch.sigmoid(x) - target
        if valid is not None:
            diff = torch.where(valid, diff, torch.zeros_like(diff))
        return diff * (grad / norm), None, None, None


class SigmoidCrossEntropy(CaffeLayer):
    """Targets are used as floats (soft targets work); only the ignore test truncates them to int."""

    def __init__(self, attrs: LossAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outer = x.shape[0]
        target = target.detach().reshape(x.shape).to(x.dtype)
        valid = None if self.attrs.ignore_label is None else target.to(torch.int64) != self.attrs.ignore_label
        norm = _normalizer(self.attrs.normalization, outer, x.numel() // max(outer, 1), valid, x)
        return _SigmoidCEFn.apply(x, target, valid, norm)


@register
class SigmoidCrossEntropyLoss(_LossSpec):
    type = "SigmoidCrossEntropyLoss"
    summary = ("binary cross-entropy on logits with (soft) targets; ignore_label; normalization defaults to "
               "BATCH_SIZE for this layer")

    def attrs(self, layer: Any) -> LossAttrs:
        return LossAttrs(1, _ignore_label(layer.loss_param), _normalization(layer.loss_param, BATCH_SIZE))

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        if count(in_shapes[0]) != count(in_shapes[1]):
            raise self.fail(node, f"inputs must have the same count, got {tuple(in_shapes[0])} and "
                                  f"{tuple(in_shapes[1])}")
        return [()]

    def build_torch(self, node: Node) -> torch.nn.Module:
        return SigmoidCrossEntropy(node.attrs)


# -- EuclideanLoss -----------------------------------------------------------------------------------------
class Euclidean(CaffeLayer):
    """``sum((a - b)^2) / N / 2``; both bottoms get gradients (EuclideanLoss allows force_backward on both)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a - b.reshape(a.shape)
        return (d * d).sum() / a.shape[0] / 2


@register
class EuclideanLoss(_LossSpec):
    type = "EuclideanLoss"
    summary = "sum((a - b)^2) / (2 N); gradient to both bottoms"

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_batch(node, in_shapes)
        if count(in_shapes[0], 1) != count(in_shapes[1], 1):
            raise self.fail(node, f"inputs must have the same dimension, got {tuple(in_shapes[0])} and "
                                  f"{tuple(in_shapes[1])}")
        return [()]

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Euclidean()


# -- HingeLoss ---------------------------------------------------------------------------------------------
class Hinge(CaffeLayer):
    """``sum_j max(0, 1 - s_j x_j)^p / N`` with s = +1 at the label, -1 elsewhere, over ``x`` flattened per
    sample. ``relu`` gives Caffe's gradient at the kink (L1: ``sign(0) = 0``; L2: ``2 * 0``)."""

    def __init__(self, squared: bool):
        super().__init__()
        self.squared = squared

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        num = x.shape[0]
        x2 = x.reshape(num, -1)
        index = label.detach().reshape(-1)[:num].to(torch.int64)  # Caffe reads label[i], i < N
        sign = 1.0 - 2.0 * F.one_hot(index, x2.shape[1]).to(x.dtype)
        margin = torch.relu(1.0 + sign * x2)
        return (margin * margin if self.squared else margin).sum() / num


@register
class HingeLoss(_LossSpec):
    type = "HingeLoss"
    summary = "one-vs-all hinge loss, hinge_loss_param.norm L1 (default) or L2 (squared)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Hinge(squared=node.attrs.norm == 2)


# -- MultinomialLogisticLoss -------------------------------------------------------------------------------
class _NegLogFloorFn(torch.autograd.Function):
    """``-log(max(p, floor))`` whose gradient is ``-1 / max(p, floor)`` even below the floor (as Caffe)."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, floor: float) -> torch.Tensor:
        clamped = p.clamp_min(floor)
        ctx.save_for_backward(clamped)
        return -torch.log(clamped)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (clamped,) = ctx.saved_tensors
        return -grad / clamped, None


class MultinomialLogistic(CaffeLayer):
    """``-sum log(max(p[label], 1e-20)) / N`` on probabilities ``x`` flattened per sample."""

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        num = x.shape[0]
        index = label.detach().reshape(num, 1).to(torch.int64)
        picked = x.reshape(num, -1).gather(1, index)
        return _NegLogFloorFn.apply(picked, LOG_THRESHOLD).sum() / num


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

    def build_torch(self, node: Node) -> torch.nn.Module:
        return MultinomialLogistic()


# -- ContrastiveLoss ---------------------------------------------------------------------------------------
class _ContrastiveFn(torch.autograd.Function):
    """Hadsell et al.'s loss as Caffe computes it. Dissimilar pairs: ``max(margin - d, 0)^2`` with gradient
    ``-(margin - d) / (d + 1e-4) * (a - b) / N`` (Caffe's epsilon), or with ``legacy_version``
    ``max(margin - d^2, 0)``; similar pairs: ``d^2``. All over ``2 N``."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor, margin: float,
                legacy: bool) -> torch.Tensor:
        diff = a - b
        dist_sq = (diff * diff).sum(dim=1)
        if legacy:
            mdist = margin - dist_sq
            dissimilar = mdist.clamp_min(0.0)
            scale = torch.full_like(dist_sq, -1.0)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = margin - dist
            dissimilar = mdist.clamp_min(0.0) ** 2
            scale = -mdist / (dist + 1e-4)
        per = torch.where(similar, dist_sq, dissimilar)
        # d loss / d a per sample, before the 1/N: diff for similar pairs, scale * diff where the margin is active
        coef = torch.where(similar, torch.ones_like(scale), torch.where(mdist > 0, scale, torch.zeros_like(scale)))
        ctx.save_for_backward(diff, coef)
        return per.sum() / a.shape[0] / 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        diff, coef = ctx.saved_tensors
        ga = coef.unsqueeze(1) * diff * (grad / diff.shape[0])
        return (ga if ctx.needs_input_grad[0] else None, -ga if ctx.needs_input_grad[1] else None,
                None, None, None)


class Contrastive(CaffeLayer):
    """Features flattened to (N, C); pairs are similar when ``static_cast<int>(y) != 0`` (0.5 is dissimilar)."""

    def __init__(self, attrs: ContrastiveAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        num = a.shape[0]
        similar = y.detach().reshape(-1)[:num].to(torch.int64) != 0  # static_cast<int>(y) != 0
        return _ContrastiveFn.apply(a.reshape(num, -1), b.reshape(num, -1), similar, self.attrs.margin,
                                    self.attrs.legacy_version)


@register
class ContrastiveLoss(_LossSpec):
    type = "ContrastiveLoss"
    bottoms = (3, 3)
    summary = ("siamese contrastive loss on features a, b and similarity y (margin; legacy_version uses "
               "max(margin - d^2, 0))")

    def attrs(self, layer: Any) -> ContrastiveAttrs:
        p = layer.contrastive_loss_param
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

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Contrastive(node.attrs)


# -- Accuracy ----------------------------------------------------------------------------------------------
class AccuracyModule(CaffeLayer):
    """A label is correct when at most ``top_k`` scores are ``>=`` its own score (ties count against it),
    as Caffe's counting loop. No gradient: Caffe's Accuracy has no backward."""

    def __init__(self, attrs: AccuracyAttrs, per_class: bool):
        super().__init__()
        self.attrs = attrs
        self.per_class = per_class

    @torch.no_grad()
    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        axis = self.attrs.axis % x.dim()
        outer, classes, inner = _split_axis(x, axis)
        x3 = x.reshape(outer, classes, inner)
        index, valid = _int_labels(label.reshape(outer, inner), self.attrs.ignore_label)
        true_score = x3.gather(1, index.unsqueeze(1))
        correct = (x3 >= true_score).sum(dim=1) <= self.attrs.top_k
        if valid is None:
            valid = torch.ones_like(correct)
        correct = correct & valid
        n = valid.sum().to(x.dtype)
        acc = torch.where(n > 0, correct.sum().to(x.dtype) / n.clamp_min(1.0), torch.zeros_like(n))
        if not self.per_class:
            return acc
        flat = index.reshape(-1)
        totals = torch.zeros(classes, dtype=x.dtype, device=x.device).index_add_(0, flat, valid.reshape(-1).to(x.dtype))
        hits = torch.zeros_like(totals).index_add_(0, flat, correct.reshape(-1).to(x.dtype))
        return acc, torch.where(totals > 0, hits / totals.clamp_min(1.0), torch.zeros_like(totals))


@register
class Accuracy(LayerSpec):
    type = "Accuracy"
    bottoms = (2, 2)
    tops = (1, 2)
    family = FAMILY
    summary = "top-k classification accuracy over accuracy_param.axis (ignore_label; top 1 = per-class accuracy)"

    def attrs(self, layer: Any) -> AccuracyAttrs:
        p = layer.accuracy_param
        return AccuracyAttrs(int(p.top_k), int(p.axis), _ignore_label(p))

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        x, label = in_shapes
        if count(label) == 0 or node.attrs.top_k > count(x) // count(label):
            raise self.fail(node, f"top_k {node.attrs.top_k} exceeds the number of classes")
        axis = _check_label_count(self, node, in_shapes, node.attrs.axis)
        return [(), (x[axis],)][: len(node.tops)]

    def build_torch(self, node: Node) -> torch.nn.Module:
        return AccuracyModule(node.attrs, per_class=len(node.tops) > 1)
