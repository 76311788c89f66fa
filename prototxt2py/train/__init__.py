"""Training with Caffe's exact solver rules: solvers, learning-rate policies, snapshots.

The solver on the PyTorch runtime (pycaffe's API, with ``caffe.Net`` views as ``net``, is
:mod:`prototxt2py.caffe`'s ``SGDSolver``/``get_solver``, built on this one)::

    from prototxt2py.train import get_solver
    solver = get_solver("solver.prototxt")      # type from the file's ``type``
    solver.load_weights("init.caffemodel")      # solver.net is the TRAIN CaffeNet; solver.test_nets the TEST ones
    solver.step(100); solver.snapshot(); solver.solve(resume="snap_iter_100.solverstate")
"""

from __future__ import annotations

import os
from typing import Any

from .errors import DivergedError, SolverError
from .solver import Solver, TestResult, read_solver_param

__all__ = [
    "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "DivergedError", "NesterovSolver", "RMSPropSolver",
    "SGDSolver", "Solver", "SolverError", "TestResult", "get_solver", "read_solver_param",
]


class SGDSolver(Solver):
    """``caffe.SGDSolver(path)``: Caffe's momentum SGD whatever the file's ``type``."""

    solver_type = "SGD"


class NesterovSolver(Solver):
    solver_type = "Nesterov"


class AdaGradSolver(Solver):
    solver_type = "AdaGrad"


class RMSPropSolver(Solver):
    solver_type = "RMSProp"


class AdaDeltaSolver(Solver):
    solver_type = "AdaDelta"


class AdamSolver(Solver):
    solver_type = "Adam"


def get_solver(path: str | os.PathLike | Any, **kwargs: Any) -> Solver:
    """``caffe.get_solver(path)``: the solver of the file's ``type`` (Caffe's solver registry)."""
    return Solver(path, **kwargs)
