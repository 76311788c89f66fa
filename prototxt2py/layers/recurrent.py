"""Recurrent layers: RNN, LSTM and the LSTMUnit step they are built from.

Caffe runs RNN/LSTM as an unrolled inner net (``recurrent_layer.cpp``); the modules here compute the same
thing step by step, with the input transforms done once for all timesteps as Caffe does. Facts kept:

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

import torch
import torch.nn.functional as F

from .base import LayerSpec, Shape, count, register
from .torch_util import CaffeLayer, filler_of

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Node

FAMILY = "recurrent"


# -- LSTM unit ----------------------------------------------------------------------------------------------
class _LSTMUnitFn(torch.autograd.Function):
    """One LSTM step on ``(N, H)`` / ``(N, 4H)`` / ``(N,)`` tensors with Caffe's backward.

    ``f = cont * sigmoid(x_f)`` (0 when cont == 0), ``c = f c_prev + i g``, ``h = o tanh(c)``. Caffe's
    forget-gate gradient is ``dc_term * c_prev * f (1 - f)``, which equals the derivative only for cont in
    {0, 1}; this keeps Caffe's formula for any cont."""

    @staticmethod
    def forward(ctx: Any, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        xi, xf, xo, xg = gates.chunk(4, dim=1)
        i, o, g = torch.sigmoid(xi), torch.sigmoid(xo), torch.tanh(xg)
        keep = cont.unsqueeze(1)
        f = torch.where(keep == 0, torch.zeros_like(xf), keep * torch.sigmoid(xf))
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx: Any, dc: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        dc_term = dc + dh * o * (1 - tanh_c * tanh_c)
        dgates = torch.cat(
            (dc_term * g * i * (1 - i), dc_term * c_prev * f * (1 - f), dh * tanh_c * o * (1 - o),
             dc_term * i * (1 - g * g)),
            dim=1,
        )
        return dc_term * f, dgates, None


class LSTMUnitModule(CaffeLayer):
    """Caffe's ``LSTMUnit``: bottoms ``c_prev (1, N, H)``, gates ``(1, N, 4H)``, ``cont (1, N)``; tops c, h."""

    def forward(self, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n, hidden = c_prev.shape[1], c_prev.shape[2]
        c, h = _LSTMUnitFn.apply(c_prev.reshape(n, hidden), gates.reshape(n, 4 * hidden),
                                 cont.detach().reshape(n).to(c_prev.dtype))
        return c.reshape(1, n, hidden), h.reshape(1, n, hidden)


@register
class LSTMUnit(LayerSpec):
    type = "LSTMUnit"
    bottoms = (3, 3)
    tops = (2, 2)
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

    def build_torch(self, node: Node) -> torch.nn.Module:
        return LSTMUnitModule()


# -- RNN / LSTM ---------------------------------------------------------------------------------------------
class _RecurrentModule(CaffeLayer):
    """Shared plumbing: bottoms, initial state (exposed, carried over, or zeros) and the tops."""

    num_states = 1

    def __init__(self, node: Node, names: Sequence[str]):
        super().__init__()
        attrs = node.attrs
        self.hidden = int(attrs.num_output)
        self.expose_hidden = bool(attrs.expose_hidden)
        self.static = len(node.bottoms) > 2 + self.num_states * self.expose_hidden
        if not node.param_shapes:
            raise ValueError("input shapes are unknown, so the recurrent weights cannot be sized")
        weight, bias = filler_of(attrs, "weight_filler"), filler_of(attrs, "bias_filler")
        for name, shape in zip(names, node.param_shapes, strict=True):
            self.add_blob(name, shape, bias if len(shape) == 1 else weight)
        self._carried: tuple[torch.Tensor, ...] | None = None

    def reset(self) -> None:
        """Forget the state carried over from the previous forward pass (Caffe's ``RecurrentLayer::Reset``)."""
        self._carried = None

    def _inputs(self, x: torch.Tensor, cont: torch.Tensor, rest: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """(x as (T, N, I), cont as (T, N) floats, x_static as (N, S) or None, initial states (N, H))."""
        steps, n = x.shape[0], x.shape[1]
        x_static = rest[0].reshape(n, -1) if self.static else None
        if self.expose_hidden:
            states = [s.detach().reshape(n, self.hidden) for s in rest[int(self.static):]]
        elif self._carried is not None and self._carried[0].shape == (n, self.hidden):
            states = [s.to(x) for s in self._carried]
        else:
            states = [x.new_zeros(n, self.hidden) for _ in range(self.num_states)]
        return x.reshape(steps, n, -1), cont.detach().to(x.dtype), x_static, states

    def _tops(self, out: torch.Tensor, finals: Sequence[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        finals = [s.detach() for s in finals]
        if not self.expose_hidden:
            self._carried = tuple(finals)
            return out
        return (out, *(s.unsqueeze(0) for s in finals))


class RNNModule(_RecurrentModule):
    """``h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])``,
    ``o_t = tanh(W_ho h_t + b_o)``; top 0 is o."""

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x, cont, x_static, (h,) = self._inputs(x, cont, rest)
        x_in = F.linear(x, self.W_xh, self.b_h)
        static_in = None if x_static is None else F.linear(x_static, self.W_xh_static)
        hs = []
        for t in range(x.shape[0]):
            pre = F.linear(cont[t].unsqueeze(1) * h, self.W_hh) + x_in[t]
            h = torch.tanh(pre if static_in is None else pre + static_in)
            hs.append(h)
        out = torch.tanh(F.linear(torch.stack(hs), self.W_ho, self.b_o))
        return self._tops(out, (h,))


class LSTMModule(_RecurrentModule):
    """``gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]`` then an LSTM unit step;
    top 0 is h."""

    num_states = 2

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x, cont, x_static, (h, c) = self._inputs(x, cont, rest)
        x_in = F.linear(x, self.W_xc, self.b_c)
        static_in = None if x_static is None else F.linear(x_static, self.W_xc_static)
        hs = []
        for t in range(x.shape[0]):
            gates = F.linear(cont[t].unsqueeze(1) * h, self.W_hc) + x_in[t]
            c, h = _LSTMUnitFn.apply(c, gates if static_in is None else gates + static_in, cont[t])
            hs.append(h)
        return self._tops(torch.stack(hs), (h, c))


class _RecurrentSpec(LayerSpec):
    """RNN/LSTM: counts of bottoms and tops depend on ``expose_hidden`` (Caffe's Min/MaxBottomBlobs)."""

    param_field = "recurrent_param"
    family = FAMILY
    bottoms = (2, 5)
    tops = (1, 3)
    #: recurrent states (h; LSTM h and c) and how many gate blocks of num_output the weights have
    num_states = 1
    gates = 1
    module_class: type[_RecurrentModule] = _RecurrentModule

    def attrs(self, layer: Any) -> Any:
        p = layer.recurrent_param
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

    def build_torch(self, node: Node) -> torch.nn.Module:
        names = list(self.blob_names)
        if self._static(node):
            names.insert(2, names[0] + "_static")
        return self.module_class(node, names)


@register
class RNN(_RecurrentSpec):
    type = "RNN"
    blob_names = ("W_xh", "b_h", "W_hh", "W_ho", "b_o")
    module_class = RNNModule
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
    module_class = LSTMModule
    summary = ("LSTM over (T, N, ...) with cont flags, gates i,f,o,g; W_xc_static after b_c with x_static; "
               "expose_hidden adds h_0, c_0 bottoms and h_T, c_T tops")

    def recurrent_shapes(self, hidden: int) -> list[Shape]:
        return [(4 * hidden, hidden)]
