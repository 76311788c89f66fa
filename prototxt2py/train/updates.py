"""Caffe's update rules, one class per solver type (``sgd_solver.cpp`` and ``solvers/*.cpp``, CPU path).

Each class turns a parameter's (normalised, regularised) gradient into the value Caffe subtracts from the
weights, in float32 and in Caffe's order of operations, and keeps Caffe's history blobs in Caffe's layout
(``history[k * n + i]`` = slot ``k`` of learnable parameter ``i``: AdaDelta and Adam keep two slots), so
that ``.solverstate`` files are interchangeable with Caffe's.

These are not PyTorch's optimisers: Caffe's SGD keeps ``v = momentum * v + lr * g; w -= v``, so a change of
learning rate reaches the velocity only gradually, while PyTorch's ``v = m * v + g; w -= lr * v`` rescales it
at once; Caffe's Adam bias correction is folded into the rate, and so on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .errors import SolverError


def axpby(a: float, x: torch.Tensor, b: float, y: torch.Tensor) -> None:
    """Caffe's ``caffe_cpu_axpby``: ``y = a * x + b * y`` (scale y, then add a * x), in place."""
    y.mul_(b).add_(x, alpha=a)


class Update:
    """Base: ``compute(i, diff, local_rate, it)`` overwrites ``diff`` with the update of parameter ``i``."""

    type_name: ClassVar[str] = ""
    slots: ClassVar[int] = 1

    def __init__(self, param: Any, params: Sequence[torch.Tensor]):
        self.momentum = float(param.momentum)
        self.delta = float(param.delta)
        self.n = len(params)
        self.history = [torch.zeros_like(p, dtype=torch.float32) for _ in range(self.slots) for p in params]
        self.check(param)

    def check(self, param: Any) -> None:
        """Caffe's constructor CHECKs for this solver type."""

    def compute(self, i: int, diff: torch.Tensor, local_rate: float, it: int) -> None:
        raise NotImplementedError


class SGD(Update):
    type_name = "SGD"

    def compute(self, i, diff, local_rate, it):
        h = self.history[i]
        axpby(local_rate, diff, self.momentum, h)
        diff.copy_(h)


class Nesterov(Update):
    type_name = "Nesterov"

    def compute(self, i, diff, local_rate, it):
        h = self.history[i]
        previous = h.clone()
        axpby(local_rate, diff, self.momentum, h)
        # step back, then over-step: update = (1 + m) * h - m * h_previous
        axpby(1.0 + self.momentum, h, -self.momentum, previous)
        diff.copy_(previous)


class AdaGrad(Update):
    type_name = "AdaGrad"

    def check(self, param):
        if param.momentum != 0:
            raise SolverError("momentum cannot be used with AdaGrad")

    def compute(self, i, diff, local_rate, it):
        h = self.history[i]
        h.add_(diff * diff)
        diff.div_(h.sqrt().add_(self.delta)).mul_(local_rate)


class RMSProp(Update):
    type_name = "RMSProp"

    def __init__(self, param, params):
        super().__init__(param, params)
        self.rms_decay = float(param.rms_decay)

    def check(self, param):
        if param.momentum != 0:
            raise SolverError("momentum cannot be used with RMSProp")
        if not 0 <= param.rms_decay < 1:  # Caffe: CHECK_GE(rms_decay, 0), CHECK_LT(rms_decay, 1)
            raise SolverError(f"rms_decay should lie between 0 and 1 (below 1), got {param.rms_decay:g}")

    def compute(self, i, diff, local_rate, it):
        h = self.history[i]
        axpby(1.0 - self.rms_decay, diff * diff, self.rms_decay, h)
        diff.div_(h.sqrt().add_(self.delta)).mul_(local_rate)


class AdaDelta(Update):
    type_name = "AdaDelta"
    slots = 2

    def compute(self, i, diff, local_rate, it):
        grads, updates = self.history[i], self.history[self.n + i]
        m = self.momentum
        axpby(1.0 - m, diff * diff, m, grads)
        ratio = (updates + self.delta).div_(grads + self.delta).sqrt_()
        diff.mul_(ratio)
        axpby(1.0 - m, diff * diff, m, updates)
        diff.mul_(local_rate)


class Adam(Update):
    type_name = "Adam"
    slots = 2

    def __init__(self, param, params):
        super().__init__(param, params)
        self.beta2 = float(param.momentum2)

    def compute(self, i, diff, local_rate, it):
        m, v = self.history[i], self.history[self.n + i]
        b1, b2 = self.momentum, self.beta2
        t = it + 1
        correction = float(torch.tensor(math.sqrt(1.0 - b2**t) / (1.0 - b1**t), dtype=torch.float32))
        axpby(1.0 - b1, diff, b1, m)
        axpby(1.0 - b2, diff * diff, b2, v)
        step = m / v.sqrt().add_(self.delta)
        diff.copy_(step).mul_(float(torch.tensor(local_rate * correction, dtype=torch.float32)))


UPDATES: dict[str, type[Update]] = {cls.type_name: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def update_for(param: Any, params: Sequence[torch.Tensor]) -> Update:
    """The update rule of ``param.type`` (Caffe's solver registry names)."""
    cls = UPDATES.get(param.type or "SGD")
    if cls is None:
        raise SolverError(f"unknown solver type '{param.type}' (known: {', '.join(UPDATES)})")
    return cls(param, params)
