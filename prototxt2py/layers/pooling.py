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

The modules are ``nn.MaxPool2d``/``nn.AvgPool2d`` (and their adaptive forms for global pooling) wherever torch's
output-size rule and divisor provably equal Caffe's for every input size, else the helpers of
:mod:`prototxt2py.nn.pooling`, which run torch's native kernels on explicitly padded inputs where needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import limits
from ..lazy_numpy import np
from ..plain import plain
from .base import Call, LayerSpec, Shape, call, count, register

MAX, AVE, STOCHASTIC = "MAX", "AVE", "STOCHASTIC"

#: Caffe initialises MAX outputs to -FLT_MAX, so a window with nothing above it yields -FLT_MAX, not -inf.
_FLT_MAX = 3.4028234663852886e38  # float(np.finfo(np.float32).max)


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


def _clipped_lengths(n: int, k: int, p: int, s: int, out: int) -> np.ndarray:
    """Per output position, the window length clipped to ``[-pad, in + pad)`` (Caffe's AVE divisor factor)."""
    start = np.arange(out, dtype=np.float64) * s - p
    return np.minimum(start + k, n + p) - start


def torch_pools_as_caffe(kernel: tuple[int, int], pad: tuple[int, int], stride: tuple[int, int], ceil: bool) -> bool:
    """Whether torch's pooling (``nn.MaxPool2d``/``nn.AvgPool2d`` with ``count_include_pad``) makes Caffe's windows
    and divisors for *every* input size. Torch takes pad <= kernel/2 only. Both drop a last ceil window starting
    at or after ``in + pad`` when padded; unpadded, Caffe never drops one and torch does, but that window exists
    only if a stride exceeds its kernel (the last window starts before ``ceil((in-k)/s)*s < in - k + s``)."""
    if any(p > k // 2 for p, k in zip(pad, kernel, strict=True)):
        return False
    return not ceil or any(pad) or all(s <= k for s, k in zip(stride, kernel, strict=True))


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


def _ave_divisor_correction(plan: PoolPlan, node: Any) -> np.ndarray:
    """``kernel area / Caffe's divisor`` per output position, ``(1, 1, out_h, out_w)``: the divisor is the
    window clipped to ``[-pad, in + pad)``; a window wholly past the input (possible without padding) sums
    to zero over a size <= 0: Caffe's ``0 / 0`` is NaN (factor inf), ``0 / -n`` is -0 (a negative factor)."""
    limits.check_temporary(plan.out, "the AVE pooling divisor map", itemsize=8, layer=node.name,
                           location=node.location)
    geometry = zip(plan.size, plan.kernel, plan.pad, plan.stride, plan.out, strict=True)
    rows, cols = (_clipped_lengths(*a) for a in geometry)
    divisor = rows[:, None] * cols[None, :]
    area = float(plan.kernel[0] * plan.kernel[1])
    with np.errstate(divide="ignore"):
        factor = area / divisor
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
    correction = ctx.const(_ave_divisor_correction(plan, ctx.node), "divisor_correction")
    return ctx.add("Mul", [_padded_average(ctx, x, plan, pads), correction], out)


def onnx_pool_sized(ctx: Any, x: str, a: PoolAttrs, out: str | None = None, mask_out: str | None = None) -> str:
    """Caffe's pooling of ``x`` when its height/width are symbolic (``--dynamic``): the output size is
    computed with ONNX ops as Caffe does, ``ceil((in + 2*pad - k) / s) + 1`` (or floor), minus one where any
    pad is set and the last window would start at or after ``in + pad``. The input is then padded explicitly
    (``Pad`` with run-time pads: ``pad`` before, the last window's overhang after, never negative) and pooled
    without padding or ``ceil_mode``, whose overhang rules differ between ONNX runtimes and from Caffe's when
    pad > 0. MAX pads with -FLT_MAX (Caffe's initial value: padding never wins, a window wholly in the padding
    gives -FLT_MAX); AVE pads with zeros and rescales each position by ``k_h*k_w / Caffe's divisor``, the
    window clipped to ``[-pad, in + pad)``, computed from ``Range`` over the output positions (an empty
    window gives Caffe's 0/0 = NaN)."""
    if mask_out is not None and a.kernel is None:
        ctx.fixed_sizes_only("the argmax mask top of global pooling is not exported with symbolic sizes")
    if a.kernel is None:  # global: the kernel is the whole input, whatever its size
        if a.pool == STOCHASTIC:
            if ctx.training:
                ctx.unsupported("STOCHASTIC pooling samples randomly in TRAIN")
            total = ctx.reduce("ReduceSum", x, [2, 3])
            squares = ctx.reduce("ReduceSum", ctx.add("Mul", [x, x]), [2, 3])
            positive = ctx.add("Greater", [total, ctx.scalar(0.0)])
            ratio = ctx.add("Div", [squares, ctx.add("Where", [positive, total, ctx.scalar(1.0)])])
            return ctx.add("Where", [positive, ratio, ctx.scalar(0.0)], out)
        return ctx.add("GlobalMaxPool" if a.pool == MAX else "GlobalAveragePool", [x], out)
    kernel, pad, stride = np.array(a.kernel), np.array(a.pad), np.array(a.stride)
    size = ctx.dims(x, 2, 4)
    span = ctx.add("Add", [size, ctx.ints(2 * pad - kernel, "span")])
    if a.ceil:
        span = ctx.add("Add", [span, ctx.ints(stride - 1, "round_up")])
    last = ctx.add("Div", [span, ctx.ints(stride, "stride")])  # out - 1 (span >= 0 wherever Caffe runs)
    last_start = ctx.add("Mul", [last, ctx.ints(stride, "stride")])
    if any(a.pad):  # Caffe drops a last window starting at or after in + pad (on both axes)
        dropped = ctx.add("Cast", [ctx.add("Not", [ctx.add("Less", [last_start, ctx.add(
            "Add", [size, ctx.ints(pad, "pad")])])])], to=ctx.INT64)
        last = ctx.add("Sub", [last, dropped])
        last_start = ctx.add("Mul", [last, ctx.ints(stride, "stride")])
    overhang = ctx.add("Sub", [ctx.add("Add", [last_start, ctx.ints(kernel - pad, "reach")]), size])
    overhang = ctx.add("Max", [overhang, ctx.ints([0, 0], "zero")])
    pads = ctx.concat_ints([[0, 0, int(pad[0]), int(pad[1]), 0, 0], overhang], "pads")
    attrs = {"kernel_shape": list(a.kernel), "strides": list(a.stride), "pads": [0, 0, 0, 0]}
    if a.pool == MAX:
        padded = ctx.add("Pad", [x, pads, ctx.scalar(-_FLT_MAX)])
        if mask_out is None:
            return ctx.add("MaxPool", [padded], out, **attrs)
        index = ctx.tmp("argmax")
        y = ctx.add("MaxPool", [padded], [out or ctx.tmp("maxpool"), index], **attrs)
        _sized_mask(ctx, index, size, ctx.dims(padded, 2, 4), a.pad, mask_out)
        return y
    average = ctx.add("AveragePool", [ctx.add("Pad", [x, pads, ctx.scalar(0.0)])], **attrs)
    area = float(a.kernel[0] * a.kernel[1])
    if a.pool == STOCHASTIC:
        if ctx.training:
            ctx.unsupported("STOCHASTIC pooling samples randomly in TRAIN")
        squares = ctx.add("AveragePool", [ctx.add("Pad", [ctx.add("Mul", [x, x]), pads, ctx.scalar(0.0)])],
                          **attrs)
        positive = ctx.add("Greater", [average, ctx.scalar(0.0)])
        ratio = ctx.add("Div", [squares, ctx.add("Where", [positive, average, ctx.scalar(1.0)])])
        return ctx.add("Where", [positive, ratio, ctx.scalar(0.0)], out)
    lengths = []
    for axis in (0, 1):
        count_ = ctx.add("Gather", [ctx.add("Add", [last, ctx.ints([1, 1], "one")]), ctx.const(np.int64(axis))],
                         axis=0)
        start = ctx.add("Sub", [ctx.add("Mul", [ctx.add("Range", [ctx.const(np.int64(0)), count_,
                                                                  ctx.const(np.int64(1))]),
                                                ctx.const(np.int64(stride[axis]))]),
                               ctx.const(np.int64(pad[axis]))])
        limit = ctx.add("Add", [ctx.add("Gather", [size, ctx.const(np.int64(axis))], axis=0),
                                ctx.const(np.int64(pad[axis]))])
        end = ctx.add("Min", [ctx.add("Add", [start, ctx.const(np.int64(kernel[axis]))]), limit])
        lengths.append(ctx.add("Cast", [ctx.add("Sub", [end, start])], to=ctx.FLOAT))
    rows = ctx.add("Unsqueeze", [lengths[0], ctx.ints([1], "axes")])
    # as Caffe: a window wholly past the input (no padding, stride > kernel) sums to 0 over a size <= 0,
    # giving NaN (0/0) or -0, exactly what 0 * area/divisor gives here
    factor = ctx.add("Div", [ctx.scalar(area), ctx.add("Mul", [rows, lengths[1]])])
    return ctx.add("Mul", [average, factor], out)


def _sized_mask(ctx: Any, index: str, size: str, padded: str, pad: tuple[int, int], out: str) -> None:
    """Caffe's mask top (argmax as a float index into H*W, -1 where padding won) from MaxPool's indices into
    the explicitly padded input, with run-time sizes: ``size``/``padded`` are the (H, W) before and after
    padding as 1-D int64 tensors."""
    def axis(t: str, i: int) -> str:
        return ctx.add("Gather", [t, ctx.const(np.int64(i))], axis=0)

    h, w, padded_w = axis(size, 0), axis(size, 1), axis(padded, 1)
    plane = ctx.add("Mod", [index, ctx.add("Mul", [axis(padded, 0), padded_w])])
    row = ctx.add("Sub", [ctx.add("Div", [plane, padded_w]), ctx.const(np.int64(pad[0]))])
    col = ctx.add("Sub", [ctx.add("Mod", [plane, padded_w]), ctx.const(np.int64(pad[1]))])
    inside = None
    for value, limit in ((row, h), (col, w)):
        ok = ctx.add("And", [ctx.add("Greater", [value, ctx.const(np.int64(-1))]), ctx.add("Less", [value, limit])])
        inside = ok if inside is None else ctx.add("And", [inside, ok])
    flat = ctx.add("Add", [ctx.add("Mul", [row, w]), col])
    ctx.add("Cast", [ctx.add("Where", [inside, flat, ctx.const(np.int64(-1))])], out, to=ctx.FLOAT)


def _pair(param: Any, name: str, default: int) -> tuple[int, int]:
    """Caffe's rule for pad/stride: either ``name`` or both ``name_h`` and ``name_w``, never a mix."""
    has_h, has_w = param.has(f"{name}_h"), param.has(f"{name}_w")
    if has_h or has_w:
        if param.has(name) or not (has_h and has_w):
            raise ValueError(f"{name} is {name} OR {name}_h and {name}_w")
        return getattr(param, f"{name}_h"), getattr(param, f"{name}_w")
    value = getattr(param, name) if param.has(name) else default
    return value, value


def _scalar(values: tuple[int, int]) -> int | tuple[int, int]:
    """One number where both axes agree (how people write ``nn.MaxPool2d``)."""
    return values[0] if values[0] == values[1] else tuple(values)


@register
class Pooling(LayerSpec):
    type = "Pooling"
    layout_agnostic = True
    tops = (1, 2)
    family = "pooling"
    onnx_dynamic_sizes = True  # onnx_pool_sized
    summary = "MAX/AVE/STOCHASTIC pooling, Caffe's CEIL sizes and clipped windows; optional argmax mask top (MAX)"

    def attrs(self, layer: Any) -> PoolAttrs:
        p = plain(layer.pooling_param)
        has_size, has_hw = p.has("kernel_size"), p.has("kernel_h") and p.has("kernel_w")
        if p.global_pooling:
            if has_size or p.has("kernel_h") or p.has("kernel_w"):
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
        ceil = p.round_mode == "CEIL"
        if not p.has("round_mode"):  # fork spellings of FLOOR
            ceil = (p.ceil_mode if p.has("ceil_mode") else True) and not p.torch_pooling
        return PoolAttrs(p.pool, kernel, pad, stride, ceil)

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

    def module(self, node: Any) -> Call:
        """Stock torch pooling where it is Caffe's for every input size (see :func:`torch_pools_as_caffe`):
        global MAX/AVE as adaptive pooling to 1x1, MAX/AVE as ``nn.MaxPool2d``/``nn.AvgPool2d``; the helper
        :class:`~prototxt2py.nn.pooling.Pooling` otherwise, and for STOCHASTIC or a mask top."""
        a = node.attrs
        mask = len(node.tops) == 2
        if not mask and a.pool in (MAX, AVE):
            stock = "MaxPool2d" if a.pool == MAX else "AvgPool2d"
            if a.kernel is None:
                return call(f"nn.Adaptive{stock}", 1)
            if torch_pools_as_caffe(a.kernel, a.pad, a.stride, a.ceil):
                kwargs: dict[str, Any] = {"stride": _scalar(a.stride)}
                if any(a.pad):
                    kwargs["padding"] = _scalar(a.pad)
                if a.ceil:
                    kwargs["ceil_mode"] = True
                return call(f"nn.{stock}", _scalar(a.kernel), **kwargs)
        kwargs = {}
        if a.stride != (1, 1):
            kwargs["stride"] = a.stride
        if any(a.pad):
            kwargs["padding"] = a.pad
        if not a.ceil:
            kwargs["ceil_mode"] = False
        if mask:
            kwargs["return_mask"] = True
        return call("Pooling", a.pool, a.kernel, **kwargs)

    def to_onnx(self, node: Any, ctx: Any) -> None:
        if ctx.dynamic_sizes and ctx.sizes_vary:
            onnx_pool_sized(ctx, ctx.input(0), node.attrs, ctx.output(0),
                            ctx.output(1) if ctx.num_outputs == 2 else None)
            return
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
            return spp_plans(p.pool, p.pyramid_height, shape[2], shape[3])
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

    def module(self, node: Any) -> Call:
        return call("SPP", node.attrs.pool, node.attrs.pyramid_height)

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


@register
class LRN(LayerSpec):
    type = "LRN"
    family = "pooling"
    layout_agnostic = True  # elementwise ops and shifted channel views: the same values on channels-last inputs
    onnx_dynamic_sizes = True
    summary = "local response normalisation, ACROSS_CHANNELS (alpha/n, k) or WITHIN_CHANNEL (n x n window)"

    def attrs(self, layer: Any) -> LRNAttrs:
        p = plain(layer.lrn_param)
        if p.local_size % 2 != 1:
            raise ValueError(f"LRN only supports odd values for local_size, got {p.local_size}")
        return LRNAttrs(p.local_size, p.alpha, p.beta, p.k, p.norm_region == "ACROSS_CHANNELS")

    def infer_shapes(self, node: Any, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) != 4:
            raise self.fail(node, f"input must have 4 axes (num, channels, height, width), got {tuple(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def macs(self, node: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        n = node.attrs.local_size
        return count(in_shapes[0]) * ((n if node.attrs.across_channels else n * n) + 2)

    def module(self, node: Any) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {"alpha": a.alpha, "beta": a.beta}
        if a.k != 1.0:
            kwargs["k"] = a.k
        if not a.across_channels:
            kwargs["across_channels"] = False
        return call("LRN", a.local_size, **kwargs)

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
def _legacy_4d(shape: Sequence[int]) -> Shape:
    """Caffe's num/channels/height/width of a blob with at most 4 axes (missing trailing axes are 1)."""
    return (*shape, *(1,) * (4 - len(shape)))


@register
class MVN(LayerSpec):
    type = "MVN"
    family = "pooling"
    onnx_dynamic_sizes = True  # reductions; the < 4-axis reshape goes through ctx.reshape, which refuses
    summary = "mean-variance normalisation per channel or per sample (eps added to the std); top is 4-D"

    def infer_shapes(self, node: Any, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) > 4:
            raise self.fail(node, f"MVN takes blobs of at most 4 axes (num, channels, height, width), "
                                  f"got {tuple(in_shapes[0])}")
        return [_legacy_4d(in_shapes[0])]

    def macs(self, node: Any, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        return count(in_shapes[0]) * (3 if node.attrs.normalize_variance else 1)

    def module(self, node: Any) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.normalize_variance else {"normalize_variance": False}
        if a.across_channels:
            kwargs["across_channels"] = True
        return call("MVN", **kwargs, eps=a.eps)

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
