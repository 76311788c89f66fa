"""pycaffe on prototxt2py: change ``import caffe`` to ``from prototxt2py import caffe`` and a pycaffe script runs
on the PyTorch runtime with Caffe's results.

Module level as in BVLC's ``python/caffe/__init__.py``: ``Net``, ``TRAIN``/``TEST``, ``set_mode_cpu``,
``set_mode_gpu``, ``set_device``, ``set_random_seed``, ``layer_type_list``, ``Timer``, the no-NCCL build's
``NCCL``/``has_nccl``/``solver_count``/``solver_rank`` (:mod:`._parallel`), ``Classifier``, ``Detector``,
``NetSpec``, ``layers``/``params``, ``to_proto``, and the submodules ``io``, ``draw``, ``net_spec``,
``coord_map``, ``classifier``, ``detector``, ``proto.caffe_pb2``, and the solvers (``SGDSolver``, ...,
``get_solver``; see :mod:`._solver`), whose ``net`` and ``test_nets`` are ``caffe.Net`` objects.
"""

from __future__ import annotations

from . import classifier, coord_map, detector, draw, io, net_spec, proto  # noqa: F401
from ._blob import Blob
from ._mode import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from ._net import TEST, TRAIN, CaffeUsageError, Layer, Net
from ._parallel import (
    NCCL,
    Timer,
    has_nccl,
    set_multiprocess,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from ._solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    Solver,
    get_solver,
)
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto

__version__ = "1.0.0"

__all__ = ["NCCL", "TEST", "TRAIN", "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "CaffeUsageError",
           "Classifier", "Detector", "Layer", "Net", "NesterovSolver", "NetSpec", "RMSPropSolver", "SGDSolver",
           "Solver", "Timer", "classifier", "coord_map", "detector", "draw", "get_solver", "has_nccl", "init_log",
           "io", "layer_type_list", "layers", "log", "net_spec", "params", "proto", "set_device", "set_mode_cpu",
           "set_mode_gpu", "set_multiprocess", "set_random_seed", "set_solver_count", "set_solver_rank",
           "solver_count", "solver_rank", "to_proto"]


def layer_type_list() -> list[str]:
    """Layer types this runtime knows (Caffe's ``LayerRegistry::LayerTypeList``), sorted."""
    from ..ir import registered_types

    return registered_types()


def init_log(*args: object) -> None:
    """pycaffe's glog set-up: nothing to do here (kept so scripts calling it run)."""


def log(message: str) -> None:
    """pycaffe's ``caffe.log``: a line on the standard Python logger."""
    import logging

    logging.getLogger("prototxt2py.caffe").info(message)
