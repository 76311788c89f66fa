"""Caffe's recurrent layers: LSTMUnit, and RNN/LSTM computed step by step as Caffe's unrolled net does.

Inputs ``x (T, N, ...)``, ``cont (T, N)``, optional ``x_static (N, ...)``, then with ``expose_hidden`` the
initial states (``h_0``; LSTM ``h_0, c_0``), each ``(1, N, H)``. ``cont_t`` multiplies the previous hidden
state (and zeroes the LSTM forget gate when exactly 0). Without ``expose_hidden`` the initial state is the
final state of the previous forward pass (zeros on the first; ``reset()`` is Caffe's ``Reset``). ``cont``,
exposed initial states and exposed final-state tops get no gradient (Caffe shares only their data).
"""

import torch
import torch.nn.functional as F
from torch import nn


class _LSTMUnitFn(torch.autograd.Function):
    """One LSTM step on ``(N, H)`` / ``(N, 4H)`` / ``(N,)`` tensors with Caffe's backward.

    ``f = cont * sigmoid(x_f)`` (0 when cont == 0), ``c = f c_prev + i g``, ``h = o tanh(c)``. Caffe's
    forget-gate gradient is ``dc_term * c_prev * f (1 - f)``, the derivative only for cont in {0, 1}; this
    keeps Caffe's formula for any cont."""

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        xi, xf, xo, xg = gates.chunk(4, dim=1)
        i, o, g = torch.sigmoid(xi), torch.sigmoid(xo), torch.tanh(xg)
        keep = cont.unsqueeze(1)
        f = torch.where(keep == 0, torch.zeros_like(xf), keep * torch.sigmoid(xf))
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, dc, dh):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        dc_term = dc + dh * o * (1 - tanh_c * tanh_c)
        dgates = torch.cat(
            (
                dc_term * g * i * (1 - i),
                dc_term * c_prev * f * (1 - f),
                dh * tanh_c * o * (1 - o),
                dc_term * i * (1 - g * g),
            ),
            dim=1,
        )
        return dc_term * f, dgates, None


class LSTMUnit(nn.Module):
    """Caffe's LSTMUnit: ``c_prev (1, N, H)``, gates ``(1, N, 4H)`` ordered i, f, o, g, ``cont (1, N)``;
    returns c, h."""

    def forward(
        self, c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, hidden = c_prev.shape[1], c_prev.shape[2]
        c, h = _LSTMUnitFn.apply(
            c_prev.reshape(n, hidden),
            gates.reshape(n, 4 * hidden),
            cont.detach().reshape(n).to(c_prev.dtype),
        )
        return c.reshape(1, n, hidden), h.reshape(1, n, hidden)


class _RecurrentBase(nn.Module):
    """Shared plumbing of RNN and LSTM: bottoms, initial state (exposed, carried over, or zeros), tops."""

    num_states = 1

    def __init__(self, num_output: int, expose_hidden: bool, static: bool) -> None:
        super().__init__()
        self.num_output, self.expose_hidden, self.static = (
            num_output,
            expose_hidden,
            static,
        )
        self._carried: tuple[torch.Tensor, ...] | None = None

    def reset(self) -> None:
        """Forget the state carried over from the previous forward pass (Caffe's ``Reset``)."""
        self._carried = None

    def _inputs(
        self, x: torch.Tensor, cont: torch.Tensor, rest: tuple[torch.Tensor, ...]
    ):
        """x as (T, N, I), cont as (T, N) floats, x_static as (N, S) or None, initial states (N, H)."""
        steps, n, hidden = x.shape[0], x.shape[1], self.num_output
        x_static = rest[0].reshape(n, -1) if self.static else None
        carried = self._carried
        if self.expose_hidden:
            states = [s.detach().reshape(n, hidden) for s in rest[int(self.static) :]]
        elif carried is not None and carried[0].shape == (n, hidden):
            states = [s.to(x) for s in carried]
        else:
            states = [x.new_zeros(n, hidden) for _ in range(self.num_states)]
        return x.reshape(steps, n, -1), cont.detach().to(x.dtype), x_static, states

    def _tops(self, out: torch.Tensor, finals: tuple[torch.Tensor, ...]):
        finals = tuple(s.detach() for s in finals)
        if not self.expose_hidden:
            self._carried = finals
            return out
        return (out, *(s.unsqueeze(0) for s in finals))


class RNN(_RecurrentBase):
    """Caffe's RNN: ``h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])``,
    ``o_t = tanh(W_ho h_t + b_o)``; top 0 is o. ``input_size`` is ``prod(x.shape[2:])``, ``static_size``
    ``prod(x_static.shape[1:])`` (None: no x_static)."""

    def __init__(
        self,
        input_size: int,
        num_output: int,
        static_size: int | None = None,
        expose_hidden: bool = False,
    ) -> None:
        super().__init__(num_output, expose_hidden, static_size is not None)
        h = num_output
        self.W_xh = nn.Parameter(torch.zeros(h, input_size))
        self.b_h = nn.Parameter(torch.zeros(h))
        if static_size is not None:
            self.W_xh_static = nn.Parameter(torch.zeros(h, static_size))
        self.W_hh = nn.Parameter(torch.zeros(h, h))
        self.W_ho = nn.Parameter(torch.zeros(h, h))
        self.b_o = nn.Parameter(torch.zeros(h))

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor):
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


class LSTM(_RecurrentBase):
    """Caffe's LSTM: ``gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]``
    (i, f, o, g), then an LSTMUnit step; top 0 is h."""

    num_states = 2

    def __init__(
        self,
        input_size: int,
        num_output: int,
        static_size: int | None = None,
        expose_hidden: bool = False,
    ) -> None:
        super().__init__(num_output, expose_hidden, static_size is not None)
        rows = 4 * num_output
        self.W_xc = nn.Parameter(torch.zeros(rows, input_size))
        self.b_c = nn.Parameter(torch.zeros(rows))
        if static_size is not None:
            self.W_xc_static = nn.Parameter(torch.zeros(rows, static_size))
        self.W_hc = nn.Parameter(torch.zeros(rows, num_output))

    def forward(self, x: torch.Tensor, cont: torch.Tensor, *rest: torch.Tensor):
        x, cont, x_static, (h, c) = self._inputs(x, cont, rest)
        x_in = F.linear(x, self.W_xc, self.b_c)
        static_in = None if x_static is None else F.linear(x_static, self.W_xc_static)
        hs = []
        for t in range(x.shape[0]):
            gates = F.linear(cont[t].unsqueeze(1) * h, self.W_hc) + x_in[t]
            if static_in is not None:
                gates = gates + static_in
            c, h = _LSTMUnitFn.apply(c, gates, cont[t])
            hs.append(h)
        return self._tops(torch.stack(hs), (h, c))
