"""Pooling-family modules: Caffe's pooling where ``nn.MaxPool2d``/``nn.AvgPool2d``
differ, SPP, LRN and MVN.

Caffe's pooling geometry (``PoolingLayer::Reshape``): output sizes round up by default;
when any padding is set, a last window starting at or after ``in + pad`` is dropped (on
both axes), and without padding none is, even one lying wholly past the input. MAX
windows are clipped to the input (ties go to the first maximum in row-major order, where
the gradient goes too); AVE divides the window sum by the window clipped to ``[-pad, in
+ pad)``. Everything runs on torch's native pooling kernels: with their own padding
wherever their output size rule and divisor agree with Caffe's for the input at hand,
else on an explicitly padded input with the divisor fixed.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Caffe starts MAX outputs at -FLT_MAX: an empty window yields that, not -inf.
_POOL_FLT_MAX = 3.4028234663852886e38

_PoolPair = tuple[int, int]


def _pool_output_size(
    size: _PoolPair, kernel: _PoolPair, pad: _PoolPair, stride: _PoolPair, ceil: bool
) -> _PoolPair:
    """Caffe's pooled size with its padding rule (ValueError where Caffe refuses)."""
    if any(p and p >= k for p, k in zip(pad, kernel, strict=True)):
        raise ValueError(f"pad {pad} must be smaller than the kernel {kernel}")
    out = []
    for n, k, p, s in zip(size, kernel, pad, stride, strict=True):
        span = n + 2 * p - k
        o = (-(-span // s) if ceil else span // s) + 1
        if any(pad) and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    if min(out) < 1:
        raise ValueError(
            f"kernel {kernel} with pad {pad} does not fit the {size[0]}x{size[1]} input"
        )
    return out[0], out[1]


def _pool_native(
    size: _PoolPair,
    kernel: _PoolPair,
    pad: _PoolPair,
    stride: _PoolPair,
    ceil: bool,
    out: _PoolPair,
) -> bool:
    """Whether torch's pooling with its own padding makes exactly Caffe's windows here:
    torch takes pad <= kernel/2 only, and drops a ceil window starting at or after ``in
    + pad`` even unpadded."""
    for n, k, p, s, o in zip(size, kernel, pad, stride, out, strict=True):
        torch_out = (n + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
        if ceil and (torch_out - 1) * s >= n + p:
            torch_out -= 1
        if p > k // 2 or torch_out != o:
            return False
    return True


def _pool_explicit_pad(
    size: _PoolPair,
    kernel: _PoolPair,
    pad: _PoolPair,
    stride: _PoolPair,
    out: _PoolPair,
) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) making the input exactly as large as
    Caffe's windows cover (negative where the last window ends before the input does).
    """
    (h, w), (kh, kw), (ph, pw), (sh, sw), (oh, ow) = size, kernel, pad, stride, out
    return (pw, (ow - 1) * sw + kw - pw - w, ph, (oh - 1) * sh + kh - ph - h)


def _pool_clipped_lengths(
    n: int, k: int, p: int, s: int, out: int, like: torch.Tensor
) -> torch.Tensor:
    """Per output position, the window length clipped to ``[-pad, in + pad)``: a factor
    of Caffe's AVE divisor."""
    start = torch.arange(out, device=like.device, dtype=like.dtype) * s - p
    return (start + k).clamp(max=n + p) - start


def _pool_channels_last_max(
    x: torch.Tensor, kernel: _PoolPair, stride: _PoolPair, pad: _PoolPair, ceil: bool
) -> torch.Tensor:
    """Max pooling in the input's layout, run channels-last: torch's CPU kernel is a
    scalar loop on NCHW tensors but vectorised over channels on channels-last ones (2-4x
    faster there and back), with the same values and the same first-maximum gradient
    routing."""
    if x.dim() != 4 or x.is_cuda:
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
    y = F.max_pool2d(
        x.contiguous(memory_format=torch.channels_last),
        kernel,
        stride,
        pad,
        ceil_mode=ceil,
    )
    return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


def caffe_pool(
    x: torch.Tensor,
    pool: str,
    kernel: _PoolPair,
    stride: _PoolPair,
    pad: _PoolPair,
    ceil: bool,
    training: bool = False,
    with_mask: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Caffe's pooling of a 4-D tensor: ``(top, mask or None)``; the mask is MAX's
    argmax as a float flat index into H*W (-1 where only padding was in the window)."""
    size = (x.shape[2], x.shape[3])
    if pool == "STOCHASTIC" and any(pad):
        raise ValueError("padding is implemented only for MAX and AVE pooling")
    out = _pool_output_size(size, kernel, pad, stride, ceil)
    native = _pool_native(size, kernel, pad, stride, ceil, out)
    explicit = _pool_explicit_pad(size, kernel, pad, stride, out)
    if pool == "MAX":
        if native and not with_mask:
            return _pool_channels_last_max(x, kernel, stride, pad, ceil), None
        if native:
            y, idx = F.max_pool2d(
                x, kernel, stride, pad, ceil_mode=ceil, return_indices=True
            )
            return y, idx.to(x.dtype)
        padded = F.pad(x, explicit, value=-_POOL_FLT_MAX)
        if not with_mask:
            return _pool_channels_last_max(padded, kernel, stride, (0, 0), False), None
        y, idx = F.max_pool2d(padded, kernel, stride, return_indices=True)
        left, right, top = explicit[0], explicit[1], explicit[2]
        width = size[1] + left + right
        h, w = idx.div(width, rounding_mode="floor") - top, idx.remainder(width) - left
        inside = (h >= 0) & (h < size[0]) & (w >= 0) & (w < size[1])
        return y, torch.where(inside, h * size[1] + w, -1).to(x.dtype)
    if pool == "AVE":
        if kernel == size and not any(
            pad
        ):  # one window over the plane: mean is several times faster
            return x.mean((2, 3), keepdim=True), None
        # torch's count_include_pad divisor is Caffe's: the window clipped to
        # [-pad, in + pad)
        if native:
            return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil), None
        padded = F.pad(x, explicit)
        uniform = (
            all(  # no window reaches past in + pad: every divisor is the kernel area
                (o - 1) * s - p + k <= n + p
                for n, k, p, s, o in zip(size, kernel, pad, stride, out, strict=True)
            )
        )
        if uniform:
            return F.avg_pool2d(padded, kernel, stride), None
        sums = F.avg_pool2d(padded, kernel, stride, divisor_override=1)
        rows, cols = (
            _pool_clipped_lengths(*a, like=sums)
            for a in zip(size, kernel, pad, stride, out, strict=True)
        )
        return sums / (rows[:, None] * cols[None, :]), None
    if pool == "STOCHASTIC":
        return _pool_stochastic(x, kernel, stride, explicit, training), None
    raise ValueError(f"unknown pooling method {pool!r}")


def _pool_window_sum(
    x: torch.Tensor,
    kernel: _PoolPair,
    stride: _PoolPair,
    explicit: tuple[int, int, int, int],
) -> torch.Tensor:
    """Sums over Caffe's windows of an unpadded pooling (zeros past the input)."""
    return F.avg_pool2d(F.pad(x, explicit), kernel, stride, divisor_override=1)


def _pool_stochastic(
    x: torch.Tensor,
    kernel: _PoolPair,
    stride: _PoolPair,
    explicit: tuple[int, int, int, int],
    training: bool,
) -> torch.Tensor:
    """TEST: ``sum(x^2) / sum(x)`` per window, 0 where the sum is not positive. TRAIN:
    one element per window with probability proportional to its value (Caffe: the first
    position whose running sum reaches ``u * sum``, u uniform in [0, 1)); the gradient
    goes to the sampled element."""
    if not training:
        total = _pool_window_sum(x, kernel, stride, explicit)
        positive = total > 0
        squares = _pool_window_sum(x * x, kernel, stride, explicit)
        return torch.where(positive, squares / torch.where(positive, total, 1), 0)
    windows = F.pad(x, explicit).unfold(2, kernel[0], stride[0])
    windows = windows.unfold(3, kernel[1], stride[1]).flatten(
        4
    )  # (N, C, oh, ow, kh*kw)
    running = windows.detach().cumsum(4)
    threshold = torch.rand_like(running[..., -1:]) * running[..., -1:]
    pick = (
        (running >= threshold).to(torch.uint8).argmax(4, keepdim=True)
    )  # first to reach it
    return windows.gather(4, pick).squeeze(4)


class Pooling(nn.Module):
    """Caffe's Pooling (MAX/AVE/STOCHASTIC) for any geometry; ``kernel_size=None`` is
    global pooling (the kernel is the input plane). With ``return_mask`` (MAX only) it
    also returns Caffe's mask top. STOCHASTIC samples in training mode and averages by
    weight in eval mode."""

    def __init__(
        self,
        pool: str,
        kernel_size: Any,
        stride: _PoolPair = (1, 1),
        padding: _PoolPair = (0, 0),
        ceil_mode: bool = True,
        return_mask: bool = False,
    ) -> None:
        super().__init__()
        self.pool, self.kernel_size, self.stride = pool, kernel_size, stride
        self.padding, self.ceil_mode, self.return_mask = padding, ceil_mode, return_mask

    def forward(self, x: torch.Tensor) -> Any:
        kernel = self.kernel_size or (x.shape[2], x.shape[3])
        y, mask = caffe_pool(
            x,
            self.pool,
            kernel,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.training,
            self.return_mask,
        )
        return (y, mask) if self.return_mask else y

    def extra_repr(self) -> str:
        kernel = (
            "global" if self.kernel_size is None else f"kernel_size={self.kernel_size}"
        )
        return (
            f"{self.pool}, {kernel}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}"
        )


class SPP(nn.Module):
    """Caffe's spatial pyramid pooling: level ``i < pyramid_height`` pools into ``2^i``
    bins with kernel ``ceil(in / bins)``, pad ``(kernel * bins - in + 1) // 2`` and
    stride = kernel (CEIL rounding); the levels are flattened and concatenated. One
    level: its ``(N, C, 1, 1)`` output."""

    def __init__(self, pool: str, pyramid_height: int) -> None:
        super().__init__()
        self.pool, self.pyramid_height = pool, pyramid_height

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        levels = []
        for level in range(self.pyramid_height):
            bins = 2**level
            kernel = (-(-height // bins), -(-width // bins))
            pad = (
                (kernel[0] * bins - height + 1) // 2,
                (kernel[1] * bins - width + 1) // 2,
            )
            y, _ = caffe_pool(x, self.pool, kernel, kernel, pad, True, self.training)
            levels.append(y)
        if len(levels) == 1:
            return levels[0]
        return torch.cat([y.flatten(1) for y in levels], 1)

    def extra_repr(self) -> str:
        return f"{self.pool}, pyramid_height={self.pyramid_height}"


def _on_accelerator(x: torch.Tensor) -> bool:
    """Whether ``x`` is on a device where each kernel launch costs more than a small
    kernel's work (any but the CPU): there the form with the fewest kernels wins."""
    return not x.is_cpu


def _lrn_channel_window_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sum over the ``n`` channels centred on each channel, zero padded. On the CPU
    ``n`` whole-tensor adds of shifted views (torch's CPU pooling kernels along the
    channel axis are about ten times slower); elsewhere one pooling kernel, as each
    kernel launch there costs more than the work of a small one."""
    if _on_accelerator(x):
        return _pooled_channel_window_sum(x, n)
    channels, pad = x.shape[1], (n - 1) // 2
    padded = F.pad(x, (0, 0, 0, 0, pad, pad))
    total = padded.narrow(1, 0, channels).clone()
    for offset in range(1, n):
        total += padded.narrow(1, offset, channels)
    return total


def _pooled_channel_window_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """The centred, zero-padded channel window sum as one sum pooling (``divisor_override=1``:
    no division, so no rounding beyond the additions) over channels seen as a spatial axis."""
    batch, channels = x.shape[0], x.shape[1]
    rows = x.reshape(batch, 1, channels, -1)
    total = F.avg_pool2d(rows, (n, 1), 1, ((n - 1) // 2, 0), divisor_override=1)
    return total.reshape(x.shape)


class _LRNChannelWindowSum(torch.autograd.Function):
    """The centred, zero-padded window sum is a symmetric linear map, so its backward is
    the same sum of the gradient (autograd through the shifted views would allocate a
    padded gradient per offset)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, n: int) -> torch.Tensor:
        ctx.n = n
        return _lrn_channel_window_sum(x, n)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _lrn_channel_window_sum(grad, ctx.n), None


class LRN(nn.Module):
    """Caffe's LRN. ACROSS_CHANNELS: ``x / (k + alpha/n * sum of x^2 over n
    channels)^beta``; WITHIN_CHANNEL: ``x / (1 + alpha * avg of x^2 over an n x n
    zero-padded window)^beta`` (Caffe builds it from layers: ``k`` is not used and alpha
    is not divided again). ``nn.LocalResponseNorm`` rounds differently (``alpha * avg``
    instead of ``alpha/n * sum``)."""

    def __init__(
        self,
        local_size: int = 5,
        alpha: float = 1.0,
        beta: float = 0.75,
        k: float = 1.0,
        across_channels: bool = True,
    ) -> None:
        super().__init__()
        self.local_size, self.alpha, self.beta, self.k = local_size, alpha, beta, k
        self.across_channels = across_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd the same operations run in place on the intermediates (same
        order, same bits; at batch 16 half the time of allocating each one)."""
        n, pad = self.local_size, (self.local_size - 1) // 2
        square = x * x
        if torch.is_grad_enabled() and x.requires_grad:
            if self.across_channels:
                total = _LRNChannelWindowSum.apply(square, n)
                scale = total * (self.alpha / n) + self.k
            else:  # stride 1, pad (n-1)/2: windows inside [-pad, in + pad), divisor n*n
                average = F.avg_pool2d(square, n, 1, pad, count_include_pad=True)
                scale = average * self.alpha + 1
            # on the CPU two rsqrts are twice as fast as pow (<= 2 ulp)
            if self.beta == 0.75 and not _on_accelerator(x):
                return x * torch.rsqrt(scale) * torch.rsqrt(torch.sqrt(scale))
            return x * scale.pow(-self.beta)
        if self.across_channels:
            scale = _lrn_channel_window_sum(square, n).mul_(self.alpha / n).add_(self.k)
        else:
            scale = F.avg_pool2d(square, n, 1, pad, count_include_pad=True)
            scale = scale.mul_(self.alpha).add_(1)
        if self.beta == 0.75 and not _on_accelerator(x):
            top = torch.mul(x, torch.rsqrt(scale, out=square))
            return top.mul_(scale.sqrt_().rsqrt_())
        return x * scale.pow_(-self.beta)

    def extra_repr(self) -> str:
        region = "ACROSS_CHANNELS" if self.across_channels else "WITHIN_CHANNEL"
        return (
            f"{region}, local_size={self.local_size}, alpha={self.alpha:g}, "
            f"beta={self.beta:g}, k={self.k:g}"
        )


class _MVNNormalize(torch.autograd.Function):
    """``y = (x - mean) / (std + eps)`` per row, with Caffe's backward ``(dy - mean(dy)
    - y * mean(y * dy)) / (std + eps)``: it treats ``eps`` as part of the std, which
    keeps it finite on constant rows where the square root's derivative is infinite."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, eps: float) -> torch.Tensor:
        centred = rows - rows.mean(1, keepdim=True)
        std = (centred * centred).mean(1, keepdim=True).sqrt() + eps
        y = centred / std
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, std = ctx.saved_tensors
        mean_dy = dy.mean(1, keepdim=True)
        return (dy - mean_dy - y * (y * dy).mean(1, keepdim=True)) / std, None


class MVN(nn.Module):
    """Caffe's MVN: subtract the mean (per channel, or per sample ``across_channels``),
    optionally divide by ``std + eps`` (eps on the std, not the variance). The top is
    always 4-D: Caffe's legacy num/channels/height/width, missing trailing axes 1."""

    def __init__(
        self,
        normalize_variance: bool = True,
        across_channels: bool = False,
        eps: float = 1e-9,
    ) -> None:
        super().__init__()
        self.normalize_variance, self.across_channels = (
            normalize_variance,
            across_channels,
        )
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape, *(1,) * (4 - x.dim()))
        rows = x.reshape(shape[0] if self.across_channels else shape[0] * shape[1], -1)
        if self.normalize_variance:
            y = _MVNNormalize.apply(rows, self.eps)
        else:
            y = rows - rows.mean(1, keepdim=True)
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"normalize_variance={self.normalize_variance}, "
            f"across_channels={self.across_channels}, eps={self.eps:g}"
        )
