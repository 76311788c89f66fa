"""HED (s9xie/hed): ImageLabelmapData, images and edge maps ``(N, 1, H, W)`` from a list of file pairs read
with ``image_data_param`` (a net input; its reader is :mod:`prototxt2py.data.label_map_data`), and the fork's
class-balanced ``SigmoidCrossEntropyLoss``.

HED changed ``SigmoidCrossEntropyLoss`` without renaming it: per image, the loss of edge pixels (target 1) is
weighted by the share of non-edge pixels and the loss of non-edge pixels (target 0) by the share of edge pixels,
summed and divided by the batch size; ``loss_param`` is not read. A net holding an ``ImageLabelmapData`` layer
(a type only HED has) was written for HED, so its ``SigmoidCrossEntropyLoss`` layers are HED's (a dialect,
:func:`~prototxt2py.layers.register_dialect`) in the runtime, generated code and ONNX; elsewhere the type keeps
BVLC's meaning.

Written as a third-party plugin: public plugin API only (it subclasses the public built-in specs); torch helpers
in :mod:`.hed_nn`.
"""

from __future__ import annotations

from prototxt2py.layers import call, register, register_dialect
from prototxt2py.layers.data import ImageData
from prototxt2py.layers.losses import SigmoidCrossEntropyLoss
from prototxt2py.layers.onnx_losses import first_dim, per_sample

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.hed_nn"


@register
class ImageLabelmapData(ImageData):
    type = "ImageLabelmapData"
    param_field = "image_data_param"
    family = FAMILY
    summary = "HED: images and edge maps (N, 1, H, W) from a list of file pairs (image_data_param); a net input"

    def label_shape(self, a):
        return (a.batch, 1, a.height, a.width)


@register_dialect("ImageLabelmapData")
class BalancedSigmoidCrossEntropyLoss(SigmoidCrossEntropyLoss):
    """HED's ``SigmoidCrossEntropyLoss`` (in nets with an ``ImageLabelmapData`` layer)."""

    family = FAMILY
    summary = "HED: sigmoid cross-entropy with each image's edge / non-edge terms weighted by the other's share"

    def attrs(self, layer):
        return None  # the fork reads no loss_param

    def module(self, node):
        return call(f"{NN}:BalancedSigmoidCrossEntropyLoss")

    def to_onnx(self, node, ctx):
        """Per image (row of ``(num, rest)``): the stable term, its sums over edge and non-edge pixels, each times
        the other's share, summed over the images and divided by their number."""
        x, _ = per_sample(ctx, 0)
        t, _ = per_sample(ctx, 1)
        step = ctx.add("Cast", [ctx.add("GreaterOrEqual", [x, ctx.scalar(0.0)])], to=ctx.FLOAT)
        x_step = ctx.add("Mul", [x, step])
        soft = ctx.add("Log", [ctx.add("Add", [ctx.add("Exp", [ctx.add("Sub", [x, ctx.add("Add", [x_step, x_step])])]),
                                               ctx.scalar(1.0)])])
        per = ctx.add("Sub", [soft, ctx.add("Mul", [x, ctx.add("Sub", [t, step])])])  # the term, negated
        zero = ctx.scalar(0.0)
        sums, counts = [], []
        for value in (1.0, 0.0):
            mask = ctx.add("Equal", [t, ctx.scalar(value)])
            sums.append(ctx.reduce("ReduceSum", ctx.add("Where", [mask, per, zero]), [1]))
            counts.append(ctx.reduce("ReduceSum", ctx.add("Cast", [mask], to=ctx.FLOAT), [1]))
        total = ctx.add("Add", counts)
        edge = ctx.add("Div", [ctx.add("Mul", [sums[0], counts[1]]), total])
        plain = ctx.add("Div", [ctx.add("Mul", [sums[1], counts[0]]), total])
        loss = ctx.reduce("ReduceSum", ctx.add("Add", [edge, plain]), [0, 1], keepdims=False)
        ctx.add("Div", [loss, first_dim(ctx, ctx.input(0), ctx.in_shape(0)[0])], ctx.output(0))
