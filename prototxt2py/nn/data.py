"""Modules of layers whose tops are net inputs, and of sinks."""

import torch
from torch import nn


class NetInput(nn.Module):
    """Stands in for input blobs (Input and data layers): reaching ``forward`` means the caller did not pass
    them."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def forward(self) -> torch.Tensor:
        raise TypeError(f"input blob(s) {list(self.names)} were not given to the net")


class Sink(nn.Module):
    """HDF5Output: Caffe appends its bottoms to a file; here the bottoms stay in the caller's hands."""

    def forward(self, *bottoms: torch.Tensor) -> tuple[()]:
        return ()
