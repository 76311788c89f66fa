"""``Input``: the net's entry points (also what net-level ``input:`` fields are upgraded into)."""

from __future__ import annotations

from .base import LayerSpec, Unknowable, call, register


@register
class Input(LayerSpec):
    type = "Input"
    onnx_dynamic_sizes = True
    bottoms = (0, 0)
    tops = (1, None)
    family = "data"
    summary = "net input blobs with declared shapes (input_param.shape, one per top or one for all)"

    def infer_shapes(self, node, in_shapes):
        shapes = list(node.attrs.shape)
        if not shapes:
            raise Unknowable("Input layer declares no shape; pass --input NAME=D0,D1,...")
        if len(shapes) not in (1, len(node.tops)):
            raise self.fail(node, f"input_param has {len(shapes)} shapes for {len(node.tops)} tops")
        return [tuple(int(d) for d in shapes[0 if len(shapes) == 1 else i].dim) for i in range(len(node.tops))]


    def module(self, node):
        return call("NetInput", tuple(node.tops))

    def to_onnx(self, node, ctx):
        """The tops are graph inputs, which the exporter declares: nothing to compute."""
