"""Convolution, Deconvolution, Im2col, InnerProduct and Embed.

Caffe facts kept here: kernel/stride/pad/dilation come either as ``kernel_h``/``kernel_w`` (2-D only) or as
repeated fields with one value for every spatial axis or one per axis; convolution output sizes round
*down*; Deconvolution's weight blob is ``(C_in, C_out/group, k...)`` (which is exactly what
``conv_transpose`` expects); InnerProduct flattens everything from ``axis`` and stores ``(N, K)`` or, with
``transpose``, ``(K, N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .. import limits
from ..errors import ShapeError
from ..lazy_numpy import np
from ..plain import Filler, filler
from .base import LayerSpec, call, canonical_axis, count, register


@dataclass(frozen=True)
class ConvAttrs:
    num_output: int
    bias_term: bool
    group: int
    axis: int
    kernel: tuple[int, ...]  # as written (kernel_size); () = not given
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]
    weight_filler: Filler | None
    bias_filler: Filler | None
    # the 2-D spellings, None where the file does not set them
    kernel_hw: tuple[int | None, int | None] = (None, None)
    stride_hw: tuple[int | None, int | None] = (None, None)
    pad_hw: tuple[int | None, int | None] = (None, None)


def _per_axis(values: Sequence[int], h: int | None, w: int | None, default: int, n: int, what: str) -> tuple[int, ...]:
    """One value per spatial axis from Caffe's ``x`` (repeated) or ``x_h``/``x_w`` spellings."""
    if h is not None or w is not None:
        if values:
            raise ValueError(f"{what} given both as {what}_size/{what} and as {what}_h/{what}_w")
        if n != 2:
            raise ValueError(f"{what}_h/{what}_w need 2 spatial axes, the input has {n}")
        return (default if h is None else h, default if w is None else w)
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (values[0],) * n
    if len(values) != n:
        raise ValueError(f"{len(values)} {what} values for {n} spatial axes")
    return tuple(values)


def _opt(p, name: str) -> int | None:
    return getattr(p, name) if p.HasField(name) else None


def _hw(p, name: str) -> tuple[int | None, int | None]:
    return _opt(p, f"{name}_h"), _opt(p, f"{name}_w")


class _ConvBase(LayerSpec):
    param_field = "convolution_param"
    bottoms = (1, None)
    onnx_dynamic_sizes = True  # Conv/ConvTranspose output sizes follow the input
    tops = (1, None)
    family = "conv"
    blob_names = ("weight", "bias")

    def attrs(self, layer) -> ConvAttrs:
        p = layer.convolution_param
        if p.num_output <= 0 and not isinstance(self, Im2col):
            raise ValueError("convolution_param.num_output must be positive")
        return ConvAttrs(
            num_output=p.num_output,
            bias_term=p.bias_term,
            group=p.group,
            axis=p.axis,
            kernel=tuple(p.kernel_size),
            stride=tuple(p.stride),
            pad=tuple(p.pad),
            dilation=tuple(p.dilation),
            weight_filler=filler(p.weight_filler) if p.HasField("weight_filler") else None,
            bias_filler=filler(p.bias_filler) if p.HasField("bias_filler") else None,
            kernel_hw=_hw(p, "kernel"),
            stride_hw=_hw(p, "stride"),
            pad_hw=_hw(p, "pad"),
        )

    def geometry(self, node, in_shape: Sequence[int]) -> tuple[int, tuple, tuple, tuple, tuple]:
        """(channel axis, kernel, stride, pad, dilation) resolved for this input's rank."""
        a = node.attrs
        axis = canonical_axis(node, self, a.axis, len(in_shape))
        n = len(in_shape) - axis - 1
        kernel = _per_axis(a.kernel, *a.kernel_hw, 0, n, "kernel")
        if any(k <= 0 for k in kernel):
            raise self.fail(node, f"kernel size must be positive, got {kernel}")
        stride = _per_axis(a.stride, *a.stride_hw, 1, n, "stride")
        pad = _per_axis(a.pad, *a.pad_hw, 0, n, "pad")
        dilation = _per_axis(a.dilation, None, None, 1, n, "dilation")
        if any(v <= 0 for v in (*stride, *dilation)):  # Caffe divides by the stride (0: undefined behaviour)
            raise self.fail(node, f"stride and dilation must be positive, got stride {stride}, dilation {dilation}")
        return axis, kernel, stride, pad, dilation

    def _check_bottoms(self, node, in_shapes) -> None:
        if len(node.bottoms) != len(node.tops):
            raise self.fail(node, f"needs one top per bottom, got {len(node.bottoms)} bottoms, {len(node.tops)} tops")
        if any(tuple(s) != tuple(in_shapes[0]) for s in in_shapes[1:]):
            raise self.fail(node, f"all bottoms must have the same shape, got {[tuple(s) for s in in_shapes]}")

    def _channels(self, node, in_shape, axis) -> int:
        c = in_shape[axis]
        g = node.attrs.group
        if g <= 0 or c % g:
            raise self.fail(node, f"input channels {c} not divisible by group {g}")
        if node.attrs.num_output % g:
            raise self.fail(node, f"num_output {node.attrs.num_output} not divisible by group {g}")
        return c

    # Subclasses define the output-size rule and the weight layout; the rest is shared.
    def out_size(self, i: int, k: int, s: int, p: int, d: int) -> int:
        raise NotImplementedError

    def weight_shape(self, c_in: int, a: ConvAttrs, kernel: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def end_padding(self, node, in_shape) -> tuple[int, ...]:
        """Zeros to add after the input on each spatial axis beyond Caffe's symmetric pad (none by default)."""
        return (0,) * (len(in_shape) - self.geometry(node, in_shape)[0] - 1)

    def infer_shapes(self, node, in_shapes):
        self._check_bottoms(node, in_shapes)
        shape = in_shapes[0]
        axis, kernel, stride, pad, dilation = self.geometry(node, shape)
        self._channels(node, shape, axis)
        spatial = []
        for i, k, s, p, d in zip(shape[axis + 1 :], kernel, stride, pad, dilation, strict=True):
            size = self.out_size(i, k, s, p, d)
            if size <= 0:
                raise self.fail(node, f"output size {size} <= 0 (input {i}, kernel {k}, pad {p}, stride {s})")
            spatial.append(size)
        return [(*shape[:axis], node.attrs.num_output, *spatial)] * len(node.tops)

    def param_shapes(self, node, in_shapes):
        shape = in_shapes[0]
        axis, kernel, *_ = self.geometry(node, shape)
        a = node.attrs
        blobs = [self.weight_shape(self._channels(node, shape, axis), a, kernel)]
        return blobs + [(a.num_output,)] if a.bias_term else blobs

    def to_onnx(self, node, ctx):
        """ONNX ``Conv``/``ConvTranspose`` take Caffe's weight layouts as they are (Deconvolution's
        ``(C_in, C_out/group, k...)`` included) and Caffe's symmetric pads; output sizes agree (both round
        down / ``stride*(in-1) + dilation*(k-1) + 1 - 2*pad``). Several bottoms share one weight initializer."""
        axis, kernel, stride, pad, dilation = self.geometry(node, ctx.in_shape(0))
        if axis != 1:
            ctx.unsupported(f"convolution over axis {axis}: ONNX convolves from axis 1")
        weights = [ctx.const(ctx.param(0), "weight")]
        if node.attrs.bias_term:
            weights.append(ctx.const(ctx.param(1), "bias"))
        op = "ConvTranspose" if isinstance(self, Deconvolution) else "Conv"
        for i in range(ctx.num_inputs):
            ctx.add(op, [ctx.input(i), *weights], ctx.output(i), kernel_shape=list(kernel), strides=list(stride),
                    pads=self._onnx_pads(node, ctx, pad), dilations=list(dilation), group=node.attrs.group)

    def _onnx_pads(self, node, ctx, pad) -> list[int]:
        """ONNX's begin and end pads: Caffe's symmetric ones, plus a Convolution's overhang at the end."""
        end = self.end_padding(node, ctx.in_shape(0))
        if any(end) and ctx.sizes_vary:
            ctx.fixed_sizes_only("the kernel overhangs the padded input (Caffe's truncated output size)")
        return [*pad, *(p + e for p, e in zip(pad, end, strict=True))]

    def module(self, node):
        """``nn.Conv{1,2,3}d``/``nn.ConvTranspose{1,2,3}d`` for one bottom (exactly Caffe's symmetric padding,
        rounding and weight layouts); :class:`SharedConvolution` when several bottoms share the weights."""
        a, weight = node.attrs, node.param_shapes[0]
        axis, kernel, stride, pad, dilation = self.geometry(node, node.in_shapes[0])
        transposed = isinstance(self, Deconvolution)
        if len(kernel) not in (1, 2, 3):
            raise self.fail(node, f"convolution over {len(kernel)} spatial axes is not supported (torch has 1 to 3)")
        if len(node.bottoms) > 1 or axis != 1 or any(self.end_padding(node, node.in_shapes[0])):
            extra = {"channel_axis": axis} if axis != 1 else {}
            return call("SharedConvolution", weight, a.bias_term, stride, pad, dilation, a.group, transposed, **extra)
        c_in = weight[0] if transposed else weight[1] * a.group
        target = f"nn.{'ConvTranspose' if transposed else 'Conv'}{len(kernel)}d"
        options = {"stride": stride, "padding": pad, "dilation": dilation}
        kwargs = {k: _scalar(v) for k, v in options.items() if any(x != (k != "padding") for x in v)}
        if a.group != 1:
            kwargs["groups"] = a.group
        if not a.bias_term:
            kwargs["bias"] = False
        return call(target, c_in, a.num_output, _scalar(kernel), num_outputs=1, **kwargs)

    def fillers(self, node):
        return [node.attrs.weight_filler, node.attrs.bias_filler][: len(node.param_shapes)]


def _scalar(values: tuple[int, ...]) -> int | tuple[int, ...]:
    """One number where every spatial axis has the same value (how people write ``nn.Conv2d``)."""
    return values[0] if len(set(values)) == 1 else tuple(values)


@register
class Convolution(_ConvBase):
    type = "Convolution"
    summary = ("N-D convolution (1-3 spatial axes, channels on any axis; ONNX: channels on axis 1 only): groups, "
               "dilation, per-axis kernel/stride/pad, shared weights for several bottoms")

    def out_size(self, i, k, s, p, d):
        # C++ integer division truncates toward zero: a kernel overhanging the padded input by less than the
        # stride still gives one output (im2col reads zeros beyond the input), where floor division gives 0
        over = i + 2 * p - (d * (k - 1) + 1)
        return (over // s if over >= 0 else -(-over // s)) + 1

    def end_padding(self, node, in_shape) -> tuple[int, ...]:
        """Zeros to add after the input on each spatial axis so that torch's floor-rounded output size is
        Caffe's truncated one: the overhang of a kernel larger than the padded input, else 0."""
        axis, kernel, stride, pad, dilation = self.geometry(node, in_shape)
        return tuple(max(0, d * (k - 1) + 1 - i - 2 * p)
                     for i, k, p, d in zip(in_shape[axis + 1 :], kernel, pad, dilation, strict=True))

    def weight_shape(self, c_in, a, kernel):
        return (a.num_output, c_in // a.group, *kernel)

    def plain_convolution(self, node, in_shape):
        if len(node.bottoms) != 1 or len(in_shape) not in (3, 4, 5):
            return None
        try:
            axis, _, stride, pad, dilation = self.geometry(node, in_shape)
            overhang = any(self.end_padding(node, in_shape))
        except (ShapeError, ValueError):
            return None
        return (stride, pad, dilation, node.attrs.group) if axis == 1 and not overhang else None

    def macs(self, node, in_shapes, out_shapes):
        axis, kernel, *_ = self.geometry(node, in_shapes[0])
        per_out = in_shapes[0][axis] // node.attrs.group * math.prod(kernel)
        return sum(count(s) * per_out for s in out_shapes)


@register
class Deconvolution(_ConvBase):
    type = "Deconvolution"
    summary = "transposed convolution; weight (C_in, C_out/group, k...), groups (bilinear upsampling), dilation"

    def out_size(self, i, k, s, p, d):
        return s * (i - 1) + d * (k - 1) + 1 - 2 * p

    def weight_shape(self, c_in, a, kernel):
        return (c_in, a.num_output // a.group, *kernel)

    def macs(self, node, in_shapes, out_shapes):
        axis, kernel, *_ = self.geometry(node, in_shapes[0])
        per_in = node.attrs.num_output // node.attrs.group * math.prod(kernel)
        return sum(count(s) * per_in for s in in_shapes)


@register
class Im2col(Convolution):
    """Convolution's geometry without weights: the patches Caffe's convolution multiplies."""

    def plain_convolution(self, node, in_shape):
        return None  # no weights: not a convolution to fuse

    type = "Im2col"
    bottoms = (1, 1)
    tops = (1, 1)
    blob_names = ()
    summary = "image patches to columns, Caffe's (N, C*kh*kw, H_out, W_out) channel-major layout"

    def infer_shapes(self, node, in_shapes):
        shape = in_shapes[0]
        axis, kernel, stride, pad, dilation = self.geometry(node, shape)
        spatial = [self.out_size(*g) for g in zip(shape[axis + 1 :], kernel, stride, pad, dilation, strict=True)]
        return [(*shape[:axis], shape[axis] * math.prod(kernel), *spatial)]

    def param_shapes(self, node, in_shapes):
        return []

    def macs(self, node, in_shapes, out_shapes):
        return 0

    def module(self, node):
        axis, kernel, stride, pad, dilation = self.geometry(node, node.in_shapes[0])
        if axis != 1 or len(kernel) != 2:
            raise self.fail(node, "Im2col is supported for 2-D spatial inputs on axis 1")
        return call("Im2col", kernel, stride, pad, dilation)

    def to_onnx(self, node, ctx):
        """A grouped convolution with one-hot kernels: group ``c`` copies each of the ``k = prod(kernel)``
        window positions of channel ``c`` to output channel ``c*k + j``, which is Caffe's channel-major
        column layout (multiplying by 1 and adding zeros is exact)."""
        axis, kernel, stride, pad, dilation = self.geometry(node, ctx.in_shape(0))
        if axis != 1:
            ctx.unsupported(f"Im2col over axis {axis}: ONNX convolves from axis 1")
        channels, k = ctx.in_shape(0)[1], math.prod(kernel)
        # the one-hot kernels grow with the square of the window: a hostile kernel_size must fail here, not
        # in the allocation (the kernel alone bounds neither, the input blob's size has been checked)
        limits.check_temporary((k, k), "Im2col's one-hot kernel", layer=node.name, location=node.location)
        limits.check_temporary((channels, k, k), "Im2col's ONNX weight", layer=node.name, location=node.location)
        one_hot = np.eye(k, dtype=np.float32).reshape(k, 1, *kernel)
        weight = np.tile(one_hot, (channels,) + (1,) * (one_hot.ndim - 1))
        ctx.add("Conv", [ctx.input(0), ctx.const(weight, "one_hot")], ctx.output(0), kernel_shape=list(kernel),
                strides=list(stride), pads=self._onnx_pads(node, ctx, pad), dilations=list(dilation), group=channels)


@register
class InnerProduct(LayerSpec):
    type = "InnerProduct"
    family = "conv"
    blob_names = ("weight", "bias")
    summary = "fully connected over all axes from `axis`; weight (N, K) or (K, N) with transpose"

    def _k(self, node, shape) -> tuple[int, int]:
        axis = canonical_axis(node, self, node.attrs.axis, len(shape))
        return axis, count(shape, axis)

    def infer_shapes(self, node, in_shapes):
        if node.attrs.num_output <= 0:
            raise self.fail(node, "inner_product_param.num_output must be positive")
        axis, _ = self._k(node, in_shapes[0])
        return [(*in_shapes[0][:axis], node.attrs.num_output)]

    def param_shapes(self, node, in_shapes):
        _, k = self._k(node, in_shapes[0])
        a = node.attrs
        w = (k, a.num_output) if a.transpose else (a.num_output, k)
        return [w, (a.num_output,)] if a.bias_term else [w]

    def macs(self, node, in_shapes, out_shapes):
        return count(in_shapes[0]) * node.attrs.num_output

    def to_onnx(self, node, ctx):
        """``Gemm`` on the input flattened from axis 1 (the common case; transB reads Caffe's (N, K) weight
        as is), else a reshape to ``(*shape[:axis], K)`` and ``MatMul`` by the (K, N) weight."""
        a, shape = node.attrs, ctx.in_shape(0)
        axis, k = self._k(node, shape)
        weight = ctx.param(0)
        bias = [ctx.const(ctx.param(1), "bias")] if a.bias_term else []
        if axis == 1:
            x = ctx.input(0) if len(shape) == 2 else ctx.add("Flatten", [ctx.input(0)], axis=1)
            ctx.add("Gemm", [x, ctx.const(weight, "weight"), *bias], ctx.output(0), transB=0 if a.transpose else 1)
            return
        x = ctx.reshape(ctx.input(0), shape, (*shape[:axis], k))
        y = ctx.add("MatMul", [x, ctx.const(weight if a.transpose else weight.T, "weight")],
                    None if bias else ctx.output(0))
        if bias:
            ctx.add("Add", [y, *bias], ctx.output(0))

    def module(self, node):
        """``nn.Linear`` on a 2-D bottom at axis 1 (Caffe's (N, K) weight is torch's), else
        :class:`InnerProduct`, which flattens from ``axis`` first and knows the transposed layout."""
        a = node.attrs
        shape = node.in_shapes[0]
        axis, k = self._k(node, shape)
        if axis == 1 and len(shape) == 2 and not a.transpose:
            return call("nn.Linear", k, a.num_output, num_outputs=1, **({} if a.bias_term else {"bias": False}))
        kwargs = {"bias": False} if not a.bias_term else {}
        if axis != 1:
            kwargs["axis"] = axis
        if a.transpose:
            kwargs["transpose"] = True
        return call("InnerProduct", k, a.num_output, num_outputs=1, **kwargs)

    def plain_linear(self, node):
        """Flattening everything after axis 0 with an ``(N, K)`` weight: ``axis: 1`` literally (a negative
        axis would depend on the rank), not transposed."""
        return len(node.bottoms) == 1 and node.attrs.axis == 1 and not node.attrs.transpose

    def fillers(self, node):
        return [node.attrs.weight_filler, node.attrs.bias_filler][: len(node.param_shapes)]


@register
class Embed(LayerSpec):
    type = "Embed"
    family = "conv"
    blob_names = ("weight", "bias")
    summary = "lookup table: integer-valued input -> rows of a (input_dim, num_output) weight"

    def infer_shapes(self, node, in_shapes):
        return [(*in_shapes[0], node.attrs.num_output)]

    def param_shapes(self, node, in_shapes):
        a = node.attrs
        w = (a.input_dim, a.num_output)
        return [w, (a.num_output,)] if a.bias_term else [w]

    def to_onnx(self, node, ctx):
        """``Gather`` of weight rows; the float indices are cast to int64, truncating as Caffe's
        ``static_cast<int>`` does."""
        index = ctx.add("Cast", [ctx.input(0)], to=ctx.INT64)
        bias = node.attrs.bias_term
        y = ctx.add("Gather", [ctx.const(ctx.param(0), "weight"), index], None if bias else ctx.output(0), axis=0)
        if bias:
            ctx.add("Add", [y, ctx.const(ctx.param(1), "bias")], ctx.output(0))

    def module(self, node):
        a = node.attrs
        return call("Embed", a.input_dim, a.num_output, **({} if a.bias_term else {"bias": False}))

    def fillers(self, node):
        return [node.attrs.weight_filler, node.attrs.bias_filler][: len(node.param_shapes)]
