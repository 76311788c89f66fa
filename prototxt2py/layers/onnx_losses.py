"""Standard-op ONNX for the loss layers and Accuracy: what ``caffe test`` reports, computed in onnxruntime.

Each function is the ``to_onnx`` of one spec in :mod:`prototxt2py.layers.losses` and follows Caffe's forward
(and so :mod:`prototxt2py.nn.losses`) operation by operation, because a train_val net's loss and accuracy tops
are compared with Caffe's numbers, not with a textbook formula:

* labels are float blobs read with ``static_cast<int>``: ``Cast`` to int64 truncates toward zero the same way;
* probabilities are clamped before the log (``FLT_MIN`` for SoftmaxWithLoss, ``1e-20`` for InfogainLoss and
  MultinomialLogisticLoss), so the standard ``SoftmaxCrossEntropyLoss`` (a log-softmax, no clamp) is not used;
  SigmoidCrossEntropyLoss keeps Caffe's ``log(1 + exp(.))`` (not a softplus);
* normalizers are Caffe's ``get_normalizer``, ``max(1, n)``; counts that follow the batch are read from the
  tensors' runtime shapes, so a dynamic batch gives the right divisor;
* the top is the plain loss: ``loss_weight`` only scales the training objective, not the blob.

Imports nothing but numpy: building the graph never needs torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..lazy_numpy import np
from .base import canonical_axis, count

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

#: Caffe's clamp of SoftmaxWithLoss probabilities (``FLT_MIN``) and of Infogain/MultinomialLogistic (1e-20).
FLT_MIN = 1.1754943508222875e-38  # float(np.finfo(np.float32).tiny)
LOG_THRESHOLD = 1e-20


# -- shared pieces -----------------------------------------------------------------------------------------
def static_inputs(ctx: Any) -> bool:
    """Whether every bottom of the layer has its static shape at run time (else counts are read from the
    runtime shapes: a dynamic batch, or items picked by a Filter)."""
    return all(ctx.is_static(ctx.input(i)) for i in range(ctx.num_inputs))


def runtime_count(ctx: Any, x: str, static: int, axes: tuple[int, int] | None = None) -> str:
    """A float32 scalar: the element count of ``x`` (or the product of its dims ``axes[0]:axes[1]``). A
    constant when the layer's bottoms have static shapes; else read from ``x``'s runtime shape (a dynamic batch,
    items picked by a Filter)."""
    if static_inputs(ctx):
        return ctx.scalar(float(static))
    if axes is None:
        size = ctx.add("Size", [x])
    else:
        dims = ctx.slice(ctx.add("Shape", [x]), [axes[0]], [axes[1]], [0])
        size = ctx.reduce("ReduceProd", dims, [0], keepdims=False)
    return ctx.add("Cast", [size], to=ctx.FLOAT)


def normalizer(ctx: Any, mode: str, label: str, outer: int, inner: int, valid: str | None) -> str:
    """Caffe's ``get_normalizer`` as a float32 scalar, ``max(1, n)``: FULL = all positions, VALID = positions
    not ignored (all without an ignore_label), BATCH_SIZE = the outer count, NONE = 1. ``label`` holds one
    value per position (outer x inner of them)."""
    if mode == "NONE":
        return ctx.scalar(1.0)
    if mode == "VALID" and valid is not None:
        n = ctx.reduce("ReduceSum", ctx.add("Cast", [valid], to=ctx.FLOAT), range(3), keepdims=False)
    elif mode == "BATCH_SIZE":
        n = runtime_count(ctx, label, outer)
        if not static_inputs(ctx) and inner != 1:
            n = ctx.add("Div", [n, ctx.scalar(float(inner))])
    else:
        n = runtime_count(ctx, label, outer * inner)
    return ctx.add("Max", [n, ctx.scalar(1.0)])


def class_split(ctx: Any, node: Node, spec: Any, axis: int) -> tuple[str, str, str | None, int, int, int]:
    """Bottom 0 as ``(outer, classes, inner)`` around ``axis``, the labels (bottom 1) as int64
    ``(outer, 1, inner)`` with ignored positions replaced by class 0 (so they index safely), the bool mask of
    counted positions (None without an ignore_label), and outer, classes, inner."""
    shape = ctx.in_shape(0)
    axis = canonical_axis(node, spec, axis, len(shape))
    outer, classes, inner = count(shape, 0, axis), shape[axis], count(shape, axis + 1)
    x3 = ctx.reshape(ctx.input(0), shape, (outer, classes, inner))
    label = ctx.reshape(ctx.input(1), ctx.in_shape(1), (outer, 1, inner))
    index = ctx.add("Cast", [label], to=ctx.INT64)
    ignore = node.attrs.ignore_label
    if ignore is None:
        return x3, index, None, outer, classes, inner
    valid = ctx.add("Not", [ctx.add("Equal", [index, ctx.const(np.array(ignore, dtype=np.int64), "ignore")])])
    index = ctx.add("Where", [valid, index, ctx.const(np.array(0, dtype=np.int64), "zero")])
    return x3, index, valid, outer, classes, inner


def masked_sum(ctx: Any, per: str, valid: str | None, rank: int) -> str:
    """Sum of ``per`` over all its ``rank`` axes, positions outside ``valid`` left out."""
    if valid is not None:
        per = ctx.add("Where", [valid, per, ctx.scalar(0.0)])
    return ctx.reduce("ReduceSum", per, range(rank), keepdims=False)


def first_dim(ctx: Any, x: str, static: int) -> str:
    """Axis 0 of ``x`` (Caffe's ``num``) as a float32 scalar."""
    return runtime_count(ctx, x, static, (0, 1))


def per_sample(ctx: Any, i: int) -> tuple[str, int]:
    """Bottom ``i`` flattened to ``(num, rest)`` (Caffe's ``count() / num()`` view) and ``num``."""
    shape = ctx.in_shape(i)
    return ctx.reshape(ctx.input(i), shape, (shape[0], count(shape, 1))), shape[0]


def first_values(ctx: Any, i: int, num: int, num_from: str) -> str:
    """The first ``num`` values of bottom ``i`` as int64 (Caffe reads ``label[n]`` for ``n < num``, truncated):
    the labels of HingeLoss and the similarity flags of ContrastiveLoss."""
    flat = ctx.reshape(ctx.input(i), ctx.in_shape(i), (-1,))
    if count(ctx.in_shape(i)) != num or not static_inputs(ctx):
        end = ctx.ints([num], "end") if static_inputs(ctx) else ctx.slice(ctx.add("Shape", [num_from]), [0], [1], [0])
        flat = ctx.add("Slice", [flat, ctx.ints([0], "starts"), end, ctx.ints([0], "axes")])
    return ctx.add("Cast", [flat], to=ctx.INT64)


def loss_top(ctx: Any, total: str, divisor: str, negate: bool = False) -> None:
    """Top 0 = ``total / divisor`` (``-total / divisor``), as Caffe divides its float accumulator."""
    if negate:
        total = ctx.add("Neg", [total])
    ctx.add("Div", [total, divisor], ctx.output(0))


# -- the layers --------------------------------------------------------------------------------------------
def softmax_with_loss(node: Node, ctx: Any, spec: Any) -> None:
    """``-sum log(max(softmax(x)[label], FLT_MIN)) / normalizer`` over the positions not ignored, each term
    times its label's weight with SegNet's ``class_weighting``."""
    a = node.attrs
    x3, index, valid, outer, _, inner = class_split(ctx, node, spec, a.axis)
    prob = ctx.add("Softmax", [x3], axis=1)
    picked = ctx.add("GatherElements", [prob, index], axis=1)
    logp = ctx.add("Log", [ctx.add("Max", [picked, ctx.scalar(FLT_MIN)])])
    if a.class_weighting is not None:
        weights = ctx.const(np.asarray(a.class_weighting, dtype=np.float32), "class_weighting")
        logp = ctx.add("Mul", [logp, ctx.add("Gather", [weights, index], axis=0)])
    total = masked_sum(ctx, logp, valid, 3)
    loss_top(ctx, total, normalizer(ctx, a.normalization, index, outer, inner, valid), negate=True)


def infogain_loss(node: Node, ctx: Any, spec: Any) -> None:
    """``-sum_l H[label, l] log(max(p_l, 1e-20)) / normalizer``, H the third bottom; top 1 = the softmax."""
    if ctx.num_inputs < 3:
        ctx.unsupported(f"InfogainLoss reads H from infogain_loss_param.source ('{node.attrs.source}'), which "
                        "is not loaded; give H as a third bottom (e.g. an Input or Parameter blob)")
    a = node.attrs
    x3, index, valid, outer, classes, inner = class_split(ctx, node, spec, a.axis)
    prob = ctx.add("Softmax", [x3], axis=1)
    logp = ctx.add("Log", [ctx.add("Max", [prob, ctx.scalar(LOG_THRESHOLD)])])
    h = ctx.reshape(ctx.input(2), ctx.in_shape(2), (classes, classes))
    rows = ctx.add("Gather", [h, ctx.add("Squeeze", [index, ctx.ints([1], "axes")])], axis=0)  # (outer, inner, C)
    weighted = ctx.add("Mul", [ctx.add("Transpose", [rows], perm=[0, 2, 1]), logp])
    per = ctx.reduce("ReduceSum", weighted, [1], keepdims=True)
    total = masked_sum(ctx, per, valid, 3)
    loss_top(ctx, total, normalizer(ctx, a.normalization, index, outer, inner, valid), negate=True)
    if ctx.num_outputs > 1:
        ctx.reshape(prob, (outer, classes, inner), ctx.in_shape(0), ctx.output(1))


def sigmoid_cross_entropy_loss(node: Node, ctx: Any) -> None:
    """``-sum(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))) / normalizer``, targets used as floats."""
    a = node.attrs
    shape = ctx.in_shape(0)
    x = ctx.input(0)
    target = ctx.reshape(ctx.input(1), ctx.in_shape(1), shape)
    pos = ctx.add("Cast", [ctx.add("GreaterOrEqual", [x, ctx.scalar(0.0)])], to=ctx.FLOAT)
    x_pos = ctx.add("Mul", [x, pos])
    first = ctx.add("Mul", [x, ctx.add("Sub", [target, pos])])
    expo = ctx.add("Exp", [ctx.add("Sub", [x, ctx.add("Add", [x_pos, x_pos])])])
    per = ctx.add("Sub", [first, ctx.add("Log", [ctx.add("Add", [expo, ctx.scalar(1.0)])])])
    valid = None
    if a.ignore_label is not None:
        index = ctx.add("Cast", [target], to=ctx.INT64)
        valid = ctx.add("Not", [ctx.add("Equal", [index, ctx.const(np.array(a.ignore_label, np.int64), "ignore")])])
    total = masked_sum(ctx, per, valid, len(shape))
    loss_top(ctx, total, _flat_normalizer(ctx, a.normalization, x, shape, valid), negate=True)


def _flat_normalizer(ctx: Any, mode: str, x: str, shape: tuple[int, ...], valid: str | None) -> str:
    """get_normalizer for a layer whose outer count is axis 0 and whose positions are all of ``x``'s
    elements (SigmoidCrossEntropyLoss)."""
    if mode == "NONE":
        return ctx.scalar(1.0)
    if mode == "VALID" and valid is not None:
        n = ctx.reduce("ReduceSum", ctx.add("Cast", [valid], to=ctx.FLOAT), range(len(shape)), keepdims=False)
    elif mode == "BATCH_SIZE":
        n = first_dim(ctx, x, shape[0])
    else:
        n = runtime_count(ctx, x, count(shape))
    return ctx.add("Max", [n, ctx.scalar(1.0)])


def euclidean_loss(node: Node, ctx: Any) -> None:
    """``sum((a - b)^2) / num / 2``."""
    shape = ctx.in_shape(0)
    diff = ctx.add("Sub", [ctx.input(0), ctx.reshape(ctx.input(1), ctx.in_shape(1), shape)])
    dot = ctx.reduce("ReduceSumSquare", diff, range(len(shape)), keepdims=False)
    per_num = ctx.add("Div", [dot, first_dim(ctx, ctx.input(0), shape[0])])
    ctx.add("Div", [per_num, ctx.scalar(2.0)], ctx.output(0))


def hinge_loss(node: Node, ctx: Any) -> None:
    """``sum_j max(0, 1 + s_j x_j)^p / num`` with s = -1 at the label, +1 elsewhere (Caffe negates the
    label's score, then takes ``max(0, 1 + .)``); L1: p = 1, L2: p = 2."""
    x2, num = per_sample(ctx, 0)
    dim = count(ctx.in_shape(0), 1)
    index = first_values(ctx, 1, num, ctx.input(0))
    sign = ctx.add("OneHot", [index, ctx.ints([dim], "depth"), ctx.const(np.array([1.0, -1.0], np.float32), "sign")],
                   axis=-1)
    margin = ctx.add("Relu", [ctx.add("Add", [ctx.add("Mul", [sign, x2]), ctx.scalar(1.0)])])
    op = "ReduceSumSquare" if node.attrs.norm == "L2" else "ReduceSum"
    total = ctx.reduce(op, margin, [0, 1], keepdims=False)
    loss_top(ctx, total, first_dim(ctx, ctx.input(0), num))


def multinomial_logistic_loss(node: Node, ctx: Any) -> None:
    """``-sum log(max(x[n, label_n], 1e-20)) / num`` on probabilities."""
    x2, num = per_sample(ctx, 0)
    label = ctx.reshape(ctx.input(1), ctx.in_shape(1), (num, 1))
    picked = ctx.add("GatherElements", [x2, ctx.add("Cast", [label], to=ctx.INT64)], axis=1)
    logp = ctx.add("Log", [ctx.add("Max", [picked, ctx.scalar(LOG_THRESHOLD)])])
    total = ctx.reduce("ReduceSum", logp, [0, 1], keepdims=False)
    loss_top(ctx, total, first_dim(ctx, ctx.input(0), num), negate=True)


def contrastive_loss(node: Node, ctx: Any) -> None:
    """Similar pairs (``int(y) != 0``) add ``d^2``, dissimilar ones ``max(margin - d, 0)^2`` (legacy:
    ``max(margin - d^2, 0)``); the sum over ``2 num``."""
    a = node.attrs
    fa, num = per_sample(ctx, 0)
    fb, _ = per_sample(ctx, 1)
    dist_sq = ctx.reduce("ReduceSumSquare", ctx.add("Sub", [fa, fb]), [1], keepdims=False)
    margin = ctx.scalar(a.margin)
    if a.legacy_version:
        dissimilar = ctx.add("Max", [ctx.add("Sub", [margin, dist_sq]), ctx.scalar(0.0)])
    else:
        gap = ctx.add("Max", [ctx.add("Sub", [margin, ctx.add("Sqrt", [dist_sq])]), ctx.scalar(0.0)])
        dissimilar = ctx.add("Mul", [gap, gap])
    flags = first_values(ctx, 2, num, ctx.input(0))
    similar = ctx.add("Not", [ctx.add("Equal", [flags, ctx.const(np.array(0, np.int64), "zero")])])
    total = ctx.reduce("ReduceSum", ctx.add("Where", [similar, dist_sq, dissimilar]), [0], keepdims=False)
    per_num = ctx.add("Div", [total, first_dim(ctx, ctx.input(0), num)])
    ctx.add("Div", [per_num, ctx.scalar(2.0)], ctx.output(0))


def accuracy(node: Node, ctx: Any, spec: Any) -> None:
    """A position is a hit when at most ``top_k`` scores are ``>=`` the label's (ties count against it);
    accuracy = hits / counted positions (0 when none); top 1 = hits / count per class (0 for absent ones). A
    label outside the classes is counted, never a hit and in no class."""
    a = node.attrs
    x3, index, valid, _, classes, _ = class_split(ctx, node, spec, a.axis)
    # a label outside the classes is counted and never a hit (as the runtime's Accuracy)
    zero = ctx.const(np.array(0, dtype=np.int64), "zero")
    known = ctx.add("And", [ctx.add("GreaterOrEqual", [index, zero]),
                            ctx.add("Less", [index, ctx.const(np.array(classes, dtype=np.int64), "classes_n")])])
    true_score = ctx.add("GatherElements", [x3, ctx.add("Where", [known, index, zero])], axis=1)
    better = ctx.add("Cast", [ctx.add("GreaterOrEqual", [x3, true_score])], to=ctx.INT64)
    ranks = ctx.reduce("ReduceSum", better, [1], keepdims=True)  # (outer, 1, inner)
    hit = ctx.add("And", [ctx.add("LessOrEqual", [ranks, ctx.const(np.array(a.top_k, np.int64), "top_k")]), known])
    if valid is not None:
        hit = ctx.add("And", [hit, valid])
    hits = ctx.add("Cast", [hit], to=ctx.FLOAT)
    counted = ctx.add("Cast", [valid], to=ctx.FLOAT) if valid is not None else None
    n_hits = ctx.reduce("ReduceSum", hits, range(3), keepdims=False)
    if counted is not None:
        n = ctx.reduce("ReduceSum", counted, range(3), keepdims=False)
    else:
        n = runtime_count(ctx, index, count(ctx.in_shape(1)))
    _safe_ratio(ctx, n_hits, n, ctx.output(0))
    if ctx.num_outputs > 1:
        # one-hot of each position's label over the classes: (outer, classes, inner)
        classes_axis = ctx.const(np.arange(classes, dtype=np.int64).reshape(1, classes, 1), "classes")
        onehot = ctx.add("Cast", [ctx.add("Equal", [index, classes_axis])], to=ctx.FLOAT)
        totals = onehot if counted is None else ctx.add("Mul", [onehot, counted])
        per_total = ctx.reduce("ReduceSum", totals, [0, 2], keepdims=False)
        per_hits = ctx.reduce("ReduceSum", ctx.add("Mul", [onehot, hits]), [0, 2], keepdims=False)
        _safe_ratio(ctx, per_hits, per_total, ctx.output(1))


def _safe_ratio(ctx: Any, num: str, den: str, out: str) -> None:
    """``num / den`` where ``den > 0``, else 0 (Caffe's ``count == 0 ? 0 : ...``)."""
    ratio = ctx.add("Div", [num, ctx.add("Max", [den, ctx.scalar(1.0)])])
    ctx.add("Where", [ctx.add("Greater", [den, ctx.scalar(0.0)]), ratio, ctx.scalar(0.0)], out)
