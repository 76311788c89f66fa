"""Blob-structure and routing modules: Concat, Slice, Split, Silence, Reshape, Crop, Tile,
Eltwise, Reduction, ArgMax, BatchReindex, Filter, Parameter and DummyData (Flatten and
Softmax are ``nn.Flatten``/``nn.Softmax``).

Caffe's ``float`` fields (Eltwise ``coeff``, Reduction ``coeff``) are single precision:
the modules round them to float32 once, so generated code may show the decimal the
prototxt wrote and still compute with Caffe's exact value.
"""

import itertools
import math
import struct

import torch
from torch import nn


def _structure_float32(value: float) -> float:
    """``value`` rounded to float32, as Caffe's ``float`` fields hold it."""
    return struct.unpack("f", struct.pack("f", value))[0]


class Concat(nn.Module):
    """Caffe's Concat: join the bottoms along ``axis`` (one bottom passes through)."""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        if len(bottoms) == 1:
            return bottoms[0]
        return torch.cat(bottoms, dim=self.axis)


class Slice(nn.Module):
    """Caffe's Slice: cut along ``axis`` at ``slice_point`` (``tops - 1`` increasing
    positions), or into ``tops`` equal parts when no point is given."""

    def __init__(self, tops: int, axis: int = 1, slice_point: tuple[int, ...] = ()):
        super().__init__()
        self.tops, self.axis, self.slice_point = tops, axis, slice_point

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        dim = x.shape[self.axis]
        # one top: the bottom itself, a tensor as every one-top layer gives
        if self.tops == 1:
            return x
        if not self.slice_point:
            return torch.split(x, dim // self.tops, dim=self.axis)
        bounds = (0, *self.slice_point, dim)
        sizes = [b - a for a, b in itertools.pairwise(bounds)]
        return torch.split(x, sizes, dim=self.axis)


class Split(nn.Module):
    """Caffe's Split: the bottom as each of ``tops`` tops. Autograd sums the tops'
    gradients, as Caffe's backward does."""

    def __init__(self, tops: int) -> None:
        super().__init__()
        self.tops = tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return x if self.tops == 1 else (x,) * self.tops


class Silence(nn.Module):
    """Caffe's Silence: consumes its bottoms; no top, and no gradient reaches them."""

    def forward(self, *bottoms: torch.Tensor) -> tuple[()]:
        return ()


class Reshape(nn.Module):
    """Caffe's Reshape of the axes ``axis .. axis + num_axes`` (-1: to the end; a
    negative ``axis`` counts from after the last axis) to ``shape``, where 0 copies the
    bottom's dimension and one -1 is inferred. A view of the bottom, as in Caffe."""

    def __init__(self, shape: tuple[int, ...], axis: int = 0, num_axes: int = -1):
        super().__init__()
        self.shape, self.axis, self.num_axes = shape, axis, num_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.dim()
        start = self.axis if self.axis >= 0 else n + self.axis + 1
        end = n if self.num_axes == -1 else start + self.num_axes
        new = [x.shape[start + i] if d == 0 else d for i, d in enumerate(self.shape)]
        return x.reshape((*x.shape[:start], *new, *x.shape[end:]))


class Crop(nn.Module):
    """Caffe's Crop: bottom 0 cut to bottom 1's shape on every axis from ``axis`` on,
    starting at ``offset`` (one for all those axes, or one per axis; none = 0). Only the
    reference's shape is read, so it gets no gradient, as in Caffe."""

    def __init__(self, axis: int = 2, offset: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.axis, self.offset = axis, offset

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim()
        index = []
        for i in range(x.dim()):
            if i < axis:
                index.append(slice(None))
                continue
            start = 0
            if self.offset:
                start = self.offset[0 if len(self.offset) == 1 else i - axis]
            if x.shape[i] - start < ref.shape[i]:
                raise ValueError(
                    f"crop of axis {i} out of bounds: size {ref.shape[i]} at offset "
                    f"{start} in {x.shape[i]}"
                )
            index.append(slice(start, start + ref.shape[i]))
        return x[tuple(index)]


class Tile(nn.Module):
    """Caffe's Tile: the sub-blob from ``axis`` on repeated ``tiles`` times along
    ``axis``. Autograd sums the copies' gradients, as Caffe's backward does."""

    def __init__(self, tiles: int, axis: int = 1) -> None:
        super().__init__()
        self.tiles, self.axis = tiles, axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reps = [1] * x.dim()
        reps[self.axis % x.dim()] = self.tiles
        return x.repeat(reps)


class _EltwiseProd(torch.autograd.Function):
    """Caffe's PROD backward: the product of the other bottoms (stable), or top / bottom
    (unstable, which gives inf/nan where a bottom is 0, exactly as Caffe)."""

    @staticmethod
    def forward(ctx, stable: bool, *xs: torch.Tensor) -> torch.Tensor:
        top = xs[0] * xs[1]
        for x in xs[2:]:
            top = top * x
        ctx.stable = stable
        ctx.save_for_backward(top, *xs)
        return top

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
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
    """Caffe's MAX: bottom 1 wins a tie with bottom 0 (``a > b ? a : b``), later bottoms
    replace the running max only when strictly greater; the whole gradient goes to the
    recorded winner."""

    @staticmethod
    def forward(ctx, *xs: torch.Tensor) -> torch.Tensor:
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
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        zero = grad.new_zeros(())
        return tuple(
            torch.where(mask == i, grad, zero) if need else None
            for i, need in enumerate(ctx.needs_input_grad)
        )


class Eltwise(nn.Module):
    """Caffe's Eltwise of same-shape bottoms: ``"SUM"`` (``coeff`` per bottom, default
    all 1, accumulated in bottom order), ``"PROD"`` (Caffe's stable or unstable
    gradient) or ``"MAX"`` (gradient to Caffe's arg-max, at most 255 bottoms)."""

    def __init__(
        self,
        operation: str = "SUM",
        coeff: tuple[float, ...] = (),
        stable_prod_grad: bool = True,
    ) -> None:
        super().__init__()
        self.operation = operation
        self.coeff = tuple(_structure_float32(c) for c in coeff)
        self.stable_prod_grad = stable_prod_grad

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.operation == "PROD":
            return _EltwiseProd.apply(self.stable_prod_grad, *xs)
        if self.operation == "MAX":
            return _EltwiseMax.apply(*xs)
        coeff = self.coeff or (1.0,) * len(xs)
        top = xs[0] if coeff[0] == 1 else xs[0] * coeff[0]
        for x, c in zip(xs[1:], coeff[1:], strict=True):
            top = top + x if c == 1 else torch.add(top, x, alpha=c)
        return top


class Reduction(nn.Module):
    """Caffe's Reduction: ``"SUM"``, ``"ASUM"``, ``"SUMSQ"`` or ``"MEAN"`` over every axis
    from ``axis`` on, times ``coeff``; the top has shape ``x.shape[:axis]``. Caffe folds
    MEAN's ``1 / count`` into the float32 coefficient, and so does this module."""

    def __init__(self, operation: str = "SUM", axis: int = 0, coeff: float = 1.0):
        super().__init__()
        self.operation, self.axis = operation, axis
        self.coeff = _structure_float32(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim() if x.dim() else 0
        outer = x.shape[:axis]
        flat = x.reshape(math.prod(outer), -1)
        if self.operation == "ASUM":
            y = flat.abs().sum(1)  # abs' subgradient at 0 is 0, Caffe's sign(0)
        elif self.operation == "SUMSQ":
            y = (flat * flat).sum(1)
        else:
            y = flat.sum(1)
        coeff = self.coeff
        if self.operation == "MEAN":
            coeff = _structure_float32(coeff / flat.shape[1])
        if coeff != 1:
            y = y * coeff
        return y.reshape(outer)


def _argmax_top_k(
    x: torch.Tensor, k: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values along ``dim`` and their indices, ties resolved as Caffe's
    ``partial_sort`` of (value, index) pairs: among equal values the larger index first."""
    n = x.shape[dim]
    values, rev = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, k), (n - 1 - rev).narrow(dim, 0, k)


class ArgMax(nn.Module):
    """Caffe's ArgMax: the ``top_k`` indices (or values, with ``out_max_val``) along
    ``axis``; with ``axis`` None, per sample over the flattened rest, as rows
    ``(index[, value])`` of shape ``(N, 1|2, top_k)``. No gradient, as in Caffe."""

    def __init__(
        self, top_k: int = 1, axis: int | None = None, out_max_val: bool = False
    ) -> None:
        super().__init__()
        self.top_k, self.axis, self.out_max_val = top_k, axis, out_max_val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.axis is not None:
            values, idx = _argmax_top_k(x, self.top_k, self.axis % x.dim())
            return values if self.out_max_val else idx.to(x.dtype)
        values, idx = _argmax_top_k(x.reshape(x.shape[0], -1), self.top_k, 1)
        parts = (idx.to(x.dtype), values) if self.out_max_val else (idx.to(x.dtype),)
        out = torch.stack(parts, dim=1)
        return out.reshape(*out.shape, *([1] * (x.dim() - 3)))


class BatchReindex(nn.Module):
    """Caffe's BatchReindex: items of bottom 0 (axis 0) picked by the indices in bottom
    1, truncated like ``static_cast<int>``; repeated picks accumulate gradient."""

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, index.detach().to(torch.long))


class Filter(nn.Module):
    """Caffe's Filter: the items (axis 0) of each bottom but the last whose selector
    (the last bottom) is non-zero."""

    def forward(
        self, *bottoms: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        selector = bottoms[-1].detach()
        keep = torch.nonzero(selector.reshape(selector.shape[0]) != 0).squeeze(1)
        tops = tuple(b.index_select(0, keep) for b in bottoms[:-1])
        return tops[0] if len(tops) == 1 else tops


class ParameterLayer(nn.Module):
    """Caffe's Parameter layer: its learned blob ``weight`` of ``shape`` is the top."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self) -> torch.Tensor:
        return self.weight


def _dummy_fans(shape: tuple[int, ...], variance_norm: str) -> float:
    """Caffe's fan for xavier/msra: ``count / shape[0]`` (FAN_IN), ``count / shape[1]``
    (FAN_OUT) or their mean (AVERAGE)."""
    n = math.prod(shape)
    fan_in = n / shape[0] if len(shape) >= 1 and shape[0] else n
    fan_out = n / shape[1] if len(shape) >= 2 and shape[1] else n
    if variance_norm == "FAN_OUT":
        return fan_out
    if variance_norm == "AVERAGE":
        return (fan_in + fan_out) / 2
    return fan_in


def _dummy_bilinear(shape: tuple[int, ...]) -> torch.Tensor:
    """Caffe's bilinear upsampling kernel, computed in float32 as Caffe master does."""
    k = shape[-1]
    f = math.ceil(k / 2.0)
    c = torch.tensor((k - 1) / (2.0 * f), dtype=torch.float32)
    x = torch.arange(k, dtype=torch.float32)
    w1 = 1 - (x / f - c).abs()
    return (w1[:, None] * w1[None, :]).expand(*shape).clone()


def _dummy_fill(shape: tuple[int, ...], filler: dict) -> torch.Tensor:
    """A float32 tensor filled as Caffe's filler ``filler`` (FillerParameter's fields
    by name, Caffe's defaults for those not given) would fill it."""
    kind = filler.get("type", "constant")
    if kind == "constant":
        return torch.full(shape, float(filler.get("value", 0.0)))
    if kind == "bilinear":
        return _dummy_bilinear(shape)
    out = torch.empty(shape)
    if out.numel() == 0:
        return out
    if kind == "uniform":
        return out.uniform_(filler.get("min", 0.0), filler.get("max", 1.0))
    if kind == "gaussian":
        out.normal_(filler.get("mean", 0.0), filler.get("std", 1.0))
        sparse = filler.get("sparse", -1)
        if sparse >= 0 and len(shape) >= 2:
            out.mul_(torch.rand(shape) < (sparse / shape[1]))
        return out
    if kind == "positive_unitball":
        out.uniform_(0, 1)
        flat = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        flat.div_(flat.sum(dim=1, keepdim=True).clamp_min(1e-12))
        return out
    fan = _dummy_fans(shape, filler.get("variance_norm", "FAN_IN"))
    if kind == "xavier":
        scale = math.sqrt(3.0 / fan)
        return out.uniform_(-scale, scale)
    if kind == "msra":
        return out.normal_(0.0, math.sqrt(2.0 / fan))
    raise ValueError(f"unknown filler type {kind!r}")


#: Fillers that always give the same values; the others are drawn again on every pass.
class DummyData(nn.Module):
    """Caffe's DummyData: one top of each shape in ``shapes``, filled by the matching
    filler of ``data_filler`` (none = constant 0 for every top), given as tuples of
    ``(field, value)`` pairs of Caffe's FillerParameter, e.g.
    ``(("type", "gaussian"), ("std", 0.01))``. Random fillers are drawn again on every
    forward pass, as Caffe does. The empty buffer ``anchor`` only follows ``.to()``, so
    the tops get the module's device and dtype."""

    def __init__(
        self,
        shapes: tuple[tuple[int, ...], ...],
        data_filler: tuple[tuple[tuple[str, object], ...], ...] = (),
    ) -> None:
        super().__init__()
        self.shapes = shapes
        self.data_filler = data_filler or ((),) * len(shapes)
        self.register_buffer("anchor", torch.zeros(0), persistent=False)
        self.held: list[torch.Tensor | None] = [None] * len(shapes)

    def holds(self, i: int) -> bool:
        """Whether Caffe fills top ``i`` once and keeps it (a constant filler): values written into it stay."""
        return dict(self.data_filler[i]).get("type", "constant") == "constant"

    def hold(self, i: int, value: torch.Tensor) -> None:
        """Give top ``i`` these values from now on (what a caller wrote into Caffe's blob of a held top)."""
        if tuple(value.shape) != tuple(self.shapes[i]):
            raise ValueError(
                f"top {i} has shape {tuple(self.shapes[i])}, not {tuple(value.shape)}"
            )
        self.held[i] = value.detach().to(self.anchor).clone()

    def forward(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tops = []
        for i, (shape, filler) in enumerate(
            zip(self.shapes, self.data_filler, strict=True)
        ):
            kept = self.held[i]
            if kept is None:
                tops.append(_dummy_fill(shape, dict(filler)).to(self.anchor))
            else:  # a copy: layers after this one never change the held values
                tops.append(kept.to(self.anchor).clone())
        return tops[0] if len(tops) == 1 else tuple(tops)
