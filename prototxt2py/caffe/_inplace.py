"""Which data each layer type's backward pass reads in Caffe, so that pycaffe's ``Net.backward`` gives Caffe's
numbers on in-place chains.

Caffe computes a layer's gradient in ``Backward_cpu`` from whatever its bottom and top blobs hold *when the
backward pass runs*. In a chain of in-place layers (top == bottom) those blobs hold the chain's final value,
not what the layer saw or produced, and Caffe uses that value without a private copy for most types. The
pycaffe API (:mod:`prototxt2py.caffe._net`) therefore computes each layer's gradient in one of three ways:

* **recompute** (the default): run the layer's module again on the blob's current bottom data under autograd.
  This is exactly Caffe for every type whose ``Backward_cpu`` reads only bottom data and parameters (ReLU,
  Convolution, InnerProduct, Pooling, BNLL, Clip, ...): an in-place ReLU then reads the final value, as in
  Caffe;
* **formula** (:data:`FORMULAS`): types whose ``Backward_cpu`` reads *top* data (TanH, Sigmoid, ELU, Exp,
  Power) or whose in-place form aliases ``top_diff`` and ``bottom_diff`` so that the top diff is
  overwritten before it is used (Power, Log): a transcription of Caffe's formula applied to the blobs'
  current values;
* **private** (a spec's ``backward_reads = "forward"``): types that keep their own copy of what they need from
  the forward pass (BatchNorm's normalised values, Scale's and PReLU's input copy when in place, Dropout's mask,
  RNN's and LSTM's unrolled net, which starts from the state carried into that pass): the autograd graph of the
  forward call itself is kept and replayed. Swish (``"forward_input"``) mixes both: its private sigmoid comes
  from the forward-time input, its top data is read at backward time.

The specs declare which (``LayerSpec.backward_reads``), as they declare Caffe's ``AllowForceBackward``
exceptions (``LayerSpec.force_backward_refused``); the formulas, torch code of this package, live here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

#: ``formula(bottom_data, top_data, top_diff, layer_param, in_place) -> bottom_diff`` (None: recompute).
Formula = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, bool], "torch.Tensor | None"]


def _tanh(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, p: Any, in_place: bool) -> torch.Tensor:
    return dy * (1 - y * y)


def _sigmoid(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, p: Any, in_place: bool) -> torch.Tensor:
    return dy * y * (1 - y)


def _elu(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, p: Any, in_place: bool) -> torch.Tensor | None:
    e = p.elu_param
    if e.HasField("lambda"):  # NVCaffe's scaled ELU: not BVLC's formula, recompute instead
        return None
    pos = (x > 0).to(dy.dtype)
    return dy * (pos + (e.alpha + y) * (1 - pos))


def _exp(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, p: Any, in_place: bool) -> torch.Tensor:
    e = p.exp_param
    log_base = 1.0 if e.base == -1 else math.log(e.base)
    inner_scale = log_base * e.scale
    out = y * dy
    return out * inner_scale if inner_scale != 1 else out


def _log(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, p: Any, in_place: bool) -> torch.Tensor:
    lp = p.log_param
    num_scale = lp.scale / (1.0 if lp.base == -1 else math.log(lp.base))
    d = x * lp.scale if lp.scale != 1 else x.clone()
    if lp.shift != 0:
        d = d + lp.shift
    d = d.pow(-1)
    if num_scale != 1:
        d = d * num_scale
    # In place, Caffe's copy of the bottom data into bottom_diff overwrote the top diff it then multiplies by.
    return d * (d if in_place else dy)


def _power(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, p: Any, in_place: bool) -> torch.Tensor:
    pp = p.power_param
    power, scale, shift = pp.power, pp.scale, pp.shift
    diff_scale = power * scale
    if diff_scale == 0 or power == 1:
        d = torch.full_like(x, diff_scale)
    elif power == 2:
        d = x * (diff_scale * scale)
        if shift != 0:
            d = d + diff_scale * shift
    elif shift == 0:
        d = y / x * power
    else:
        d = x * scale if scale != 1 else x.clone()
        if shift != 0:
            d = d + shift
        d = y / d
        if diff_scale != 1:
            d = d * diff_scale
    if diff_scale == 0:
        return d
    # In place, bottom_diff *is* top_diff: Caffe multiplies the derivative by itself.
    return d * (d if in_place else dy)


#: Types whose Caffe gradient is computed by a transcription of their ``Backward_cpu``.
FORMULAS: dict[str, Formula] = {
    "TanH": _tanh,
    "Sigmoid": _sigmoid,
    "ELU": _elu,
    "Exp": _exp,
    "Log": _log,
    "Power": _power,
}


def swish_private(x_forward: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, beta: float) -> torch.Tensor:
    """Swish's gradient as Caffe computes it: its private sigmoid (from the forward-time input) and the top
    blob's current data."""
    s = torch.sigmoid(beta * x_forward)
    return dy * (beta * y + s * (1 - beta * y))
