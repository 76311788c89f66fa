"""PSPNet / DeepLab (hszhao/PSPNet, DeepLab's caffe): Interp -- bilinear with aligned corners after an optional
crop (``pad_beg``/``pad_end`` <= 0), sized by ``height``/``width``, ``zoom_factor`` or ``shrink_factor``.

Written as a third-party plugin: public plugin API only, the torch helper in :mod:`.pspnet_nn`; where a
fixed size and no crop make it ``nn.Upsample``/ONNX ``Resize`` exactly, those are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prototxt2py.layers import LayerSpec, call, count, legacy_shape, plain, register

from ...lazy_numpy import np

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.pspnet_nn"


@dataclass(frozen=True)
class InterpAttrs:
    rule: str  # "shrink", "zoom", "size" or "shrink_zoom": which fields decide (Caffe's order of tests)
    height: int
    width: int
    zoom: int
    shrink: int
    pad_beg: int  # <= 0: crop
    pad_end: int


def _interp_size(a: InterpAttrs, h_in: int, w_in: int) -> tuple[int, int, int, int]:
    """(effective input h, w after cropping, output h, w), PSPNet's ``InterpLayer::Reshape``."""
    h_eff, w_eff = h_in + a.pad_beg + a.pad_end, w_in + a.pad_beg + a.pad_end
    if a.rule == "size":
        h, w = a.height, a.width
    else:
        h, w = h_eff, w_eff
        if a.rule in ("shrink", "shrink_zoom"):
            h, w = (h - 1) // a.shrink + 1, (w - 1) // a.shrink + 1
        if a.rule in ("zoom", "shrink_zoom"):
            h, w = h + (h - 1) * (a.zoom - 1), w + (w - 1) * (a.zoom - 1)
    return h_eff, w_eff, h, w


@register
class Interp(LayerSpec):
    type = "Interp"
    family = FAMILY
    onnx_dynamic_sizes = True  # output size computed from the run-time input size when it changes
    summary = "bilinear resize, aligned corners (PSPNet/DeepLab): height/width, zoom_factor, shrink_factor, crop"

    def attrs(self, layer):
        p = plain(layer.interp_param)
        if p.pad_beg > 0 or p.pad_end > 0:
            raise ValueError("Interp only supports pad_beg/pad_end <= 0 (cropping)")
        shrink, zoom = p.has("shrink_factor"), p.has("zoom_factor")
        if shrink and not zoom:
            rule = "shrink"
        elif zoom and not shrink:
            rule = "zoom"
        elif p.has("height") and p.has("width"):
            rule = "size"
        elif shrink and zoom:
            rule = "shrink_zoom"
        else:
            raise ValueError("interp_param needs zoom_factor, shrink_factor, or height and width")
        if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
            raise ValueError("zoom_factor and shrink_factor must be >= 1")
        return InterpAttrs(rule, p.height, p.width, p.zoom_factor, p.shrink_factor, p.pad_beg, p.pad_end)

    def infer_shapes(self, node, in_shapes):
        if len(in_shapes[0]) != 4:  # Caffe would read it as (num, channels, height, width), 1 for missing axes;
            # no real net feeds Interp anything but an image blob, and the runtime/ONNX forms need 4 axes
            raise self.fail(node, f"Interp needs a 4-axis (N, C, H, W) bottom, got shape {tuple(in_shapes[0])}")
        n, c, h_in, w_in = legacy_shape(in_shapes[0])
        h_eff, w_eff, h, w = _interp_size(node.attrs, h_in, w_in)
        if min(h_eff, w_eff, h, w) <= 0:
            raise self.fail(node, f"Interp of {h_in}x{w_in} gives input {h_eff}x{w_eff}, output {h}x{w}: "
                                  "sizes must be positive")
        return [(n, c, h, w)]

    def macs(self, node, in_shapes, out_shapes):
        return 4 * count(out_shapes[0])

    def module(self, node):
        """``nn.Upsample`` (bilinear, aligned corners) to a fixed size without a crop; else :class:`Interp`,
        which crops and derives the size from the input's."""
        a: InterpAttrs = node.attrs
        if a.rule == "size" and a.pad_beg == a.pad_end == 0:
            return call("nn.Upsample", size=(a.height, a.width), mode="bilinear", align_corners=True)
        given = {
            "size": (a.height, a.width) if a.rule == "size" else None,
            "zoom_factor": a.zoom if a.rule in ("zoom", "shrink_zoom") and a.zoom != 1 else None,
            "shrink_factor": a.shrink if a.rule in ("shrink", "shrink_zoom") and a.shrink != 1 else None,
            "pad_beg": a.pad_beg or None,
            "pad_end": a.pad_end or None,
        }
        return call(f"{NN}:Interp", **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        """Slice (the crop), then ``Resize`` linear with ``align_corners`` (a 1-pixel output reads pixel 0)."""
        a: InterpAttrs = node.attrs
        if ctx.dynamic_sizes and ctx.sizes_vary:
            _interp_sized(ctx, a)
            return
        n, c, h_in, w_in = legacy_shape(ctx.in_shape(0))
        h_eff, w_eff, h, w = _interp_size(a, h_in, w_in)
        x = ctx.input(0)
        if (h_eff, w_eff) != (h_in, w_in):
            x = ctx.slice(x, [-a.pad_beg] * 2, [-a.pad_beg + h_eff, -a.pad_beg + w_eff], [2, 3])
        ctx.add("Resize", [x, "", "", _onnx_sizes(ctx, x, (h, w))], ctx.output(0), mode="linear",
                coordinate_transformation_mode="align_corners")


def _interp_sized(ctx: Any, a: InterpAttrs) -> None:
    """Interp with symbolic height/width (``--dynamic``): the crop as a Slice counted from both ends, and
    PSPNet's size rule (shrink ``(h - 1) // s + 1``, then zoom ``h + (h - 1) * (z - 1)``) with ONNX ops on the
    cropped size; a fixed ``height``/``width`` stays constant."""
    if len(ctx.in_shape(0)) != 4:
        ctx.fixed_sizes_only("Interp of a blob without 4 axes with symbolic sizes")
    x = ctx.input(0)
    if a.pad_beg or a.pad_end:
        x = ctx.slice(x, [-a.pad_beg] * 2, [a.pad_end or np.iinfo(np.int64).max] * 2, [2, 3])
    if a.rule == "size":
        hw: Any = ctx.ints([a.height, a.width], "hw")
    else:
        hw = ctx.dims(x, 2, 4)
        if a.rule in ("shrink", "shrink_zoom"):
            one = ctx.ints([1, 1], "one")
            hw = ctx.add("Add", [ctx.add("Div", [ctx.add("Sub", [hw, one]), ctx.ints([a.shrink] * 2, "shrink")]),
                                 one])
        if a.rule in ("zoom", "shrink_zoom") and a.zoom != 1:
            grown = ctx.add("Mul", [ctx.add("Sub", [hw, ctx.ints([1, 1], "one")]), ctx.ints([a.zoom - 1] * 2, "zoom")])
            hw = ctx.add("Add", [hw, grown])
    sizes = ctx.concat_ints([ctx.dims(x, 0, 2), hw], "sizes")
    ctx.add("Resize", [x, "", "", sizes], ctx.output(0), mode="linear",
            coordinate_transformation_mode="align_corners")


def _onnx_sizes(ctx: Any, x: str, hw: tuple[int, int]) -> str:
    """``Resize``'s sizes input: N and C of ``x`` (read at run time with a dynamic batch), then ``hw``."""
    if not ctx.dynamic_batch:
        return ctx.ints([*ctx.in_shape(0)[:2], *hw], "sizes")
    nc = ctx.slice(ctx.add("Shape", [x]), [0], [2], [0])
    return ctx.add("Concat", [nc, ctx.ints(hw, "hw")], axis=0)
