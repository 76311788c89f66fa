"""FlowNet2's layers in standard ONNX (torch-free): shapes are fixed at export, so resizing becomes two matrix
products with constant matrices, warping a ``GatherElements`` of the four neighbours, correlation one
``Slice``/``Mul``/``ReduceSum`` per displacement. Each computes what :mod:`.flownet_nn` computes, up to float32
rounding (the runtime's order of operations differs in places)."""

from __future__ import annotations

from typing import Any

from ...lazy_numpy import np


def round_away(v):
    """CUDA's ``round`` (halves away from zero) of a float32 array."""
    whole = np.trunc(v)
    return whole + np.where(np.abs(v - whole) >= np.float32(0.5), np.sign(v), np.float32(0))


def _filter(kind: str, d):
    if kind == "LINEAR":
        return np.maximum(np.float32(1) - np.abs(d), np.float32(0))
    x = np.abs(d)
    near = x * x * (np.float32(1.5) * x - np.float32(2.5)) + np.float32(1)
    far = x * (x * (np.float32(-0.5) * x + np.float32(2.5)) - np.float32(4)) + np.float32(2)
    return np.where(x <= 1, near, np.where(x < 2, far, np.float32(0))).astype(np.float32)


def resample_positions(size_out: int, own, other):
    """The fork's source coordinates ``i * f + g / 2 - 0.5`` (float32; ``g`` the other axis's scale)."""
    return np.arange(size_out, dtype=np.float32) * np.float32(own) + np.float32(other) / np.float32(2) - np.float32(0.5)


def resample_matrix(kind: str, pos, size_in: int, scale, antialias: bool):
    """``(len(pos), size_in)``: each output position's normalised tap weights (rows of no weight stay 0)."""
    a = np.float32(1) / np.float32(scale if antialias else 1)
    width = 4 if kind == "CUBIC" else 2
    radius = 2 if scale < 1 else int(np.ceil(np.float32(width) / a))
    taps = round_away(pos).astype(np.int64)[:, None] + np.arange(-radius, radius + 1)
    inside = (taps >= 0) & (taps < size_in)
    weight = a * _filter(kind, a * (pos[:, None] - taps.astype(np.float32)))
    weight = np.where(inside, weight, np.float32(0)).astype(np.float32)
    out = np.zeros((len(pos), size_in), np.float32)
    np.add.at(out, (np.repeat(np.arange(len(pos)), taps.shape[1]), np.clip(taps, 0, size_in - 1).ravel()),
              weight.ravel())
    total = out.sum(1, keepdims=True)
    return np.where(total == 0, np.float32(0), out / np.where(total == 0, np.float32(1), total)).astype(np.float32)


def accum_matrix(size_in: int, size_out: int):
    """Aligned-corners bilinear weights ``(size_out, size_in)`` at ``i / (out - 1) * (in - 1)`` (float32)."""
    pos = np.arange(size_out, dtype=np.float32) / np.float32(size_out - 1) * np.float32(size_in - 1)
    left = np.floor(pos)
    frac = pos - left
    out = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    np.add.at(out, (rows, left.astype(np.int64)), np.float32(1) - frac)
    np.add.at(out, (rows, np.minimum(left.astype(np.int64) + 1, size_in - 1)), frac)
    return out


def separable(ctx: Any, x: str, rows, cols, out: str | None = None) -> str:
    """``rows @ x @ cols.T`` over the last two axes (MatMul broadcasts over batch and channels)."""
    return ctx.add("MatMul", [ctx.add("MatMul", [ctx.const(rows, "rows"), x]), ctx.const(cols.T.copy(), "cols")],
                   out)


def resample(node: Any, ctx: Any) -> None:
    a = node.attrs
    _n, _c, h, w = ctx.in_shape(0)
    _n, _c, th, tw = ctx.out_shape(0)
    fx, fy = np.float32(w) / np.float32(tw), np.float32(h) / np.float32(th)
    xpos, ypos = resample_positions(tw, fx, fy), resample_positions(th, fy, fx)
    if a.type == "NEAREST":
        rows = ctx.add("Gather", [ctx.input(0), ctx.const(round_away(ypos).astype(np.int64), "rows")], axis=2)
        ctx.add("Gather", [rows, ctx.const(round_away(xpos).astype(np.int64), "cols")], ctx.output(0), axis=3)
        return
    antialias = bool(a.antialias) and (fx > 1 or fy > 1)
    separable(ctx, ctx.input(0), resample_matrix(a.type, ypos, h, fy, antialias),
              resample_matrix(a.type, xpos, w, fx, antialias), ctx.output(0))


def accum(node: Any, ctx: Any) -> None:
    _n, _c, th, tw = ctx.out_shape(0)
    count = ctx.num_inputs - (1 if node.attrs.have_reference else 0)
    parts = []
    for i in range(count):
        _n, _c, h, w = ctx.in_shape(i)
        parts.append(separable(ctx, ctx.input(i), accum_matrix(h, th), accum_matrix(w, tw),
                               ctx.output(0) if count == 1 else None))
    if count > 1:
        ctx.add("Concat", parts, ctx.output(0), axis=1)


def channel_norm(ctx: Any) -> None:
    x = ctx.input(0)
    ctx.add("Sqrt", [ctx.reduce("ReduceSum", ctx.add("Mul", [x, x]), [1])], ctx.output(0))


def correlation(node: Any, ctx: Any) -> None:
    a = node.attrs
    p, k, md, s1, s2 = a.pad, a.kernel_size, a.max_displacement, a.stride1, a.stride2
    first, second = ctx.input(0), ctx.input(1)
    r = md // s2
    if a.x_steps is None:
        vertical, top, ys, xs = p, md, range(-r, r + 1), range(-r, r + 1)
    else:
        vertical, top, ys, xs = 0, 0, range(1), a.x_steps
    if p:
        pads = ctx.ints([0, 0, vertical, p, 0, 0, vertical, p], "pads")
        first, second = ctx.add("Pad", [first, pads]), ctx.add("Pad", [second, pads])
    c, th, tw = ctx.in_shape(0)[1], ctx.out_shape(0)[2], ctx.out_shape(0)[3]
    span_h, span_w = (th - 1) * s1 + k, (tw - 1) * s1 + k
    step = [s1, s1] if k == 1 else [1, 1]
    region = ctx.slice(first, [top, md], [top + span_h, md + span_w], [2, 3], step)
    outs = []
    for dy in ys:
        for dx in xs:
            y0, x0 = top + dy * s2, md + dx * s2
            shifted = ctx.slice(second, [y0, x0], [y0 + span_h, x0 + span_w], [2, 3], step)
            prod = ctx.reduce("ReduceSum", ctx.add("Mul", [region, shifted]), [1])
            if k > 1:  # the mean over the k x k window: the window's sum / k^2
                prod = ctx.add("AveragePool", [prod], kernel_shape=[k, k], strides=[s1, s1])
            outs.append(prod)
    stacked = ctx.add("Concat", outs, axis=1)
    ctx.add("Mul", [stacked, ctx.scalar(1.0 / c)], ctx.output(0))


def flow_warp(node: Any, ctx: Any) -> None:
    n, c, h, w = ctx.in_shape(0)
    flow = ctx.input(1)
    x2 = ctx.add("Add", [ctx.slice(flow, [0], [1], [1]), ctx.const(np.arange(w, dtype=np.float32).reshape(1, 1, 1, w))])
    y2 = ctx.add("Add", [ctx.slice(flow, [1], [2], [1]), ctx.const(np.arange(h, dtype=np.float32).reshape(1, 1, h, 1))])
    zero = ctx.scalar(0.0)

    def within(v: str, size: int) -> str:
        return ctx.add("And", [ctx.add("Not", [ctx.add("Less", [v, zero])]),
                               ctx.add("Less", [v, ctx.scalar(float(size))])])

    inside = ctx.add("And", [within(x2, w), within(y2, h)])
    x2, y2 = ctx.add("Where", [inside, x2, zero]), ctx.add("Where", [inside, y2, zero])
    left, top = ctx.add("Floor", [x2]), ctx.add("Floor", [y2])
    alpha, beta = ctx.add("Sub", [x2, left]), ctx.add("Sub", [y2, top])
    one = ctx.scalar(1.0)
    right = ctx.add("Min", [ctx.add("Add", [left, one]), ctx.scalar(float(w - 1))])
    bottom = ctx.add("Min", [ctx.add("Add", [top, one]), ctx.scalar(float(h - 1))])
    flat = ctx.reshape(ctx.input(0), (n, c, h, w), [n, c, h * w])
    expand = ctx.shape_of(flat)

    def corner(row: str, col: str) -> str:
        index = ctx.add("Cast", [ctx.add("Add", [ctx.add("Mul", [row, ctx.scalar(float(w))]), col])], to=ctx.INT64)
        index = ctx.add("Expand", [ctx.reshape(index, (n, 1, h, w), [n, 1, h * w]), expand])
        return ctx.reshape(ctx.add("GatherElements", [flat, index], axis=2), (n, c, h * w), [n, c, h, w])

    not_alpha, not_beta = ctx.add("Sub", [one, alpha]), ctx.add("Sub", [one, beta])
    terms = [ctx.add("Mul", [ctx.add("Mul", [wx, wy]), corner(row, col)])
             for wx, wy, row, col in ((not_alpha, not_beta, top, left), (alpha, not_beta, top, right),
                                      (not_alpha, beta, bottom, left), (alpha, beta, bottom, right))]
    total = ctx.add("Add", [ctx.add("Add", [ctx.add("Add", terms[:2]), terms[2]]), terms[3]])
    fill = ctx.scalar(float("nan") if node.attrs.fill_value == "NOT_A_NUMBER" else 0.0)
    ctx.add("Where", [inside, total, fill], ctx.output(0))


def data_augmentation(node: Any, ctx: Any) -> None:
    a = node.attrs
    if a.recompute_mean:
        passes = float(ctx.param(0).reshape(-1)[0])
        if passes < a.recompute_mean:
            ctx.unsupported(f"its mean is still averaged over the first {a.recompute_mean} passes ({passes:.0f} "
                            "so far): load trained weights (or run that many passes) before exporting")
        mean = ctx.param(1) if a.mean_per_pixel else ctx.param(2)
        ctx.add("Sub", [ctx.input(0), ctx.const(np.asarray(mean, np.float32), "mean")], ctx.output(0))
    elif a.fixed is not None and not a.mean_per_pixel:
        ctx.add("Sub", [ctx.input(0), ctx.const(np.asarray(a.fixed, np.float32).reshape(1, -1, 1, 1), "mean")],
                ctx.output(0))
    else:
        ctx.identity(ctx.input(0), ctx.output(0))
