"""Pooling, SPP, LRN and MVN.

Caffe facts kept here (see ``shared/docs/caffe-semantics.md`` rows 1-4 and 17):

* Pooling output sizes round up by default (``round_mode: CEIL``; forks spell FLOOR as ``ceil_mode: false`` or
  ``torch_pooling: true``); when any padding is set, a last window that would start at or after ``in + pad``
  is dropped (on both axes). Without padding no window is ever dropped, even one lying wholly past the input.
* MAX windows are clipped to the input (padding never wins); ties go to the first maximum in row-major scan
  order, which is also where the gradient goes. The optional second top is that argmax as a float flat index
  into H*W.
* AVE divides the sum over the clipped window by the window size clipped to ``[-pad, in + pad)``: zero padding
  counts, the ceil overhang does not.
* STOCHASTIC in TEST is the probability-weighted average ``sum(x^2) / sum(x)`` (0 where ``sum(x) <= 0``); in
  TRAIN one element is sampled per window with probability proportional to its value.
* SPP is Caffe's stack of pooling levels ``i < pyramid_height`` with ``2^i`` bins, kernel ``ceil(in / bins)``,
  pad ``(kernel * bins - in + 1) // 2`` and stride = kernel, each flattened and concatenated; with one level the
  (N, C, 1, 1) pooling output is the top itself.
* LRN ACROSS_CHANNELS is ``x / (k + alpha/n * sum of x^2 over n channels)^beta``; WITHIN_CHANNEL is
  ``x / (1 + alpha * avg of x^2 over an n x n zero-padded window)^beta`` (Caffe builds it from layers: ``k`` is
  not used and alpha is not divided again).
* MVN adds ``eps`` to the standard deviation (not the variance), and its top is always 4-D (legacy
  num/channels/height/width).

Everything runs on torch's native pooling kernels: they are used with their own padding whenever their output
size rule and divisor agree with Caffe's, otherwise the input is padded explicitly and the divisor fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import LayerSpec, Shape, count, register
from .torch_util import CaffeLayer

MAX, AVE, STOCHASTIC = "MAX", "AVE", "STOCHASTIC"

#: Caffe initialises MAX outputs to -FLT_MAX, so a window with nothing above it yields -FLT_MAX, not -inf.
_FLT_MAX = float(torch.finfo(torch.float32).max)


# ----------------------------------------------------------------------------------------------------------
# Window geometry
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolAttrs:
    """``pooling_param`` normalised: ``kernel`` is ``None`` for global pooling (kernel = H x W, decided per input)."""

    pool: str
    kernel: tuple[int, int] | None
    pad: tuple[int, int]
    stride: tuple[int, int]
    ceil: bool

    def plan(self, height: int, width: int) -> PoolPlan:
        kernel = (height, width) if self.kernel is None else self.kernel
        return PoolPlan.make(self.pool, (height, width), kernel, self.pad, self.stride, self.ceil)


@dataclass(frozen=True)
class PoolPlan:
    """One pooling on one input size: Caffe's geometry plus how to run it on torch's kernels."""

    pool: str
    size: tuple[int, int]
    kernel: tuple[int, int]
    pad: tuple[int, int]
    stride: tuple[int, int]
    ceil: bool
    out: tuple[int, int]

    @staticmethod
    def make(
        pool: str, size: tuple[int, int], kernel: tuple[int, int], pad: tuple[int, int], stride: tuple[int, int],
        ceil: bool,
    ) -> PoolPlan:
        """Caffe's ``PoolingLayer::Reshape``; ValueError where Caffe would refuse the layer."""
        if any(p and p >= k for p, k in zip(pad, kernel, strict=True)):
            raise ValueError(f"pad {pad} must be smaller than the kernel {kernel}")
        if any(pad) and pool == STOCHASTIC:
            raise ValueError("padding is implemented only for MAX and AVE pooling")
        out = [_pooled_size(n, k, p, s, ceil) for n, k, p, s in zip(size, kernel, pad, stride, strict=True)]
        if any(pad):  # the last window must start inside the image (applies to both axes)
            out = [o - 1 if (o - 1) * s >= n + p else o for o, n, p, s in zip(out, size, pad, stride, strict=True)]
        if min(out) < 1:
            raise ValueError(f"kernel {kernel} with pad {pad} does not fit the {size[0]}x{size[1]} input")
        return PoolPlan(pool, size, kernel, pad, stride, ceil, (out[0], out[1]))

    @property
    def native(self) -> bool:
        """Whether torch's pooling with its own padding computes exactly this: torch allows pad <= kernel/2 only,
        and drops a ceil window starting at or after ``in + pad`` even without padding (Caffe then keeps it)."""
        return all(
            p <= k // 2 and _torch_pooled_size(n, k, p, s, self.ceil) == o
            for n, k, p, s, o in zip(self.size, self.kernel, self.pad, self.stride, self.out, strict=True)
        )

    @property
    def explicit_pad(self) -> tuple[int, int, int, int]:
        """``F.pad`` amounts (left, right, top, bottom) making the input exactly as large as the windows cover
        (negative where the last window ends before the input does)."""
        (h, w), (kh, kw), (ph, pw), (sh, sw), (oh, ow) = self.size, self.kernel, self.pad, self.stride, self.out
        return (pw, (ow - 1) * sw + kw - pw - w, ph, (oh - 1) * sh + kh - ph - h)

    @property
    def uniform_divisor(self) -> bool:
        """No window reaches past ``in + pad`` (so every AVE divisor is the full kernel area)."""
        return all(
            (o - 1) * s - p + k <= n + p
            for n, k, p, s, o in zip(self.size, self.kernel, self.pad, self.stride, self.out, strict=True)
        )

    @property
    def macs(self) -> int:
        return self.kernel[0] * self.kernel[1]


def _pooled_size(n: int, k: int, p: int, s: int, ceil: bool) -> int:
    span = n + 2 * p - k
    return (-(-span // s) if ceil else span // s) + 1


def _torch_pooled_size(n: int, k: int, p: int, s: int, ceil: bool) -> int:
    out = (n + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    return out - 1 if ceil and (out - 1) * s >= n + p else out


def _clipped_lengths(n: int, k: int, p: int, s: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """Per output position, the window length clipped to ``[-pad, in + pad)`` (Caffe's AVE divisor factor)."""
    start = torch.arange(out, device=like.device, dtype=like.dtype) * s - p
    return (start + k).clamp(max=n + p) - start


# ----------------------------------------------------------------------------------------------------------
# Pooling on torch
# ----------------------------------------------------------------------------------------------------------
def _sum_pool(x: torch.Tensor, plan: PoolPlan) -> torch.Tensor:
    """Window sums over the clipped window (padding adds zeros)."""
    if plan.native:
        return F.avg_pool2d(x, plan.kernel, plan.stride, plan.pad, ceil_mode=plan.ceil, divisor_override=1)
    return F.avg_pool2d(F.pad(x, plan.explicit_pad), plan.kernel, plan.stride, divisor_override=1)


def _ave_pool(x: torch.Tensor, plan: PoolPlan) -> torch.Tensor:
    if plan.kernel == plan.size and not any(plan.pad):  # one window covering the plane (global pooling)
        return x.mean((2, 3), keepdim=True)  # several times faster than avg_pool2d with a plane-sized kernel
    if plan.native:  # torch's count_include_pad divisor is Caffe's: the window clipped to [-pad, in + pad)
        return F.avg_pool2d(x, plan.kernel, plan.stride, plan.pad, ceil_mode=plan.ceil, count_include_pad=True)
    padded = F.pad(x, plan.explicit_pad)
    if plan.uniform_divisor:
        return F.avg_pool2d(padded, plan.kernel, plan.stride)
    sums = F.avg_pool2d(padded, plan.kernel, plan.stride, divisor_override=1)
    args = zip(plan.size, plan.kernel, plan.pad, plan.stride, plan.out, strict=True)
    rows, cols = (_clipped_lengths(*a, like=sums) for a in args)
    return sums / (rows[:, None] * cols[None, :])


def _channels_last_max(x: torch.Tensor, kernel, stride, pad, ceil: bool) -> torch.Tensor:
    """torch's CPU max pooling is a scalar loop on NCHW tensors but vectorised over channels on channels-last
    ones: converting there and back is 2-4x faster (AlexNet's pool1: 1.3 ms -> 0.36 ms) and gives the same
    values, and the same first-maximum gradient routing. A channels-last input (the runtime's fused plan) gets
    a channels-last result, an NCHW one an NCHW result."""
    if x.dim() != 4 or x.is_cuda:
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
    y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, pad, ceil_mode=ceil)
    return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()  # the input's layout


def _max_pool(x: torch.Tensor, plan: PoolPlan, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MAX pooling; torch's kernels, like Caffe's, keep the first strict maximum in row-major order and send the
    gradient there, so autograd is Caffe's backward. The mask is the argmax as a float flat index into H*W."""
    if plan.native:
        if not with_mask:
            return _channels_last_max(x, plan.kernel, plan.stride, plan.pad, plan.ceil), None
        y, idx = F.max_pool2d(x, plan.kernel, plan.stride, plan.pad, ceil_mode=plan.ceil, return_indices=True)
        return y, idx.to(x.dtype)
    left, right, top, bottom = plan.explicit_pad
    padded = F.pad(x, (left, right, top, bottom), value=-_FLT_MAX)
    if not with_mask:
        return _channels_last_max(padded, plan.kernel, plan.stride, (0, 0), False), None
    y, idx = F.max_pool2d(padded, plan.kernel, plan.stride, return_indices=True)
    width = plan.size[1] + left + right
    h, w = idx.div(width, rounding_mode="floor") - top, idx.remainder(width) - left
    inside = (h >= 0) & (h < plan.size[0]) & (w >= 0) & (w < plan.size[1])
    return y, torch.where(inside, h * plan.size[1] + w, -1).to(x.dtype)  # -1: Caffe's "nothing won"


def _stochastic_pool(x: torch.Tensor, plan: PoolPlan, training: bool) -> torch.Tensor:
    """TEST: ``sum(x^2) / sum(x)`` per window, 0 where the sum is not positive. TRAIN: sample one element per
    window with probability proportional to its value (Caffe: the first position whose running sum reaches
    ``u * sum``, u uniform in [0, 1)); the gradient goes to the sampled element."""
    if not training:
        total = _sum_pool(x, plan)
        positive = total > 0
        return torch.where(positive, _sum_pool(x * x, plan) / torch.where(positive, total, 1), 0)
    windows = F.pad(x, plan.explicit_pad).unfold(2, plan.kernel[0], plan.stride[0])
    windows = windows.unfold(3, plan.kernel[1], plan.stride[1]).flatten(4)  # (N, C, out_h, out_w, kh*kw)
    running = windows.detach().cumsum(4)
    threshold = torch.rand_like(running[..., -1:]) * running[..., -1:]
    pick = (running >= threshold).to(torch.uint8).argmax(4, keepdim=True)  # first position reaching it
    return windows.gather(4, pick).squeeze(4)


def caffe_pool(
    x: torch.Tensor, plan: PoolPlan, training: bool = False, with_mask: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caffe's pooling of a 4-D tensor; returns ``(top, mask or None)``."""
    if plan.pool == MAX:
        return _max_pool(x, plan, with_mask)
    if plan.pool == AVE:
        return _ave_pool(x, plan), None
    return _stochastic_pool(x, plan, training), None


# ----------------------------------------------------------------------------------------------------------
# Pooling in ONNX
# ----------------------------------------------------------------------------------------------------------
def _onnx_pads(plan: PoolPlan) -> tuple[int, int, int, int]:
    """ONNX pads ``(top, left, bottom, right)`` covering exactly Caffe's windows: the end pads are what the
    last window overhangs (never negative: a last window ending inside the input just leaves the rest
    unread, and the floor-rounded ONNX output size is then still Caffe's)."""
    left, right, top, bottom = plan.explicit_pad
    return top, left, max(bottom, 0), max(right, 0)


def _onnx_pool_attrs(plan: PoolPlan, pads: Sequence[int]) -> dict[str, Any]:
    return {"kernel_shape": list(plan.kernel), "strides": list(plan.stride), "pads": list(pads)}


def _pad_input(ctx: Any, x: str, pads: Sequence[int], value: float) -> str:
    """``x`` padded explicitly (H and W only) with ``value``; ``x`` itself when there is nothing to pad."""
    if not any(pads):
        return x
    top, left, bottom, right = pads
    return ctx.add("Pad", [x, ctx.ints([0, 0, top, left, 0, 0, bottom, right], "pads"), ctx.scalar(value)])


def _padded_average(ctx: Any, x: str, plan: PoolPlan, pads: Sequence[int]) -> str:
    """AveragePool over the zero-padded input: every window sum divided by the full kernel area."""
    return ctx.add("AveragePool", [_pad_input(ctx, x, pads, 0.0)], **_onnx_pool_attrs(plan, (0, 0, 0, 0)))


def _ave_divisor_correction(plan: PoolPlan) -> np.ndarray:
    """``kernel area / Caffe's divisor`` per output position, ``(1, 1, out_h, out_w)``: the divisor is the
    window clipped to ``[-pad, in + pad)``; a window wholly past the input (possible without padding) sums
    to zero, and gets factor 0."""
    like = torch.zeros((), dtype=torch.float64)
    rows, cols = (_clipped_lengths(*a, like=like).numpy() for a in
                  zip(plan.size, plan.kernel, plan.pad, plan.stride, plan.out, strict=True))
    divisor = rows[:, None] * cols[None, :]
    area = float(plan.kernel[0] * plan.kernel[1])
    factor = np.divide(area, divisor, out=np.zeros_like(divisor), where=divisor != 0)
    return factor.astype(np.float32).reshape(1, 1, *plan.out)


def _onnx_mask(ctx: Any, index: str, plan: PoolPlan, pads: Sequence[int], padded: bool, out: str) -> None:
    """Caffe's mask top from MaxPool's flat indices: the argmax as a float index into H*W. Indices into an
    explicitly padded input are mapped back, -1 where the maximum is padding (Caffe: nothing won)."""
    (h, w), top, left = plan.size, pads[0], pads[1]
    if not padded:
        ctx.add("Cast", [ctx.add("Mod", [index, ctx.const(np.int64(h * w), "plane")])], out, to=ctx.FLOAT)
        return
    width = w + left + pads[3]
    plane = ctx.add("Mod", [index, ctx.const(np.int64((h + top + pads[2]) * width), "plane")])
    row = ctx.add("Sub", [ctx.add("Div", [plane, ctx.const(np.int64(width), "width")]), ctx.const(np.int64(top))])
    col = ctx.add("Sub", [ctx.add("Mod", [plane, ctx.const(np.int64(width), "width")]), ctx.const(np.int64(left))])
    inside = None
    for value, size in ((row, h), (col, w)):
        zero, limit = ctx.const(np.int64(-1)), ctx.const(np.int64(size))
        ok = ctx.add("And", [ctx.add("Greater", [value, zero]), ctx.add("Less", [value, limit])])
        inside = ok if inside is None else ctx.add("And", [inside, ok])
    flat = ctx.add("Add", [ctx.add("Mul", [row, ctx.const(np.int64(w), "w")]), col])
    flat = ctx.add("Where", [inside, flat, ctx.const(np.int64(-1))])
    ctx.add("Cast", [flat], out, to=ctx.FLOAT)


def onnx_pool(ctx: Any, x: str, plan: PoolPlan, out: str | None = None, mask_out: str | None = None) -> str:
    """Caffe's pooling of ``x`` in standard ONNX; returns the pooled tensor's name.

    ``ceil_mode`` is never used (runtimes disagree on its overhang rules): the end pads are computed from
    Caffe's output size. Pads the runtimes' pooling accepts (smaller than the kernel) go into the pooling
    op; otherwise (a window wholly past the input) the input is padded explicitly, with -FLT_MAX for MAX
    (Caffe's initial value) and zeros for AVE. AVE divides by the full kernel area where every window lies
    within ``[-pad, in + pad)`` (count_include_pad), else the average of the zero-padded windows is
    rescaled by a per-position constant to Caffe's clipped divisor. Whole-input windows are Global*Pool.
    """
    pads = _onnx_pads(plan)
    if plan.pool == STOCHASTIC:
        if ctx.training:
            ctx.unsupported("STOCHASTIC pooling samples randomly in TRAIN")
        # TEST: sum(x^2) / sum(x) over each window, 0 where the sum is not positive (no padding allowed)
        area = ctx.scalar(float(plan.kernel[0] * plan.kernel[1]))
        total = ctx.add("Mul", [_padded_average(ctx, x, plan, pads), area])
        squares = ctx.add("Mul", [_padded_average(ctx, ctx.add("Mul", [x, x]), plan, pads), area])
        positive = ctx.add("Greater", [total, ctx.scalar(0.0)])
        ratio = ctx.add("Div", [squares, ctx.add("Where", [positive, total, ctx.scalar(1.0)])])
        return ctx.add("Where", [positive, ratio, ctx.scalar(0.0)], out)
    if plan.kernel == plan.size and not any(plan.pad) and mask_out is None:
        return ctx.add("GlobalMaxPool" if plan.pool == MAX else "GlobalAveragePool", [x], out)
    in_op = all(p < k for p, k in zip(pads, plan.kernel * 2, strict=True))
    if plan.pool == MAX:
        source = x if in_op else _pad_input(ctx, x, pads, -_FLT_MAX)
        attrs = _onnx_pool_attrs(plan, pads if in_op else (0, 0, 0, 0))
        if mask_out is None:
            return ctx.add("MaxPool", [source], out, **attrs)
        index = ctx.tmp("argmax")
        y = ctx.add("MaxPool", [source], [out or ctx.tmp("maxpool"), index], **attrs)
        _onnx_mask(ctx, index, plan, pads, not in_op, mask_out)
        return y
    if plan.uniform_divisor:
        return ctx.add("AveragePool", [x], out, count_include_pad=1, **_onnx_pool_attrs(plan, pads))
    correction = ctx.const(_ave_divisor_correction(plan), "divisor_correction")
    return ctx.add("Mul", [_padded_average(ctx, x, plan, pads), correction], out)


class _Pooling(CaffeLayer):
    def __init__(self, attrs: PoolAttrs, with_mask: bool):
        super().__init__()
        self.attrs = attrs
        self.with_mask = with_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y, mask = caffe_pool(x, self.attrs.plan(x.shape[2], x.shape[3]), self.training, self.with_mask)
        return (y, mask) if self.with_mask else y

    def extra_repr(self) -> str:
        a = self.attrs
        kernel = "global" if a.kernel is None else f"kernel={a.kernel}"
        return f"{a.pool}, {kernel}, stride={a.stride}, pad={a.pad}, {'ceil' if a.ceil else 'floor'}"


def _pool_method(param: Any) -> str:
    return type(param).PoolMethod.Name(param.pool)


def _pair(param: Any, name: str, default: int) -> tuple[int, int]:
    """Caffe's rule for pad/stride: either ``name`` or both ``name_h`` and ``name_w``, never a mix."""
    has_h, has_w = param.HasField(f"{name}_h"), param.HasField(f"{name}_w")
    if has_h or has_w:
        if param.HasField(name) or not (has_h and has_w):
            raise ValueError(f"{name} is {name} OR {name}_h and {name}_w")
        return getattr(param, f"{name}_h"), getattr(param, f"{name}_w")
    value = getattr(param, name) if param.HasField(name) else default
    return value, value


@register
class Pooling(LayerSpec):
    type = "Pooling"
    layout_agnostic = True
    tops = (1, 2)
    family = "pooling"
    summary = "MAX/AVE/STOCHASTIC pooling, Caffe's CEIL sizes and clipped windows; optional argmax mask top (MAX)"

    def attrs(self, layer: Any) -> PoolAttrs:
        p = layer.pooling_param
        has_size, has_hw = p.HasField("kernel_size"), p.HasField("kernel_h") and p.HasField("kernel_w")
        if p.global_pooling:
            if has_size or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise ValueError("with global_pooling: true the kernel size cannot be specified")
            kernel = None
        elif has_size == has_hw:
            raise ValueError("kernel is kernel_size OR kernel_h and kernel_w (both needed for non-square kernels)")
        else:
            kernel = (p.kernel_size, p.kernel_size) if has_size else (p.kernel_h, p.kernel_w)
            if min(kernel) <= 0:
                raise ValueError("kernel dimensions must be positive")
        pad, stride = _pair(p, "pad", 0), _pair(p, "stride", 1)
        if min(stride) <= 0:
            raise ValueError("stride must be positive")
        if kernel is None and (any(pad) or stride != (1, 1)):
            raise ValueError("with global_pooling: true only pad 0 and stride 1 are allowed")
        ceil = p.round_mode == p.CEIL
        if not p.HasField("round_mode"):  # fork spellings of FLOOR
            ceil = (p.ceil_mode if p.HasField("ceil_mode") else True) and not p.torch_pooling
        return PoolAttrs(_pool_method(p), kernel, pad, stride, ceil)

    def _plan(self, node: Any, shape: Shape) -> PoolPlan:
        if len(shape) != 4:
            raise self.fail(node, f"input must have 4 axes (num, channels, height, width), got {tuple(shape)}")
        try:
            return node.attrs.plan(shape[2], shape[3])
        except ValueError as e:
            raise self.fail(node, str(e)) from None

    def infer_shapes(self, node: Any, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(node.tops) == 2 and node.attrs.pool != MAX:
            raise self.fail(node, f"only MAX pooling has a second (mask) top, this is {node.attrs.pool}")
        plan = self._plan(node, in_shapes[0])
        return [(*in_shapes[0][:2], *plan.out)] * len(node.tops)

    def macs(self, node: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        return self._plan(node, in_shapes[0]).macs * count(out_shapes[0])

    def build_torch(self, node: Any) -> _Pooling:
        return _Pooling(node.attrs, with_mask=len(node.tops) == 2)

    def to_onnx(self, node: Any, ctx: Any) -> None:
        plan = self._plan(node, ctx.in_shape(0))
        onnx_pool(ctx, ctx.input(0), plan, ctx.output(0), ctx.output(1) if ctx.num_outputs == 2 else None)


# ----------------------------------------------------------------------------------------------------------
# SPP
# ----------------------------------------------------------------------------------------------------------
def spp_plans(pool: str, pyramid_height: int, height: int, width: int) -> list[PoolPlan]:
    """Caffe's ``SPPLayer::GetPoolingParam`` for every level (CEIL rounding, pad rule included)."""
    plans = []
    for level in range(pyramid_height):
        bins = 2**level
        kernel = (-(-height // bins), -(-width // bins))
        pad = ((kernel[0] * bins - height + 1) // 2, (kernel[1] * bins - width + 1) // 2)
        plans.append(PoolPlan.make(pool, (height, width), kernel, pad, kernel, True))
    return plans


class _SPP(CaffeLayer):
    def __init__(self, pool: str, pyramid_height: int):
        super().__init__()
        self.pool = pool
        self.pyramid_height = pyramid_height

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [caffe_pool(x, plan, self.training)[0]
                  for plan in spp_plans(self.pool, self.pyramid_height, x.shape[2], x.shape[3])]
        if len(levels) == 1:  # Caffe runs the single pooling layer straight into the top: (N, C, 1, 1)
            return levels[0]
        return torch.cat([y.flatten(1) for y in levels], 1)


@register
class SPP(LayerSpec):
    type = "SPP"
    family = "pooling"
    summary = "spatial pyramid pooling: levels of 2^i x 2^i bins (MAX/AVE), flattened and concatenated"

    def _plans(self, node: Any, shape: Shape) -> list[PoolPlan]:
        p = node.attrs
        if len(shape) != 4:
            raise self.fail(node, f"input must have 4 axes (num, channels, height, width), got {tuple(shape)}")
        if p.pyramid_height < 1:
            raise self.fail(node, "spp_param.pyramid_height must be at least 1")
        try:
            return spp_plans(_pool_method(p), p.pyramid_height, shape[2], shape[3])
        except ValueError as e:
            raise self.fail(node, f"pyramid_height {p.pyramid_height} is too large for a {shape[2]}x{shape[3]} "
                                  f"input: {e}") from None

    def infer_shapes(self, node: Any, in_shapes: Sequence[Shape]) -> list[Shape]:
        n, c = in_shapes[0][:2]
        plans = self._plans(node, in_shapes[0])
        if len(plans) == 1:
            return [(n, c, *plans[0].out)]
        return [(n, c * sum(p.out[0] * p.out[1] for p in plans))]

    def macs(self, node: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        n, c = in_shapes[0][:2]
        return n * c * sum(p.macs * p.out[0] * p.out[1] for p in self._plans(node, in_shapes[0]))

    def build_torch(self, node: Any) -> _SPP:
        return _SPP(_pool_method(node.attrs), node.attrs.pyramid_height)

    def to_onnx(self, node: Any, ctx: Any) -> None:
        """Each level pooled as Pooling does, flattened from axis 1 and concatenated (one level: the pooled
        ``(N, C, 1, 1)`` itself, as in Caffe)."""
        plans = self._plans(node, ctx.in_shape(0))
        if len(plans) == 1:
            onnx_pool(ctx, ctx.input(0), plans[0], ctx.output(0))
            return
        levels = [ctx.add("Flatten", [onnx_pool(ctx, ctx.input(0), plan)], axis=1) for plan in plans]
        ctx.add("Concat", levels, ctx.output(0), axis=1)


# ----------------------------------------------------------------------------------------------------------
# LRN
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LRNAttrs:
    local_size: int
    alpha: float
    beta: float
    k: float
    across_channels: bool


class _LRN(CaffeLayer):
    def __init__(self, attrs: LRNAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * (k + alpha/n * window_sum(x^2))^-beta``. Without autograd the same operations run in place on
        the intermediate tensors (same order, same bits; at batch 16 half the time of allocating each one)."""
        a = self.attrs
        n, pad = a.local_size, (a.local_size - 1) // 2
        square = x * x
        if torch.is_grad_enabled() and x.requires_grad:
            if a.across_channels:
                scale = _ChannelWindowSumFn.apply(square, n) * (a.alpha / n) + a.k
            else:  # stride 1 and pad (n-1)/2 keep every window inside [-pad, in + pad): the divisor is n*n
                scale = F.avg_pool2d(square, n, 1, pad, count_include_pad=True) * a.alpha + 1
            if a.beta == 0.75:  # AlexNet/CaffeNet/GoogLeNet's value: two rsqrts are twice as fast as pow (<= 2 ulp)
                return x * torch.rsqrt(scale) * torch.rsqrt(torch.sqrt(scale))
            return x * scale.pow(-a.beta)
        if a.across_channels:
            scale = _channel_window_sum(square, n).mul_(a.alpha / n).add_(a.k)
        else:
            scale = F.avg_pool2d(square, n, 1, pad, count_include_pad=True).mul_(a.alpha).add_(1)
        if a.beta == 0.75:
            top = torch.mul(x, torch.rsqrt(scale, out=square))
            return top.mul_(scale.sqrt_().rsqrt_())
        return x * scale.pow_(-a.beta)

    def extra_repr(self) -> str:
        a = self.attrs
        region = "ACROSS_CHANNELS" if a.across_channels else "WITHIN_CHANNEL"
        return f"{region}, local_size={a.local_size}, alpha={a.alpha:g}, beta={a.beta:g}, k={a.k:g}"


def _channel_window_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """Sum over the ``n`` channels centred on each channel, zero padded: ``n`` whole-tensor adds of shifted
    views (torch's CPU pooling kernels along the channel axis are about ten times slower)."""
    channels, pad = x.shape[1], (n - 1) // 2
    padded = F.pad(x, (0, 0, 0, 0, pad, pad))
    total = padded.narrow(1, 0, channels).clone()
    for offset in range(1, n):
        total += padded.narrow(1, offset, channels)
    return total


class _ChannelWindowSumFn(torch.autograd.Function):
    """The centred, zero-padded window sum is a symmetric linear map, so its backward is the same sum of the
    gradient (autograd through the shifted views would allocate a padded gradient per offset)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, n: int) -> torch.Tensor:
        ctx.n = n
        return _channel_window_sum(x, n)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _channel_window_sum(grad, ctx.n), None


@register
class LRN(LayerSpec):
    type = "LRN"
    family = "pooling"
    summary = "local response normalisation, ACROSS_CHANNELS (alpha/n, k) or WITHIN_CHANNEL (n x n window)"

    def attrs(self, layer: Any) -> LRNAttrs:
        p = layer.lrn_param
        if p.local_size % 2 != 1:
            raise ValueError(f"LRN only supports odd values for local_size, got {p.local_size}")
        return LRNAttrs(p.local_size, p.alpha, p.beta, p.k, p.norm_region == p.ACROSS_CHANNELS)

    def infer_shapes(self, node: Any, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) != 4:
            raise self.fail(node, f"input must have 4 axes (num, channels, height, width), got {tuple(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def macs(self, node: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        n = node.attrs.local_size
        return count(in_shapes[0]) * ((n if node.attrs.across_channels else n * n) + 2)

    def build_torch(self, node: Any) -> _LRN:
        return _LRN(node.attrs)

    def to_onnx(self, node: Any, ctx: Any) -> None:
        """ACROSS_CHANNELS is ONNX ``LRN`` exactly (it too divides alpha by size, and ``bias`` is Caffe's
        ``k``). WITHIN_CHANNEL is decomposed as Caffe builds it: ``x * (1 + alpha * avg(x^2))^-beta``, the
        average over an n x n window with zero padding counted (stride 1: the divisor is always n*n)."""
        a, x = node.attrs, ctx.input(0)
        if a.across_channels:
            ctx.add("LRN", [x], ctx.output(0), size=a.local_size, alpha=a.alpha, beta=a.beta, bias=a.k)
            return
        n, pad = a.local_size, (a.local_size - 1) // 2
        average = ctx.add("AveragePool", [ctx.add("Mul", [x, x])], kernel_shape=[n, n], strides=[1, 1],
                          pads=[pad] * 4, count_include_pad=1)
        base = ctx.add("Add", [ctx.add("Mul", [average, ctx.scalar(a.alpha)]), ctx.scalar(1.0)])
        ctx.add("Mul", [x, ctx.add("Pow", [base, ctx.scalar(-a.beta)])], ctx.output(0))


# ----------------------------------------------------------------------------------------------------------
# MVN
# ----------------------------------------------------------------------------------------------------------
class _NormalizeVariance(torch.autograd.Function):
    """``y = (x - mean) / (std + eps)`` per row, with Caffe's backward
    ``(dy - mean(dy) - y * mean(y * dy)) / (std + eps)``: it treats ``eps`` as part of the std, which keeps it
    finite on constant rows where the exact derivative of the square root is infinite."""

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
        return (dy - dy.mean(1, keepdim=True) - y * (y * dy).mean(1, keepdim=True)) / std, None


class _MVN(CaffeLayer):
    def __init__(self, normalize_variance: bool, across_channels: bool, eps: float):
        super().__init__()
        self.normalize_variance = normalize_variance
        self.across_channels = across_channels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = _legacy_4d(x.shape)
        rows = x.reshape(shape[0] if self.across_channels else shape[0] * shape[1], -1)
        if self.normalize_variance:
            y = _NormalizeVariance.apply(rows, self.eps)
        else:
            y = rows - rows.mean(1, keepdim=True)
        return y.reshape(shape)


def _legacy_4d(shape: Sequence[int]) -> Shape:
    """Caffe's num/channels/height/width of a blob with at most 4 axes (missing trailing axes are 1)."""
    return (*shape, *(1,) * (4 - len(shape)))


@register
class MVN(LayerSpec):
    type = "MVN"
    family = "pooling"
    summary = "mean-variance normalisation per channel or per sample (eps added to the std); top is 4-D"

    def infer_shapes(self, node: Any, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) > 4:
            raise self.fail(node, f"MVN takes blobs of at most 4 axes (num, channels, height, width), "
                                  f"got {tuple(in_shapes[0])}")
        return [_legacy_4d(in_shapes[0])]

    def macs(self, node: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        return count(in_shapes[0]) * (3 if node.attrs.normalize_variance else 1)

    def build_torch(self, node: Any) -> _MVN:
        a = node.attrs
        return _MVN(a.normalize_variance, a.across_channels, a.eps)

    def to_onnx(self, node: Any, ctx: Any) -> None:
        """On the 4-D legacy view: subtract the mean over C*H*W (across_channels) or H*W, then divide by
        ``sqrt(mean of squares) + eps`` (eps on the std, as Caffe)."""
        a, x = node.attrs, ctx.input(0)
        if len(ctx.in_shape(0)) < 4:
            x = ctx.reshape(x, ctx.in_shape(0), ctx.out_shape(0))
        axes = [1, 2, 3] if a.across_channels else [2, 3]
        centred = ctx.add("Sub", [x, ctx.reduce("ReduceMean", x, axes)],
                          None if a.normalize_variance else ctx.output(0))
        if not a.normalize_variance:
            return
        std = ctx.add("Sqrt", [ctx.reduce("ReduceMean", ctx.add("Mul", [centred, centred]), axes)])
        ctx.add("Div", [centred, ctx.add("Add", [std, ctx.scalar(a.eps)])], ctx.output(0))
