"""Torch helper of HED's fork: its class-balanced ``SigmoidCrossEntropyLoss``."""

import torch
from torch import nn


class _BalancedSigmoidFn(torch.autograd.Function):
    """Per image (row): ``l = -(x (t - [x>=0]) - log(1 + exp(x - 2x[x>=0])))``; the loss sums ``l`` over
    targets 1 times ``n0 / (n0 + n1)`` and over targets 0 times ``n1 / (n0 + n1)``, over the images, divided by
    their number. The fork's gradient is ``(sigmoid(x) - t)`` times the same weight, and unweighted at targets
    that are neither 0 nor 1 (which add no loss)."""

    @staticmethod
    def forward(ctx, x2, t2):
        step = (x2 >= 0).to(x2.dtype)
        per = -(x2 * (t2 - step) - torch.log(1 + torch.exp(x2 - 2 * x2 * step)))
        edge, plain = t2 == 1, t2 == 0
        n1 = edge.sum(dim=1, keepdim=True).to(x2.dtype)
        n0 = plain.sum(dim=1, keepdim=True).to(x2.dtype)
        zero = torch.zeros_like(per)
        loss_edge = (
            torch.where(edge, per, zero).sum(dim=1, keepdim=True) * n0 / (n1 + n0)
        )
        loss_plain = (
            torch.where(plain, per, zero).sum(dim=1, keepdim=True) * n1 / (n1 + n0)
        )
        one = torch.ones_like(per)
        weight = torch.where(
            edge, n0 / (n1 + n0), torch.where(plain, n1 / (n1 + n0), one)
        )
        ctx.save_for_backward(x2, t2, weight)
        return (loss_edge.sum() + loss_plain.sum()) / x2.shape[0]

    @staticmethod
    def backward(ctx, grad):
        x2, t2, weight = ctx.saved_tensors
        diff = (torch.sigmoid(x2) - t2) * weight
        return diff * (grad / x2.shape[0]), None


class BalancedSigmoidCrossEntropyLoss(nn.Module):
    """HED's ``SigmoidCrossEntropyLoss``: edge and non-edge pixels of each image weighted by the other's share."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return _BalancedSigmoidFn.apply(
            x.reshape(n, -1), target.detach().reshape(n, -1)
        )
