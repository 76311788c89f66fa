"""Mobile-net ports: ConvolutionDepthwise (yonghenglh6's depthwise layer of MobileNet ports; alias
DepthwiseConvolution) and ShuffleChannel (ShuffleNet ports, farmingyard/ShuffleNet).

Written as a third-party plugin: public plugin API only (ConvolutionDepthwise subclasses the public built-in
Convolution spec), the torch helper in :mod:`.mobile_nn`; stock ``nn.Conv2d``/``nn.ChannelShuffle`` where
they are exactly the fork's computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from prototxt2py.layers import LayerSpec, call, register
from prototxt2py.layers.conv import Convolution

if TYPE_CHECKING:  # pragma: no cover
    from prototxt2py.ir import Node

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.mobile_nn"


@register
class ConvolutionDepthwise(Convolution):
    """One filter per input channel: Convolution with ``group = num_output = C_in`` (the fork ignores
    ``num_output`` and ``group``); weight ``(C, 1, kh, kw)``."""

    type = "ConvolutionDepthwise"
    aliases = ("DepthwiseConvolution",)
    bottoms = (1, 1)
    tops = (1, 1)
    family = FAMILY
    summary = "depthwise convolution (MobileNet ports): Convolution with group = num_output = input channels"

    def attrs(self, layer):
        if layer.convolution_param.num_output <= 0:  # the fork never reads num_output; the conv attrs need one
            message = getattr(layer, "message", layer)  # a LayerSource's LayerParameter
            copy = type(message)()
            copy.CopyFrom(message)
            copy.convolution_param.num_output = 1
            layer = copy
        return super().attrs(layer)

    def _grouped(self, node: Node, shape: Sequence[int]) -> Node:
        """The node as the Convolution it is: ``group = num_output = `` the input's channels."""
        c = shape[self.geometry(node, shape)[0]]
        return replace(node, attrs=replace(node.attrs, group=c, num_output=c))

    def infer_shapes(self, node, in_shapes):
        return super().infer_shapes(self._grouped(node, in_shapes[0]), in_shapes)

    def param_shapes(self, node, in_shapes):
        return super().param_shapes(self._grouped(node, in_shapes[0]), in_shapes)

    def macs(self, node, in_shapes, out_shapes):
        return super().macs(self._grouped(node, in_shapes[0]), in_shapes, out_shapes)

    def to_onnx(self, node, ctx):
        return super().to_onnx(self._grouped(node, ctx.in_shape(0)), ctx)

    def plain_convolution(self, node, in_shape):
        return super().plain_convolution(self._grouped(node, in_shape), in_shape)

    def module(self, node):
        c = node.param_shapes[0][0]  # weight (C, 1, kh, kw)
        return super().module(replace(node, attrs=replace(node.attrs, group=c, num_output=c)))




@register
class ShuffleChannel(LayerSpec):
    type = "ShuffleChannel"
    family = FAMILY
    summary = "ShuffleNet channel shuffle: (g, C/g) channel grid transposed (shuffle_channel_param.group)"

    def infer_shapes(self, node, in_shapes):
        x = in_shapes[0]
        g = node.attrs.group
        if len(x) < 2 or g <= 0 or x[1] % g:
            raise self.fail(node, f"channels of {tuple(x)} not divisible by group {g}")
        return [tuple(x)]

    def module(self, node):
        """``nn.ChannelShuffle`` (the same grid transpose) where it accepts the blob: more than two axes."""
        if len(node.in_shapes[0]) > 2:
            return call("nn.ChannelShuffle", node.attrs.group)
        return call(f"{NN}:ShuffleChannel", node.attrs.group)

    def to_onnx(self, node, ctx):
        shape = ctx.in_shape(0)
        g = node.attrs.group
        grid = [shape[0], g, shape[1] // g, *shape[2:]]
        x = ctx.reshape(ctx.input(0), shape, grid)
        x = ctx.add("Transpose", [x], perm=[0, 2, 1, *range(3, len(grid))])
        ctx.reshape(x, [shape[0], shape[1] // g, g, *shape[2:]], shape, ctx.output(0))
