"""FlowNet 2.0 (lmb-freiburg/flownet2, the FlowNet2 / -C / -S / -SD / -CS / -CSS models and DispNetC): the
layers of its deploy nets -- ``Correlation``, ``Correlation1D``, ``ChannelNorm``, ``FlowWarp``, ``Accum``,
``Resample`` and ``DataAugmentation``'s mean subtraction -- as the fork's CUDA kernels compute them (most have no
CPU code in the fork). In nets holding one of them, ``Eltwise`` also takes a single bottom (the fork's: ``SUM``
with a ``coeff`` scales it, how FlowNet2 nets scale images and flows).

What is not built in, each refused in one line: ``DataAugmentation`` with cropping (the random spatial, colour
and effect augmentation of training), ``Correlation``'s ``SUBTRACT`` type, ``Correlation1D``'s leftward
``single_direction`` (the fork reads past its padding), ``Resample``'s ``AREA`` type (fatal in the fork too); the
training-only ``L1Loss``, ``Downsample`` and data reader types have no spec. ``do_abs`` is ignored, as the fork's
kernels ignore it.

Written as a third-party plugin: public plugin API only; torch helpers in :mod:`.flownet_nn`, standard-ONNX
forms in :mod:`.flownet_onnx` (DataAugmentation's only once its mean is final: trained weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prototxt2py import limits
from prototxt2py.layers import LayerSpec, call, count, plain, register, register_dialect
from prototxt2py.layers.structure import Eltwise

from ...lazy_numpy import np
from . import flownet_onnx

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.flownet_nn"


def _image(spec: LayerSpec, node, shape, what: str) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise spec.fail(node, f"{what} must be a 4-axis (N, C, H, W) blob, got shape {tuple(shape)}")
    return tuple(int(d) for d in shape)


#: The most displacements a Correlation computes (one step, or ONNX node chain, each).
MAX_DISPLACEMENTS = 1 << 16


def _check_matrices(node, h: int, w: int, th: int, tw: int, what: str) -> None:
    """The two resizing matrices (``th x h`` and ``tw x w``, float32) the runtime and the ONNX form build."""
    limits.check_temporary(th * h + tw * w, f"{what}'s resizing matrices", layer=node.name, location=node.location)


@dataclass(frozen=True)
class CorrelationAttrs:
    pad: int
    kernel_size: int
    max_displacement: int
    stride1: int
    stride2: int
    x_steps: tuple[int, ...] | None = None  # Correlation1D: its horizontal displacements, in stride_2 steps

    def geometry(self, h: int, w: int) -> tuple[int, int, int]:
        """``(channels, top height, top width)`` for ``h x w`` bottoms (the fork's ``Reshape``; Correlation1D
        pads and borders only horizontally)."""
        kr = (self.kernel_size - 1) // 2
        tw = -(-(w + 2 * self.pad - 2 * (self.max_displacement + kr)) // self.stride1)
        if self.x_steps is not None:
            return len(self.x_steps), -(-(h - 2 * kr) // self.stride1), tw
        grid = 2 * (self.max_displacement // self.stride2) + 1
        return grid * grid, -(-(h + 2 * self.pad - 2 * (self.max_displacement + kr)) // self.stride1), tw


@register
class Correlation(LayerSpec):
    type = "Correlation"
    bottoms = (2, 2)
    family = FAMILY
    summary = ("FlowNet's correlation of two feature maps over a grid of displacements (FlowNet2 fork): one "
               "channel per displacement")

    def attrs(self, layer):
        p = plain(layer.correlation_param)
        for name in ("kernel_size", "max_displacement"):
            if not p.has(name):
                raise ValueError(f"correlation_param.{name} is required")
        if p.kernel_size % 2 == 0:
            raise ValueError(f"correlation_param.kernel_size must be odd, got {p.kernel_size}")
        if p.stride_1 < 1 or p.stride_2 < 1:
            raise ValueError(f"correlation_param.stride_1 and stride_2 must be at least 1, got {p.stride_1} and "
                             f"{p.stride_2}")
        if p.correlation_type != "MULTIPLY":
            raise ValueError(f"correlation_type {p.correlation_type} is not built in (MULTIPLY is)")
        return CorrelationAttrs(int(p.pad), int(p.kernel_size), int(p.max_displacement), int(p.stride_1),
                                int(p.stride_2))

    def infer_shapes(self, node, in_shapes):
        a: CorrelationAttrs = node.attrs
        first = _image(self, node, in_shapes[0], "bottom 0")
        if tuple(in_shapes[1]) != first:
            raise self.fail(node, f"both bottoms must have one shape, got {first} and {tuple(in_shapes[1])}")
        channels, th, tw = a.geometry(first[2], first[3])
        if th < 1 or tw < 1:
            raise self.fail(node, f"the displacements (max {a.max_displacement}) and kernel ({a.kernel_size}) do "
                                  f"not fit in the {first[2]}x{first[3]} bottoms padded by {a.pad}")
        if channels > MAX_DISPLACEMENTS:
            raise self.fail(node, f"{channels:,} displacements (max_displacement {a.max_displacement}, stride_2 "
                                  f"{a.stride2}) are over the {MAX_DISPLACEMENTS:,} computed, each a step of its "
                                  "own (FlowNetC's are 21 x 21)")
        return [(first[0], channels, th, tw)]

    def macs(self, node, in_shapes, out_shapes):
        return count(out_shapes[0]) * node.attrs.kernel_size ** 2 * in_shapes[0][1]

    def module(self, node):
        a: CorrelationAttrs = node.attrs
        steps = {"x_steps": a.x_steps} if a.x_steps is not None else {}
        return call(f"{NN}:Correlation", a.pad, a.kernel_size, a.max_displacement, a.stride1, a.stride2, **steps)

    def to_onnx(self, node, ctx):
        flownet_onnx.correlation(node, ctx)


@register
class Correlation1D(Correlation):
    type = "Correlation1D"
    summary = ("FlowNet2's horizontal correlation (DispNetC): one channel per horizontal displacement, both ways "
               "or (single_direction: 1) to the right")

    def attrs(self, layer):
        a = super().attrs(layer)
        direction = layer.correlation_param.single_direction
        r = a.max_displacement // a.stride2
        if direction == -1:
            raise ValueError("correlation_param.single_direction -1 is not supported: the fork's kernel then "
                             f"reads {(r + 1) * a.stride2} columns left of each position, past the padding")
        if direction not in (0, 1):
            raise ValueError(f"correlation_param.single_direction must be -1, 0 or 1, got {direction}")
        steps = tuple(range(0, r + 1)) if direction == 1 else tuple(range(-r, r + 1))
        return dataclasses.replace(a, x_steps=steps)


@register
class ChannelNorm(LayerSpec):
    type = "ChannelNorm"
    family = FAMILY
    layout_agnostic = False
    summary = "the L2 norm over channels, (N, 1, H, W) (FlowNet2 fork)"

    def infer_shapes(self, node, in_shapes):
        n, _c, h, w = _image(self, node, in_shapes[0], "the bottom")
        return [(n, 1, h, w)]

    def macs(self, node, in_shapes, out_shapes):
        return count(in_shapes[0])

    def module(self, node):
        return call(f"{NN}:ChannelNorm")

    def to_onnx(self, node, ctx):
        flownet_onnx.channel_norm(ctx)


@register
class FlowWarp(LayerSpec):
    type = "FlowWarp"
    bottoms = (2, 2)
    family = FAMILY
    summary = "an image warped backwards by a flow field, bilinearly (FlowNet2 fork)"

    def infer_shapes(self, node, in_shapes):
        image = _image(self, node, in_shapes[0], "the image")
        flow = _image(self, node, in_shapes[1], "the flow")
        if flow != (image[0], 2, image[2], image[3]):
            raise self.fail(node, f"the flow {flow} must be (N, 2, H, W) for the image {image}")
        return [image]

    def macs(self, node, in_shapes, out_shapes):
        return 4 * count(out_shapes[0])

    def module(self, node):
        fill_nan = node.attrs.fill_value == "NOT_A_NUMBER"
        return call(f"{NN}:FlowWarp", **({"fill_nan": True} if fill_nan else {}))

    def to_onnx(self, node, ctx):
        flownet_onnx.flow_warp(node, ctx)


def accum_size(sizes: list[tuple[int, int]], a, reference: bool) -> tuple[int, int]:
    """The fork's ``AccumLayer::Reshape``: the reference bottom's size, else the largest bottom size, unless the
    given (or divisible-by) size is larger in both dimensions."""
    if reference:
        return sizes[-1]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    top_h, top_w = a.top_height, a.top_width
    if a.has("size_divisible_by"):  # 0: the fork's NaN size, which loses to the bottoms'
        d = float(a.size_divisible_by)
        top_h, top_w = (int(np.ceil(np.float32(h / d)) * d), int(np.ceil(np.float32(w / d)) * d)) if d else (0, 0)
    return (top_h, top_w) if top_h > h and top_w > w else (h, w)


@register
class Accum(LayerSpec):
    type = "Accum"
    bottoms = (1, None)
    family = FAMILY
    summary = ("bottoms resized bilinearly (aligned corners) to one size and stacked along channels (FlowNet2 "
               "fork)")

    def infer_shapes(self, node, in_shapes):
        a = node.attrs
        shapes = [_image(self, node, s, f"bottom {i}") for i, s in enumerate(in_shapes)]
        if a.have_reference and len(shapes) < 2:
            raise self.fail(node, "have_reference needs at least two bottoms (the last one gives the size)")
        stacked = shapes[:-1] if a.have_reference else shapes
        if any(s[0] != shapes[0][0] for s in stacked):
            raise self.fail(node, f"bottoms must have one batch size, got {[s[0] for s in stacked]}")
        th, tw = accum_size([(s[2], s[3]) for s in shapes], a, a.have_reference)
        if th < 2 or tw < 2:
            raise self.fail(node, f"a {th}x{tw} top is not computable (the fork divides by its height - 1 and "
                                  "width - 1)")
        for s in stacked:
            _check_matrices(node, s[2], s[3], th, tw, "Accum")
        return [(shapes[0][0], sum(s[1] for s in stacked), th, tw)]

    def macs(self, node, in_shapes, out_shapes):
        return 4 * count(out_shapes[0])

    def module(self, node):
        a = node.attrs
        if a.have_reference:  # the last bottom's size, whatever it is at run time
            return call(f"{NN}:Accum", have_reference=True)
        return call(f"{NN}:Accum", size=accum_size([(s[2], s[3]) for s in node.in_shapes], a, False))

    def to_onnx(self, node, ctx):
        flownet_onnx.accum(node, ctx)


@register
class Resample(LayerSpec):
    type = "Resample"
    bottoms = (1, 2)
    family = FAMILY
    summary = ("image resize to width x height or to bottom 1's size: NEAREST, LINEAR or CUBIC, antialiased "
               "when shrinking (FlowNet2 fork)")

    def attrs(self, layer):
        p = plain(layer.resample_param)
        if p.type == "AREA":
            raise ValueError("resample_param.type AREA is not supported (the fork supports NEAREST, LINEAR and "
                             "CUBIC)")
        return p

    def infer_shapes(self, node, in_shapes):
        a = node.attrs
        n, c, h, w = _image(self, node, in_shapes[0], "bottom 0")
        if len(in_shapes) == 2:
            _rn, _rc, th, tw = _image(self, node, in_shapes[1], "bottom 1")
        else:
            th, tw = a.height, a.width
        if th < 1 or tw < 1:
            raise self.fail(node, f"the top must be at least 1x1, got {th}x{tw} (set resample_param.height and "
                                  "width, or give a second bottom of the wanted size)")
        _check_matrices(node, h, w, th, tw, "Resample")
        if a.type == "NEAREST":
            fx, fy = np.float32(w) / np.float32(tw), np.float32(h) / np.float32(th)
            last_x = flownet_onnx.round_away(flownet_onnx.resample_positions(tw, fx, fy)[-1])
            last_y = flownet_onnx.round_away(flownet_onnx.resample_positions(th, fy, fx)[-1])
            if last_x > w - 1 or last_y > h - 1:
                raise self.fail(node, f"NEAREST from {h}x{w} to {th}x{tw} reads beyond the image (the fork's "
                                      "kernel mixes up the two scales and does not check)")
        return [(n, c, th, tw)]

    def macs(self, node, in_shapes, out_shapes):
        return 16 * count(out_shapes[0])

    def module(self, node):
        a = node.attrs
        given = {"size": (a.height, a.width) if len(node.bottoms) == 1 else None,
                 "kind": a.type if a.type != "LINEAR" else None,
                 "antialias": False if not a.antialias else None}
        return call(f"{NN}:Resample", **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        flownet_onnx.resample(node, ctx)


@dataclass(frozen=True)
class AugmentationAttrs:
    recompute_mean: int
    mean_per_pixel: bool
    fixed: tuple[float, ...] | None  # the prototxt's three mean values (subtracted when not per pixel)


@register
class DataAugmentation(LayerSpec):
    type = "DataAugmentation"
    param_field = "augmentation_param"
    bottoms = (1, 2)
    tops = (1, 2)
    family = FAMILY
    force_backward_refused = frozenset({0})  # the fork's AllowBackward is false
    blob_names = ("iteration", "mean", "channel_mean")
    summary = ("FlowNet2's data augmentation without cropping (deploy nets): the input less a mean, averaged "
               "over the first recompute_mean passes")

    def attrs(self, layer):
        p = plain(layer.augmentation_param)
        if len(layer.bottom) > 1 or len(layer.top) > 1:
            raise ValueError("DataAugmentation with augmentation coefficients as a bottom or top (the fork's "
                             "training augmentation) is not built in; deploy nets' one-bottom form runs")
        if p.has("crop_width") and p.has("crop_height"):
            raise ValueError("DataAugmentation with crop_width/crop_height (the fork's random training "
                             "augmentation) is not built in; deploy nets without cropping run")
        fixed = tuple(float(v) for v in p.mean) if len(p.mean) == 3 else None
        return AugmentationAttrs(int(p.recompute_mean), bool(p.mean_per_pixel), fixed)

    def infer_shapes(self, node, in_shapes):
        _image(self, node, in_shapes[0], "the bottom")
        return [tuple(in_shapes[0])]

    def param_shapes(self, node, in_shapes):
        _n, c, h, w = in_shapes[0]
        if node.attrs.recompute_mean:
            return [(1, 1, 1, 1), (1, c, h, w), (1, c, 1, 1)]
        return [(1, 1, 1, 1)]

    def fillers(self, node):
        return [None] * len(node.param_shapes)

    def adjust_blobs(self, node, stored):
        """The fork's ``CustomCopyBlobs``: the pass count, then the per-channel mean (``mean_per_pixel:
        false``), or the per-pixel mean with its average over pixels, where a mean stored at another size (the
        training crop's) is reduced to its channels' averages and spread over this net's size."""
        shapes = node.param_shapes
        out = [np.zeros(s, np.float32) for s in shapes]
        if not node.attrs.recompute_mean or len(stored) < 2:
            return out  # the fork copies nothing then
        if np.size(stored[0]) != 1:
            raise ValueError(f"blob 0 (the pass count) has {np.size(stored[0])} values in the weights file, the "
                             "net expects 1")
        out[0][...] = np.reshape(stored[0], shapes[0])
        c = shapes[1][1]
        if node.attrs.mean_per_pixel is False:
            if len(stored) < 3 or np.size(stored[2]) < c:
                raise ValueError(f"the weights file lacks the per-channel mean (blob 2, {c} values)")
            out[2][...] = np.reshape(np.ravel(stored[2])[:c], shapes[2])
            return out
        mean = np.asarray(stored[1], np.float32)
        if mean.ndim != 4 or mean.shape[1] != c:
            raise ValueError(f"blob 1 (the mean) has shape {mean.shape} in the weights file, the net expects "
                             f"(1, {c}, H, W)")
        per_channel = mean[0].reshape(c, -1).sum(1, dtype=np.float32) * np.float32(1.0 / (mean.shape[2] *
                                                                                           mean.shape[3]))
        out[2][...] = per_channel.reshape(shapes[2])
        if mean.shape[2:] == tuple(shapes[1][2:]):
            out[1][...] = mean[:1]
        else:
            out[1][...] = per_channel.reshape(1, c, 1, 1)
        return out

    def module(self, node):
        a: AugmentationAttrs = node.attrs
        _n, c, h, w = node.param_shapes[1] if a.recompute_mean else (1, 0, 1, 1)
        given = {"recompute_mean": a.recompute_mean or None, "mean_per_pixel": None if a.mean_per_pixel else False,
                 "fixed": a.fixed, "size": (h, w) if a.recompute_mean else None}
        return call(f"{NN}:DataAugmentation", c, **{k: v for k, v in given.items() if v is not None})

    def to_onnx(self, node, ctx):
        """The mean as it stands (trained weights: past ``recompute_mean`` passes it no longer changes)."""
        flownet_onnx.data_augmentation(node, ctx)


def _flownet_dialect(cls: type[LayerSpec]) -> type[LayerSpec]:
    """Register ``cls`` as its type's meaning in nets holding any of this fork's own layer types."""
    for marker in ("Correlation", "ChannelNorm", "FlowWarp", "Accum", "Resample", "DataAugmentation"):
        register_dialect(marker)(cls)
    return cls


@_flownet_dialect
class FlowNetEltwise(Eltwise):
    """The fork's Eltwise (``MinBottomBlobs`` 1): one bottom times its coefficient under ``SUM``."""

    bottoms = (1, None)
    summary = "Eltwise that also takes one bottom (SUM: coeff * x) (FlowNet2 fork)"

    def attrs(self, layer):
        a = super().attrs(layer)
        if len(layer.bottom) == 1 and a.operation != "SUM":
            raise ValueError(f"Eltwise {a.operation} needs at least 2 bottoms (SUM takes one)")
        return a
