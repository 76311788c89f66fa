"""Blob-structure and routing layers: Concat, Slice, Split, Silence, Flatten, Reshape, Crop, Tile, Eltwise,
Softmax, Reduction, ArgMax, BatchReindex, Filter, Parameter and DummyData.

Shape rules follow Caffe's ``Reshape`` methods (legacy ``concat_dim``/``slice_dim`` are not canonicalised,
``Reshape``'s 0/-1 rules, ``ArgMax``'s 3-axis minimum ...). Backward passes that autograd would compute
differently from Caffe (Eltwise MAX ties, PROD's two gradient formulas) use custom autograd functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..fillers import fill
from .base import LayerSpec, Shape, canonical_axis, count, register
from .torch_util import CaffeLayer

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "structure"


def _resolve_axis(node: Node, spec: LayerSpec, axis: int, legacy: bool, num_axes: int) -> int:
    """Caffe's axis rule for Concat/Slice: the legacy ``*_dim`` field is used as is (no negative values),
    ``axis`` is canonicalised."""
    if legacy:
        if not 0 <= axis < num_axes:
            raise spec.fail(node, f"legacy dim {axis} out of range for a {num_axes}-axis blob")
        return axis
    return canonical_axis(node, spec, axis, num_axes)


def _no_in_place(layer: Any) -> None:
    """Flatten, Reshape and Split CHECK in Caffe that no top aliases the bottom."""
    if any(t == layer.bottom[0] for t in layer.top):
        raise ValueError(f"{layer.type} does not allow in-place computation")


# ---------------------------------------------------------------------------------------------------------
# Concat / Slice / Split / Silence
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisAttrs:
    axis: int
    legacy: bool  # axis came from concat_dim / slice_dim


def _axis_or_legacy(p: Any, legacy_field: str) -> tuple[int, bool]:
    """``axis`` or the pre-``axis`` spelling (``concat_dim`` / ``slice_dim``); giving both is refused."""
    if p.HasField("axis") and p.HasField(legacy_field):
        raise ValueError(f"either axis or {legacy_field} may be given, not both")
    legacy = p.HasField(legacy_field)
    return (getattr(p, legacy_field) if legacy else p.axis), legacy


class _Concat(CaffeLayer):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        return bottoms[0] if len(bottoms) == 1 else torch.cat(bottoms, dim=self.axis)


@register
class Concat(LayerSpec):
    type = "Concat"
    layout_agnostic = True
    bottoms = (1, None)
    family = FAMILY
    summary = "join bottoms along axis (default 1; legacy concat_dim); other dims must agree"

    def attrs(self, layer):
        return AxisAttrs(*_axis_or_legacy(layer.concat_param, "concat_dim"))

    def infer_shapes(self, node, in_shapes):
        first = in_shapes[0]
        axis = _resolve_axis(node, self, node.attrs.axis, node.attrs.legacy, len(first))
        out = list(first)
        for i, s in enumerate(in_shapes[1:], 1):
            if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first, strict=True)) if j != axis):
                raise self.fail(node, f"bottom {i} has shape {tuple(s)}, bottom 0 {tuple(first)}: all dims "
                                      f"but axis {axis} must agree")
            out[axis] += s[axis]
        return [tuple(out)]

    def build_torch(self, node):
        return _Concat(node.attrs.axis)

    def to_onnx(self, node, ctx):
        if ctx.num_inputs == 1:
            ctx.identity(ctx.input(0), ctx.output(0))
            return
        axis = _resolve_axis(node, self, node.attrs.axis, node.attrs.legacy, len(ctx.in_shape(0)))
        ctx.add("Concat", [ctx.input(i) for i in range(ctx.num_inputs)], ctx.output(0), axis=axis)


@dataclass(frozen=True)
class SliceAttrs(AxisAttrs):
    slice_points: tuple[int, ...]


def _slice_sizes(dim: int, points: Sequence[int], n_tops: int) -> list[int]:
    """Sizes of Slice's tops along the axis: between ``slice_point``s, or ``dim / n_tops`` each."""
    if not points:
        if dim % n_tops:
            raise ValueError(f"{n_tops} tops do not evenly divide the slice axis ({dim})")
        return [dim // n_tops] * n_tops
    if len(points) != n_tops - 1:
        raise ValueError(f"{len(points)} slice_point(s) for {n_tops} tops (need {n_tops - 1})")
    if n_tops > dim:
        raise ValueError(f"{n_tops} tops for a slice axis of size {dim}")
    bounds = [0, *points]
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"slice_point {list(points)} must be strictly increasing and positive")
    sizes = [b - a for a, b in zip(bounds, [*points, dim], strict=True)]
    if sizes[-1] < 0:
        raise ValueError(f"slice_point {points[-1]} beyond the slice axis ({dim})")
    return sizes


class _Slice(CaffeLayer):
    def __init__(self, axis: int, points: tuple[int, ...], n_tops: int):
        super().__init__()
        self.axis, self.points, self.n_tops = axis, points, n_tops

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, _slice_sizes(x.shape[self.axis], self.points, self.n_tops), dim=self.axis)


@register
class Slice(LayerSpec):
    type = "Slice"
    tops = (1, None)
    family = FAMILY
    summary = "cut bottom along axis (default 1; legacy slice_dim) at slice_point, or into equal parts"

    def attrs(self, layer):
        p = layer.slice_param
        return SliceAttrs(*_axis_or_legacy(p, "slice_dim"), tuple(p.slice_point))

    def infer_shapes(self, node, in_shapes):
        shape = in_shapes[0]
        axis = _resolve_axis(node, self, node.attrs.axis, node.attrs.legacy, len(shape))
        try:
            sizes = _slice_sizes(shape[axis], node.attrs.slice_points, len(node.tops))
        except ValueError as e:
            raise self.fail(node, str(e)) from None
        return [(*shape[:axis], s, *shape[axis + 1:]) for s in sizes]

    def build_torch(self, node):
        return _Slice(node.attrs.axis, node.attrs.slice_points, len(node.tops))

    def to_onnx(self, node, ctx):
        """``Split`` with the tops' sizes along the axis (taken from the inferred top shapes)."""
        if ctx.num_outputs == 1:
            ctx.identity(ctx.input(0), ctx.output(0))
            return
        axis = _resolve_axis(node, self, node.attrs.axis, node.attrs.legacy, len(ctx.in_shape(0)))
        sizes = [ctx.out_shape(i)[axis] for i in range(ctx.num_outputs)]
        ctx.add("Split", [ctx.input(0), ctx.ints(sizes, "split")], [ctx.output(i) for i in range(ctx.num_outputs)],
                axis=axis)


class _Split(CaffeLayer):
    def __init__(self, n_tops: int):
        super().__init__()
        self.n_tops = n_tops

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,) * self.n_tops  # autograd sums the tops' gradients, as Caffe's Split backward does


@register
class Split(LayerSpec):
    type = "Split"
    layout_agnostic = True
    tops = (1, None)
    family = FAMILY
    summary = "copy the bottom to every top (backward sums the top diffs)"

    def attrs(self, layer):
        _no_in_place(layer)
        return None

    def build_torch(self, node):
        return _Split(len(node.tops))

    def to_onnx(self, node, ctx):
        for i in range(ctx.num_outputs):
            ctx.identity(ctx.input(0), ctx.output(i))


class _Silence(CaffeLayer):
    def forward(self, *bottoms: torch.Tensor) -> tuple[()]:
        return ()  # contributes no gradient: Caffe zeroes the bottoms' diffs


@register
class Silence(LayerSpec):
    type = "Silence"
    bottoms = (1, None)
    tops = (0, 0)
    family = FAMILY
    summary = "consume bottoms without output (they get zero diff)"

    def infer_shapes(self, node, in_shapes):
        return []

    def build_torch(self, node):
        return _Silence()

    def to_onnx(self, node, ctx):
        """Computes nothing; the exporter makes silenced blobs the outputs of a net that has no other."""
        for i in range(ctx.num_inputs):
            ctx.silence(ctx.input(i))


# ---------------------------------------------------------------------------------------------------------
# Flatten / Reshape
# ---------------------------------------------------------------------------------------------------------
class _View(CaffeLayer):
    """Flatten and Reshape: Caffe shares data and diff with the bottom, i.e. a view."""

    def __init__(self, spec: ReshapeLike, attrs: Any):
        super().__init__()
        self.spec, self.attrs = spec, attrs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.spec.target(tuple(x.shape), self.attrs))


class ReshapeLike(LayerSpec):
    """Shared plumbing of Flatten and Reshape: ``target`` maps an input shape to the output shape."""

    family = FAMILY

    def target(self, shape: Shape, attrs: Any) -> Shape:
        raise NotImplementedError

    def infer_shapes(self, node, in_shapes):
        try:
            out = self.target(tuple(in_shapes[0]), node.attrs)
        except ValueError as e:
            raise self.fail(node, str(e)) from None
        if count(out) != count(in_shapes[0]):
            raise self.fail(node, f"output {out} has a different count than input {tuple(in_shapes[0])}")
        return [out]

    def build_torch(self, node):
        return _View(self, node.attrs)

    def to_onnx(self, node, ctx):
        """A ``Reshape`` to the inferred top shape (0/-1 for the batch axis when it is dynamic)."""
        ctx.reshape(ctx.input(0), ctx.in_shape(0), ctx.out_shape(0), ctx.output(0))


@dataclass(frozen=True)
class FlattenAttrs:
    axis: int
    end_axis: int


@register
class Flatten(ReshapeLike):
    type = "Flatten"
    layout_agnostic = True
    summary = "merge axes axis..end_axis (defaults 1, -1; inclusive) into one"

    def attrs(self, layer):
        _no_in_place(layer)
        return FlattenAttrs(layer.flatten_param.axis, layer.flatten_param.end_axis)

    def target(self, shape, attrs):
        n = len(shape)
        start, end = (a + n if a < 0 else a for a in (attrs.axis, attrs.end_axis))
        if not (0 <= start < max(n, 1) and 0 <= end < max(n, 1)) or end + 1 < start:
            raise ValueError(f"axis {attrs.axis} / end_axis {attrs.end_axis} invalid for a {n}-axis blob")
        return (*shape[:start], count(shape, start, end + 1), *shape[end + 1:])


@dataclass(frozen=True)
class ReshapeAttrs:
    dims: tuple[int, ...]
    axis: int
    num_axes: int


@register
class Reshape(ReshapeLike):
    type = "Reshape"
    layout_agnostic = True
    summary = "new shape with 0 = copy the bottom dim, -1 = infer; axis/num_axes reshape only a sub-range"

    def attrs(self, layer):
        _no_in_place(layer)
        p = layer.reshape_param
        dims = tuple(int(d) for d in p.shape.dim)
        if dims.count(-1) > 1:
            raise ValueError("reshape_param.shape has more than one -1")
        if any(d < -1 for d in dims):
            raise ValueError(f"invalid reshape dims {list(dims)}")
        if p.num_axes < -1:
            raise ValueError("reshape_param.num_axes must be >= 0, or -1 for all")
        return ReshapeAttrs(dims, p.axis, p.num_axes)

    def target(self, shape, attrs):
        n = len(shape)
        start = attrs.axis if attrs.axis >= 0 else n + attrs.axis + 1
        if not 0 <= start <= n:
            raise ValueError(f"axis {attrs.axis} out of range for a {n}-axis blob")
        end = n if attrs.num_axes == -1 else start + attrs.num_axes
        if end > n:
            raise ValueError(f"axis + num_axes = {end} out of range for a {n}-axis blob")
        new = list(attrs.dims)
        for i, d in enumerate(attrs.dims):
            if d == 0:
                if start + i >= n:
                    raise ValueError(f"dim {i} is 0 but the bottom has no axis {start + i} to copy")
                new[i] = shape[start + i]
        if -1 in new:
            known = count(shape, 0, start) * count(shape, end) * count([d for d in new if d != -1])
            total = count(shape)
            if known == 0 or total % known:
                raise ValueError(f"bottom count {total} is not divisible by the given dims' product {known}")
            new[new.index(-1)] = total // known
        return (*shape[:start], *new, *shape[end:])


# ---------------------------------------------------------------------------------------------------------
# Crop / Tile
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropAttrs:
    axis: int
    offsets: tuple[int, ...]


def _crop_offsets(shape: Shape, ref: Shape, attrs: CropAttrs, axis: int) -> list[int]:
    """Per-axis start of the crop (0 before ``axis``); checks the reference fits as Caffe does."""
    n = len(shape)
    if len(attrs.offsets) > 1 and axis + len(attrs.offsets) != n:
        raise ValueError(f"{len(attrs.offsets)} offsets given for {n - axis} cropped axes")
    if len(ref) < n:
        raise ValueError(f"reference bottom has {len(ref)} axes, cropped bottom {n}")
    offsets = [0] * n
    for i in range(axis, n):
        offsets[i] = attrs.offsets[0 if len(attrs.offsets) == 1 else i - axis] if attrs.offsets else 0
        if shape[i] - offsets[i] < ref[i]:
            raise ValueError(f"crop of axis {i} out of bounds: size {ref[i]} at offset {offsets[i]} in {shape[i]}")
    return offsets


class _Crop(CaffeLayer):
    def __init__(self, attrs: CropAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        axis = self.attrs.axis % x.dim()
        offsets = _crop_offsets(tuple(x.shape), tuple(ref.shape), self.attrs, axis)
        # only the reference's shape is read: no gradient reaches it, as in Caffe
        index = tuple(slice(None) if i < axis else slice(o, o + ref.shape[i]) for i, o in enumerate(offsets))
        return x[index]


@register
class Crop(LayerSpec):
    type = "Crop"
    bottoms = (2, 2)
    family = FAMILY
    summary = "crop bottom 0 to bottom 1's shape from axis (default 2) on, at offset (one, or one per axis)"

    def attrs(self, layer):
        return CropAttrs(layer.crop_param.axis, tuple(layer.crop_param.offset))

    def infer_shapes(self, node, in_shapes):
        shape, ref = tuple(in_shapes[0]), tuple(in_shapes[1])
        axis = canonical_axis(node, self, node.attrs.axis, len(shape))
        try:
            _crop_offsets(shape, ref, node.attrs, axis)
        except ValueError as e:
            raise self.fail(node, str(e)) from None
        return [(*shape[:axis], *ref[axis:len(shape)])]

    def build_torch(self, node):
        return _Crop(node.attrs)

    def to_onnx(self, node, ctx):
        """``Slice`` of every axis from ``axis`` on, at Caffe's offsets, to the reference's size."""
        shape, out = ctx.in_shape(0), ctx.out_shape(0)
        axis = canonical_axis(node, self, node.attrs.axis, len(shape))
        offsets = _crop_offsets(shape, ctx.in_shape(1), node.attrs, axis)
        axes = range(axis, len(shape))
        ctx.slice(ctx.input(0), [offsets[i] for i in axes], [offsets[i] + out[i] for i in axes], axes,
                  out=ctx.output(0))


@dataclass(frozen=True)
class TileAttrs:
    axis: int
    tiles: int


class _Tile(CaffeLayer):
    def __init__(self, attrs: TileAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reps = [1] * x.dim()
        reps[self.attrs.axis % x.dim()] = self.attrs.tiles
        return x.repeat(reps)  # autograd sums the copies, as Caffe's Tile backward


@register
class Tile(LayerSpec):
    type = "Tile"
    family = FAMILY
    summary = "repeat the sub-blob from axis on `tiles` times along axis (default 1)"

    def attrs(self, layer):
        p = layer.tile_param
        if not p.HasField("tiles") or p.tiles <= 0:
            raise ValueError("tile_param.tiles must be given and positive")
        return TileAttrs(p.axis, p.tiles)

    def infer_shapes(self, node, in_shapes):
        shape = list(in_shapes[0])
        axis = canonical_axis(node, self, node.attrs.axis, len(shape))
        shape[axis] *= node.attrs.tiles
        return [tuple(shape)]

    def build_torch(self, node):
        return _Tile(node.attrs)

    def to_onnx(self, node, ctx):
        shape = ctx.in_shape(0)
        repeats = [1] * len(shape)
        repeats[canonical_axis(node, self, node.attrs.axis, len(shape))] = node.attrs.tiles
        ctx.add("Tile", [ctx.input(0), ctx.ints(repeats, "repeats")], ctx.output(0))


# ---------------------------------------------------------------------------------------------------------
# Eltwise
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EltwiseAttrs:
    operation: str  # PROD, SUM or MAX
    coeffs: tuple[float, ...]  # one per bottom (SUM)
    stable_prod_grad: bool


class _EltwiseProd(torch.autograd.Function):
    """Caffe's PROD backward: the product of the other bottoms (stable), or top / bottom (unstable, which
    gives inf/nan where a bottom is 0, exactly as Caffe)."""

    @staticmethod
    def forward(ctx: Any, stable: bool, *xs: torch.Tensor) -> torch.Tensor:
        top = xs[0] * xs[1]
        for x in xs[2:]:
            top = top * x
        ctx.stable = stable
        ctx.save_for_backward(top, *xs)
        return top

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        top, *xs = ctx.saved_tensors
        grads: list[torch.Tensor | None] = [None]
        for i, x in enumerate(xs):
            if not ctx.needs_input_grad[i + 1]:
                grads.append(None)
                continue
            if ctx.stable:
                others = [y for j, y in enumerate(xs) if j != i]
                g = others[0]
                for y in others[1:]:
                    g = g * y
            else:
                g = top / x
            grads.append(g * grad)
        return tuple(grads)


class _EltwiseMax(torch.autograd.Function):
    """Caffe's MAX: bottom 1 wins a tie with bottom 0 (``a > b ? a : b``), later bottoms only replace the
    running max when strictly greater; the whole diff goes to the recorded winner."""

    @staticmethod
    def forward(ctx: Any, *xs: torch.Tensor) -> torch.Tensor:
        first = xs[0] > xs[1]
        top = torch.where(first, xs[0], xs[1])
        mask = (~first).to(torch.uint8)
        for i, x in enumerate(xs[2:], 2):
            greater = x > top
            top = torch.where(greater, x, top)
            mask = mask.masked_fill(greater, i)
        ctx.save_for_backward(mask)
        return top

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (mask,) = ctx.saved_tensors
        zero = grad.new_zeros(())
        return tuple(torch.where(mask == i, grad, zero) if need else None
                     for i, need in enumerate(ctx.needs_input_grad))


class _Eltwise(CaffeLayer):
    def __init__(self, attrs: EltwiseAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        op = self.attrs.operation
        if op == "PROD":
            return _EltwiseProd.apply(self.attrs.stable_prod_grad, *xs)
        if op == "MAX":
            return _EltwiseMax.apply(*xs)
        coeffs = self.attrs.coeffs
        top = xs[0] if coeffs[0] == 1 else xs[0] * coeffs[0]
        for x, c in zip(xs[1:], coeffs[1:], strict=True):
            top = top + x if c == 1 else torch.add(top, x, alpha=c)
        return top


@register
class Eltwise(LayerSpec):
    type = "Eltwise"
    layout_agnostic = True
    bottoms = (2, None)
    family = FAMILY
    summary = "elementwise PROD, SUM (coeff per bottom) or MAX (diff to Caffe's arg-max) of same-shape bottoms"

    def attrs(self, layer):
        p = layer.eltwise_param
        op = type(p).EltwiseOp.Name(p.operation)
        if len(p.coeff) not in (0, len(layer.bottom)):
            raise ValueError(f"Eltwise takes one coeff per bottom: {len(p.coeff)} for {len(layer.bottom)} bottoms")
        if op == "PROD" and len(p.coeff):
            raise ValueError("Eltwise takes coeff only for SUM")
        if op == "MAX" and len(layer.bottom) > 255:
            raise ValueError("Eltwise MAX supports at most 255 bottoms")  # the arg-max mask is uint8
        coeffs = tuple(p.coeff) or (1.0,) * len(layer.bottom)
        return EltwiseAttrs(op, coeffs, p.stable_prod_grad)

    def infer_shapes(self, node, in_shapes):
        for i, s in enumerate(in_shapes[1:], 1):
            if tuple(s) != tuple(in_shapes[0]):
                raise self.fail(node, f"bottom {i} has shape {tuple(s)}, bottom 0 {tuple(in_shapes[0])}")
        return [tuple(in_shapes[0])]

    def build_torch(self, node):
        return _Eltwise(node.attrs)

    def to_onnx(self, node, ctx):
        """MAX is ``Max`` (ties pick an equal value, so the forward result is Caffe's); PROD and SUM are
        chains in bottom order, as Caffe accumulates (SUM: ``top += coeff_i * bottom_i``)."""
        a = node.attrs
        xs = [ctx.input(i) for i in range(ctx.num_inputs)]
        if a.operation == "MAX":
            ctx.add("Max", xs, ctx.output(0))
            return
        if a.operation == "SUM":
            xs = [x if c == 1 else ctx.add("Mul", [x, ctx.scalar(c)]) for x, c in zip(xs, a.coeffs, strict=True)]
        op = "Mul" if a.operation == "PROD" else "Add"
        top = xs[0]
        for i, x in enumerate(xs[1:], 2):
            top = ctx.add(op, [top, x], ctx.output(0) if i == len(xs) else None)


# ---------------------------------------------------------------------------------------------------------
# Softmax / Reduction / ArgMax
# ---------------------------------------------------------------------------------------------------------
class _Softmax(CaffeLayer):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.axis)


@register
class Softmax(LayerSpec):
    type = "Softmax"
    family = FAMILY
    summary = "softmax over axis (default 1, the channels; not the last axis)"

    def infer_shapes(self, node, in_shapes):
        canonical_axis(node, self, node.attrs.axis, len(in_shapes[0]))
        return [tuple(in_shapes[0])]

    def build_torch(self, node):
        return _Softmax(node.attrs.axis)

    def to_onnx(self, node, ctx):
        axis = canonical_axis(node, self, node.attrs.axis, len(ctx.in_shape(0)))
        ctx.add("Softmax", [ctx.input(0)], ctx.output(0), axis=axis)


@dataclass(frozen=True)
class ReductionAttrs:
    operation: str  # SUM, ASUM, SUMSQ or MEAN
    axis: int
    coeff: float


class _Reduction(CaffeLayer):
    def __init__(self, attrs: ReductionAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.attrs.axis % x.dim() if x.dim() else 0
        outer = x.shape[:axis]
        flat = x.reshape(count(outer), -1)
        op = self.attrs.operation
        if op == "ASUM":
            y = flat.abs().sum(1)  # abs' subgradient at 0 is 0, Caffe's sign(0)
        elif op == "SUMSQ":
            y = (flat * flat).sum(1)
        else:
            y = flat.sum(1)
        # Caffe folds MEAN's 1/dim into the float32 coeff
        coeff = np.float32(self.attrs.coeff)
        if op == "MEAN":
            coeff = coeff / np.float32(flat.shape[1])
        if coeff != 1:
            y = y * float(coeff)
        return y.reshape(outer)


@register
class Reduction(LayerSpec):
    type = "Reduction"
    family = FAMILY
    summary = "SUM/ASUM/SUMSQ/MEAN over all axes from axis (default 0) on, times coeff; top = bottom.shape[:axis]"

    def attrs(self, layer):
        p = layer.reduction_param
        return ReductionAttrs(type(p).ReductionOp.Name(p.operation), p.axis, p.coeff)

    def infer_shapes(self, node, in_shapes):
        axis = canonical_axis(node, self, node.attrs.axis, len(in_shapes[0]))
        return [tuple(in_shapes[0][:axis])]

    def macs(self, node, in_shapes, out_shapes):
        return count(in_shapes[0])  # one dot product over every bottom element

    def build_torch(self, node):
        return _Reduction(node.attrs)

    def to_onnx(self, node, ctx):
        """A reduction over all axes from ``axis`` on, then one multiply by the float32 coefficient (MEAN's
        ``1/dim`` folded into it, as Caffe does)."""
        a, shape = node.attrs, ctx.in_shape(0)
        axis = canonical_axis(node, self, a.axis, len(shape))
        op = {"SUM": "ReduceSum", "MEAN": "ReduceSum", "ASUM": "ReduceL1", "SUMSQ": "ReduceSumSquare"}[a.operation]
        coeff = np.float32(a.coeff)
        if a.operation == "MEAN":
            coeff = coeff / np.float32(count(shape, axis))
        y = ctx.reduce(op, ctx.input(0), range(axis, len(shape)), keepdims=False,
                       out=ctx.output(0) if coeff == 1 else None)
        if coeff != 1:
            ctx.add("Mul", [y, ctx.scalar(coeff)], ctx.output(0))


@dataclass(frozen=True)
class ArgMaxAttrs:
    out_max_val: bool
    top_k: int
    axis: int | None  # None: per sample over the flattened rest


def _top_k(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values along ``dim`` and their indices, ties resolved as Caffe's ``partial_sort`` of
    (value, index) pairs with ``std::greater``: among equal values the larger index comes first."""
    n = x.shape[dim]
    values, rev = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, k), (n - 1 - rev).narrow(dim, 0, k)


class _ArgMax(CaffeLayer):
    def __init__(self, attrs: ArgMaxAttrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        x = x.detach()  # Caffe has no ArgMax backward
        if a.axis is not None:
            values, idx = _top_k(x, a.top_k, a.axis % x.dim())
            return values if a.out_max_val else idx.to(x.dtype)
        values, idx = _top_k(x.reshape(x.shape[0], -1), a.top_k, 1)
        parts = (idx.to(x.dtype), values) if a.out_max_val else (idx.to(x.dtype),)
        out = torch.stack(parts, dim=1)
        return out.reshape(*out.shape, *([1] * (x.dim() - 3)))


@register
class ArgMax(LayerSpec):
    type = "ArgMax"
    family = FAMILY
    summary = "top_k indices (or values with out_max_val) along axis, or per sample: (N, 1|2, top_k)"

    def attrs(self, layer):
        p = layer.argmax_param
        if p.top_k < 1:
            raise ValueError("argmax_param.top_k must be >= 1")
        return ArgMaxAttrs(p.out_max_val, p.top_k, p.axis if p.HasField("axis") else None)

    def infer_shapes(self, node, in_shapes):
        shape, a = tuple(in_shapes[0]), node.attrs
        if a.axis is not None:
            axis = canonical_axis(node, self, a.axis, len(shape))
            if a.top_k > shape[axis]:
                raise self.fail(node, f"top_k {a.top_k} exceeds axis {axis} of size {shape[axis]}")
            return [(*shape[:axis], a.top_k, *shape[axis + 1:])]
        if not shape or a.top_k > count(shape, 1):
            raise self.fail(node, f"top_k {a.top_k} exceeds the per-sample size of {shape}")
        return [(shape[0], 2 if a.out_max_val else 1, a.top_k, *([1] * (len(shape) - 3)))]

    def build_torch(self, node):
        return _ArgMax(node.attrs)

    def to_onnx(self, node, ctx):
        """``TopK`` on the reversed axis: ONNX puts the lower index first among equal values, Caffe the higher
        one, so indices are taken on the flipped axis and mapped back with ``n - 1 - i``. Without ``axis``
        each sample is flattened, and (index, value) rows are stacked as Caffe's ``(N, 1|2, top_k)``."""
        a, shape = node.attrs, ctx.in_shape(0)
        x = ctx.input(0)
        if a.axis is None:
            axis = 1
            x = ctx.reshape(x, shape, (shape[0], count(shape, 1)))
        else:
            axis = canonical_axis(node, self, a.axis, len(shape))
        n = count(shape, 1) if a.axis is None else shape[axis]
        flipped = ctx.slice(x, [-1], [np.iinfo(np.int64).min], [axis], [-1])
        values, flipped_index = ctx.tmp("values"), ctx.tmp("flipped_index")
        if a.axis is not None and a.out_max_val:
            values = ctx.output(0)
        ctx.add("TopK", [flipped, ctx.ints([a.top_k], "k")], [values, flipped_index], axis=axis, largest=1, sorted=1)
        if a.axis is not None and a.out_max_val:
            return
        index = ctx.add("Sub", [ctx.const(np.int64(n - 1), "last"), flipped_index])
        index = ctx.add("Cast", [index], ctx.output(0) if a.axis is not None else None, to=ctx.FLOAT)
        if a.axis is not None:
            return
        rows = [ctx.add("Unsqueeze", [t, ctx.ints([1], "axes")]) for t in ([index, values] if a.out_max_val
                                                                           else [index])]
        stacked = rows[0] if len(rows) == 1 else ctx.add("Concat", rows, axis=1)
        ctx.reshape(stacked, (shape[0], len(rows), a.top_k), ctx.out_shape(0), ctx.output(0))


# ---------------------------------------------------------------------------------------------------------
# BatchReindex / Filter
# ---------------------------------------------------------------------------------------------------------
class _BatchReindex(CaffeLayer):
    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # float indices truncate as Caffe's static_cast<int>; index_select's backward accumulates repeats
        return x.index_select(0, index.detach().to(torch.long))


@register
class BatchReindex(LayerSpec):
    type = "BatchReindex"
    bottoms = (2, 2)
    family = FAMILY
    summary = "gather items of bottom 0 along axis 0 by the indices in bottom 1 (no gradient to the indices)"

    def infer_shapes(self, node, in_shapes):
        if len(in_shapes[1]) != 1:
            raise self.fail(node, f"index bottom must be 1-D, got {tuple(in_shapes[1])}")
        return [(in_shapes[1][0], *in_shapes[0][1:])]

    def build_torch(self, node):
        return _BatchReindex()

    def to_onnx(self, node, ctx):
        """``Gather`` along axis 0; float indices truncate to int64 as Caffe's ``static_cast<int>``."""
        index = ctx.add("Cast", [ctx.input(1)], to=ctx.INT64)
        ctx.add("Gather", [ctx.input(0), index], ctx.output(0), axis=0)


class _Filter(CaffeLayer):
    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        selector = bottoms[-1].detach()
        keep = torch.nonzero(selector.reshape(selector.shape[0]) != 0).squeeze(1)
        tops = tuple(b.index_select(0, keep) for b in bottoms[:-1])
        return tops[0] if len(tops) == 1 else tops


@register
class Filter(LayerSpec):
    type = "Filter"
    bottoms = (2, None)
    tops = (1, None)
    family = FAMILY
    summary = "keep the items (axis 0) of each bottom whose selector (last bottom) is non-zero"

    def attrs(self, layer):
        if len(layer.top) != len(layer.bottom) - 1:
            raise ValueError(f"Filter needs one top per non-selector bottom: {len(layer.top)} tops, "
                             f"{len(layer.bottom)} bottoms")
        return None

    def infer_shapes(self, node, in_shapes):
        """The item count depends on the selector's values; like Caffe at net setup, report the full batch."""
        sel = in_shapes[-1]
        if not sel or any(d != 1 for d in sel[1:]):
            raise self.fail(node, f"selector must be (N, 1, ...), got {tuple(sel)}")
        for i, s in enumerate(in_shapes[:-1]):
            if not s or s[0] != sel[0]:
                raise self.fail(node, f"bottom {i} {tuple(s)} does not have the selector's {sel[0]} items")
        return [tuple(s) for s in in_shapes[:-1]]

    def build_torch(self, node):
        return _Filter()


# ---------------------------------------------------------------------------------------------------------
# Parameter / DummyData
# ---------------------------------------------------------------------------------------------------------
class _Parameter(CaffeLayer):
    def __init__(self, shape: Shape):
        super().__init__()
        self.add_blob("weight", shape)  # Caffe leaves the blob at zero unless weights are loaded

    def forward(self) -> torch.Tensor:
        return self.weight


@register
class Parameter(LayerSpec):
    type = "Parameter"
    bottoms = (0, 0)
    family = FAMILY
    blob_names = ("weight",)
    summary = "a learned blob of parameter_param.shape as the top"

    def attrs(self, layer):
        return tuple(int(d) for d in layer.parameter_param.shape.dim)

    def infer_shapes(self, node, in_shapes):
        return [node.attrs]

    def param_shapes(self, node, in_shapes):
        return [node.attrs]

    def build_torch(self, node):
        return _Parameter(node.param_shapes[0] if node.param_shapes else node.attrs)

    def to_onnx(self, node, ctx):
        ctx.identity(ctx.const(ctx.param(0), "weight"), ctx.output(0))


@dataclass(frozen=True)
class DummyDataAttrs:
    shapes: tuple[Shape, ...]  # one per top
    fillers: tuple[Any, ...]  # FillerParameter (None = constant 0), one per top


#: Fillers whose value never changes; every other filler is drawn again on each forward pass, as Caffe does.
_FIXED_FILLERS = ("constant", "bilinear")


class _DummyData(CaffeLayer):
    def __init__(self, attrs: DummyDataAttrs):
        super().__init__()
        self.attrs = attrs
        self.fixed = [filler is None or filler.type in _FIXED_FILLERS for filler in attrs.fillers]
        for i, (shape, filler, fixed) in enumerate(zip(attrs.shapes, attrs.fillers, self.fixed, strict=True)):
            # a fixed top is filled once; a random one keeps an empty buffer that only tracks the device
            self.register_buffer(f"top{i}", fill(shape, filler) if fixed else torch.empty(0), persistent=False)

    def forward(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tops = []
        for i, (shape, filler, fixed) in enumerate(zip(self.attrs.shapes, self.attrs.fillers, self.fixed, strict=True)):
            buf: torch.Tensor = getattr(self, f"top{i}")
            tops.append(buf if fixed else fill(shape, filler).to(buf.device))
        return tops[0] if len(tops) == 1 else tuple(tops)


@register
class DummyData(LayerSpec):
    type = "DummyData"
    bottoms = (0, 0)
    tops = (1, None)
    family = FAMILY
    summary = "tops of fixed shapes (shape, or legacy num/channels/height/width) filled by data_filler"

    def attrs(self, layer):
        p, n = layer.dummy_data_param, len(layer.top)

        def per_top(values: Sequence[Any], what: str) -> list[Any]:
            if len(values) not in (1, n):
                raise ValueError(f"give {what} once or once per top ({n}), not {len(values)} times")
            return [values[0 if len(values) == 1 else i] for i in range(n)]

        if len(p.data_filler) not in (0, 1, n):
            raise ValueError(f"give 0, 1 or {n} data_filler(s), not {len(p.data_filler)}")
        fillers = per_top(p.data_filler, "data_filler") if len(p.data_filler) else [None] * n
        legacy = [p.num, p.channels, p.height, p.width]
        if any(len(v) for v in legacy):
            if len(p.shape):
                raise ValueError("both shape and legacy num/channels/height/width are given")
            columns = [per_top(v, name) for v, name in zip(legacy, ("num", "channels", "height", "width"), strict=True)]
            shapes = [tuple(int(c[i]) for c in columns) for i in range(n)]
        else:
            shapes = [tuple(int(d) for d in s.dim) for s in per_top(p.shape, "shape")]
        return DummyDataAttrs(tuple(shapes), tuple(fillers))

    def infer_shapes(self, node, in_shapes):
        return list(node.attrs.shapes)

    def build_torch(self, node):
        return _DummyData(node.attrs)

    def to_onnx(self, node, ctx):
        """Fixed fillers (constant, bilinear) become initializers; a random filler is drawn again on every
        forward pass in Caffe, which a standard ONNX graph cannot reproduce."""
        for i, filler in enumerate(node.attrs.fillers):
            if not ctx.module.fixed[i]:
                ctx.unsupported(f"top {i} uses the random '{filler.type}' filler, drawn anew on every pass")
            value = getattr(ctx.module, f"top{i}").detach().cpu().numpy()
            ctx.identity(ctx.const(value, f"top{i}"), ctx.output(i))
