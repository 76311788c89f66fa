"""SENet ports' Axpy as a torch module."""

import torch
from torch import nn


class Axpy(nn.Module):
    """SENet ports' Axpy: ``a * x + y`` with a per-channel scale ``a (N, C, 1, 1)``."""

    def forward(
        self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return a.reshape(*a.shape[:2], *([1] * (x.dim() - 2))) * x + y
