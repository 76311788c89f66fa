"""Recurrent layers: RNN, LSTM and the LSTMUnit step they are built from.

Caffe runs RNN/LSTM as an unrolled inner net (``recurrent_layer.cpp``); the modules
(:mod:`prototxt2py.nn.recurrent`) compute the same thing step by step, with the input transforms done once for
all timesteps as Caffe does. Facts kept:

* Bottoms ``x (T, N, ...)``, ``cont (T, N)``, optional ``x_static (N, ...)``, then with ``expose_hidden``
  the initial states (``h_0``; LSTM ``h_0, c_0``), each ``(1, N, num_output)``. Tops: the sequence output,
  then with ``expose_hidden`` the final states.
* ``cont_t`` multiplies the previous hidden state (and zeroes the LSTM forget gate when exactly 0), so
  ``cont = 0`` starts a new sequence.
* Without ``expose_hidden`` the initial state is the final state of the previous forward pass (zeros on
  the first), so streams continue across batches when ``cont_0 = 1``; ``reset()`` is Caffe's ``Reset``.
* Gradients: ``x`` and ``x_static`` get them; ``cont``, the exposed initial states (Caffe shares only
  their data with the inner net) and the exposed final-state tops (their diffs are never read) do not.
* Parameter blobs in the unrolled net's order. RNN: ``W_xh (H, I)``, ``b_h (H)``, [``W_xh_static (H, S)``],
  ``W_hh (H, H)``, ``W_ho (H, H)``, ``b_o (H)``; LSTM: ``W_xc (4H, I)``, ``b_c (4H)``,
  [``W_xc_static (4H, S)``], ``W_hc (4H, H)``, gates ordered i, f, o, g. ``I = prod(x.shape[2:])``,
  ``S = prod(x_static.shape[1:])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..plain import plain
from . import onnx_recurrent
from .base import Call, LayerSpec, Shape, call, count, register

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "recurrent"


# -- LSTM unit ----------------------------------------------------------------------------------------------
@register
class LSTMUnit(LayerSpec):
    type = "LSTMUnit"
    bottoms = (3, 3)
    tops = (2, 2)
    force_backward_refused = frozenset({2})  # the cont flags
    family = FAMILY
    summary = "one LSTM step: c_prev (1,N,H), gate pre-activations (1,N,4H) in order i,f,o,g, cont (1,N) -> c, h"

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        c_prev, gates, cont = (tuple(s) for s in in_shapes)
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2:
            raise self.fail(node, f"need c_prev (1, N, H), gates (1, N, 4H), cont (1, N); got {c_prev}, {gates}, "
                                  f"{cont}")
        n = c_prev[1]
        if any(s[0] != 1 or s[1] != n for s in (c_prev, gates, cont)):
            raise self.fail(node, f"bottoms must all be one timestep of {n} streams; got {c_prev}, {gates}, {cont}")
        if gates[2] != 4 * c_prev[2]:
            raise self.fail(node, f"gates have {gates[2]} channels, need 4 x {c_prev[2]}")
        return [c_prev, c_prev]

    def module(self, node: Node) -> Call:
        return call("LSTMUnit")

    def to_onnx(self, node: Node, ctx: Any) -> None:
        onnx_recurrent.lstm_unit(node, ctx)


# -- RNN / LSTM ---------------------------------------------------------------------------------------------
class _RecurrentSpec(LayerSpec):
    """RNN/LSTM: counts of bottoms and tops depend on ``expose_hidden`` (Caffe's Min/MaxBottomBlobs)."""
    backward_reads = "forward"  # its Backward_cpu works from private copies its forward saved

    param_field = "recurrent_param"
    family = FAMILY
    bottoms = (2, 5)
    tops = (1, 3)
    force_backward_refused = frozenset({1})  # the cont flags
    #: recurrent states (h; LSTM h and c) and how many gate blocks of num_output the weights have
    num_states = 1
    gates = 1


    def attrs(self, layer: Any) -> Any:
        p = plain(layer.recurrent_param)
        if p.num_output <= 0:
            raise ValueError(f"{self.type} needs recurrent_param.num_output > 0")
        exposed = self.num_states if p.expose_hidden else 0
        lo, n_tops = 2 + exposed, 1 + exposed
        if not lo <= len(layer.bottom) <= lo + 1:
            raise ValueError(f"{self.type} with expose_hidden {str(p.expose_hidden).lower()} takes {lo} or {lo + 1}"
                             f" bottoms (x, cont, [x_static]{', initial states' if exposed else ''}), "
                             f"got {len(layer.bottom)}")
        if len(layer.top) != n_tops:
            raise ValueError(f"{self.type} with expose_hidden {str(p.expose_hidden).lower()} takes {n_tops} top(s),"
                             f" got {len(layer.top)}")
        return p

    def _static(self, node: Node) -> bool:
        return len(node.bottoms) > 2 + self.num_states * node.attrs.expose_hidden

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        x, cont = tuple(in_shapes[0]), tuple(in_shapes[1])
        hidden = int(node.attrs.num_output)
        if len(x) < 2:
            raise self.fail(node, f"bottom 0 must be (T, N, ...), got {x}")
        if cont != x[:2]:
            raise self.fail(node, f"cont must be (T, N) = {x[:2]}, got {cont}")
        static = self._static(node)
        if static and (not in_shapes[2] or in_shapes[2][0] != x[1]):
            raise self.fail(node, f"x_static must be (N = {x[1]}, ...), got {tuple(in_shapes[2])}")
        state = (1, x[1], hidden)
        for s in in_shapes[2 + static:]:
            if tuple(s) != state:
                raise self.fail(node, f"initial state has shape {tuple(s)}, need {state}")
        return [(x[0], x[1], hidden)] + [state] * (len(node.tops) - 1)

    def param_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        hidden = int(node.attrs.num_output)
        rows = self.gates * hidden
        shapes: list[Shape] = [(rows, count(in_shapes[0], 2)), (rows,)]
        if self._static(node):
            shapes.append((rows, count(in_shapes[2], 1)))
        return shapes + self.recurrent_shapes(hidden)

    def recurrent_shapes(self, hidden: int) -> list[Shape]:
        raise NotImplementedError

    def macs(self, node: Node, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        steps, n = in_shapes[0][0], in_shapes[0][1]
        shapes = self.param_shapes(node, in_shapes)
        per_step = sum(count(s) for s in shapes if len(s) == 2)
        static = count(shapes[2]) if self._static(node) else 0
        return steps * n * (per_step - static) + n * static

    def node_blob_names(self, node: Node) -> tuple[str, ...]:
        """Caffe's blob order: the x_static weight comes right after the input bias when there is one."""
        names = list(self.blob_names)
        if self._static(node):
            names.insert(2, names[0] + "_static")
        return tuple(names)

    def module(self, node: Node) -> Call:
        if not node.param_shapes:
            raise ValueError("input shapes are unknown, so the recurrent weights cannot be sized")
        shapes = node.param_shapes
        kwargs: dict[str, Any] = {}
        if self._static(node):
            kwargs["static_size"] = shapes[2][1]
        if node.attrs.expose_hidden:
            kwargs["expose_hidden"] = True
        return call(self.type, shapes[0][1], int(node.attrs.num_output), **kwargs)

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """A ``Scan`` over time (see :mod:`prototxt2py.layers.onnx_recurrent`); without ``expose_hidden`` each
        ONNX run starts from zero states (the runtime's first pass), as a stateless graph must."""
        onnx_recurrent.recurrent(node, ctx, lstm=self.gates == 4)

    def fillers(self, node: Node) -> Sequence[Any]:
        """``weight_filler`` for the matrices, ``bias_filler`` for the biases (Caffe's unrolled net)."""
        a = node.attrs
        weight = a.weight_filler if a.has("weight_filler") else None
        bias = a.bias_filler if a.has("bias_filler") else None
        return [bias if len(shape) == 1 else weight for shape in node.param_shapes]


@register
class RNN(_RecurrentSpec):
    type = "RNN"
    blob_names = ("W_xh", "b_h", "W_hh", "W_ho", "b_o")
    summary = ("Elman RNN over (T, N, ...) with cont flags: h_t = tanh(W_hh cont_t h_{t-1} + W_xh x_t + b_h), "
               "output tanh(W_ho h_t + b_o); W_xh_static after b_h with x_static")

    def recurrent_shapes(self, hidden: int) -> list[Shape]:
        return [(hidden, hidden), (hidden, hidden), (hidden,)]


@register
class LSTM(_RecurrentSpec):
    type = "LSTM"
    blob_names = ("W_xc", "b_c", "W_hc")
    num_states = 2
    gates = 4
    summary = ("LSTM over (T, N, ...) with cont flags, gates i,f,o,g; W_xc_static after b_c with x_static; "
               "expose_hidden adds h_0, c_0 bottoms and h_T, c_T tops")

    def recurrent_shapes(self, hidden: int) -> list[Shape]:
        return [(4 * hidden, hidden)]
