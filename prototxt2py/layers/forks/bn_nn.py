"""The forks' BN as torch modules: SegNet's (SegNetBN) and PSPNet's (PSPNetBN)."""

import torch
from torch import nn


class SegNetBN(nn.Module):
    """SegNet's BN, blobs ``scale``/``shift`` of shape ``(1, C, 1, 1)``: INFERENCE mode is
    ``x * scale + shift`` (statistics folded in); LEARN normalises with the batch mean and
    ``E[x^2] - E[x]^2`` (+1e-9) in any phase, and returns them as tops 2 and 3 when asked."""

    def __init__(self, channels: int, learn: bool = False, num_tops: int = 1) -> None:
        super().__init__()
        self.learn, self.num_tops = learn, num_tops
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = self.scale.reshape(per_channel), self.shift.reshape(per_channel)
        if not self.learn:
            return x * scale + shift
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x * x).mean(dims, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + 1e-9) * scale + shift
        stats = (mean.reshape(self.shift.shape), var.reshape(self.shift.shape))
        return y if self.num_tops == 1 else (y, *stats[: self.num_tops - 1])


class PSPNetBN(nn.Module):
    """PSPNet's BN: blobs ``scale``, ``shift`` (trained) and ``mean``, ``variance`` (buffers), all
    ``(1, C, 1, 1)``. Stored statistics in eval mode or when ``frozen`` (then only the bottom gets a
    gradient); otherwise batch statistics (biased variance), with the stored ones updated as
    ``stat = (1 - momentum) * batch + momentum * stat``."""

    def __init__(
        self,
        channels: int,
        frozen: bool = False,
        momentum: float = 0.9,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.frozen, self.momentum, self.eps = frozen, momentum, eps
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("variance", torch.zeros(1, channels, 1, 1))

    def uses_global_stats(self) -> bool:
        """Whether the stored statistics are used: frozen, or eval mode."""
        return self.frozen or not self.training

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(multiplier, offset)`` with ``x * multiplier + offset`` equal to the
        output with stored statistics up to rounding, for folding into a preceding
        convolution; differentiable with respect to ``scale`` and ``shift`` unless frozen,
        as the forward pass is. Raises when batch statistics are used."""
        if not self.uses_global_stats():
            raise RuntimeError(
                "BN uses batch statistics here (training, not frozen): it has no fixed affine form"
            )
        scale, shift = self.scale.reshape(-1), self.shift.reshape(-1)
        if self.frozen:
            scale, shift = scale.detach(), shift.detach()
        multiplier = (self.variance.reshape(-1) + self.eps).pow(-0.5) * scale
        return multiplier, shift - self.mean.reshape(-1) * multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = self.scale.reshape(per_channel), self.shift.reshape(per_channel)
        if self.frozen:
            scale, shift = scale.detach(), shift.detach()
        if self.frozen or not self.training:
            mean, var = (
                self.mean.reshape(per_channel),
                self.variance.reshape(per_channel),
            )
        else:
            dims = [0, *range(2, x.dim())]
            mean = x.mean(dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dims, keepdim=True)
            m = self.momentum
            with torch.no_grad():
                self.mean.copy_((1 - m) * mean.reshape(self.mean.shape) + m * self.mean)
                new_var = (1 - m) * var.reshape(self.variance.shape) + m * self.variance
                self.variance.copy_(new_var)
        return (x - mean) * (var + self.eps).pow(-0.5) * scale + shift
