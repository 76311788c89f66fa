"""Neuron-layer modules where no ``torch.nn`` class has Caffe's exact semantics.

ReLU, ReLU6, Sigmoid, TanH, BNLL (softplus), plain ELU, Swish with beta 1 (SiLU),
per-channel PReLU and standard Dropout are stock ``torch.nn`` modules; these classes
cover the rest, each with the torch op whose autograd agrees with Caffe's backward at
the kinks.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class AbsVal(nn.Module):
    """Caffe's AbsVal: ``|x|``, gradient ``sign(x)`` with sign(0) = 0 (``torch.abs`` has
    the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class BinaryThreshold(nn.Module):
    """Caffe's Threshold: 1 where ``x > threshold`` (strictly) else 0, a float blob with
    no gradient (``nn.Threshold`` is a different function: it passes ``x`` through above
    the threshold)."""

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class ScaledELU(nn.Module):
    """ELU times NVCaffe's ``lambda`` (SELU-like with the file's own constants, which
    ``nn.SELU`` does not take)."""

    def __init__(self, alpha: float = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.scale = alpha, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.elu(x, self.alpha)
        return y if self.scale == 1.0 else y * self.scale

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, scale={self.scale}"


class Swish(nn.Module):
    """Caffe's Swish ``x * sigmoid(beta * x)`` (``nn.SiLU`` is beta 1)."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class Clip(nn.Module):
    """Caffe's Clip: ``max(min, min(x, max))``, the gradient passing on the closed
    interval ``[min, max]`` as ``torch.clamp`` does (``nn.Hardtanh`` passes it on the
    open one only). With min > max every output is ``min`` (Caffe's order), where one
    clamp would give ``max``. NaN comes out as ``min`` with a zero gradient: ``std::min``
    and ``std::max`` return their first argument when a comparison fails (a clamp,
    oneDNN's fused one aside, keeps NaN)."""

    def __init__(self, min_val: float, max_val: float) -> None:
        super().__init__()
        self.min_val, self.max_val = min_val, max_val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.min_val <= self.max_val:
            y = torch.clamp(x, self.min_val, self.max_val)
        else:
            y = torch.clamp(torch.clamp(x, max=self.max_val), min=self.min_val)
        return torch.nan_to_num(y, nan=self.min_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


class Power(nn.Module):
    """Caffe's Power ``(shift + scale * x) ^ power``.

    When ``power * scale == 0`` Caffe ignores the input: the top is the constant
    ``shift ^ power`` (1 for power 0, computed in the input's precision) and the bottom
    gradient is 0. The constant is selected by ``torch.where`` so the top stays in the
    autograd graph with that zero gradient, and an inf/nan input does not leak into it.
    """

    def __init__(
        self, power: float = 1.0, scale: float = 1.0, shift: float = 0.0
    ) -> None:
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power * self.scale == 0.0:
            base = torch.full((), self.shift, dtype=x.dtype, device=x.device)
            value = torch.ones_like(base) if self.power == 0.0 else base.pow(self.power)
            return torch.where(torch.ones_like(base, dtype=torch.bool), value, x)
        y = x if self.scale == 1.0 else x * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        return y if self.power == 1.0 else torch.pow(y, self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


def _elementwise_log_base(base: float) -> float:
    """Natural log of an Exp/Log ``base``; -1 stands for e."""
    return 1.0 if base == -1.0 else math.log(base)


class Exp(nn.Module):
    """Caffe's Exp ``base ^ (shift + scale * x)`` (base -1 = e), factorised as Caffe
    does: ``base^shift * exp(log(base) * scale * x)``."""

    def __init__(
        self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0
    ) -> None:
        super().__init__()
        self.base, self.scale, self.shift = base, scale, shift
        self.inner_scale = _elementwise_log_base(base) * scale
        try:
            outer = base**shift if base != -1.0 else math.exp(shift)
        except OverflowError:
            outer = math.inf
        self.outer_scale = 1.0 if shift == 0.0 else outer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner_scale == 1.0 else x * self.inner_scale)
        return y if self.outer_scale == 1.0 else y * self.outer_scale

    def extra_repr(self) -> str:
        return f"base={self.base}, scale={self.scale}, shift={self.shift}"


class Log(nn.Module):
    """Caffe's Log ``log_base(shift + scale * x)`` (base -1 = e), computed as Caffe
    does: ``log(x * scale + shift) * (1 / ln(base))``."""

    def __init__(
        self, base: float = -1.0, scale: float = 1.0, shift: float = 0.0
    ) -> None:
        super().__init__()
        self.base, self.scale, self.shift = base, scale, shift
        self.base_scale = 1.0 / _elementwise_log_base(base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.scale == 1.0 else x * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1.0 else y * self.base_scale

    def extra_repr(self) -> str:
        return f"base={self.base}, scale={self.scale}, shift={self.shift}"


class SharedPReLU(nn.Module):
    """Caffe's PReLU with ``channel_shared``: one slope for every channel, kept as
    Caffe's 0-axis blob (``nn.PReLU(1)`` would store it with shape ``(1,)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight.reshape(1))


class ForkDropout(nn.Module):
    """Dropout with fork fields: ``scale_train: false`` (Faster R-CNN/R-FCN) keeps the
    kept units unscaled in training and scales by ``1 - ratio`` at test instead;
    ``sample_test`` (SegNet's ``sample_weights_test``) samples masks at test time too
    (Monte Carlo dropout)."""

    def __init__(
        self, ratio: float = 0.5, scale_train: bool = True, sample_test: bool = False
    ) -> None:
        super().__init__()
        self.ratio, self.scale_train, self.sample_test = ratio, scale_train, sample_test

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.sample_test:
            if self.scale_train:
                return F.dropout(x, self.ratio, training=True)
            return x * torch.empty_like(x).bernoulli_(1.0 - self.ratio)
        return x if self.scale_train else x * (1.0 - self.ratio)

    def extra_repr(self) -> str:
        flags = f"scale_train={self.scale_train}, sample_test={self.sample_test}"
        return f"ratio={self.ratio}, {flags}"
