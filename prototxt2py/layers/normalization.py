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

The modules are :mod:`prototxt2py.nn.normalization`'s. For inference speed, their ``BatchNorm.affine`` gives
the per-channel ``(multiplier, offset)`` that a runtime can fold, together with a following per-channel
``Scale``, into one multiply-add (or into the preceding convolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..lazy_numpy import np
from ..plain import Filler
from .base import Call, ChannelAffine, LayerSpec, Shape, call, canonical_axis, count, register

FAMILY = "normalization"


def _reduce_dims(ndim: int) -> tuple[int, ...]:
    """Every axis but the channel axis 1: what Caffe's BatchNorm averages over."""
    return (0, *range(2, ndim))


def short_float(value: float) -> float:
    """The shortest decimal that is the same float32 as ``value`` (a protobuf ``float`` field read as a Python
    float, e.g. 9.99999974738e-06 -> 1e-05). Modules round their float arguments to float32 again, so the
    generated code can show what the prototxt says and still compute with Caffe's exact value."""
    return float(str(np.float32(value)))


def _filler_or_constant(p: Any, field: str, value: float) -> Filler:
    """The filler in ``p.<field>`` if the file gives one, else ``constant value`` (the layer's identity)."""
    return getattr(p, field) if p.has(field) else Filler(type="constant", value=value)


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


@register
class BatchNorm(LayerSpec):
    type = "BatchNorm"
    backward_reads = "forward"  # its Backward_cpu works from private copies its forward saved
    onnx_dynamic_sizes = True
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

    def module(self, node) -> Call:
        a = node.attrs
        channels = _blob_shapes(self, node, 1)[0][0]
        kwargs: dict[str, Any] = {} if a.use_global_stats is None else {"use_global_stats": a.use_global_stats}
        for name, default in (("moving_average_fraction", 0.999), ("eps", 1e-5)):
            value = short_float(getattr(a, name))
            if value != default:
                kwargs[name] = value
        return call("BatchNorm", channels, **kwargs)

    def per_channel_affine(self, node):
        """With stored statistics, ``BatchNorm.affine``'s form (decided at run time: TRAIN, or
        ``use_global_stats: false``, normalises with batch statistics)."""
        return ChannelAffine(method="affine", active="uses_global_stats", depends_on=("eps",), alone=True)

    def to_onnx(self, node, ctx):
        """Stored statistics: ``BatchNormalization`` with the scale factor folded in (mean/s, var/s, 0 for
        s == 0, computed as the runtime does), scale 1 and bias 0 — the form runtimes fuse into a preceding
        convolution. Batch statistics: Caffe's computation spelled out (mean, ``x - mean``, biased variance,
        division by ``sqrt(var + eps)``); the running sums Caffe updates in TRAIN are not outputs."""
        a: BatchNormAttrs = node.attrs
        x, rank = ctx.input(0), len(ctx.in_shape(0))
        eps = float(np.float32(a.eps))  # Caffe's float field, as the module rounds it
        global_stats = not ctx.training if a.use_global_stats is None else a.use_global_stats
        if global_stats:
            mean, var = stored_stats(ctx.param(0), ctx.param(1), ctx.param(2))
            ones, zeros = np.ones_like(mean), np.zeros_like(mean)
            ctx.add("BatchNormalization", [x, ctx.const(ones, "scale"), ctx.const(zeros, "bias"),
                                           ctx.const(mean, "mean"), ctx.const(var, "var")],
                    ctx.output(0), epsilon=eps)
            return
        axes = _reduce_dims(rank)
        centred = ctx.add("Sub", [x, ctx.reduce("ReduceMean", x, axes)])
        var = ctx.reduce("ReduceMean", ctx.add("Mul", [centred, centred]), axes)
        std = ctx.add("Sqrt", [ctx.add("Add", [var, ctx.scalar(eps)])])
        ctx.add("Div", [centred, std], ctx.output(0))


def stored_stats(mean_sum: np.ndarray, var_sum: np.ndarray, scale_factor: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, variance)`` from BatchNorm's stored sums, in float32 as the runtime module computes them:
    both multiplied by ``1 / s`` (0 when ``s`` is 0, a freshly initialised layer)."""
    s = np.float32(np.asarray(scale_factor, dtype=np.float32).reshape(-1)[0])
    factor = np.float32(0) if s == 0 else np.float32(1) / s
    return (np.asarray(mean_sum, dtype=np.float32) * factor, np.asarray(var_sum, dtype=np.float32) * factor)


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


class _BroadcastSpec(LayerSpec):
    """Shape rules shared by Scale and Bias (one- or two-bottom form)."""

    bottoms = (1, 2)
    onnx_dynamic_sizes = True  # a learned operand with changing shape is refused by its parameter shapes

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

    def _per_channel(self, node: Any) -> bool:
        """One bottom, and a learned operand covering exactly axis 1 (what folding per channel needs)."""
        shape = node.in_shapes[0] if len(node.bottoms) == 1 and node.in_shapes else None
        if shape is None or len(shape) < 2 or not node.param_shapes:
            return False
        axis = node.attrs.axis + len(shape) if node.attrs.axis < 0 else node.attrs.axis
        return axis == 1 and tuple(node.param_shapes[0]) == (shape[1],)

    def operand_shape(self, node: Any, in_shapes: Sequence[Shape]) -> Shape:
        """The scale/bias operand's shape, learned or given by bottom 1 (that is also the bias blob's
        shape in a Scale with ``bias_term``)."""
        if len(in_shapes) > 1:
            return tuple(in_shapes[1])
        return _learned_operand_shape(self, node, tuple(in_shapes[0]), node.attrs.axis, node.attrs.num_axes)


@register
class Scale(_BroadcastSpec):
    type = "Scale"
    backward_reads = "forward"  # its Backward_cpu works from private copies its forward saved
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

    def module(self, node) -> Call:
        p = node.attrs
        learned = len(node.bottoms) == 1
        shapes = _blob_shapes(self, node, int(learned) + int(p.bias_term))
        args = (shapes[-1],) if shapes else ()  # weight and bias are both the operand's shape
        kwargs: dict[str, Any] = {} if p.axis == 1 else {"axis": p.axis}
        if p.bias_term:
            kwargs["bias"] = True
        if not learned:
            kwargs["learned"] = False
        return call("Scale", *args, **kwargs)

    def fillers(self, node) -> list[Filler | None]:
        p = node.attrs
        # Caffe's Scale starts as the identity: constant 1 unless a filler is given.
        weight = [_filler_or_constant(p, "filler", 1.0)] if len(node.bottoms) == 1 else []
        bias = [p.bias_filler if p.has("bias_filler") else None] if p.bias_term else []
        return weight + bias

    def per_channel_affine(self, node):
        """The learned one-bottom form over axis 1 alone: ``x * weight (+ bias)``."""
        if not self._per_channel(node):
            return None
        return ChannelAffine(multiplier="weight", offset="bias" if node.attrs.bias_term else None)

    def node_blob_names(self, node) -> tuple[str, ...]:
        """``weight`` (one-bottom form only), then ``bias`` (with ``bias_term``)."""
        return (("weight",) if len(node.bottoms) == 1 else ()) + (("bias",) if node.attrs.bias_term else ())

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

    def module(self, node) -> Call:
        learned = len(node.bottoms) == 1
        args = (_blob_shapes(self, node, 1)[0],) if learned else ()
        return call("Bias", *args, **({} if node.attrs.axis == 1 else {"axis": node.attrs.axis}))

    def fillers(self, node) -> list[Filler | None]:
        p = node.attrs
        return [p.filler if p.has("filler") else None] if len(node.bottoms) == 1 else []

    def per_channel_affine(self, node):
        """The learned one-bottom form over axis 1 alone: ``x + bias``."""
        return ChannelAffine(offset="bias") if self._per_channel(node) else None

    def to_onnx(self, node, ctx):
        operand = self.onnx_operand(node, ctx, 0 if ctx.num_inputs == 1 else None)
        ctx.add("Add", [ctx.input(0), operand], ctx.output(0))


# -- Normalize (SSD fork) ----------------------------------------------------------------------------------
@register
class Normalize(LayerSpec):
    type = "Normalize"
    blob_names = ("weight",)
    family = FAMILY
    onnx_dynamic_sizes = True  # reductions over axes, a per-channel weight
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

    def module(self, node) -> Call:
        p = node.attrs
        _blob_shapes(self, node, 1)
        kwargs: dict[str, Any] = {}
        if not p.across_spatial:
            kwargs["across_spatial"] = False
        if not p.channel_shared:
            kwargs["channel_shared"] = False
        if short_float(p.eps) != 1e-10:
            kwargs["eps"] = short_float(p.eps)
        return call("Normalize", node.in_shapes[0][1], **kwargs)

    def fillers(self, node) -> list[Filler]:
        # SSD's default scale filler is constant 1 (SSD nets set 20 explicitly).
        return [_filler_or_constant(node.attrs, "scale_filler", 1.0)]

    def to_onnx(self, node, ctx):
        """``x / sqrt(sum(x^2) + eps) * weight``, summing over C*H*W (across_spatial) or over C."""
        p, x = node.attrs, ctx.input(0)
        rank = len(ctx.in_shape(0))
        squares = ctx.reduce("ReduceSumSquare", x, range(1, rank) if p.across_spatial else [1])
        norm = ctx.add("Sqrt", [ctx.add("Add", [squares, ctx.scalar(p.eps)])])
        weight = ctx.broadcast_const(ctx.param(0), 1, rank, "weight")
        ctx.add("Mul", [ctx.add("Div", [x, norm]), weight], ctx.output(0))
