"""Caffe's loss layers and Accuracy: 0-axis tops whose backward is Caffe's, not the textbook gradient.

Labels are float blobs read with ``static_cast<int>`` (truncation toward zero) and never get a gradient, so
they are detached. ``normalization`` is Caffe's ``LossParameter.NormalizationMode`` by name ("FULL",
"VALID", "BATCH_SIZE", "NONE"); the divisor is ``max(1, n)``. Where Caffe's backward is not the
derivative of its forward (probabilities clamped in the log but not in the gradient, the contrastive
epsilon, ``sigmoid(x) - t`` at ``x == 0``), a ``torch.autograd.Function`` carries Caffe's formula; the
loss weight arrives as the top's gradient.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _loss_normalizer(
    mode: str, outer: int, inner: int, valid: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """Caffe's ``get_normalizer`` as a 0-axis tensor (no host sync for VALID): ``max(1, n)``."""
    if mode == "VALID" and valid is not None:
        n = valid.sum().to(like.dtype)
    else:
        count = {"FULL": outer * inner, "VALID": outer * inner, "BATCH_SIZE": outer}
        n = torch.tensor(count.get(mode, 1), dtype=like.dtype, device=like.device)
    return n.clamp_min(1.0)


def _loss_int_labels(
    label: torch.Tensor, ignore: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels as Caffe reads them (``static_cast<int>``), ignored positions replaced by class 0 so they
    index safely, and the mask of counted positions (``None`` without an ignore_label)."""
    index = label.detach().to(torch.int64)
    if ignore is None:
        return index, None
    valid = index != ignore
    return torch.where(valid, index, torch.zeros_like(index)), valid


def _loss_split(x: torch.Tensor, axis: int) -> tuple[int, int, int]:
    """(outer, classes, inner) around ``axis`` (canonical for ``x``)."""
    outer = 1
    for d in x.shape[:axis]:
        outer *= d
    inner = 1
    for d in x.shape[axis + 1 :]:
        inner *= d
    return outer, x.shape[axis], inner


class _SoftmaxLossFn(torch.autograd.Function):
    """``-sum_l H[y, l] log(max(p_l, floor))`` over counted positions / normalizer, p = softmax over the
    class axis; ``H`` = identity (``None``) for SoftmaxWithLoss, each position weighted by ``w[y]`` when
    ``w`` is given (SegNet). Caffe's gradient ignores the floor: ``p * rowsum(H)[y] - H[y]`` (``w[y] (p -
    onehot(y))`` without H), zero at ignored positions."""

    @staticmethod
    def forward(ctx, x3, index, valid, h, floor: float, norm, w=None):
        prob = torch.softmax(x3, dim=1)
        if h is None:
            picked = prob.gather(1, index.unsqueeze(1)).squeeze(1)
            per = -torch.log(picked.clamp_min(floor))
            if w is not None:
                per = per * w[index]
        else:
            rows = h[index].permute(
                0, 2, 1
            )  # (outer, classes, inner): H[y] at each position
            per = -(rows * torch.log(prob.clamp_min(floor))).sum(dim=1)
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
        ctx.save_for_backward(prob, index, valid, h, norm, w)
        return per.sum() / norm

    @staticmethod
    def backward(ctx, grad):
        prob, index, valid, h, norm, w = ctx.saved_tensors
        if h is None:
            minus_one = torch.full_like(prob[:, :1], -1.0)
            diff = prob.scatter_add(1, index.unsqueeze(1), minus_one)
            if w is not None:
                diff = diff * w[index].unsqueeze(1)
        else:
            diff = prob * h.sum(dim=1)[index].unsqueeze(1) - h[index].permute(0, 2, 1)
        if valid is not None:
            diff = torch.where(valid.unsqueeze(1), diff, torch.zeros_like(diff))
        return diff * (grad / norm), None, None, None, None, None, None


def _softmax_loss(
    x: torch.Tensor,
    label: torch.Tensor,
    h: torch.Tensor | None,
    axis: int,
    ignore_label: int | None,
    normalization: str,
    floor: float,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of SoftmaxWithLoss (``h`` None) and InfogainLoss, flattened around the class axis."""
    axis = axis % x.dim()
    outer, classes, inner = _loss_split(x, axis)
    x3 = x.reshape(outer, classes, inner)
    index, valid = _loss_int_labels(label.reshape(outer, inner), ignore_label)
    norm = _loss_normalizer(normalization, outer, inner, valid, x)
    if h is not None:
        h = h.detach().reshape(classes, classes).to(x.dtype)
    return _SoftmaxLossFn.apply(x3, index, valid, h, floor, norm, w)


class SoftmaxWithLoss(nn.Module):
    """Caffe's SoftmaxWithLoss: softmax over ``axis``, then the mean negative log-likelihood of the labels
    (probabilities clamped at FLT_MIN in the log only); ``class_weighting``: SegNet's per-class weights of
    each position's term (float32, as the fork stores them)."""

    def __init__(
        self,
        axis: int = 1,
        ignore_label: int | None = None,
        normalization: str = "VALID",
        class_weighting: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.axis, self.ignore_label = axis, ignore_label
        self.normalization = normalization
        self.class_weighting = class_weighting

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        flt_min = 1.1754943508222875e-38
        w = None
        if self.class_weighting is not None:
            w = torch.tensor(self.class_weighting, dtype=torch.float32, device=x.device)
            w = w.to(x.dtype)
        return _softmax_loss(
            x, label, None, self.axis, self.ignore_label, self.normalization, flt_min, w
        )


class InfogainLoss(nn.Module):
    """Caffe's InfogainLoss with H as the third bottom: ``-sum_l H[y, l] log max(p_l, 1e-20)``. With
    ``prob_top`` the softmax is a second top (Caffe shares its data and never reads that top's diff)."""

    def __init__(
        self,
        axis: int = 1,
        ignore_label: int | None = None,
        normalization: str = "VALID",
        prob_top: bool = False,
    ) -> None:
        super().__init__()
        self.axis, self.ignore_label = axis, ignore_label
        self.normalization, self.prob_top = normalization, prob_top

    def forward(
        self, x: torch.Tensor, label: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        loss = _softmax_loss(
            x, label, h, self.axis, self.ignore_label, self.normalization, 1e-20
        )
        if self.prob_top:
            return loss, torch.softmax(x.detach(), dim=self.axis % x.dim())
        return loss


class _SigmoidCEFn(torch.autograd.Function):
    """Caffe's stable ``-(x (t - [x>=0]) - log(1 + exp(x - 2x[x>=0])))``; gradient ``sigmoid(x) - t``."""

    @staticmethod
    def forward(ctx, x, target, valid, norm):
        pos = (x >= 0).to(x.dtype)
        per = x * (target - pos) - torch.log1p(torch.exp(x - 2 * x * pos))
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
        ctx.save_for_backward(x, target, valid, norm)
        return -per.sum() / norm

    @staticmethod
    def backward(ctx, grad):
        x, target, valid, norm = ctx.saved_tensors
        diff = torch.sigmoid(x) - target
        if valid is not None:
            diff = torch.where(valid, diff, torch.zeros_like(diff))
        return diff * (grad / norm), None, None, None


class SigmoidCrossEntropyLoss(nn.Module):
    """Caffe's SigmoidCrossEntropyLoss: targets used as floats (soft targets work), only the ignore test
    truncates them; normalization defaults to BATCH_SIZE for this layer."""

    def __init__(
        self, ignore_label: int | None = None, normalization: str = "BATCH_SIZE"
    ) -> None:
        super().__init__()
        self.ignore_label, self.normalization = ignore_label, normalization

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outer = x.shape[0]
        target = target.detach().reshape(x.shape).to(x.dtype)
        valid = None
        if self.ignore_label is not None:
            valid = target.to(torch.int64) != self.ignore_label
        inner = x.numel() // max(outer, 1)
        norm = _loss_normalizer(self.normalization, outer, inner, valid, x)
        return _SigmoidCEFn.apply(x, target, valid, norm)


class EuclideanLoss(nn.Module):
    """``sum((a - b)^2) / N / 2``; both bottoms get gradients (Caffe allows force_backward on both)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a - b.reshape(a.shape)
        return (d * d).sum() / a.shape[0] / 2


class HingeLoss(nn.Module):
    """``sum_j max(0, 1 - s_j x_j)^p / N``, s = +1 at the label and -1 elsewhere, ``x`` flattened per
    sample; ``norm`` "L1" or "L2" (p = 2). ``relu`` gives Caffe's gradient at the kink (0)."""

    def __init__(self, norm: str = "L1") -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        num = x.shape[0]
        x2 = x.reshape(num, -1)
        index = (
            label.detach().reshape(-1)[:num].to(torch.int64)
        )  # Caffe reads label[i < N]
        sign = 1.0 - 2.0 * F.one_hot(index, x2.shape[1]).to(x.dtype)
        margin = torch.relu(1.0 + sign * x2)
        return (margin * margin if self.norm == "L2" else margin).sum() / num


class _NegLogFloorFn(torch.autograd.Function):
    """``-log(max(p, floor))`` whose gradient is ``-1 / max(p, floor)`` even below the floor (Caffe)."""

    @staticmethod
    def forward(ctx, p, floor: float):
        clamped = p.clamp_min(floor)
        ctx.save_for_backward(clamped)
        return -torch.log(clamped)

    @staticmethod
    def backward(ctx, grad):
        (clamped,) = ctx.saved_tensors
        return -grad / clamped, None


class MultinomialLogisticLoss(nn.Module):
    """``-sum log(max(p[label], 1e-20)) / N`` on probabilities ``x`` flattened per sample."""

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        num = x.shape[0]
        index = label.detach().reshape(num, 1).to(torch.int64)
        picked = x.reshape(num, -1).gather(1, index)
        return _NegLogFloorFn.apply(picked, 1e-20).sum() / num


class _ContrastiveFn(torch.autograd.Function):
    """Hadsell et al.'s loss as Caffe computes it. Dissimilar pairs: ``max(margin - d, 0)^2`` with gradient
    ``-(margin - d) / (d + 1e-4) * (a - b) / N`` (Caffe's epsilon), or with ``legacy``
    ``max(margin - d^2, 0)``; similar pairs: ``d^2``. All over ``2 N``."""

    @staticmethod
    def forward(ctx, a, b, similar, margin: float, legacy: bool):
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
        # d loss / d a per sample before 1/N: diff if similar, scale * diff if the margin is active
        active = torch.where(mdist > 0, scale, torch.zeros_like(scale))
        coef = torch.where(similar, torch.ones_like(scale), active)
        ctx.save_for_backward(diff, coef)
        return per.sum() / a.shape[0] / 2

    @staticmethod
    def backward(ctx, grad):
        diff, coef = ctx.saved_tensors
        ga = coef.unsqueeze(1) * diff * (grad / diff.shape[0])
        ga_a = ga if ctx.needs_input_grad[0] else None
        ga_b = -ga if ctx.needs_input_grad[1] else None
        return ga_a, ga_b, None, None, None


class ContrastiveLoss(nn.Module):
    """Caffe's ContrastiveLoss on features flattened to (N, C); a pair is similar when
    ``static_cast<int>(y) != 0`` (0.5 is dissimilar)."""

    def __init__(self, margin: float = 1.0, legacy_version: bool = False) -> None:
        super().__init__()
        self.margin, self.legacy_version = margin, legacy_version

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        num = a.shape[0]
        similar = y.detach().reshape(-1)[:num].to(torch.int64) != 0
        a2, b2 = a.reshape(num, -1), b.reshape(num, -1)
        return _ContrastiveFn.apply(a2, b2, similar, self.margin, self.legacy_version)


class Accuracy(nn.Module):
    """Caffe's Accuracy: a label is correct when at most ``top_k`` scores are ``>=`` its own (ties count
    against it); a label outside the classes counts as wrong. With ``per_class`` a second top holds each
    class's accuracy. No gradient."""

    def __init__(
        self,
        top_k: int = 1,
        axis: int = 1,
        ignore_label: int | None = None,
        per_class: bool = False,
    ) -> None:
        super().__init__()
        self.top_k, self.axis = top_k, axis
        self.ignore_label, self.per_class = ignore_label, per_class

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        axis = self.axis % x.dim()
        outer, classes, inner = _loss_split(x, axis)
        x3 = x.reshape(outer, classes, inner)
        index, valid = _loss_int_labels(label.reshape(outer, inner), self.ignore_label)
        # a label outside the classes (SegNet's void class 11 of 11, an Accuracy without ignore_label) is
        # counted and never right (Caffe's release build reads past its scores there)
        known = (index >= 0) & (index < classes)
        index = torch.where(known, index, torch.zeros_like(index))
        true_score = x3.gather(1, index.unsqueeze(1))
        correct = (x3 >= true_score).sum(dim=1) <= self.top_k
        if valid is None:
            valid = torch.ones_like(correct)
        correct = correct & valid & known
        n = valid.sum().to(x.dtype)
        hit_rate = correct.sum().to(x.dtype) / n.clamp_min(1.0)
        acc = torch.where(n > 0, hit_rate, torch.zeros_like(n))
        if not self.per_class:
            return acc
        flat = index.reshape(-1)
        totals = torch.zeros(classes, dtype=x.dtype, device=x.device)
        totals = totals.index_add_(0, flat, (valid & known).reshape(-1).to(x.dtype))
        hits = torch.zeros_like(totals).index_add_(
            0, flat, correct.reshape(-1).to(x.dtype)
        )
        per_class = torch.where(
            totals > 0, hits / totals.clamp_min(1.0), torch.zeros_like(totals)
        )
        return acc, per_class
