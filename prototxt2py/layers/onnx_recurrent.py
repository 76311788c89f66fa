"""Standard-op ONNX for Caffe's LSTMUnit, RNN and LSTM: a ``Scan`` over time with Caffe's ``cont`` gating.

ONNX's own ``LSTM``/``RNN`` ops cannot express Caffe's recurrences: ``cont_t`` multiplies the previous hidden
state before the recurrent product, zeroes the LSTM forget gate when exactly 0, RNN has an output layer
``tanh(W_ho h + b_o)``, and the gates are ordered i, f, o, g. So the step is written out with plain ops in a
``Scan`` body (state h, and c for LSTM; scanned inputs: the input transform of every timestep, done once for
all steps as Caffe's unrolled net does, and ``cont``), following :mod:`prototxt2py.nn.recurrent` operation by
operation.

One difference that no stateless graph can avoid: without ``expose_hidden`` Caffe (and the PyTorch runtime)
start a forward pass from the final state of the previous one; an ONNX run always starts from zeros, as a
freshly loaded net does on its first pass. Export with ``expose_hidden: true`` to carry state between runs.

Imports numpy only; onnx's helper is imported when a model is built (never torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..lazy_numpy import np
from .base import count

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node


def lstm_step(ctx: Any, c_prev: str, gates: str, cont: str, hidden: int, axis: int,
              out_c: str | None = None, out_h: str | None = None) -> tuple[str, str]:
    """Caffe's LSTMUnit on gate pre-activations split along ``axis`` (i, f, o, g); ``cont`` broadcasts against
    one gate block. ``f = cont * sigmoid(x_f)`` (exactly 0 where cont == 0), ``c = f c_prev + i g``,
    ``h = o tanh(c)``. Returns (c, h)."""
    parts = [ctx.tmp(gate) for gate in ("xi", "xf", "xo", "xg")]
    ctx.add("Split", [gates, ctx.ints([hidden] * 4, "split")], parts, axis=axis)
    i, o = ctx.add("Sigmoid", [parts[0]]), ctx.add("Sigmoid", [parts[2]])
    g = ctx.add("Tanh", [parts[3]])
    gated = ctx.add("Mul", [cont, ctx.add("Sigmoid", [parts[1]])])
    f = ctx.add("Where", [ctx.add("Equal", [cont, ctx.scalar(0.0)]), ctx.scalar(0.0), gated])
    c = ctx.add("Add", [ctx.add("Mul", [f, c_prev]), ctx.add("Mul", [i, g])], out_c)
    h = ctx.add("Mul", [o, ctx.add("Tanh", [c])], out_h)
    return c, h


def lstm_unit(node: Node, ctx: Any) -> None:
    """LSTMUnit: c_prev (1, N, H), gates (1, N, 4H), cont (1, N) -> c, h."""
    hidden = ctx.in_shape(0)[2]
    cont = ctx.add("Unsqueeze", [ctx.input(2), ctx.ints([2], "axes")])
    lstm_step(ctx, ctx.input(0), ctx.input(1), cont, hidden, 2, ctx.output(0), ctx.output(1))


def _transposed(ctx: Any, i: int, hint: str) -> str:
    """Parameter blob ``i`` (a ``(rows, cols)`` matrix) transposed, for ``MatMul(x, W^T)``."""
    return ctx.const(np.ascontiguousarray(ctx.param(i).T), hint)


def _float_info(name: str, dims: list[Any]) -> Any:
    from onnx import TensorProto, helper  # only when exporting: importing the layer specs never needs onnx

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def recurrent(node: Node, ctx: Any, lstm: bool) -> None:
    """RNN (``lstm`` False) or LSTM as one ``Scan``; see the module docstring."""
    a = node.attrs
    hidden = int(a.num_output)
    x_shape = ctx.in_shape(0)
    steps, n = x_shape[0], x_shape[1]
    static_batch = ctx.is_static(ctx.input(0))
    batch_dim: Any = n if static_batch else None
    rows = (4 if lstm else 1) * hidden
    num_states = 2 if lstm else 1
    has_static = len(node.bottoms) > 2 + num_states * int(bool(a.expose_hidden))

    # Input transforms of all timesteps at once: (T, N, rows).
    x3 = ctx.reshape(ctx.input(0), x_shape, (steps, n, count(x_shape, 2)))
    x_in = ctx.add("Add", [ctx.add("MatMul", [x3, _transposed(ctx, 0, "W_x_T")]), ctx.const(ctx.param(1), "b_x")])
    static_in = None
    if has_static:
        s_shape = ctx.in_shape(2)
        xs = ctx.reshape(ctx.input(2), s_shape, (s_shape[0], count(s_shape, 1)))
        static_in = ctx.add("MatMul", [xs, _transposed(ctx, 2, "W_x_static_T")])
    p = 3 if has_static else 2
    w_h = _transposed(ctx, p, "W_h_T")

    # Initial states (N, H): exposed bottoms, else zeros.
    if a.expose_hidden:
        first = 3 if has_static else 2
        states = [ctx.reshape(ctx.input(first + k), ctx.in_shape(first + k), (n, hidden))
                  for k in range(num_states)]
    elif static_batch:
        zeros = ctx.const(np.zeros((n, hidden), np.float32), "zeros")
        states = [zeros] * num_states
    else:
        dims = ctx.add("Concat", [ctx.slice(ctx.add("Shape", [ctx.input(0)]), [1], [2], [0]),
                                  ctx.ints([hidden], "hidden")], axis=0)
        zeros = ctx.add("ConstantOfShape", [dims])
        states = [zeros] * num_states

    # The step, as the Scan body.
    h_prev = ctx.tmp("h_prev")
    c_prev = ctx.tmp("c_prev") if lstm else None
    x_t, cont_t = ctx.tmp("x_t"), ctx.tmp("cont_t")
    h_next = ctx.tmp("h_next")
    c_next = ctx.tmp("c_next") if lstm else None
    h_seq = ctx.tmp("h_seq")
    with ctx.subgraph() as body:
        cont_col = ctx.add("Unsqueeze", [cont_t, ctx.ints([1], "axes")])
        pre = ctx.add("Add", [ctx.add("MatMul", [ctx.add("Mul", [cont_col, h_prev]), w_h]), x_t])
        if static_in is not None:
            pre = ctx.add("Add", [pre, static_in])
        if lstm:
            lstm_step(ctx, c_prev, pre, cont_col, hidden, 1, c_next, h_next)
        else:
            ctx.add("Tanh", [pre], h_next)
        ctx.add("Identity", [h_next], h_seq)
    state_in = [h_prev] + ([c_prev] if lstm else [])
    state_out = [h_next] + ([c_next] if lstm else [])
    from onnx import helper

    graph = helper.make_graph(
        body, f"{node.name}_step",
        [_float_info(s, [batch_dim, hidden]) for s in state_in]
        + [_float_info(x_t, [batch_dim, rows]), _float_info(cont_t, [batch_dim])],
        [_float_info(s, [batch_dim, hidden]) for s in state_out] + [_float_info(h_seq, [batch_dim, hidden])])
    finals = [ctx.tmp("h_T")] + ([ctx.tmp("c_T")] if lstm else [])
    hs = ctx.tmp("hs") if not lstm else ctx.output(0)
    ctx.add("Scan", [*states, x_in, ctx.input(1)], [*finals, hs], body=graph, num_scan_inputs=2)

    if not lstm:  # RNN's output layer on every step: tanh(W_ho h_t + b_o)
        o = ctx.add("MatMul", [hs, _transposed(ctx, p + 1, "W_o_T")])
        o = ctx.add("Add", [o, ctx.const(ctx.param(p + 2), "b_o")])
        ctx.add("Tanh", [o], ctx.output(0))
    if a.expose_hidden:
        for k, final in enumerate(finals):
            ctx.add("Unsqueeze", [final, ctx.ints([0], "axes")], ctx.output(1 + k))
