"""Blob-structure and routing layers: Concat, Slice, Split, Silence, Flatten, Reshape, Crop, Tile, Eltwise,
Softmax, Reduction, ArgMax, BatchReindex, Filter, Parameter and DummyData; their modules are
:mod:`prototxt2py.nn.structure`'s (Flatten and Softmax are ``nn.Flatten``/``nn.Softmax``).

Shape rules follow Caffe's ``Reshape`` methods (legacy ``concat_dim``/``slice_dim`` are not canonicalised,
``Reshape``'s 0/-1 rules, ``ArgMax``'s 3-axis minimum ...). Backward passes that autograd would compute
differently from Caffe (Eltwise MAX ties, PROD's two gradient formulas) use custom autograd functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..fillers import fill_array
from ..lazy_numpy import np
from ..plain import Filler, filler
from .base import Call, LayerSpec, Shape, call, canonical_axis, count, register
from .normalization import short_float

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


@register
class Concat(LayerSpec):
    type = "Concat"
    onnx_dynamic_sizes = True
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

    def module(self, node) -> Call:
        return call("Concat", **({} if node.attrs.axis == 1 else {"axis": node.attrs.axis}))

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


@register
class Slice(LayerSpec):
    type = "Slice"
    onnx_dynamic_sizes = True  # split sizes computed at run time along a changing axis
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

    def module(self, node) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.axis == 1 else {"axis": a.axis}
        if a.slice_points:
            kwargs["slice_point"] = a.slice_points
        return call("Slice", len(node.tops), **kwargs)

    def to_onnx(self, node, ctx):
        """``Split`` with the tops' sizes along the axis (taken from the inferred top shapes)."""
        if ctx.num_outputs == 1:
            ctx.identity(ctx.input(0), ctx.output(0))
            return
        axis = _resolve_axis(node, self, node.attrs.axis, node.attrs.legacy, len(ctx.in_shape(0)))
        if ctx.axis_symbolic(0, axis):  # a size known at run time only: Caffe's rule, computed then
            tops = [ctx.output(i) for i in range(ctx.num_outputs)]
            points = node.attrs.slice_points
            if not points:  # equal parts: Split without sizes (opset 18 names their number)
                extra = {"num_outputs": len(tops)} if ctx.opset >= 18 else {}
                ctx.add("Split", [ctx.input(0)], tops, axis=axis, **extra)
                return
            for i, (start, end) in enumerate(zip((0, *points), (*points, np.iinfo(np.int64).max), strict=True)):
                ctx.slice(ctx.input(0), [start], [end], [axis], out=tops[i])
            return
        sizes = [ctx.out_shape(i)[axis] for i in range(ctx.num_outputs)]
        ctx.add("Split", [ctx.input(0), ctx.ints(sizes, "split")], [ctx.output(i) for i in range(ctx.num_outputs)],
                axis=axis)


@register
class Split(LayerSpec):
    type = "Split"
    onnx_dynamic_sizes = True
    layout_agnostic = True
    tops = (1, None)
    family = FAMILY
    summary = "copy the bottom to every top (backward sums the top diffs)"

    def attrs(self, layer):
        _no_in_place(layer)
        return None

    def module(self, node) -> Call:
        return call("Split", len(node.tops))

    def to_onnx(self, node, ctx):
        for i in range(ctx.num_outputs):
            ctx.identity(ctx.input(0), ctx.output(i))


@register
class Silence(LayerSpec):
    type = "Silence"
    onnx_dynamic_sizes = True
    bottoms = (1, None)
    tops = (0, 0)
    family = FAMILY
    summary = "consume bottoms without output (they get zero diff)"

    def infer_shapes(self, node, in_shapes):
        return []

    def module(self, node) -> Call:
        return call("Silence")

    def to_onnx(self, node, ctx):
        """Computes nothing; the exporter makes silenced blobs the outputs of a net that has no other."""
        for i in range(ctx.num_inputs):
            ctx.silence(ctx.input(i))


# ---------------------------------------------------------------------------------------------------------
# Flatten / Reshape
# ---------------------------------------------------------------------------------------------------------
class ReshapeLike(LayerSpec):
    """Shared plumbing of Flatten and Reshape: ``target`` maps an input shape to the output shape."""

    family = FAMILY
    onnx_dynamic_sizes = True  # the target shape is built from Shape() when sizes change

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

    def sized_target(self, node: Any, ctx: Any, x: str) -> str:
        """The target shape as a run-time tensor, for sizes that change with the input (``--dynamic``)."""
        raise NotImplementedError

    def copies_first_axis(self, node: Any, rank: int) -> bool:
        """Whether the top's first axis is the bottom's, whatever its size (so a dynamic batch can stay 0)."""
        raise NotImplementedError

    def to_onnx(self, node, ctx):
        """A ``Reshape`` to the inferred top shape (0/-1 for the batch axis when it is dynamic); with
        symbolic height/width, or a dynamic batch the top's first axis does not simply copy (``dim: 1 dim: -1``
        folds the batch into axis 1), to a shape built from the bottom's run-time shape (:meth:`sized_target`)."""
        x_rank = len(ctx.in_shape(0))
        batch_moves = not ctx.is_static(ctx.input(0)) and not self.copies_first_axis(node, x_rank)
        if (ctx.dynamic_sizes and ctx.sizes_vary) or batch_moves:
            x = ctx.input(0)
            ctx.add("Reshape", [x, self.sized_target(node, ctx, x)], ctx.output(0))
            return
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

    def copies_first_axis(self, node, rank):
        axis = node.attrs.axis + rank if node.attrs.axis < 0 else node.attrs.axis
        return axis > 0

    def sized_target(self, node, ctx, x):
        """The axes before and after the range copied from ``x``'s shape, -1 (inferred) for the merged range
        (1 for an empty range, which inserts an axis)."""
        n = len(ctx.in_shape(0))
        start, end = (a + n if a < 0 else a for a in (node.attrs.axis, node.attrs.end_axis))
        return ctx.concat_ints([ctx.dims(x, 0, start) if start else [], [1 if end + 1 == start else -1],
                                ctx.dims(x, end + 1) if end + 1 < n else []])

    def module(self, node) -> Call:
        """``nn.Flatten`` (the same inclusive axis range, and a view where possible as Caffe's is); an empty
        range (``end_axis`` just before ``axis``, which Caffe allows) inserts an axis of 1, a Reshape."""
        a = node.attrs
        start, end = a.axis, a.end_axis
        shape = node.in_shapes[0] if node.in_shapes else None
        if shape is not None:
            n = len(shape)
            start, end = (x + n if x < 0 else x for x in (start, end))
            if end + 1 == start:
                return call("Reshape", (1,), axis=start, num_axes=0)
            start, end = a.axis, a.end_axis
        kwargs = {} if start == 1 else {"start_dim": start}
        if end != -1:
            kwargs["end_dim"] = end
        return call("nn.Flatten", **kwargs)


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

    def copies_first_axis(self, node, rank):
        a = node.attrs
        start = a.axis if a.axis >= 0 else rank + a.axis + 1
        # at axis 0 with num_axes 0 the dims go before the batch, which then moves (unless there are none)
        return start > 0 or not a.dims or a.dims[0] == 0

    def sized_target(self, node, ctx, x):
        """Caffe's rule at run time: the axes outside ``axis .. axis + num_axes`` copied from ``x``'s shape,
        ``0`` dims copied from the matching bottom axis, ``-1`` left to Reshape to infer, others as given."""
        a, n = node.attrs, len(ctx.in_shape(0))
        start = a.axis if a.axis >= 0 else n + a.axis + 1
        end = n if a.num_axes == -1 else start + a.num_axes
        if start == 0 and end == n:  # the whole shape: Caffe's 0 and -1 mean what ONNX's do, a constant says it
            return ctx.ints(list(a.dims), "shape")
        parts: list[Any] = [ctx.dims(x, 0, start)] if start else []
        for i, d in enumerate(a.dims):
            parts.append(ctx.dims(x, start + i, start + i + 1) if d == 0 else [d])
        if end < n:
            parts.append(ctx.dims(x, end))
        return ctx.concat_ints(parts)

    def module(self, node) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.axis == 0 else {"axis": a.axis}
        if a.num_axes != -1:
            kwargs["num_axes"] = a.num_axes
        return call("Reshape", a.dims, **kwargs)


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


@register
class Crop(LayerSpec):
    type = "Crop"
    onnx_dynamic_sizes = True  # the reference's size is read at run time
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

    def module(self, node) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.axis == 2 else {"axis": a.axis}
        if a.offsets:
            kwargs["offset"] = a.offsets
        return call("Crop", **kwargs)

    def to_onnx(self, node, ctx):
        """``Slice`` of every axis from ``axis`` on, at Caffe's offsets, to the reference's size."""
        shape, out = ctx.in_shape(0), ctx.out_shape(0)
        axis = canonical_axis(node, self, node.attrs.axis, len(shape))
        offsets = _crop_offsets(shape, ctx.in_shape(1), node.attrs, axis)
        axes = range(axis, len(shape))
        if ctx.dynamic_sizes and ctx.sizes_vary:  # the reference's size read at run time (--dynamic)
            starts = ctx.ints([offsets[i] for i in axes], "starts")
            ends = ctx.add("Add", [starts, ctx.dims(ctx.input(1), axis, len(shape))])
            ctx.add("Slice", [ctx.input(0), starts, ends, ctx.ints(axes, "axes")], ctx.output(0))
            return
        ctx.slice(ctx.input(0), [offsets[i] for i in axes], [offsets[i] + out[i] for i in axes], axes,
                  out=ctx.output(0))


@dataclass(frozen=True)
class TileAttrs:
    axis: int
    tiles: int


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

    def module(self, node) -> Call:
        a = node.attrs
        return call("Tile", a.tiles, **({} if a.axis == 1 else {"axis": a.axis}))

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


@register
class Eltwise(LayerSpec):
    type = "Eltwise"
    onnx_dynamic_sizes = True
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

    def module(self, node) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.operation == "SUM" else {"operation": a.operation}
        if any(c != 1 for c in a.coeffs):
            kwargs["coeff"] = tuple(short_float(c) for c in a.coeffs)
        if a.operation == "PROD" and not a.stable_prod_grad:
            kwargs["stable_prod_grad"] = False
        return call("Eltwise", **kwargs)

    def residual_add(self, node) -> bool:
        """SUM of two distinct bottoms with unit coefficients."""
        a = node.attrs
        return a.operation == "SUM" and len(set(node.inputs)) == len(node.inputs) == 2 and a.coeffs == (1.0, 1.0)

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
        if len(xs) == 1:  # a fork's one-bottom SUM (FlowNet2)
            ctx.identity(xs[0], ctx.output(0))
            return
        op = "Mul" if a.operation == "PROD" else "Add"
        top = xs[0]
        for i, x in enumerate(xs[1:], 2):
            top = ctx.add(op, [top, x], ctx.output(0) if i == len(xs) else None)


# ---------------------------------------------------------------------------------------------------------
# Softmax / Reduction / ArgMax
# ---------------------------------------------------------------------------------------------------------
@register
class Softmax(LayerSpec):
    type = "Softmax"
    onnx_dynamic_sizes = True
    family = FAMILY
    summary = "softmax over axis (default 1, the channels; not the last axis)"

    def infer_shapes(self, node, in_shapes):
        canonical_axis(node, self, node.attrs.axis, len(in_shapes[0]))
        return [tuple(in_shapes[0])]

    def module(self, node) -> Call:
        return call("nn.Softmax", dim=node.attrs.axis)

    def to_onnx(self, node, ctx):
        axis = canonical_axis(node, self, node.attrs.axis, len(ctx.in_shape(0)))
        ctx.add("Softmax", [ctx.input(0)], ctx.output(0), axis=axis)


@dataclass(frozen=True)
class ReductionAttrs:
    operation: str  # SUM, ASUM, SUMSQ or MEAN
    axis: int
    coeff: float


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

    def module(self, node) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.operation == "SUM" else {"operation": a.operation}
        if a.axis != 0:
            kwargs["axis"] = a.axis
        if a.coeff != 1:
            kwargs["coeff"] = short_float(a.coeff)
        return call("Reduction", **kwargs)

    def to_onnx(self, node, ctx):
        """A reduction over all axes from ``axis`` on, then one multiply by the float32 coefficient (MEAN's
        ``1/dim`` folded into it, as Caffe does)."""
        a, shape = node.attrs, ctx.in_shape(0)
        axis = canonical_axis(node, self, a.axis, len(shape))
        op = {"SUM": "ReduceSum", "MEAN": "ReduceSum", "ASUM": "ReduceL1", "SUMSQ": "ReduceSumSquare"}[a.operation]
        coeff = np.float32(a.coeff)
        if a.operation == "MEAN" and axis == 0 and ctx.axis_symbolic(0, 0):  # the batch is counted
            op = "ReduceMean"  # dividing by the run-time count (Caffe's coeff / dim, rounded once more)
        elif a.operation == "MEAN":
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

    def module(self, node) -> Call:
        a = node.attrs
        kwargs: dict[str, Any] = {} if a.top_k == 1 else {"top_k": a.top_k}
        if a.axis is not None:
            kwargs["axis"] = a.axis
        if a.out_max_val:
            kwargs["out_max_val"] = True
        return call("ArgMax", **kwargs)

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
        if a.axis is not None and ctx.axis_symbolic(0, axis):  # the axis's size is known at run time only
            size = ctx.add("Gather", [ctx.shape_of(x), ctx.const(np.int64(axis), "axis")], axis=0)
            last = ctx.add("Sub", [size, ctx.const(np.int64(1), "one")])
        else:
            last = ctx.const(np.int64(n - 1), "last")
        index = ctx.add("Sub", [last, flipped_index])
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

    def module(self, node) -> Call:
        return call("BatchReindex")

    def to_onnx(self, node, ctx):
        """``Gather`` along axis 0; float indices truncate to int64 as Caffe's ``static_cast<int>``."""
        index = ctx.add("Cast", [ctx.input(1)], to=ctx.INT64)
        ctx.add("Gather", [ctx.input(0), index], ctx.output(0), axis=0)


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

    def module(self, node) -> Call:
        return call("Filter")

    def to_onnx(self, node, ctx):
        """``Compress`` along axis 0 with ``selector != 0`` (Caffe tests the float itself, not its int). The
        tops' first axis is known only at run time: the graph declares it as ``<layer>_items``."""
        sel_shape = ctx.in_shape(ctx.num_inputs - 1)
        selector = ctx.reshape(ctx.input(ctx.num_inputs - 1), sel_shape, (sel_shape[0],))
        keep = ctx.add("Not", [ctx.add("Equal", [selector, ctx.scalar(0.0)])])
        for i in range(ctx.num_outputs):
            ctx.add("Compress", [ctx.input(i), keep], ctx.output(i), axis=0)
            ctx.variable_first_axis(i, f"{node.name}_items")


# ---------------------------------------------------------------------------------------------------------
# Parameter / DummyData
# ---------------------------------------------------------------------------------------------------------
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

    def module(self, node) -> Call:
        # Caffe leaves the blob at zero unless weights are loaded (the default filler).
        return call("ParameterLayer", node.param_shapes[0] if node.param_shapes else node.attrs)

    def to_onnx(self, node, ctx):
        ctx.identity(ctx.const(ctx.param(0), "weight"), ctx.output(0))


@dataclass(frozen=True)
class DummyDataAttrs:
    shapes: tuple[Shape, ...]  # one per top
    fillers: tuple[Filler | None, ...]  # None = constant 0; one per top


#: Fillers whose value never changes; every other filler is drawn again on each forward pass, as Caffe does.
_FIXED_FILLERS = ("constant", "bilinear")
_FILLERS = (*_FIXED_FILLERS, "uniform", "gaussian", "positive_unitball", "xavier", "msra")


def _filler_fields(f: Filler | None) -> tuple[tuple[str, Any], ...]:
    """A filler as the ``(field, value)`` pairs that differ from Caffe's defaults (the type always), floats
    shown as the prototxt's decimals; ``()`` for none (constant 0)."""
    if f is None:
        return ()
    default = Filler()
    fields: list[tuple[str, Any]] = [("type", f.type)]
    for name in ("value", "min", "max", "mean", "std", "sparse", "variance_norm"):
        value = getattr(f, name)
        if value != getattr(default, name):
            fields.append((name, short_float(value) if isinstance(value, float) else value))
    return tuple(fields)


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
        fillers = [filler(f) for f in per_top(p.data_filler, "data_filler")] if len(p.data_filler) else [None] * n
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

    def module(self, node) -> Call:
        a = node.attrs
        for shape, f in zip(a.shapes, a.fillers, strict=True):
            if f is not None and f.type not in _FILLERS:
                raise ValueError(f"unknown filler type {f.type!r}")
            if f is not None and f.type == "bilinear" and (len(shape) != 4 or shape[-1] != shape[-2]):
                raise ValueError("bilinear filler needs a 4-D blob with square kernels")
            # caffe_rng_gaussian's CHECK_GT(sigma, 0) and caffe_rng_uniform's CHECK_LE(a, b), at set-up
            if f is not None and f.type == "gaussian" and not f.std > 0:
                raise ValueError(f"gaussian filler std must be above 0, got {short_float(f.std)}")
            if f is not None and f.type == "uniform" and f.min > f.max:
                raise ValueError(f"uniform filler min {short_float(f.min)} is above max {short_float(f.max)}")
        if all(f is None for f in a.fillers):
            return call("DummyData", a.shapes)
        return call("DummyData", a.shapes, data_filler=tuple(_filler_fields(f) for f in a.fillers))

    def to_onnx(self, node, ctx):
        """Fixed fillers (constant, bilinear) become initializers; a random filler is drawn again on every
        forward pass in Caffe, which a standard ONNX graph cannot reproduce."""
        fillers = node.attrs.fillers
        for i, f in enumerate(fillers):
            if f is not None and f.type not in _FIXED_FILLERS:
                ctx.unsupported(f"top {i} uses the random '{f.type}' filler, drawn anew on every pass")
        for i, (shape, f) in enumerate(zip(node.attrs.shapes, fillers, strict=True)):
            ctx.identity(ctx.const(fill_array(shape, f), f"top{i}"), ctx.output(i))
