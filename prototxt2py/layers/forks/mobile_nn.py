"""ShuffleNet's ShuffleChannel as a torch module, for 2-D blobs (``nn.ChannelShuffle`` covers the rest)."""

import torch
from torch import nn


class ShuffleChannel(nn.Module):
    """ShuffleNet's channel shuffle for blobs ``nn.ChannelShuffle`` refuses (two axes): the ``(g, C/g)``
    channel grid transposed."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        grid = x.reshape(n, self.group, c // self.group, *x.shape[2:])
        return grid.transpose(1, 2).reshape(x.shape)
