"""Elementwise (neuron) layers: activations, Power/Exp/Log, PReLU, Threshold, Clip, Dropout.

Every layer here maps a blob to a blob of the same shape, so the default ``infer_shapes`` applies, and all of
them may run in place (top == bottom): the IR gives the top a new value, the modules return new tensors.

Caffe's backward passes are matched by choosing torch ops whose autograd agrees with Caffe at the kinks:
``relu``/``leaky_relu`` and ``prelu`` take the positive branch only for ``x > 0`` (Caffe's ``x > 0`` test),
``abs`` has sign(0) = 0 as ``caffe_cpu_sign``, ``clamp`` passes the gradient on the closed interval
``[min, max]`` as ClipLayer, ``relu6`` (hardtanh) only on the open interval ``(0, 6)`` as the MobileNet-SSD
ReLU6 layer, and ``elu`` uses the ``alpha * exp(x)`` branch for ``x <= 0``. Threshold has no gradient (Caffe's
ThresholdLayer has no backward).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .base import LayerSpec, Shape, register
from .torch_util import CaffeLayer

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "elementwise"


class Elementwise(CaffeLayer):
    """A parameter-free elementwise layer: ``fn`` is a torch function (or a ``functools.partial`` of one, so
    the module stays picklable and traceable by ``torch.fx``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        if isinstance(self.fn, functools.partial):
            args = ", ".join(f"{k}={v}" for k, v in self.fn.keywords.items())
            return f"{self.fn.func.__name__}, {args}"
        return getattr(self.fn, "__name__", "")


class _ElementwiseSpec(LayerSpec):
    """Shared defaults of the neuron layers: one bottom, one top, same shape."""

    family = FAMILY


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

    def build_torch(self, node: Node) -> torch.nn.Module:
        slope = float(node.attrs.negative_slope)
        if slope == 0.0:
            return Elementwise(torch.relu)
        return Elementwise(functools.partial(F.leaky_relu, negative_slope=slope))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        slope = float(node.attrs.negative_slope)
        onnx_chain(ctx, [("Relu", [], {})] if slope == 0.0 else [("LeakyRelu", [], {"alpha": slope})])


@register
class ReLU6(_ElementwiseSpec):
    type = "ReLU6"
    layout_agnostic = True
    summary = "min(max(x, 0), 6) (MobileNet-SSD fork); gradient only on the open interval (0, 6)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Elementwise(F.relu6)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Clip", [ctx.scalar(0.0), ctx.scalar(6.0)], {})])


@register
class Sigmoid(_ElementwiseSpec):
    type = "Sigmoid"
    layout_agnostic = True
    summary = "1 / (1 + exp(-x))"

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Elementwise(torch.sigmoid)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Sigmoid", [], {})])


@register
class TanH(_ElementwiseSpec):
    type = "TanH"
    layout_agnostic = True
    summary = "tanh(x)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Elementwise(torch.tanh)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Tanh", [], {})])


@register
class AbsVal(_ElementwiseSpec):
    type = "AbsVal"
    layout_agnostic = True
    summary = "|x| (gradient sign(x), 0 at 0)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        return Elementwise(torch.abs)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Abs", [], {})])


@register
class BNLL(_ElementwiseSpec):
    type = "BNLL"
    layout_agnostic = True
    summary = "binomial normal log likelihood log(1 + exp(x)) (softplus)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        # softplus switches to the identity above x = 20, where Caffe's x + log(1 + exp(-x)) is x in float32.
        return Elementwise(F.softplus)

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

    def build_torch(self, node: Node) -> torch.nn.Module:
        return ThresholdModule(float(node.attrs.threshold))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_chain(ctx, [("Greater", [ctx.scalar(float(node.attrs.threshold))], {}), ("Cast", [], {"to": ctx.FLOAT})])


class ThresholdModule(CaffeLayer):
    """Caffe compares strictly (``x > t``); the result is a float blob and carries no gradient."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


# -- parametrised activations -----------------------------------------------------------------------------
@register
class ELU(_ElementwiseSpec):
    type = "ELU"
    layout_agnostic = True
    summary = "x if x > 0 else alpha * (exp(x) - 1) (times lambda where the NVCaffe field is set)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        p = node.attrs
        return ELUModule(float(p.alpha), float(getattr(p, "lambda", 1.0)))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        m = ctx.module
        steps: list[OnnxStep] = [("Elu", [], {"alpha": m.alpha})]
        onnx_chain(ctx, steps + ([("Mul", [ctx.scalar(m.scale)], {})] if m.scale != 1.0 else []))


class ELUModule(CaffeLayer):
    """ELU; NVCaffe's ``lambda`` scales the whole output (SELU with alpha 1.6733, lambda 1.0507)."""

    def __init__(self, alpha: float, scale: float = 1.0):
        super().__init__()
        self.alpha = alpha
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.elu(x, self.alpha)
        return y if self.scale == 1.0 else y * self.scale

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lambda={self.scale}"


@register
class Swish(_ElementwiseSpec):
    type = "Swish"
    layout_agnostic = True
    summary = "x * sigmoid(beta * x)"

    def build_torch(self, node: Node) -> torch.nn.Module:
        beta = float(node.attrs.beta)
        return Elementwise(F.silu) if beta == 1.0 else SwishModule(beta)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``x * sigmoid(beta * x)``, as Caffe computes it."""
        beta, x = float(node.attrs.beta), ctx.input(0)
        gate = ctx.add("Sigmoid", [x if beta == 1.0 else ctx.add("Mul", [x, ctx.scalar(beta)])])
        ctx.add("Mul", [x, gate], ctx.output(0))


class SwishModule(CaffeLayer):
    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register
class Clip(_ElementwiseSpec):
    type = "Clip"
    layout_agnostic = True
    summary = "max(min, min(x, max)); gradient passes on the closed interval [min, max]"

    def attrs(self, layer: Any) -> Any:
        p = super().attrs(layer)
        if not (p.HasField("min") and p.HasField("max")):
            raise ValueError("clip_param needs both min and max")
        return p

    def build_torch(self, node: Node) -> torch.nn.Module:
        return ClipModule(float(node.attrs.min), float(node.attrs.max))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``Clip``; with min > max, Caffe's order (``min(x, max)`` first), which ONNX leaves undefined."""
        lo, hi = ctx.scalar(float(node.attrs.min)), ctx.scalar(float(node.attrs.max))
        if node.attrs.min <= node.attrs.max:
            onnx_chain(ctx, [("Clip", [lo, hi], {})])
        else:
            onnx_chain(ctx, [("Min", [hi], {}), ("Max", [lo], {})])


class ClipModule(CaffeLayer):
    """Caffe applies ``min(x, max)`` first, then ``max(min, .)``: with min > max every output is ``min``
    (``torch.clamp`` would give ``max``), so that case clamps in Caffe's order."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo = lo
        self.hi = hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo <= self.hi:
            return torch.clamp(x, self.lo, self.hi)
        return torch.clamp(torch.clamp(x, max=self.hi), min=self.lo)

    def extra_repr(self) -> str:
        return f"min={self.lo}, max={self.hi}"


# -- Power / Exp / Log ------------------------------------------------------------------------------------
@register
class Power(_ElementwiseSpec):
    type = "Power"
    layout_agnostic = True
    summary = "(shift + scale * x) ^ power"

    def build_torch(self, node: Node) -> torch.nn.Module:
        p = node.attrs
        return PowerModule(float(p.power), float(p.scale), float(p.shift))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``(shift + scale * x) ^ power`` step by step; Caffe's constant case is the constant expanded to the
        input's shape (read at run time, so any batch size works)."""
        m = ctx.module
        if m.constant is not None:
            shape = ctx.add("Shape", [ctx.input(0)])
            ctx.add("Expand", [ctx.scalar(m.constant), shape], ctx.output(0))
            return
        steps = onnx_scale_shift(ctx, m.scale, m.shift)
        onnx_chain(ctx, steps + ([("Pow", [ctx.scalar(m.power)], {})] if m.power != 1.0 else []))


class PowerModule(CaffeLayer):
    """``(shift + scale * x) ^ power``. When ``power * scale == 0`` Caffe ignores the input: the output is
    the constant ``shift ^ power`` (1 for power 0) and the bottom gradient is 0."""

    def __init__(self, power: float, scale: float, shift: float):
        super().__init__()
        self.power = power
        self.scale = scale
        self.shift = shift
        self.constant = None if power * scale != 0.0 else 1.0 if power == 0.0 else _powf(shift, power)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.constant is not None:
            return torch.full_like(x, self.constant)
        y = x if self.scale == 1.0 else x * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        return y if self.power == 1.0 else torch.pow(y, self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


def _powf(base: float, exponent: float) -> float:
    """``base ^ exponent`` in float32 as Caffe's ``pow`` on Dtype: overflow gives inf, 0^-1 inf and (-2)^0.5
    nan, where Python's ``**`` would raise or go complex."""
    return float(torch.tensor(base, dtype=torch.float32).pow(exponent))


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

    def build_torch(self, node: Node) -> torch.nn.Module:
        p = node.attrs
        inner = _log_base(self.type, p.base) * p.scale
        if p.shift == 0.0:
            outer = 1.0
        elif p.base == -1.0:
            outer = float(torch.tensor(p.shift, dtype=torch.float32).exp())
        else:
            outer = _powf(p.base, p.shift)
        return ExpModule(inner, outer)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Caffe's ``outer * exp(inner * x)``."""
        m = ctx.module
        steps: list[OnnxStep] = [("Mul", [ctx.scalar(m.inner_scale)], {})] if m.inner_scale != 1.0 else []
        steps.append(("Exp", [], {}))
        onnx_chain(ctx, steps + ([("Mul", [ctx.scalar(m.outer_scale)], {})] if m.outer_scale != 1.0 else []))


class ExpModule(CaffeLayer):
    """Caffe's factorisation ``base^(shift + scale*x) = base^shift * exp(log(base) * scale * x)``."""

    def __init__(self, inner_scale: float, outer_scale: float):
        super().__init__()
        self.inner_scale = inner_scale
        self.outer_scale = outer_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner_scale == 1.0 else x * self.inner_scale)
        return y if self.outer_scale == 1.0 else y * self.outer_scale

    def extra_repr(self) -> str:
        return f"inner_scale={self.inner_scale}, outer_scale={self.outer_scale}"


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

    def build_torch(self, node: Node) -> torch.nn.Module:
        p = node.attrs
        return LogModule(float(p.scale), float(p.shift), 1.0 / _log_base(self.type, p.base))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Caffe's ``log(x * scale + shift) * (1 / ln(base))``."""
        m = ctx.module
        steps = [*onnx_scale_shift(ctx, m.scale, m.shift), ("Log", [], {})]
        onnx_chain(ctx, steps + ([("Mul", [ctx.scalar(m.base_scale)], {})] if m.base_scale != 1.0 else []))


class LogModule(CaffeLayer):
    def __init__(self, scale: float, shift: float, base_scale: float):
        super().__init__()
        self.scale = scale
        self.shift = shift
        self.base_scale = base_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.scale == 1.0 else x * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        y = torch.log(y)
        return y if self.base_scale == 1.0 else y * self.base_scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"


# -- PReLU ------------------------------------------------------------------------------------------------
@register
class PReLU(_ElementwiseSpec):
    type = "PReLU"
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

    def build_torch(self, node: Node) -> torch.nn.Module:
        p = node.attrs
        if node.param_shapes:
            shape = node.param_shapes[0]
        elif p.channel_shared:
            shape = ()
        else:
            raise self.fail(node, "PReLU needs the number of input channels, but the input shape is unknown")
        return PReLUModule(shape, p.filler if p.HasField("filler") else None)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """``PRelu`` with the slopes as ``(C, 1, ...)`` (or a scalar when shared), broadcasting along axis 1."""
        slope = ctx.broadcast_const(ctx.param(0), 1, len(ctx.in_shape(0)), "slope")
        onnx_chain(ctx, [("PRelu", [slope], {})])


class PReLUModule(CaffeLayer):
    """Slopes in ``weight`` with Caffe's blob shape, ``(C,)`` or ``()``; the default filler is constant
    0.25, as in Caffe (not the zero filler of other layers)."""

    def __init__(self, shape: Shape, filler: Any | None):
        super().__init__()
        self.add_blob("weight", shape, filler)
        if filler is None:
            with torch.no_grad():
                self.weight.fill_(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.prelu broadcasts a one-element weight over every channel; its 0-axis form needs a reshape.
        return F.prelu(x, self.weight.reshape(-1))


# -- Dropout ----------------------------------------------------------------------------------------------
@register
class Dropout(_ElementwiseSpec):
    type = "Dropout"
    layout_agnostic = True
    summary = "inverted dropout: zero with dropout_ratio and scale by 1/(1-ratio) in TRAIN, identity in TEST"

    def build_torch(self, node: Node) -> torch.nn.Module:
        p = node.attrs
        return DropoutModule(
            float(p.dropout_ratio),
            scale_train=bool(getattr(p, "scale_train", True)),
            sample_test=bool(getattr(p, "sample_weights_test", False)),
        )

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """Identity at test time (times ``1 - ratio`` without ``scale_train``); random masks (TRAIN, or
        SegNet's ``sample_weights_test``) have no deterministic ONNX form."""
        m = ctx.module
        if ctx.training or m.sample_test:
            ctx.unsupported("dropout samples random masks here (TRAIN phase or sample_weights_test)")
        onnx_chain(ctx, [] if m.scale_train else [("Mul", [ctx.scalar(1.0 - m.ratio)], {})])


class DropoutModule(CaffeLayer):
    """Caffe's dropout, by phase (``self.training``).

    ``scale_train: false`` (Faster R-CNN/R-FCN forks) keeps the kept units unscaled in training and scales by
    ``1 - ratio`` at test instead. ``sample_weights_test`` (SegNet) samples masks at test time too (Monte
    Carlo dropout).
    """

    def __init__(self, ratio: float, scale_train: bool = True, sample_test: bool = False):
        super().__init__()
        self.ratio = ratio
        self.scale_train = scale_train
        self.sample_test = sample_test

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.sample_test:
            if self.scale_train:
                return F.dropout(x, self.ratio, training=True)
            return x * torch.empty_like(x).bernoulli_(1.0 - self.ratio)
        return x if self.scale_train else x * (1.0 - self.ratio)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, scale_train={self.scale_train}, sample_test={self.sample_test}"
