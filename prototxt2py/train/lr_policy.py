"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), in Caffe's float32 arithmetic.

Caffe computes the rate in ``float`` except where C++ promotes ``pow(float, int)`` to ``double`` (``step``,
``exp``, ``multistep``); ``inv`` and ``poly`` call ``pow(float, float)``, which stays in float (``powf``). The
same types are used here so the rates equal Caffe's logged ones bit for bit (the golden trajectories record
them). ``multistep`` is stateful: ``current_step`` advances by at most one per call, exactly as Caffe's, and is
saved in the ``.solverstate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import Location
from ..floatmath import pow_, powf
from .errors import SolverError

f32 = np.float32
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


@dataclass(frozen=True)
class LrParams:
    """The solver fields the policies read (plain values)."""

    lr_policy: str = "fixed"
    base_lr: float = 0.0
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    max_iter: int = 0

    @classmethod
    def from_solver(cls, p) -> LrParams:
        return cls(p.lr_policy, p.base_lr, p.gamma, p.power, p.stepsize, tuple(p.stepvalue), p.max_iter)

    def check(self, where: Location | None = None) -> None:
        """Caffe's CHECKs, up front (Caffe fails them at the first update); errors name ``where`` (the file)."""
        if self.lr_policy not in POLICIES:
            raise SolverError(f"unknown lr_policy '{self.lr_policy}' (Caffe knows {', '.join(POLICIES)})", where)
        if self.lr_policy in ("step", "sigmoid") and self.stepsize <= 0:
            raise SolverError(f"lr_policy '{self.lr_policy}' needs stepsize > 0", where)
        if self.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid") and self.gamma < 0:
            raise SolverError(f"lr_policy '{self.lr_policy}' needs gamma >= 0", where)
        if self.lr_policy == "poly" and self.max_iter <= 0:
            raise SolverError("lr_policy 'poly' needs max_iter > 0", where)


def learning_rate(p: LrParams, it: int, current_step: int) -> tuple[float, int]:
    """``(rate, current_step)`` Caffe uses for the update at iteration ``it`` (rate rounded to float32)."""
    base = float(f32(p.base_lr))
    gamma = float(f32(p.gamma))
    policy = p.lr_policy
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = it // p.stepsize
        rate = base * pow_(gamma, current_step)
    elif policy == "exp":
        rate = base * pow_(gamma, it)
    elif policy == "inv":
        with np.errstate(all="ignore"):
            rate = float(f32(base) * powf(f32(1.0) + f32(gamma) * f32(it), -f32(p.power)))
    elif policy == "multistep":
        if current_step < len(p.stepvalue) and it >= p.stepvalue[current_step]:
            current_step += 1
        rate = base * pow_(gamma, current_step)
    elif policy == "poly":
        frac = f32(1.0) - f32(it) / f32(p.max_iter)
        with np.errstate(all="ignore"):
            rate = float(f32(base) * powf(frac, f32(p.power)))
    elif policy == "sigmoid":
        z = -f32(gamma) * (f32(it) - f32(p.stepsize))
        with np.errstate(all="ignore"):  # exp overflows to inf and the rate to 0, as in Caffe
            rate = base * float(f32(1.0) / (f32(1.0) + f32(np.exp(np.float64(z)))))
    else:
        raise SolverError(f"unknown lr_policy '{policy}'")
    with np.errstate(all="ignore"):  # a rate beyond float32 is inf, as Caffe's Dtype makes it
        return float(f32(rate)), current_step
