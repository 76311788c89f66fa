"""HED (s9xie/hed): ImageLabelmapData, images and edge maps ``(N, 1, H, W)`` from a list of file pairs read
with ``image_data_param`` (a net input; its reader is :mod:`prototxt2py.data.label_map_data`), and the fork's
class-balanced ``SigmoidCrossEntropyLoss``.

HED changed ``SigmoidCrossEntropyLoss`` without renaming it: per image, the loss of edge pixels (target 1) is
weighted by the share of non-edge pixels and the loss of non-edge pixels (target 0) by the share of edge pixels,
summed and divided by the batch size; ``loss_param`` is not read. A net holding an ``ImageLabelmapData`` layer
(a type only HED has) was written for HED, so its ``SigmoidCrossEntropyLoss`` layers are HED's (a dialect,
:func:`~prototxt2py.layers.register_dialect`); elsewhere the type keeps BVLC's meaning.

Written as a third-party plugin: public plugin API only (it subclasses the public built-in specs); torch helpers
in :mod:`.hed_nn`.
"""

from __future__ import annotations

from prototxt2py.layers import call, register, register_dialect
from prototxt2py.layers.data import ImageData
from prototxt2py.layers.losses import SigmoidCrossEntropyLoss

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
        ctx.unsupported("HED's class-balanced SigmoidCrossEntropyLoss has no ONNX graph here; export the deploy "
                        "net (prototxt2py deploy)")
