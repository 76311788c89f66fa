"""SENet ports (e.g. hujie-frank's SENet and MobileNetV3 / SE ports in Caffe): Axpy, ``a * x + y`` with a
per-channel scale ``a`` of shape ``(N, C, 1, 1)`` (squeeze-and-excitation's reweighting fused with the residual
add).

Written as a third-party plugin: public plugin API only, the torch helper in :mod:`.senet_nn`.
"""

from __future__ import annotations

from prototxt2py.layers import LayerSpec, call, count, register

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.senet_nn"


@register
class Axpy(LayerSpec):
    type = "Axpy"
    bottoms = (3, 3)
    family = FAMILY
    summary = "a * x + y with a per-channel scale a (N, C, 1, 1) (SENet ports)"

    def infer_shapes(self, node, in_shapes):
        a, x, y = in_shapes
        if len(x) < 2 or len(a) < 2 or tuple(a[:2]) != tuple(x[:2]) or count(a) != x[0] * x[1]:
            raise self.fail(node, f"scale {tuple(a)} must be (N, C, 1, 1) for x {tuple(x)}")
        if tuple(y) != tuple(x):
            raise self.fail(node, f"y {tuple(y)} must have the shape of x {tuple(x)}")
        return [tuple(x)]

    def macs(self, node, in_shapes, out_shapes):
        return count(out_shapes[0])

    def module(self, node):
        return call(f"{NN}:Axpy")

    def to_onnx(self, node, ctx):
        a_shape, x_shape = ctx.in_shape(0), ctx.in_shape(1)
        scale = ctx.reshape(ctx.input(0), a_shape, [*x_shape[:2], *([1] * (len(x_shape) - 2))])
        ctx.add("Add", [ctx.add("Mul", [scale, ctx.input(1)]), ctx.input(2)], ctx.output(0))
