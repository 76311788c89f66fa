"""pycaffe's multi-GPU and timing names (``caffe.Timer``, ``caffe.NCCL``, ``has_nccl``, ``solver_count``...), as a
Caffe built without NCCL binds them, so scripts such as Caffe's ``python/train.py`` import and run on one process.

Data-parallel training is the CLI's (``torchrun -m prototxt2py train``); here the solver count stays 1, since a
count above 1 makes Caffe's TRAIN data layers read every n-th record, which one process would silently skip."""

from __future__ import annotations

import logging
import time
from typing import Any

from ._net import CaffeUsageError

_solvers = {"count": 1, "rank": 0, "multiprocess": False}


def has_nccl() -> bool:
    """False: this build has no NCCL (``caffe.NCCL`` is the stub Caffe binds then)."""
    return False


def solver_count() -> int:
    return _solvers["count"]


def set_solver_count(count: int) -> None:
    """Caffe's ``Caffe::set_solver_count``; only 1 here (see the module's docstring)."""
    if int(count) != 1:
        raise CaffeUsageError(f"set_solver_count({count}): pycaffe here trains in one process (no NCCL); for data "
                              "parallel training run `torchrun --nproc_per_node=N -m prototxt2py train SOLVER`")
    _solvers["count"] = 1


def solver_rank() -> int:
    return _solvers["rank"]


def set_solver_rank(rank: int) -> None:
    """Caffe's ``Caffe::set_solver_rank``; only 0, the rank of the one solver (see :func:`set_solver_count`)."""
    if int(rank) != 0:
        raise CaffeUsageError(f"set_solver_rank({rank}): the solver count is 1, so the only rank is 0")
    _solvers["rank"] = 0


def set_multiprocess(multiprocess: bool) -> None:
    """Caffe's ``Caffe::set_multiprocess`` (it only changes how Caffe's GPU memory is shared): recorded."""
    _solvers["multiprocess"] = bool(multiprocess)


class NCCL:
    """The stub a Caffe built without NCCL binds: it can be made and passed to ``solver.add_callback`` and
    ``net.after_backward``, where it does nothing; it has no ``new_uid``/``bcast`` (those exist only with NCCL)."""

    def __init__(self, solver: Any, uid: str) -> None:
        self.solver = solver
        self.uid = uid


class Timer:
    """Caffe's ``Timer`` in CPU mode: ``start()``, ``stop()``, and ``ms``, the whole milliseconds between the last
    start and stop (boost's ``total_milliseconds``, truncated); reading ``ms`` while running stops the timer first,
    and a timer never started reads 0 with Caffe's warning."""

    def __init__(self) -> None:
        self._running = False
        self._has_run = False
        self._start = self._stop = 0.0

    def start(self) -> None:
        if not self._running:
            self._start = time.perf_counter()
            self._running = self._has_run = True

    def stop(self) -> None:
        if self._running:
            self._stop = time.perf_counter()
            self._running = False

    @property
    def ms(self) -> float:
        if not self._has_run:
            logging.getLogger("prototxt2py.caffe").warning("Timer has never been run before reading time.")
            return 0.0
        if self._running:
            self.stop()
        return float(int((self._stop - self._start) * 1e3))
