"""Normalisation modules: Caffe's BatchNorm (statistics only), Scale, Bias and SSD's Normalize.

Caffe's ``float`` fields (``eps``, ``moving_average_fraction``) are single precision: the modules round them
to float32 once, so ``BatchNorm(64, eps=1e-5)`` uses Caffe's exact value also when run in float64.
"""

import struct

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _bn_float32(value: float) -> float:
    """``value`` rounded to float32, as Caffe's ``float`` fields hold it."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _bn_reduce_dims(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1: what BatchNorm averages over."""
    return (0, *range(2, ndim))


def _bn_channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A ``(C,)`` vector shaped to broadcast along axis 1 of an ``ndim``-axis blob."""
    return v.reshape((-1,) + (1,) * (ndim - 2))


class _BatchNormBatchStats(torch.autograd.Function):
    """Normalisation with batch statistics in Caffe's order: mean, ``x - mean``, biased
    variance ``mean((x - mean)^2)``, division by ``sqrt(var + eps)`` (not a folded
    ``x * a + b``, which loses absolute precision for channels of small variance).
    Returns ``(y, mean, var)``; the statistics are not differentiable. Backward is
    Caffe's closed form ``dx = (dy - (sum(dy) + y * sum(dy * y)) / m) / std`` (sums
    over every axis but 1, ``m`` elements per channel), keeping only ``y`` and ``std``
    as Caffe does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float):
        dims = _bn_reduce_dims(x.dim())
        mean = x.mean(dims, keepdim=True)
        y = x - mean
        var = (y * y).mean(dims, keepdim=True)
        std = (var + eps).sqrt()
        y.div_(std)
        ctx.save_for_backward(y, std)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor, *_stats: torch.Tensor):
        y, std = ctx.saved_tensors
        dims = _bn_reduce_dims(y.dim())
        m = y.numel() // std.numel()
        sums = dy.sum(dims, keepdim=True) + y * (dy * y).sum(dims, keepdim=True)
        return (dy - sums * (1.0 / m)) / std, None


class BatchNorm(nn.Module):
    """Caffe's BatchNorm: standardise per channel (axis 1), no learned scale or shift.

    The buffers ``mean`` and ``variance`` (``(C,)``) hold *sums* and ``scale_factor``
    (``(1,)``) their weight: the statistics used are ``mean / s`` and ``variance / s``
    (0 when ``s`` is 0). ``use_global_stats`` None means stored statistics in eval
    mode and batch statistics in training mode. With batch statistics the forward pass
    updates the sums in place, as Caffe does: ``s = s * maf + 1``, ``mean`` with the
    batch mean, ``variance`` with the unbiased batch variance.
    """

    def __init__(
        self,
        channels: int,
        use_global_stats: bool | None = None,
        moving_average_fraction: float = 0.999,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.use_global_stats = use_global_stats
        self.moving_average_fraction = _bn_float32(moving_average_fraction)
        self.eps = _bn_float32(eps)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.zeros(channels))
        self.register_buffer("scale_factor", torch.zeros(1))

    def uses_global_stats(self) -> bool:
        """Whether the stored statistics are used: ``use_global_stats``, else eval mode."""
        if self.use_global_stats is None:
            return not self.training
        return self.use_global_stats

    def stored_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, variance)`` from the stored sums (divided by the scale factor)."""
        s = self.scale_factor
        factor = torch.where(s == 0, 0.0, s.reciprocal())
        return self.mean * factor, self.variance * factor

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(multiplier, offset)`` with ``x * multiplier + offset`` equal to
        the output with stored statistics, for folding into a preceding convolution or a
        following Scale. Rounds differently from Caffe's ``(x - mean) / sqrt(var + eps)``
        by about one float32 ulp of ``|x| * multiplier``. Raises when batch statistics
        are used: they have no fixed affine form."""
        if not self.uses_global_stats():
            raise RuntimeError(
                "BatchNorm uses batch statistics here (training, or use_global_stats: "
                "false): it has no fixed affine form"
            )
        with torch.no_grad():
            mean, var = self.stored_stats()
            multiplier = (var + self.eps).rsqrt()
            return multiplier, -mean * multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_global_stats():
            mean, var = self.stored_stats()
            # Subtract, then divide by sqrt(var + eps): Caffe's rounding and backward.
            std = (var + self.eps).sqrt()
            centred = x - _bn_channel_view(mean, x.dim())
            return centred.div_(_bn_channel_view(std, x.dim()))
        y, mean, var = _BatchNormBatchStats.apply(x, self.eps)
        with torch.no_grad():
            self._accumulate(mean.flatten(), var.flatten(), x.numel() // var.numel())
        return y

    def _accumulate(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        """Caffe's moving sums; the stored variance gets the correction ``m / (m - 1)``."""
        maf = self.moving_average_fraction
        correction = m / (m - 1) if m > 1 else 1.0
        self.scale_factor.mul_(maf).add_(1.0)
        self.mean.mul_(maf).add_(mean)
        self.variance.mul_(maf).add_(var * correction)


def _broadcast_operand(
    operand: torch.Tensor, x: torch.Tensor, axis: int
) -> torch.Tensor:
    """``operand`` (covering ``x.shape[axis:axis + operand.dim()]``) with trailing ones,
    so it broadcasts against ``x``; a 0-axis operand is a scalar."""
    if operand.dim() == 0:
        return operand
    start = axis + x.dim() if axis < 0 else axis
    return operand.reshape(operand.shape + (1,) * (x.dim() - start - operand.dim()))


class Scale(nn.Module):
    """Caffe's Scale: ``x * weight (+ bias)``, the operand covering
    ``x.shape[axis:axis + len(shape)]`` (``shape`` () = a scalar). The factor is the
    ``weight`` blob, or the second bottom when ``learned`` is false."""

    def __init__(
        self,
        shape: tuple[int, ...] = (),
        axis: int = 1,
        bias: bool = False,
        learned: bool = True,
    ) -> None:
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.zeros(shape)) if learned else None
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, x: torch.Tensor, *scale: torch.Tensor) -> torch.Tensor:
        factor = _broadcast_operand(scale[0] if scale else self.weight, x, self.axis)
        if self.bias is None:
            return x * factor
        return torch.addcmul(_broadcast_operand(self.bias, x, self.axis), x, factor)


class Bias(nn.Module):
    """Caffe's Bias: ``x + bias``, the operand covering ``x.shape[axis:axis + len(shape)]``;
    the ``bias`` blob, or the second bottom when ``shape`` is None."""

    def __init__(self, shape: tuple[int, ...] | None = None, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis
        self.bias = nn.Parameter(torch.zeros(shape)) if shape is not None else None

    def forward(self, x: torch.Tensor, *bias: torch.Tensor) -> torch.Tensor:
        return x + _broadcast_operand(bias[0] if bias else self.bias, x, self.axis)


def _l2norm_dims(x: torch.Tensor, across_spatial: bool) -> tuple[int, ...]:
    """Axes Normalize sums squares over: ``C*H*W`` of a sample, or ``C`` at a position."""
    return tuple(range(1, x.dim())) if across_spatial else (1,)


def _l2norm_weight(weight: torch.Tensor, ndim: int) -> torch.Tensor:
    return weight if weight.dim() == 0 else _bn_channel_view(weight, ndim)


class _NormalizeL2(torch.autograd.Function):
    """``y = x / sqrt(sum(x^2) + eps) * weight`` with SSD Caffe's backward. For the
    input Caffe computes ``weight * (dy - x * sum(x * dy) / norm^2) / norm``: the dot
    product leaves the weight out, so with a per-channel weight the input gradient is
    *not* the true derivative, and is reproduced here. The weight gradient,
    ``sum(x / norm * dy)``, is the true one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, across: bool, eps: float):
        norm = ((x * x).sum(_l2norm_dims(x, across), keepdim=True) + eps).sqrt()
        ctx.save_for_backward(x, weight, norm)
        ctx.across_spatial = across
        return x / norm * _l2norm_weight(weight, x.dim())

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight, norm = ctx.saved_tensors
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dot = (x * dy).sum(_l2norm_dims(x, ctx.across_spatial), keepdim=True)
            dx = (
                (dy - x * (dot / (norm * norm)))
                / norm
                * _l2norm_weight(weight, x.dim())
            )
        if ctx.needs_input_grad[1]:
            product = x / norm * dy
            if weight.dim() == 0:
                dweight = product.sum()
            else:
                dweight = product.sum(_bn_reduce_dims(x.dim()))
        return dx, dweight, None, None


class Normalize(nn.Module):
    """SSD's Normalize: L2-normalise each sample over ``C*H*W`` (``across_spatial``) or
    each position over ``C``, ``eps`` added to the sum of squares inside the square
    root, then multiply by ``weight`` (a 0-axis scalar if ``channel_shared``, else
    ``(C,)``)."""

    def __init__(
        self,
        channels: int,
        across_spatial: bool = True,
        channel_shared: bool = True,
        eps: float = 1e-10,
    ) -> None:
        super().__init__()
        self.across_spatial = across_spatial
        self.eps = _bn_float32(eps)
        shape = () if channel_shared else (channels,)
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NormalizeL2.apply(x, self.weight, self.across_spatial, self.eps)
