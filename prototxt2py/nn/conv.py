"""Convolution-family modules where ``nn.Conv*d``/``nn.Linear``/``nn.Embedding`` do not say it all."""

import torch
import torch.nn.functional as F
from torch import nn


def _pad_overhang(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """``x`` with zeros after it on each spatial axis where the kernel is longer than the padded input.

    Caffe sizes a convolution's output with C++ integer division, which truncates toward zero: a kernel
    overhanging the padded input by less than the stride still gives one output, computed over the part of
    the window inside (im2col reads zeros beyond it), where torch refuses the kernel."""
    sizes = x.shape[x.dim() - len(kernel) :]
    end = [
        max(0, d * (k - 1) + 1 - i - 2 * p)
        for i, k, p, d in zip(sizes, kernel, padding, dilation, strict=True)
    ]
    if not any(end):
        return x
    return F.pad(x, [v for e in reversed(end) for v in (0, e)])


class SharedConvolution(nn.Module):
    """Caffe's Convolution/Deconvolution with several bottoms (one weight applied to each bottom in turn),
    with a kernel overhanging its padded input (see :func:`_pad_overhang`), or with channels on an axis
    other than 1 (``channel_axis``: every axis before it is a batch axis, as Caffe's ``num_``).

    Weight is ``(out, in/groups, *kernel)``, or ``(in, out/groups, *kernel)`` when ``transposed``.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
        groups: int = 1,
        transposed: bool = False,
        channel_axis: int = 1,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.transposed = groups, transposed
        self.channel_axis = channel_axis
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        outputs = weight_shape[1] * groups if transposed else weight_shape[0]
        self.bias = nn.Parameter(torch.zeros(outputs)) if bias else None

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis != 1:
            lead = x.shape[: self.channel_axis]
            y = self._batched(x.reshape((-1, *x.shape[self.channel_axis :])))
            return y.reshape((*lead, *y.shape[1:]))
        return self._batched(x)

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.stride)
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
            return fn(
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                0,
                self.groups,
                self.dilation,
            )
        fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
        return fn(
            _pad_overhang(x, self.weight.shape[2:], self.padding, self.dilation),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )

    def forward(
        self, *bottoms: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tops = tuple(self._one(x) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops


class InnerProduct(nn.Module):
    """Caffe's InnerProduct: flattens every axis from ``axis`` (non-negative) and applies a ``(out, in)``
    weight, or an ``(in, out)`` one with ``transpose`` (``nn.Linear`` covers the plain 2-D case)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        axis: int = 1,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        self.axis, self.transpose = axis, transpose
        shape = (
            (in_features, out_features) if transpose else (out_features, in_features)
        )
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(self.axis)
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(flat, weight, self.bias)


class Embed(nn.Module):
    """Caffe's Embed: float-valued indices (truncated like ``static_cast<int>``) pick rows of a
    ``(num_embeddings, embedding_dim)`` weight, plus an optional bias."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.weight = nn.Parameter(torch.zeros(num_embeddings, embedding_dim))
        self.bias = nn.Parameter(torch.zeros(embedding_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x.detach().long()
        if index.numel() and (
            int(index.min()) < 0 or int(index.max()) >= self.num_embeddings
        ):
            raise ValueError(f"Embed index out of range [0, {self.num_embeddings})")
        out = F.embedding(index, self.weight)
        return out if self.bias is None else out + self.bias


class Im2col(nn.Module):
    """Caffe's Im2col: every kernel window as a column, channel-major: ``(N, C*kh*kw, H_out, W_out)``."""

    def __init__(
        self,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_overhang(x, self.kernel_size, self.padding, self.dilation)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        h, w = (
            (
                x.shape[2 + i]
                + 2 * self.padding[i]
                - self.dilation[i] * (self.kernel_size[i] - 1)
                - 1
            )
            // self.stride[i]
            + 1
            for i in (0, 1)
        )
        return cols.reshape(x.shape[0], cols.shape[1], h, w)
