"""Torch helpers of R-FCN's fork (daijifeng001/caffe-rfcn, Microsoft/caffe): its online hard example mining
layers, as the fork's CUDA code computes them (it has no CPU code). ``normalization`` is the fork's
``NormalizationMode`` by name; every divisor is ``max(1, n)``."""

import torch
from torch import nn


def _ohem_normalizer(
    mode: str, outer: int, inner: int, valid: torch.Tensor | None, fixed: float, like
) -> torch.Tensor:
    """The fork's ``get_normalizer``: VALID counts the positions not ignored (all of them without an
    ignore_label), PRE_FIXED is ``pre_fixed_normalizer``."""
    if mode == "VALID" and valid is not None:
        return valid.sum().to(like.dtype).clamp_min(1.0)
    n = {
        "FULL": outer * inner,
        "VALID": outer * inner,
        "BATCH_SIZE": outer,
        "PRE_FIXED": fixed,
    }
    return torch.tensor(
        max(1.0, n.get(mode, 1.0)), dtype=like.dtype, device=like.device
    )


class _OhemSoftmaxFn(torch.autograd.Function):
    """Loss ``sum(-log max(p_y, FLT_MIN)) / normalizer`` over the counted positions, with the probabilities
    and each position's term (0 where ignored) as further outputs, which get no gradient (the fork's backward
    reads only the loss's). Gradient ``p - onehot(y)``, zero at ignored positions."""

    @staticmethod
    def forward(ctx, x3, index, valid, norm):
        prob = torch.softmax(x3, dim=1)
        picked = prob.gather(1, index.unsqueeze(1)).squeeze(1)
        per = -torch.log(picked.clamp_min(1.1754943508222875e-38))
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
        ctx.save_for_backward(prob, index, valid, norm)
        ctx.mark_non_differentiable(prob, per)
        return per.sum() / norm, prob, per

    @staticmethod
    def backward(ctx, grad, _prob_grad, _per_grad):
        prob, index, valid, norm = ctx.saved_tensors
        diff = prob.scatter_add(
            1, index.unsqueeze(1), torch.full_like(prob[:, :1], -1.0)
        )
        if valid is not None:
            diff = torch.where(valid.unsqueeze(1), diff, torch.zeros_like(diff))
        return diff * (grad / norm), None, None, None


class SoftmaxWithLossOHEM(nn.Module):
    """R-FCN's SoftmaxWithLossOHEM: SoftmaxWithLoss whose further tops are the probabilities and each
    position's loss (shaped like the labels), which OHEM ranks the ROIs by."""

    def __init__(
        self,
        tops: int = 1,
        axis: int = 1,
        ignore_label: int | None = None,
        normalization: str = "VALID",
    ) -> None:
        super().__init__()
        self.tops, self.axis = tops, axis
        self.ignore_label, self.normalization = ignore_label, normalization

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        axis = self.axis % x.dim()
        outer = x.shape[:axis].numel()
        inner = x.shape[axis + 1 :].numel()
        x3 = x.reshape(outer, x.shape[axis], inner)
        index = label.detach().reshape(outer, inner).to(torch.int64)
        valid = None
        if self.ignore_label is not None:
            valid = index != self.ignore_label
            index = torch.where(valid, index, torch.zeros_like(index))
        norm = _ohem_normalizer(self.normalization, outer, inner, valid, 1.0, x)
        loss, prob, per = _OhemSoftmaxFn.apply(x3, index, valid, norm)
        outs = (loss, prob.reshape(x.shape), per.reshape(label.shape))
        return outs[0] if self.tops == 1 else outs[: self.tops]


class _OhemSmoothL1Fn(torch.autograd.Function):
    """``d = w * (a - b)``; loss ``sum f(d) / normalizer`` with ``f(d) = 0.5 d^2`` for ``|d| < 1``, else
    ``|d| - 0.5`` (in double, stored in the blobs' precision, as the kernel), and each ROI's sum of ``f(d)`` over
    the channels (no gradient). The fork's gradient is ``f'(d)`` for ``a`` and ``-f'(d)`` for ``b``: not
    multiplied by ``w`` (the same for the 0/1 weights R-FCN feeds); ``w`` gets none."""

    @staticmethod
    def forward(ctx, a, b, w, norm):
        d = a - b if w is None else w * (a - b)
        d64 = d.double()
        err = torch.where(d64.abs() < 1, 0.5 * d64 * d64, d64.abs() - 0.5).to(a.dtype)
        per = err.reshape(err.shape[0], err.shape[1], -1).sum(dim=1)
        ctx.save_for_backward(torch.where(d.abs() < 1, d, torch.sign(d)), norm)
        ctx.mark_non_differentiable(per)
        return err.sum() / norm, per

    @staticmethod
    def backward(ctx, grad, _per_grad):
        slope, norm = ctx.saved_tensors
        g = slope * (grad / norm)
        return g, -g, None, None


class SmoothL1LossOHEM(nn.Module):
    """R-FCN's SmoothL1LossOHEM: smooth L1 (sigma 1) of ``w * (a - b)`` (``w``: an optional third bottom),
    normalised by ``normalization`` (VALID and FULL: num x height x width; PRE_FIXED: ``pre_fixed``); with a
    second top, each ROI's loss ``(num, 1, height, width)``. Inputs are read as Caffe's legacy 4-axis blobs."""

    def __init__(
        self, tops: int = 1, normalization: str = "VALID", pre_fixed: float = 1.0
    ) -> None:
        super().__init__()
        self.tops, self.normalization, self.pre_fixed = tops, normalization, pre_fixed

    def forward(self, a: torch.Tensor, b: torch.Tensor, *weights: torch.Tensor):
        num = a.shape[0]
        a4 = a.reshape(*a.shape, *(1,) * (4 - a.dim()))
        b4 = b.reshape(a4.shape)
        w4 = weights[0].detach().reshape(a4.shape) if weights else None
        inner = a4.shape[2] * a4.shape[3]
        norm = _ohem_normalizer(self.normalization, num, inner, None, self.pre_fixed, a)
        loss, per = _OhemSmoothL1Fn.apply(a4, b4, w4, norm)
        per = per.reshape(num, 1, a4.shape[2], a4.shape[3])
        return loss if self.tops == 1 else (loss, per)


class BoxAnnotatorOHEM(nn.Module):
    """R-FCN's BoxAnnotatorOHEM: the ``roi_per_img`` ROIs of each image with the highest loss keep their label
    and box regression weights; the others get ``ignore_label`` and zero weights. Bottoms: ROIs
    ``(R, 5, H, W)`` (batch index first), each ROI's loss and label ``(R, 1, H, W)``, box weights
    ``(R, 4K, H, W)`` (fewer axes read as Caffe's legacy ones). Equal losses keep ROI order (the fork's
    ``std::sort`` leaves their order unspecified)."""

    def __init__(self, roi_per_img: int, ignore_label: int = -1) -> None:
        super().__init__()
        self.roi_per_img, self.ignore_label = roi_per_img, ignore_label

    @torch.no_grad()
    def forward(
        self,
        rois: torch.Tensor,
        loss: torch.Tensor,
        labels: torch.Tensor,
        box_weights: torch.Tensor,
    ):
        num = rois.shape[0]
        height = rois.shape[2] if rois.dim() > 2 else 1
        width = rois.shape[3] if rois.dim() > 3 else 1
        image = rois.detach().reshape(num, 5, height * width)[:, 0].reshape(-1).cpu()
        image = image.to(torch.int64)
        if bool((image < 0).any()):
            raise ValueError("BoxAnnotatorOHEM: a ROI's batch index is negative")
        order = torch.sort(
            loss.detach().reshape(-1).cpu(), descending=True, stable=True
        )
        ranked = image[
            order.indices
        ]  # images in loss order; a ROI's rank among its image's ROIs:
        grouped = torch.sort(ranked, stable=True)
        start = torch.searchsorted(grouped.values, grouped.values)
        rank = torch.empty_like(ranked)
        rank[grouped.indices] = torch.arange(len(ranked)) - start
        kept = torch.zeros(len(ranked), dtype=torch.bool)
        kept[order.indices[rank < self.roi_per_img]] = True
        kept = kept.to(rois.device)
        top_labels = torch.where(
            kept,
            labels.reshape(-1),
            torch.full_like(labels.reshape(-1), float(self.ignore_label)),
        )
        w = box_weights.reshape(num, -1, height * width)
        keep_w = kept.reshape(num, 1, height * width)
        top_w = torch.where(keep_w, w, torch.zeros_like(w))
        return (
            top_labels.reshape(num, 1, height, width),
            top_w.reshape(num, w.shape[1], height, width),
        )
