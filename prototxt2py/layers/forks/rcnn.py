"""Faster R-CNN / R-FCN (rbgirshick/caffe-fast-rcnn ``faster-rcnn``, daijifeng001/caffe-rfcn): ROIPooling,
PSROIPooling, SmoothL1Loss.

Written as a third-party plugin: public plugin API only, torch helpers in :mod:`.rcnn_nn`, PSROIPooling's ONNX
graph in :mod:`.ssd_onnx`. Quirks kept: ROI corners round half away from zero and a bin's maximum is its
first in row-major order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prototxt2py.layers import LayerSpec, Shape, call, count, legacy_shape, plain, register

from . import ssd_onnx

if TYPE_CHECKING:  # pragma: no cover
    from prototxt2py.ir import Node

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.rcnn_nn"


def _check_rois(spec: LayerSpec, node: Node, rois: Shape, features: Shape) -> int:
    if len(features) != 4:  # Caffe would pad a 3-axis blob to (num, channels, height, 1); no real net does
        raise spec.fail(node, f"{spec.type} needs a 4-axis (N, C, H, W) feature bottom, got shape {tuple(features)}")
    if not rois or count(rois, 1) < 5:
        raise spec.fail(node, f"rois {tuple(rois)} need 5 values per ROI (batch index, x1, y1, x2, y2)")
    return rois[0]


@register
class ROIPooling(LayerSpec):
    type = "ROIPooling"
    bottoms = (2, 2)
    family = FAMILY
    summary = "Fast R-CNN ROI max pooling to (num_rois, C, pooled_h, pooled_w); rois are (batch, x1, y1, x2, y2)"

    def attrs(self, layer):
        p = plain(layer.roi_pooling_param)
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise ValueError("roi_pooling_param.pooled_h and pooled_w must be > 0")
        return p

    def infer_shapes(self, node, in_shapes):
        _, c, _, _ = legacy_shape(in_shapes[0])
        return [(_check_rois(self, node, in_shapes[1], in_shapes[0]), c, node.attrs.pooled_h, node.attrs.pooled_w)]

    def module(self, node):
        p = node.attrs
        return call(f"{NN}:ROIPooling", p.pooled_h, p.pooled_w, p.spatial_scale)

    def to_onnx(self, node, ctx):
        """ONNX's ``MaxRoiPool`` is Fast R-CNN's layer (rounded corners, floor/ceil bins, empty bins 0)."""
        p = node.attrs
        rois = ctx.input(1)
        if len(ctx.in_shape(1)) != 2 or ctx.in_shape(1)[1] != 5:
            rois = ctx.reshape(rois, ctx.in_shape(1), [ctx.in_shape(1)[0], -1])
            rois = ctx.slice(rois, [0], [5], [1])
        ctx.add("MaxRoiPool", [ctx.input(0), rois], ctx.output(0), pooled_shape=[p.pooled_h, p.pooled_w],
                spatial_scale=p.spatial_scale)


@register
class PSROIPooling(LayerSpec):
    type = "PSROIPooling"
    bottoms = (2, 2)
    family = FAMILY
    summary = "R-FCN position-sensitive ROI average pooling to (num_rois, output_dim, group_size, group_size)"

    def attrs(self, layer):
        p = plain(layer.psroi_pooling_param)
        if p.output_dim <= 0 or p.group_size <= 0:
            raise ValueError("psroi_pooling_param.output_dim and group_size must be > 0")
        return p

    def infer_shapes(self, node, in_shapes):
        p = node.attrs
        _, c, _, _ = legacy_shape(in_shapes[0])
        if c != p.output_dim * p.group_size**2:
            raise self.fail(node, f"input has {c} channels, need output_dim x group_size^2 = "
                                  f"{p.output_dim * p.group_size**2}")
        return [(_check_rois(self, node, in_shapes[1], in_shapes[0]), p.output_dim, p.group_size, p.group_size)]

    def module(self, node):
        p = node.attrs
        return call(f"{NN}:PSROIPooling", p.output_dim, p.group_size, p.spatial_scale)

    def to_onnx(self, node, ctx):
        ssd_onnx.psroi_pooling(node, ctx)


@register
class SmoothL1Loss(LayerSpec):
    type = "SmoothL1Loss"
    bottoms = (2, 4)
    is_loss = True
    family = FAMILY
    summary = "Faster R-CNN smooth L1 (sigma), optional inside/outside weights (4 bottoms), divided by num"

    def infer_shapes(self, node, in_shapes):
        if len(in_shapes) == 3:
            raise self.fail(node, "SmoothL1Loss takes 2 bottoms, or 4 with both inside and outside weights")
        first = legacy_shape(in_shapes[0])
        for i, s in enumerate(in_shapes[1:], 1):
            if legacy_shape(s)[1:] != first[1:] or (i == 1 and s[0] != first[0]):
                raise self.fail(node, f"bottom {i} {tuple(s)} does not match bottom 0 {tuple(in_shapes[0])}")
        return [()]

    def module(self, node):
        sigma = node.attrs.sigma
        return call(f"{NN}:SmoothL1Loss", **({} if sigma == 1.0 else {"sigma": sigma}))
