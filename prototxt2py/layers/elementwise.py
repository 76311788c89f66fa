"""Elementwise (neuron) layers: activations, Power/Exp/Log, PReLU, Threshold, Clip, Dropout.

Every layer here maps a blob to a blob of the same shape, so the default ``infer_shapes`` applies, and all of
them may run in place (top == bottom): the IR gives the top a new value, the modules return new tensors.

Caffe's backward passes are matched by choosing torch ops whose autograd agrees with Caffe at the kinks:
``relu``/``leaky_relu`` and ``prelu`` take the positive branch only for ``x > 0`` (Caffe's ``x > 0`` test),
``abs`` has sign(0) = 0 as ``caffe_cpu_sign``, ``clamp`` passes the gradient on the closed interval
``[min, max]`` as ClipLayer, ``relu6`` (hardtanh) only on the open interval ``(0, 6)`` as the MobileNet-SSD
ReLU6 layer, and ``elu`` uses the ``alpha * exp(x)`` branch for ``x <= 0``. Threshold has no gradient (Caffe's
ThresholdLayer has no backward). A Power that ignores its input (power or scale 0) stays in the autograd graph
with a zero bottom gradient, as Caffe's backward sets it.

The modules are stock ``torch.nn`` classes where one is exactly Caffe's layer, else the helpers of
:mod:`prototxt2py.nn.elementwise`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..floatmath import powf
from ..plain import Filler
from .base import Call, LayerSpec, PostOp, Shape, call, register

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "elementwise"


class _ElementwiseSpec(LayerSpec):
    """Shared defaults of the neuron layers: one bottom, one top, same shape, plain attributes."""

    family = FAMILY
    onnx_dynamic_sizes = True  # elementwise: nothing depends on the size


#: One ONNX step of an elementwise chain: op type, inputs after the running value, attributes.
OnnxStep = tuple[str, list[str], dict[str, Any]]


def onnx_chain(ctx: Any, steps: Sequence[OnnxStep]) -> None:
    """Apply ``steps`` to the bottom in order, the last one writing the top (an Identity if there are none).
    The neuron layers' ONNX mappings are such chains, built in Caffe's order of operations."""
    x = ctx.input(0)
    steps = list(steps) or [("Identity", [], {})]
    for i, (op, extra, attrs) in enumerate(steps):
        x = ctx.add(op, [x, *extra], ctx.output(0) if i == len(steps) - 1 else None, **attrs)


def onnx_scale_shift(ctx: Any, scale: float, shift: float) -> list[OnnxStep]:
    """``x * scale + shift`` as Caffe's Power/Log compute it: each step only when it changes anything."""
    steps: list[OnnxStep] = []
    if scale != 1.0:
        steps.append(("Mul", [ctx.scalar(scale)], {}))
    if shift != 0.0:
        steps.append(("Add", [ctx.scalar(shift)], {}))
    return steps


# -- plain activations ------------------------------------------------------------------------------------
@register
class ReLU(_ElementwiseSpec):
    type = "ReLU"
    layout_agnostic = True
    summary = "max(x, 0) + negative_slope * min(x, 0) (leaky with relu_param.negative_slope)"

    def module(self, node: Node) -> Call:
        """``nn.ReLU``/``nn.LeakyReLU``: both take the positive branch only for ``x > 0``, as Caffe."""
        slope = node.attrs.negative_slope
        return call("nn.ReLU") if slope == 0.0 else call("nn.LeakyReLU", slope)

    def post_op(self, node: Node) -> PostOp:
        slope = float(node.attrs.negative_slope)
        return PostOp("relu") if slope == 0.0 else PostOp("leaky_relu", (slope,))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        slope = node.attrs.negative_slope
        onnx_chain(ctx, [("Relu", [], {})] if slope == 0.0 else [("LeakyRelu", [], {"alpha": slope})])


@register
class ReLU6(_ElementwiseSpec):
    type = "ReLU6"
    layout_agnostic = True
    summary = "min(max(x, 0), 6) (MobileNet-SSD fork); gradient only on the open interval (0, 6)"

    def module(self, node: Node) -> Call:
        return call("nn.ReLU6")

    def post_op(self, node: Node) -> PostOp:
        return PostOp("clamp", (0.0, 6.0))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Clip", [ctx.scalar(0.0), ctx.scalar(6.0)], {})])


@register
class Sigmoid(_ElementwiseSpec):
    type = "Sigmoid"
    layout_agnostic = True
    summary = "1 / (1 + exp(-x))"

    def module(self, node: Node) -> Call:
        return call("nn.Sigmoid")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Sigmoid", [], {})])


@register
class TanH(_ElementwiseSpec):
    type = "TanH"
    layout_agnostic = True
    summary = "tanh(x)"

    def module(self, node: Node) -> Call:
        return call("nn.Tanh")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Tanh", [], {})])


@register
class AbsVal(_ElementwiseSpec):
    type = "AbsVal"
    layout_agnostic = True
    summary = "|x| (gradient sign(x), 0 at 0)"

    def module(self, node: Node) -> Call:
        return call("AbsVal")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Abs", [], {})])


@register
class BNLL(_ElementwiseSpec):
    type = "BNLL"
    layout_agnostic = True
    summary = "binomial normal log likelihood log(1 + exp(x)) (softplus)"

    def module(self, node: Node) -> Call:
        # softplus switches to the identity above x = 20, where Caffe's x + log(1 + exp(-x)) is x in float32.
        return call("nn.Softplus")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Caffe's overflow-free form ``max(x, 0) + log(1 + exp(-|x|))`` (ONNX Softplus may overflow)."""
        x = ctx.input(0)
        tail = ctx.add("Log", [ctx.add("Add", [ctx.add("Exp", [ctx.add("Neg", [ctx.add("Abs", [x])])]),
                                               ctx.scalar(1.0)])])
        ctx.add("Add", [ctx.add("Relu", [x]), tail], ctx.output(0))


@register
class Threshold(_ElementwiseSpec):
    type = "Threshold"
    summary = "1 where x > threshold else 0 (no gradient)"

    def module(self, node: Node) -> Call:
        return call("BinaryThreshold", node.attrs.threshold)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Greater", [ctx.scalar(node.attrs.threshold)], {}), ("Cast", [], {"to": ctx.FLOAT})])


# -- parametrised activations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ELUAttrs:
    """``elu_param``: NVCaffe's ``lambda`` (a Python keyword, so not a generated field) is ``scale``."""

    alpha: float = 1.0
    scale: float = 1.0


@register
class ELU(_ElementwiseSpec):
    type = "ELU"
    layout_agnostic = True
    summary = "x if x > 0 else alpha * (exp(x) - 1) (times lambda where the NVCaffe field is set)"

    def attrs(self, layer: Any) -> ELUAttrs:
        p = layer.elu_param
        return ELUAttrs(float(p.alpha), float(getattr(p, "lambda", 1.0)))

    def module(self, node: Node) -> Call:
        """``nn.ELU`` (its ``x <= 0`` branch is Caffe's); :class:`ScaledELU` with a ``lambda``."""
        a = node.attrs
        if a.scale != 1.0:
            return call("ScaledELU", alpha=a.alpha, scale=a.scale)
        return call("nn.ELU") if a.alpha == 1.0 else call("nn.ELU", a.alpha)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        a = node.attrs
        steps: list[OnnxStep] = [("Elu", [], {"alpha": a.alpha})]
        onnx_chain(ctx, steps + ([("Mul", [ctx.scalar(a.scale)], {})] if a.scale != 1.0 else []))


@register
class Swish(_ElementwiseSpec):
    type = "Swish"
    backward_reads = "forward_input"  # a private sigmoid of the forward-time input, and the current top data
    layout_agnostic = True
    summary = "x * sigmoid(beta * x)"

    def module(self, node: Node) -> Call:
        beta = node.attrs.beta
        return call("nn.SiLU") if beta == 1.0 else call("Swish", beta)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``x * sigmoid(beta * x)``, as Caffe computes it."""
        beta, x = node.attrs.beta, ctx.input(0)
        gate = ctx.add("Sigmoid", [x if beta == 1.0 else ctx.add("Mul", [x, ctx.scalar(beta)])])
        ctx.add("Mul", [x, gate], ctx.output(0))


@register
class Clip(_ElementwiseSpec):
    type = "Clip"
    layout_agnostic = True
    summary = "max(min, min(x, max)); gradient passes on the closed interval [min, max]"

    def attrs(self, layer: Any) -> Any:
        p = super().attrs(layer)
        if not (p.has("min") and p.has("max")):
            raise ValueError("clip_param needs both min and max")
        return p

    def module(self, node: Node) -> Call:
        return call("Clip", node.attrs.min, node.attrs.max)

    def post_op(self, node: Node) -> PostOp | None:
        """A clamp when ``min <= max`` (else Caffe's order of ``min`` then ``max`` is no clamp)."""
        lo, hi = float(node.attrs.min), float(node.attrs.max)
        return PostOp("clamp", (lo, hi)) if lo <= hi else None

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``Clip``; with min > max, Caffe's order (``min(x, max)`` first), which ONNX leaves undefined. NaN gives
        ``min`` in Caffe (``std::max(min, std::min(x, max))``: both comparisons fail) and stays NaN in ONNX's
        ``Clip``/``Min``/``Max``, hence the ``Where``."""
        lo, hi = ctx.scalar(node.attrs.min), ctx.scalar(node.attrs.max)
        x = ctx.input(0)
        if node.attrs.min <= node.attrs.max:
            y = ctx.add("Clip", [x, lo, hi])
        else:
            y = ctx.add("Max", [ctx.add("Min", [x, hi]), lo])
        ctx.add("Where", [ctx.add("IsNaN", [x]), lo, y], ctx.output(0))


# -- Power / Exp / Log ------------------------------------------------------------------------------------
def _non_default(attrs: Any, **defaults: float) -> dict[str, float]:
    """The fields of ``attrs`` named in ``defaults`` whose value differs from the default there (the helpers'
    keyword arguments, so a module is written as briefly as a person would)."""
    return {name: getattr(attrs, name) for name, default in defaults.items() if getattr(attrs, name) != default}


def power_constant(power: float, scale: float, shift: float) -> float | None:
    """The constant top of a Power that ignores its input (``power * scale == 0``: ``shift ^ power``, 1 for
    power 0, in float32 as Caffe's ``pow`` on Dtype, so overflow is inf and (-2)^0.5 nan), else None."""
    if power * scale != 0.0:
        return None
    if power == 0.0:
        return 1.0
    return float(powf(shift, power))


@register
class Power(_ElementwiseSpec):
    type = "Power"
    layout_agnostic = True
    summary = "(shift + scale * x) ^ power"

    def module(self, node: Node) -> Call:
        return call("Power", **_non_default(node.attrs, power=1.0, scale=1.0, shift=0.0))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``(shift + scale * x) ^ power`` step by step; Caffe's constant case is the constant expanded to the
        input's shape (read at run time, so any batch size works)."""
        a = node.attrs
        constant = power_constant(a.power, a.scale, a.shift)
        if constant is not None:
            shape = ctx.add("Shape", [ctx.input(0)])
            ctx.add("Expand", [ctx.scalar(constant), shape], ctx.output(0))
            return
        steps = onnx_scale_shift(ctx, a.scale, a.shift)
        onnx_chain(ctx, steps + ([("Pow", [ctx.scalar(a.power)], {})] if a.power != 1.0 else []))


def _log_base(layer_type: str, base: float) -> float:
    """Natural log of an Exp/Log ``base``; -1 means e (log exactly 1). Caffe rejects other bases <= 0."""
    if base == -1.0:
        return 1.0
    if base <= 0.0:
        raise ValueError(f"{layer_type} base must be strictly positive (or -1 for e), got {base:g}")
    return math.log(base)


@register
class Exp(_ElementwiseSpec):
    type = "Exp"
    layout_agnostic = True
    summary = "base ^ (shift + scale * x), base -1 = e"

    def attrs(self, layer: Any) -> Any:
        p = super().attrs(layer)
        _log_base(self.type, p.base)
        return p

    def module(self, node: Node) -> Call:
        return call("Exp", **_non_default(node.attrs, base=-1.0, scale=1.0, shift=0.0))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Caffe's ``outer * exp(inner * x)`` with ``inner = log(base) * scale``, ``outer = base ^ shift``."""
        a = node.attrs
        inner = _log_base(self.type, a.base) * a.scale
        try:
            outer = 1.0 if a.shift == 0.0 else math.exp(a.shift) if a.base == -1.0 else a.base**a.shift
        except OverflowError:
            outer = math.inf
        steps: list[OnnxStep] = [("Mul", [ctx.scalar(inner)], {})] if inner != 1.0 else []
        steps.append(("Exp", [], {}))
        onnx_chain(ctx, steps + ([("Mul", [ctx.scalar(outer)], {})] if outer != 1.0 else []))


@register
class Log(_ElementwiseSpec):
    type = "Log"
    layout_agnostic = True
    summary = "log_base(shift + scale * x), base -1 = e"

    def attrs(self, layer: Any) -> Any:
        p = super().attrs(layer)
        if _log_base(self.type, p.base) == 0.0:
            raise ValueError("Log base 1 has no logarithm")
        return p

    def module(self, node: Node) -> Call:
        return call("Log", **_non_default(node.attrs, base=-1.0, scale=1.0, shift=0.0))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Caffe's ``log(x * scale + shift) * (1 / ln(base))``."""
        a = node.attrs
        base_scale = 1.0 / _log_base(self.type, a.base)
        steps = [*onnx_scale_shift(ctx, a.scale, a.shift), ("Log", [], {})]
        onnx_chain(ctx, steps + ([("Mul", [ctx.scalar(base_scale)], {})] if base_scale != 1.0 else []))


# -- PReLU ------------------------------------------------------------------------------------------------
@register
class PReLU(_ElementwiseSpec):
    type = "PReLU"
    backward_reads = "forward"  # its Backward_cpu works from private copies its forward saved
    layout_agnostic = True
    blob_names = ("weight",)
    summary = "max(x, 0) + slope[c] * min(x, 0), one learned slope per channel (axis 1) or one shared"

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        if len(in_shapes[0]) < 2:
            raise self.fail(node, f"PReLU needs a bottom with at least 2 axes, got shape {tuple(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def param_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        # channel_shared: a 0-axis blob (Caffe's Blob(vector<int>(0))), else one slope per channel.
        return [()] if node.attrs.channel_shared else [(in_shapes[0][1],)]

    def module(self, node: Node) -> Call:
        """``nn.PReLU(C)`` (a ``(C,)`` slope along axis 1, Caffe's blob); :class:`SharedPReLU` keeps the shared
        slope as Caffe's 0-axis blob."""
        if node.attrs.channel_shared:
            return call("SharedPReLU")
        if not node.param_shapes:
            raise self.fail(node, "PReLU needs the number of input channels, but the input shape is unknown")
        return call("nn.PReLU", node.param_shapes[0][0])

    def fillers(self, node: Node) -> Sequence[Any]:
        """The file's filler, else Caffe's default constant 0.25 (not the zero filler of other layers)."""
        a = node.attrs
        return [a.filler if a.has("filler") else Filler(type="constant", value=0.25)]

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``PRelu`` with the slopes as ``(C, 1, ...)`` (or a scalar when shared), broadcasting along axis 1."""
        slope = ctx.broadcast_const(ctx.param(0), 1, len(ctx.in_shape(0)), "slope")
        onnx_chain(ctx, [("PRelu", [slope], {})])


# -- Dropout ----------------------------------------------------------------------------------------------
@register
class Dropout(_ElementwiseSpec):
    type = "Dropout"
    backward_reads = "forward"  # its Backward_cpu works from private copies its forward saved
    layout_agnostic = True
    summary = "inverted dropout: zero with dropout_ratio and scale by 1/(1-ratio) in TRAIN, identity in TEST"

    def attrs(self, layer: Any) -> Any:
        """Caffe's ``DCHECK``s (debug builds only) ask for a ratio in (0, 1); 0 is harmless (identity), a ratio
        of 1 or more scales by infinity or a negative number, so it is refused."""
        a = super().attrs(layer)
        if not 0.0 <= a.dropout_ratio < 1.0:
            raise ValueError(f"dropout_param.dropout_ratio must be in [0, 1), got {a.dropout_ratio}")
        return a

    def module(self, node: Node) -> Call:
        """``nn.Dropout`` (Caffe's inverted dropout, identity at test); :class:`ForkDropout` for the fork fields
        ``scale_train: false`` and ``sample_weights_test``."""
        a = node.attrs
        if a.scale_train and not a.sample_weights_test:
            return call("nn.Dropout", a.dropout_ratio)
        flags = {"scale_train": False} if not a.scale_train else {}
        if a.sample_weights_test:
            flags["sample_test"] = True
        return call("ForkDropout", a.dropout_ratio, **flags)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Identity at test time (times ``1 - ratio`` without ``scale_train``); random masks (TRAIN, or
        SegNet's ``sample_weights_test``) have no deterministic ONNX form."""
        a = node.attrs
        if ctx.training or a.sample_weights_test:
            ctx.unsupported("dropout samples random masks here (TRAIN phase or sample_weights_test)")
        onnx_chain(ctx, [] if a.scale_train else [("Mul", [ctx.scalar(1.0 - a.dropout_ratio)], {})])
