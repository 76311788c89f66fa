"""Caffe's weight fillers (``FillerParameter``), so a net built without weights starts like Caffe's would."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _fans(shape: Sequence[int]) -> tuple[float, float]:
    n = math.prod(shape)
    fan_in = n / shape[0] if len(shape) >= 1 and shape[0] else n
    fan_out = n / shape[1] if len(shape) >= 2 and shape[1] else n
    return fan_in, fan_out


def _norm(shape: Sequence[int], variance_norm: int) -> float:
    fan_in, fan_out = _fans(shape)
    if variance_norm == FAN_OUT:
        return fan_out
    if variance_norm == AVERAGE:
        return (fan_in + fan_out) / 2
    return fan_in


def fill(shape: Sequence[int], filler: Any | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A float32 tensor of ``shape`` filled as Caffe's filler of that type would (not bit-identical to
    Caffe's RNG, same distribution). ``filler`` is a ``FillerParameter`` or ``None`` (constant 0)."""
    shape = tuple(int(d) for d in shape)
    out = torch.zeros(shape, dtype=torch.float32)
    if filler is None or out.numel() == 0:
        return out
    kind = filler.type
    if kind == "constant":
        out.fill_(filler.value)
    elif kind == "uniform":
        out.uniform_(filler.min, filler.max, generator=generator)
    elif kind == "gaussian":
        out.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0 and len(shape) >= 2:
            keep = torch.rand(shape, generator=generator) < (filler.sparse / shape[1])
            out.mul_(keep)
    elif kind == "positive_unitball":
        out.uniform_(0, 1, generator=generator)
        flat = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        flat.div_(flat.sum(dim=1, keepdim=True).clamp_min(1e-12))
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _norm(shape, filler.variance_norm))
        out.uniform_(-scale, scale, generator=generator)
    elif kind == "msra":
        std = math.sqrt(2.0 / _norm(shape, filler.variance_norm))
        out.normal_(0.0, std, generator=generator)
    elif kind == "bilinear":
        out.copy_(bilinear_kernel(shape))
    else:
        raise ValueError(f"unknown filler type {kind!r}")
    return out


def bilinear_kernel(shape: Sequence[int]) -> torch.Tensor:
    """Caffe's ``bilinear`` filler: the upsampling kernel FCN uses with Deconvolution."""
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError("bilinear filler needs a 4-D blob with square kernels")
    k = shape[-1]
    f = math.ceil(k / 2.0)
    c = torch.tensor((k - 1) / (2.0 * f), dtype=torch.float32)  # Caffe master computes this in float32
    x = torch.arange(k, dtype=torch.float32)
    w1 = 1 - (x / f - c).abs()
    kernel = w1[:, None] * w1[None, :]
    return kernel.expand(*shape).clone()
