"""Small helpers shared by the torch builders of layer specs.

Every layer module keeps its Caffe blobs as attributes named by ``spec.blob_names`` with **exactly Caffe's
blob shapes** (e.g. Deconvolution weights ``(C_in, C_out/group, kh, kw)``), so weights convert both ways by
position with no per-layer code. Trainable blobs are ``nn.Parameter``; statistics (BatchNorm) are buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..fillers import fill


class CaffeLayer(nn.Module):
    """Base of layer modules: ``forward(*bottoms)`` returns a tensor (one top) or a tuple (several)."""

    blob_names: tuple[str, ...] = ()

    def add_blob(
        self, name: str, shape: Sequence[int], filler: Any | None = None, trainable: bool = True
    ) -> None:
        value = fill(shape, filler)
        if trainable:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)
        self.blob_names = (*self.blob_names, name)

    def caffe_blobs(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self.blob_names]


def filler_of(param: Any, field: str) -> Any | None:
    """The ``FillerParameter`` in ``param.<field>`` (Caffe's default filler is constant 0)."""
    if param is None or not param.HasField(field):
        return None
    return getattr(param, field)
