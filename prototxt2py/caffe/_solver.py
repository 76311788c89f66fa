"""pycaffe's solvers (``caffe.SGDSolver(path)``, ``caffe.get_solver(path)``, ...), whose ``net`` and ``test_nets``
are pycaffe :class:`~._net.Net` objects, so the usual fine-tuning loop runs unchanged::

    solver = caffe.SGDSolver('solver.prototxt')
    solver.net.copy_from('pretrained.caffemodel')
    for it in range(niter):
        solver.step(1)
        train_loss[it] = solver.net.blobs['loss'].data
        solver.test_nets[0].forward()
        correct = (solver.test_nets[0].blobs['score'].data.argmax(1) == solver.test_nets[0].blobs['label'].data)

Training is :class:`prototxt2py.train.Solver`'s (Caffe's ``Step``/``ApplyUpdate``/``Test``, checked against
Caffe's trajectories). What this module adds is Caffe's persistent blobs. The Nets are views over the solver's
own modules: parameters are the same tensors, so writes through ``.data`` reach training and updates need no
copy. Each forward pass the solver runs is copied into the view's blobs, so after ``step`` ``blobs['loss']``
holds the last iteration's loss and ``blobs['data']`` its batch, and a TEST net's blobs hold its last test
batch. After ``step``, and in ``on_gradients`` callbacks, each parameter's diff holds its gradient (after the
update: the update applied, as in Caffe). A view's ``forward()`` over its data layers reads their next batch,
sharing the cursor with training and testing as Caffe's data layers do. Blob diffs are filled by the view's own
``backward()``, not by ``step`` (Caffe's step leaves them filled; reading them after a step is rare).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import _mode
from ._net import Net
from ._parallel import NCCL


class Solver:
    """pycaffe's ``caffe.Solver``: ``net``, ``test_nets``, ``iter``, ``max_iter``, ``param``, ``step(n)``,
    ``solve(resume=None)``, ``snapshot()``, ``restore(state)``, ``apply_update()``, ``share_weights(net)``,
    ``add_callback(on_start, on_gradients)``. It runs on the device of ``caffe.set_mode_gpu``/``set_device``.

    ``trainer`` is the :class:`prototxt2py.train.Solver` underneath (its ``net`` is the torch module)."""

    _type: str | None = None  # None: the solver file's ``type``

    def __init__(self, filename: str | os.PathLike | Any, **kwargs: Any):
        from ..train.solver import Solver as Trainer

        kwargs.setdefault("device", _mode.device())
        kwargs.setdefault("hold_inputs", True)  # Input blobs written through solver.net.blobs are trained on
        self.trainer = Trainer(filename, solver_type=self._type, **kwargs)
        t = self.trainer
        self.net = Net._over(t.net, t.net_source, t.feeder, python_layers=t.python_layers)
        self.test_nets = [Net._over(n, src, f, links_grad=False, python_layers=t.python_layers)
                          for n, src, f in zip(t.test_nets, t.test_sources, t.test_feeders, strict=True)]
        views = {id(t.net): self.net, **{id(n): v for n, v in zip(t.test_nets, self.test_nets, strict=True)}}

        def take_blobs(runtime: Any, blobs: dict[str, Any]) -> None:
            view = views.get(id(runtime))
            if view is not None:
                view._take_blobs(blobs)

        # no reference back to this object: dropping the solver stops its loader processes without the cyclic GC
        t.on_blobs = take_blobs
        t.on_diverge = "none"  # a NaN loss trains on, as in Caffe (the CLI stops and snapshots instead)

    # -- pycaffe's properties ----------------------------------------------------------------------------------
    @property
    def iter(self) -> int:
        return self.trainer.iter

    @property
    def max_iter(self) -> int:
        return int(self.trainer.param.max_iter)

    @property
    def param(self) -> SolverParam:
        """The solver's ``SolverParameter`` (paths as read, ``snapshot_prefix`` defaulted as Caffe does), read
        live; setting ``base_lr`` changes the rate of the next update, as pycaffe's ``set_base_lr`` binding does."""
        return SolverParam(self.trainer)

    @property
    def lr(self) -> float:
        """pycaffe's ``SGDSolver.lr``: Caffe's ``GetLearningRate()`` at the current iteration (for ``multistep``
        it also moves to the next step once its iteration is reached, as Caffe's does)."""
        return float(self.trainer.learning_rate())

    @property
    def type(self) -> str:
        return self.trainer.type

    # -- training ----------------------------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        """``iters`` iterations of Caffe's ``Solver::Step`` (tests at ``test_interval``, snapshots, updates)."""
        if isinstance(iters, bool) or not hasattr(iters, "__index__"):  # pycaffe takes an int, not 1.7 or "2"
            raise TypeError(f"step: iters must be an int, got {type(iters).__name__}")
        self._before()
        try:
            self.trainer.step(iters.__index__())
        finally:
            self._after()

    def solve(self, resume: str | os.PathLike | None = None) -> None:
        """Caffe's ``Solver::Solve``: train to ``max_iter`` (from a ``.solverstate`` when given)."""
        self._before()
        try:
            self.trainer.solve(resume)
        finally:
            self._after()

    def apply_update(self) -> None:
        """Caffe's ``ApplyUpdate`` on the parameters' current diffs (e.g. after ``net.forward()`` and
        ``net.backward()``); like Caffe's, it leaves ``iter`` as it is."""
        self._before()
        try:
            self.trainer.apply_update()
        finally:
            self._after()

    def snapshot(self) -> None:
        """Caffe's ``Snapshot``: ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``."""
        self._before()
        self.trainer.snapshot()

    def restore(self, state_file: str | os.PathLike) -> None:
        """Caffe's ``Restore``: iteration, learning-rate step, history and the weights the state names."""
        self.trainer.restore(state_file)
        self._after()

    def share_weights(self, net: Net) -> None:
        """``net`` (another ``caffe.Net``) uses this solver's TRAIN parameters for layers of the same name."""
        if not isinstance(net, Net):
            raise TypeError(f"share_weights: expected a caffe.Net, got {type(net).__name__}")
        net.share_with(self.net)

    def add_callback(self, on_start: Callable[[], Any] | NCCL, on_gradients: Callable[[], Any] | None = None) -> None:
        """Caffe's ``Solver::Callback``: ``on_start()`` at each iteration (after its test), ``on_gradients()``
        once the gradients are computed, before the update; diffs changed there are what the update uses.
        ``add_callback(nccl)`` with the no-NCCL build's :class:`NCCL` does nothing, as in such a Caffe."""
        if isinstance(on_start, NCCL) and on_gradients is None:
            return
        for name, fn in (("on_start", on_start), ("on_gradients", on_gradients)):
            if not callable(fn):
                raise TypeError(f"add_callback: {name} must be callable, got {type(fn).__name__}")
        net = self.net  # not self: the trainer holding the callback must not keep this object alive

        def gradients_ready() -> None:
            net._take_param_diffs()
            on_gradients()
            net._push_params()

        self.trainer.callbacks.append((on_start, gradients_ready))

    def close(self) -> None:
        """Stop the data readers' loader processes now (dropping the solver stops them too)."""
        self.trainer.close()

    def __enter__(self) -> Solver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the views ---------------------------------------------------------------------------------------------
    def _before(self) -> None:
        """Values written through host arrays reach the device before training reads them (off the CPU). TEST
        nets share the TRAIN net's parameter tensors: the TRAIN net's host arrays go last, so what was written
        there wins over a TEST net's mirror of the same tensor. Constant DummyData tops keep what was written
        into their blobs, as Caffe fills them once."""
        for view in (*self.test_nets, self.net):
            view._push_params()
            view._push_held()

    def _after(self) -> None:
        """Parameter diffs now hold the last gradients or update; TEST nets share the data, not the diffs."""
        self.net._take_param_diffs()
        for view in self.test_nets:
            view._mark_params_written()

    def __repr__(self) -> str:
        return f"<caffe.{type(self).__name__} '{self.trainer.file}' iter={self.iter}>"


def _typed(name: str, solver_type: str) -> type[Solver]:
    """A solver class whose update rule is ``solver_type`` whatever the file's ``type`` says (pycaffe's
    ``caffe.AdamSolver(path)`` trains with Adam)."""
    doc = f"``caffe.{name}(path)``: a solver with Caffe's {solver_type} update rule."
    return type(name, (Solver,), {"_type": solver_type, "__doc__": doc, "__module__": __name__, "__qualname__": name})


SGDSolver = _typed("SGDSolver", "SGD")
NesterovSolver = _typed("NesterovSolver", "Nesterov")
AdaGradSolver = _typed("AdaGradSolver", "AdaGrad")
RMSPropSolver = _typed("RMSPropSolver", "RMSProp")
AdaDeltaSolver = _typed("AdaDeltaSolver", "AdaDelta")
AdamSolver = _typed("AdamSolver", "Adam")


def get_solver(filename: str | os.PathLike | Any, **kwargs: Any) -> Solver:
    """``caffe.get_solver(path)``: a solver of the file's ``type`` (Caffe's solver registry)."""
    return Solver(filename, **kwargs)


class SolverParam:
    """pycaffe's ``solver.param``: the trainer's own ``SolverParameter`` for reading (every field, where pycaffe
    binds four), and ``base_lr`` for writing, which the next update uses (master's pycaffe binds
    ``set_base_lr`` on the solver's live message, so scripts decay the rate by hand). Writing another field
    raises ``AttributeError``, as pycaffe's read-only properties do."""

    __slots__ = ("_trainer",)

    def __init__(self, trainer: Any) -> None:
        object.__setattr__(self, "_trainer", trainer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer.param, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "base_lr":
            raise AttributeError(f"solver.param.{name} cannot be set (pycaffe lets scripts set base_lr only)")
        self._trainer.set_base_lr(value)

    def __repr__(self) -> str:
        return f"<caffe.SolverParameter of '{self._trainer.file}'>"
