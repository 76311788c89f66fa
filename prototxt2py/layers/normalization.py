"""Normalisation family: ``BatchNorm``, ``Scale``, ``Bias`` and SSD's ``Normalize``.

Caffe splits a PyTorch-style ``BatchNorm2d`` in two: ``BatchNorm`` only standardises (its three blobs are
*statistics*, never learned) and a following ``Scale`` (usually with ``bias_term``) holds gamma/beta. The
edges other converters get wrong, all reproduced here:

* BatchNorm stores **sums**: blobs are ``[sum of means, sum of variances, scale factor s]`` and the layer uses
  ``mean / s`` and ``var / s``, with ``s == 0`` meaning 0 (a freshly initialised layer);
* ``use_global_stats`` defaults to the phase (TEST -> stored statistics, TRAIN -> batch statistics); an explicit
  value wins, so a TEST net may still normalise with batch statistics and then updates its sums;
* the batch variance used for normalising is biased, the one accumulated is corrected by ``m / (m - 1)``;
* Scale/Bias apply an operand of shape ``x.shape[axis:axis + k]`` (``num_axes`` 0 = scalar, -1 = all the
  remaining axes), either learned (one bottom) or given as a second bottom that then receives a gradient.

For inference speed, :meth:`BatchNormModule.affine` gives the per-channel ``(multiplier, offset)`` that a
runtime can fold, together with a following per-channel ``Scale``, into one multiply-add (or into the
preceding convolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .base import LayerSpec, Shape, canonical_axis, count, register
from .torch_util import CaffeLayer, filler_of

FAMILY = "normalization"


def _reduce_dims(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1: what Caffe's BatchNorm averages over."""
    return (0, *range(2, ndim))


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A ``(C,)`` vector shaped to broadcast along axis 1 of an ``ndim``-axis blob."""
    return v.reshape((-1,) + (1,) * (ndim - 2))


def _filler_or_constant(param: Any, field: str, value: float) -> Any:
    """The ``FillerParameter`` in ``param.<field>``, else ``constant value`` (the layer's identity default)."""
    from ..proto import caffe_pb2

    filler = filler_of(param, field)
    return caffe_pb2.FillerParameter(type="constant", value=value) if filler is None else filler


def _blob_shapes(spec: LayerSpec, node: Any, wanted: int) -> list[Shape]:
    """The blob shapes that shape inference stored on the node (needed to size the module's blobs)."""
    if len(node.param_shapes) < wanted:
        raise spec.fail(node, "input shapes are unknown, so the parameter blobs cannot be sized; "
                              "give the input shapes")
    return list(node.param_shapes)


# -- BatchNorm ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchNormAttrs:
    #: ``None`` = Caffe's default: stored statistics in TEST, batch statistics in TRAIN.
    use_global_stats: bool | None
    moving_average_fraction: float
    eps: float


class _BatchStatsNorm(torch.autograd.Function):
    """Normalisation with batch statistics, computed in Caffe's order: mean, ``x - mean``, biased variance
    ``mean((x - mean)^2)``, division by ``sqrt(var + eps)`` (not a folded ``x * a + b``, which loses absolute
    precision for channels of small variance). Returns ``(y, mean, var)``; the statistics are not
    differentiable. Backward is Caffe's closed form ``dx = (dy - (sum(dy) + y * sum(dy * y)) / m) / std``
    (sums over every axis but 1, ``m`` elements per channel), keeping only ``y`` and ``std`` as Caffe does."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = _reduce_dims(x.dim())
        mean = x.mean(dims, keepdim=True)
        y = x - mean
        var = (y * y).mean(dims, keepdim=True)
        std = (var + eps).sqrt()
        y.div_(std)
        ctx.save_for_backward(y, std)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor, *_stats: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, std = ctx.saved_tensors
        dims = _reduce_dims(y.dim())
        m = y.numel() // std.numel()
        sums = dy.sum(dims, keepdim=True) + y * (dy * y).sum(dims, keepdim=True)
        return (dy - sums * (1.0 / m)) / std, None


class BatchNormModule(CaffeLayer):
    """Caffe's ``BatchNorm``: blobs ``mean`` / ``variance`` (sums, ``(C,)``) and ``scale_factor`` (``(1,)``),
    all buffers. With batch statistics the forward pass updates them in place, as Caffe's does:
    ``s = s * maf + 1``, ``mean += ...`` with the batch mean, ``variance += ...`` with the unbiased batch
    variance (so layers sharing the blobs through ``param { name }`` see the update)."""

    def __init__(self, channels: int, attrs: BatchNormAttrs):
        super().__init__()
        self.use_global_stats = attrs.use_global_stats
        self.moving_average_fraction = attrs.moving_average_fraction
        self.eps = attrs.eps
        self.add_blob("mean", (channels,), trainable=False)
        self.add_blob("variance", (channels,), trainable=False)
        self.add_blob("scale_factor", (1,), trainable=False)

    def uses_global_stats(self) -> bool:
        """Whether the stored statistics are used: the explicit ``use_global_stats``, else ``not training``."""
        return not self.training if self.use_global_stats is None else self.use_global_stats

    def stored_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, variance)`` from the stored sums: divided by the scale factor, or 0 if it is 0."""
        s = self.scale_factor
        factor = torch.where(s == 0, 0.0, s.reciprocal())
        return self.mean * factor, self.variance * factor

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``(multiplier, offset)``, both ``(C,)``, with ``y = x * multiplier + offset``
        equal to this layer's output when it uses stored statistics (eval mode by default).

        For folding at inference: a following per-channel ``Scale`` (weight ``g``, bias ``b``) becomes
        ``(multiplier * g, offset * g + b)``, and both fold into a preceding convolution's weights and bias.
        A folded multiply-add rounds differently from Caffe's ``(x - mean) / sqrt(var + eps)``, by about one
        float32 ulp of ``|x| * multiplier``. Raises if the layer normalises with batch statistics, which
        have no fixed affine form.
        """
        if not self.uses_global_stats():
            raise RuntimeError("BatchNorm uses batch statistics here (training, or use_global_stats: false): "
                               "it has no fixed affine form")
        with torch.no_grad():
            mean, var = self.stored_stats()
            multiplier = (var + self.eps).rsqrt()
            return multiplier, -mean * multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_global_stats():
            mean, var = self.stored_stats()
            # Caffe subtracts then divides by sqrt(var + eps); its backward is then dy / std, as autograd's.
            return (x - _channel_view(mean, x.dim())).div_(_channel_view((var + self.eps).sqrt(), x.dim()))
        y, mean, var = _BatchStatsNorm.apply(x, self.eps)
        with torch.no_grad():
            self._accumulate(mean.flatten(), var.flatten(), x.numel() // var.numel())
        return y

    def _accumulate(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        """Caffe's moving sums; the stored variance gets the unbiased correction ``m / (m - 1)``."""
        maf = self.moving_average_fraction
        correction = m / (m - 1) if m > 1 else 1.0
        self.scale_factor.mul_(maf).add_(1.0)
        self.mean.mul_(maf).add_(mean)
        self.variance.mul_(maf).add_(var * correction)


@register
class BatchNorm(LayerSpec):
    type = "BatchNorm"
    blob_names = ("mean", "variance", "scale_factor")
    family = FAMILY
    summary = ("standardise per channel (axis 1); blobs are sums of means/variances and a scale factor, "
               "batch statistics in TRAIN (updating the sums), stored ones in TEST")

    def attrs(self, layer: Any) -> BatchNormAttrs:
        p = layer.batch_norm_param
        for i, spec in enumerate(list(layer.param)[:3]):
            if spec.lr_mult != 0:
                raise ValueError(f"param {i} has lr_mult {spec.lr_mult:g}: BatchNorm's statistics blobs "
                                 "cannot be learned (Caffe requires lr_mult: 0)")
        return BatchNormAttrs(
            use_global_stats=p.use_global_stats if p.HasField("use_global_stats") else None,
            moving_average_fraction=p.moving_average_fraction,
            eps=p.eps,
        )

    def infer_shapes(self, node, in_shapes):
        if len(in_shapes[0]) < 2:
            raise self.fail(node, f"BatchNorm needs a blob with a channel axis 1, got shape {tuple(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def param_shapes(self, node, in_shapes):
        channels = in_shapes[0][1]
        return [(channels,), (channels,), (1,)]

    def macs(self, node, in_shapes, out_shapes):
        return count(in_shapes[0])

    def build_torch(self, node):
        channels = _blob_shapes(self, node, 1)[0][0]
        return BatchNormModule(channels, node.attrs)

    def to_onnx(self, node, ctx):
        """Stored statistics: ``BatchNormalization`` with the scale factor folded in (mean/s, var/s, 0 for
        s == 0, computed as the runtime does), scale 1 and bias 0 — the form runtimes fuse into a preceding
        convolution. Batch statistics: Caffe's computation spelled out (mean, ``x - mean``, biased variance,
        division by ``sqrt(var + eps)``); the running sums Caffe updates in TRAIN are not outputs."""
        module, x, rank = ctx.module, ctx.input(0), len(ctx.in_shape(0))
        if module.uses_global_stats():
            mean, var = (t.detach().cpu().numpy() for t in module.stored_stats())
            ones, zeros = np.ones_like(mean), np.zeros_like(mean)
            ctx.add("BatchNormalization", [x, ctx.const(ones, "scale"), ctx.const(zeros, "bias"),
                                           ctx.const(mean, "mean"), ctx.const(var, "var")],
                    ctx.output(0), epsilon=float(module.eps))
            return
        axes = _reduce_dims(rank)
        centred = ctx.add("Sub", [x, ctx.reduce("ReduceMean", x, axes)])
        var = ctx.reduce("ReduceMean", ctx.add("Mul", [centred, centred]), axes)
        std = ctx.add("Sqrt", [ctx.add("Add", [var, ctx.scalar(module.eps)])])
        ctx.add("Div", [centred, std], ctx.output(0))


# -- Scale and Bias ----------------------------------------------------------------------------------------
def _learned_operand_shape(spec: LayerSpec, node: Any, x: Shape, axis: int, num_axes: int) -> Shape:
    """Shape of a learned Scale/Bias blob: ``x[axis:axis + num_axes]`` (-1 = to the end), as LayerSetUp."""
    a = canonical_axis(node, spec, axis, len(x))
    if num_axes < -1:
        raise spec.fail(node, f"num_axes must be >= 0, or -1 for all remaining axes; got {num_axes}")
    if num_axes == -1:
        return tuple(x[a:])
    if a + num_axes > len(x):
        raise spec.fail(node, f"axis {axis} with num_axes {num_axes} extends past the {len(x)} axes of {tuple(x)}")
    return tuple(x[a:a + num_axes])


def _check_operand(spec: LayerSpec, node: Any, x: Shape, operand: Shape, axis: int) -> None:
    """Caffe's Reshape check: the operand matches ``x`` from ``axis`` on (a scalar operand fits anything)."""
    a = canonical_axis(node, spec, axis, len(x)) if operand else 0
    if tuple(x[a:a + len(operand)]) != tuple(operand):
        raise spec.fail(node, f"operand of shape {tuple(operand)} does not match input {tuple(x)} from axis {axis}")


class _Broadcast(CaffeLayer):
    """Base of Scale/Bias modules: applies an operand covering ``x.shape[axis:axis + operand.dim()]``."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def _expand(self, operand: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if operand.dim() == 0:
            return operand
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        return operand.reshape(operand.shape + (1,) * (x.dim() - axis - operand.dim()))


class ScaleModule(_Broadcast):
    """Caffe's ``Scale``: ``x * scale (+ bias)``; ``scale`` is the ``weight`` blob or the second bottom.
    Blobs in Caffe's order: ``weight`` (one-bottom form only), then ``bias`` (if ``bias_term``)."""

    def __init__(self, axis: int, shapes: Sequence[Shape], learned_scale: bool, bias_term: bool,
                 filler: Any, bias_filler: Any):
        super().__init__(axis)
        self.bias_term = bias_term
        if learned_scale:
            self.add_blob("weight", shapes[0], filler)
        if bias_term:
            self.add_blob("bias", shapes[-1], bias_filler)

    def forward(self, x: torch.Tensor, *scale: torch.Tensor) -> torch.Tensor:
        factor = self._expand(scale[0] if scale else self.weight, x)
        if self.bias_term:
            return torch.addcmul(self._expand(self.bias, x), x, factor)
        return x * factor


class BiasModule(_Broadcast):
    """Caffe's ``Bias``: ``x + bias``; ``bias`` is the ``bias`` blob or the second bottom."""

    def __init__(self, axis: int, shape: Shape | None, filler: Any):
        super().__init__(axis)
        if shape is not None:
            self.add_blob("bias", shape, filler)

    def forward(self, x: torch.Tensor, *bias: torch.Tensor) -> torch.Tensor:
        return x + self._expand(bias[0] if bias else self.bias, x)


class _BroadcastSpec(LayerSpec):
    """Shape rules shared by Scale and Bias (one- or two-bottom form)."""

    bottoms = (1, 2)

    def infer_shapes(self, node, in_shapes):
        p = node.attrs
        x = tuple(in_shapes[0])
        if len(in_shapes) > 1:
            _check_operand(self, node, x, tuple(in_shapes[1]), p.axis)
        else:
            _learned_operand_shape(self, node, x, p.axis, p.num_axes)
        return [x]

    def onnx_operand(self, node: Any, ctx: Any, blob: int | None) -> str:
        """The operand lined up with bottom 0 for ONNX's trailing-aligned broadcasting: bottom 1 (``blob``
        None, given trailing axes by Unsqueeze) or learned blob ``blob`` (reshaped with trailing ones)."""
        rank = len(ctx.in_shape(0))
        operand = self.operand_shape(node, [ctx.in_shape(i) for i in range(ctx.num_inputs)])
        axis = canonical_axis(node, self, node.attrs.axis, rank) if operand else 0
        if blob is None:
            return ctx.broadcast(ctx.input(1), len(operand), axis, rank)
        return ctx.broadcast_const(ctx.param(blob), axis, rank, self.blob_names[blob])

    def operand_shape(self, node: Any, in_shapes: Sequence[Shape]) -> Shape:
        """The scale/bias operand's shape, learned or given by bottom 1 (that is also the bias blob's
        shape in a Scale with ``bias_term``)."""
        if len(in_shapes) > 1:
            return tuple(in_shapes[1])
        return _learned_operand_shape(self, node, tuple(in_shapes[0]), node.attrs.axis, node.attrs.num_axes)


@register
class Scale(_BroadcastSpec):
    type = "Scale"
    layout_agnostic = True
    blob_names = ("weight", "bias")
    family = FAMILY
    summary = ("multiply by a learned blob or a second bottom broadcast over x.shape[axis:axis+k] "
               "(axis 1, num_axes 1 by default), optional bias_term")

    def param_shapes(self, node, in_shapes):
        shape = self.operand_shape(node, in_shapes)
        learned = [shape] if len(in_shapes) == 1 else []
        return learned + ([shape] if node.attrs.bias_term else [])

    def macs(self, node, in_shapes, out_shapes):
        return count(in_shapes[0])

    def build_torch(self, node):
        p = node.attrs
        learned = len(node.bottoms) == 1
        shapes = _blob_shapes(self, node, int(learned) + int(p.bias_term))
        # Caffe's Scale starts as the identity: constant 1 unless a filler is given.
        filler = _filler_or_constant(p, "filler", 1.0)
        return ScaleModule(p.axis, shapes, learned, p.bias_term, filler, filler_of(p, "bias_filler"))

    def to_onnx(self, node, ctx):
        """``Mul`` then ``Add``: Caffe's Scale multiplies, then its internal Bias layer adds."""
        bias = node.attrs.bias_term
        factor = self.onnx_operand(node, ctx, 0 if ctx.num_inputs == 1 else None)
        y = ctx.add("Mul", [ctx.input(0), factor], None if bias else ctx.output(0))
        if bias:
            ctx.add("Add", [y, self.onnx_operand(node, ctx, ctx.num_params - 1)], ctx.output(0))


@register
class Bias(_BroadcastSpec):
    type = "Bias"
    layout_agnostic = True
    blob_names = ("bias",)
    family = FAMILY
    summary = "add a learned blob or a second bottom broadcast over x.shape[axis:axis+k] (axis 1, num_axes 1)"

    def param_shapes(self, node, in_shapes):
        return [self.operand_shape(node, in_shapes)] if len(in_shapes) == 1 else []

    def build_torch(self, node):
        learned = len(node.bottoms) == 1
        shape = _blob_shapes(self, node, 1)[0] if learned else None
        return BiasModule(node.attrs.axis, shape, filler_of(node.attrs, "filler"))

    def to_onnx(self, node, ctx):
        operand = self.onnx_operand(node, ctx, 0 if ctx.num_inputs == 1 else None)
        ctx.add("Add", [ctx.input(0), operand], ctx.output(0))


# -- Normalize (SSD fork) ----------------------------------------------------------------------------------
def _norm_dims(x: torch.Tensor, across_spatial: bool) -> tuple[int, ...]:
    """Axes Normalize sums squares over: ``C*H*W`` of each sample, or ``C`` at each position."""
    return tuple(range(1, x.dim())) if across_spatial else (1,)


class _NormalizeFn(torch.autograd.Function):
    """``y = x / sqrt(sum(x^2) + eps) * weight`` with SSD Caffe's backward. For the input Caffe computes
    ``weight * (dy - x * sum(x * dy) / norm^2) / norm``: the dot product leaves the weight out, so with a
    per-channel weight (``channel_shared: false``) its input gradient is *not* the true derivative, and is
    reproduced here. The weight gradient, ``sum(x / norm * dy)``, is the true one (Caffe computes it as
    ``sum(y * dy) / weight``, which is the same for non-zero weights)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, across_spatial: bool, eps: float) -> torch.Tensor:
        norm = ((x * x).sum(_norm_dims(x, across_spatial), keepdim=True) + eps).sqrt()
        ctx.save_for_backward(x, weight, norm)
        ctx.across_spatial = across_spatial
        return x / norm * _weight_view(weight, x.dim())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, norm = ctx.saved_tensors
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            dot = (x * dy).sum(_norm_dims(x, ctx.across_spatial), keepdim=True)
            dx = (dy - x * (dot / (norm * norm))) / norm * _weight_view(weight, x.dim())
        if ctx.needs_input_grad[1]:
            product = x / norm * dy
            dweight = product.sum() if weight.dim() == 0 else product.sum(_reduce_dims(x.dim()))
        return dx, dweight, None, None


def _weight_view(weight: torch.Tensor, ndim: int) -> torch.Tensor:
    return weight if weight.dim() == 0 else _channel_view(weight, ndim)


class NormalizeModule(CaffeLayer):
    """SSD's ``Normalize``: L2-normalise each sample over ``C*H*W`` (``across_spatial``) or each position
    over ``C``, with ``eps`` added to the sum of squares inside the square root, then multiply by ``weight``
    (a 0-axis scalar if ``channel_shared``, else ``(C,)``)."""

    def __init__(self, shape: Shape, across_spatial: bool, eps: float, filler: Any):
        super().__init__()
        self.across_spatial = across_spatial
        self.eps = eps
        self.add_blob("weight", shape, filler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NormalizeFn.apply(x, self.weight, self.across_spatial, self.eps)


@register
class Normalize(LayerSpec):
    type = "Normalize"
    blob_names = ("weight",)
    family = FAMILY
    summary = ("SSD fork: L2-normalise per sample (across_spatial) or per position over channels, "
               "then scale (scalar if channel_shared, else per channel); norm_param")

    def infer_shapes(self, node, in_shapes):
        x = tuple(in_shapes[0])
        # Caffe's layer reads the legacy num/channels/height/width accessors: 2 to 4 axes.
        if not 2 <= len(x) <= 4:
            raise self.fail(node, f"Normalize needs a blob of 2 to 4 axes, got shape {x}")
        return [x]

    def param_shapes(self, node, in_shapes):
        return [()] if node.attrs.channel_shared else [(in_shapes[0][1],)]

    def macs(self, node, in_shapes, out_shapes):
        return 2 * count(in_shapes[0])

    def build_torch(self, node):
        p = node.attrs
        shape = _blob_shapes(self, node, 1)[0]
        # SSD's default scale filler is constant 1 (SSD nets set 20 explicitly).
        return NormalizeModule(shape, p.across_spatial, p.eps, _filler_or_constant(p, "scale_filler", 1.0))

    def to_onnx(self, node, ctx):
        """``x / sqrt(sum(x^2) + eps) * weight``, summing over C*H*W (across_spatial) or over C."""
        p, x = node.attrs, ctx.input(0)
        rank = len(ctx.in_shape(0))
        squares = ctx.reduce("ReduceSumSquare", x, range(1, rank) if p.across_spatial else [1])
        norm = ctx.add("Sqrt", [ctx.add("Add", [squares, ctx.scalar(p.eps)])])
        weight = ctx.broadcast_const(ctx.param(0), 1, rank, "weight")
        ctx.add("Mul", [ctx.add("Div", [x, norm]), weight], ctx.output(0))
