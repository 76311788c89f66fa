"""Caffe's ``Solver``: the TRAIN net, TEST nets sharing its weights, and Caffe's training loop.

What runs is Caffe's ``Solver::Step``/``Solve``/``Test`` and ``SGDSolver::ApplyUpdate``, step by step:

* each iteration clears the gradients, tests first when ``iter % test_interval == 0`` (iteration 0 only with
  ``test_initialization``), runs ``iter_size`` forward/backward passes (gradients accumulate; the iteration
  loss is their float32 mean), then ``ApplyUpdate``: learning rate from the policy, ``clip_gradients`` on the
  global L2 norm of the accumulated gradients, per parameter division by ``iter_size``, weight decay (L2 or
  L1, times ``decay_mult``), the solver type's rule with ``rate * lr_mult``, ``w -= update``, ``iter += 1``;
* learnable parameters are Caffe's ``learnable_params``: every parameter blob of every layer in layer order,
  except blobs shared through ``param { name }`` (their gradients add into the owner's; their multipliers are
  the first set by any layer using them). Blobs that are buffers (BatchNorm's statistics) are learnable with
  ``lr_mult`` 0, as Caffe's BatchNorm forces; blobs with ``lr_mult`` 0 get no gradient (Caffe does not compute
  one, unless the net has ``force_backward``: then it does, and the gradient counts in ``clip_gradients``' norm
  and in adaptive solvers' history) but still weight decay, which matters only for the history of adaptive
  solvers. (One difference: where
  a layer sharing a blob whose ``lr_mult`` another layer set to 0 leaves its own unset, Caffe still adds that
  layer's gradient to the blob's diff; the weights stay frozen either way, but Caffe's ``clip_gradients`` norm
  counts that gradient and here it is 0.)
* TEST nets are separate nets whose parameter tensors *are* the TRAIN net's (Caffe's ``ShareTrainedLayersWith``,
  by layer name), each fed by its own readers whose cursors run on from one test to the next;
* under ``torchrun`` every rank feeds its own share of the data, gradients are summed over ranks and divided by
  the number of ranks (Caffe's multi-GPU ``P2PSync``) before the update; rank 0 alone tests, logs and snapshots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Location, WeightsError
from ..ir.graph import ParamInfo
from ..netstate import TEST, TRAIN, solver_state
from .detection_eval import AP_VERSIONS, DetectionScores
from .errors import DivergedError, SolverError
from .feeding import Feeder
from .lr_policy import LrParams, learning_rate
from .snapshot import check_writable, read_solverstate, snapshot_filename, write_solverstate, write_together
from .updates import UPDATES, Update

f32 = np.float32
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


@dataclass
class Learnable:
    """One of Caffe's ``learnable_params``: the tensor and its multipliers."""

    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float


@dataclass
class TestResult:
    """One ``Solver::Test`` run: the mean of each output element over ``test_iter`` batches."""

    iter: int
    test_net: int
    outputs: list[tuple[str, float]]  # (blob name, mean) per output element, Caffe's "Test net output #k"
    loss_weights: dict[str, float]
    loss: float | None = None  # with test_compute_loss
    per_batch: list[dict[str, list[float]]] = field(default_factory=list)


def read_solver_param(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> Any:
    """A solver file read and upgraded as Caffe's ``ReadSolverParamsFromTextFileOrDie`` does, including the
    default ``snapshot_prefix`` (the solver file's path without extension; a directory prefix gets the solver
    file's stem appended). Fields the schema does not know (a fork's, or a typo such as ``max_iters``) are
    dropped, each with a warning: ``warn(line)``, by default a Python ``UserWarning``."""
    from ..reader import read_solver

    param, info, _report = read_solver(path)
    for line in info.warnings():
        (warn or _user_warning)(line)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = str(Path(path).with_suffix(""))
    elif param.snapshot_prefix and Path(param.snapshot_prefix).is_dir():  # (boost: "" is no directory)
        param.snapshot_prefix = str(Path(param.snapshot_prefix) / Path(path).stem)
    return param


def _net_source(net_param: Any, file: str) -> Any:
    """An inline ``NetParameter`` (``net_param``, ``train_net_param``, ...) as an upgraded ``NetSource``."""
    from .. import upgrade
    from ..proto import caffe_pb2
    from ..reader import NetSource

    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    report = upgrade.upgrade_net(net, file=file)
    return NetSource(net, file, "V2", [Location(file)] * len(net.layer), [[] for _ in net.layer], None, report)


def _read_net(path: str, solver_file: str) -> Any:
    from ..reader import read_net

    if not path:  # "" would name the working directory
        raise SolverError("the net file name is empty", Location(solver_file))
    return read_net(path)


def build_fed_net(source: Any, phase: str, stages: tuple[str, ...], level: int, rank: int, world: int,
                  device: torch.device, seed: int | None = None, workers: int | None = None,
                  hold_inputs: bool = False, python_layers: Mapping[str, Any] | None = None) -> tuple[Any, Feeder]:
    """Open the net's readers (their first batches give the input shapes), then build the module.

    ``hold_inputs``: Input layers' blobs are held by the feeder, zeros until a caller writes them (pycaffe's
    ``solver.net.blobs['data'].data[...] = batch`` before ``step``); otherwise such a net is refused.
    ``python_layers``: what the net's ``Python`` layers compute (see :func:`prototxt2py.graph`)."""
    from .. import graph, load

    skeleton = graph(source, phase, stages, level, infer=False, python_layers=python_layers)
    feeder = Feeder(skeleton, phase, rank, world, seed, workers)
    g = graph(source, phase, stages, level, input_shapes=feeder.shapes(), python_layers=python_layers)
    missing = [v for v in g.inputs if g.values[v].blob not in feeder.shapes()]
    if missing and not hold_inputs:
        names = ", ".join(g.values[v].blob for v in missing)
        raise SolverError(f"the {phase} net has inputs without a data layer to fill them: {names} (train from a "
                          "solver file needs data layers; pycaffe can fill Input blobs before each step)",
                          Location(g.file))
    feeder.held = {g.values[v].blob: torch.zeros(g.values[v].shape or ()) for v in missing}
    return load(g).to(device), feeder


class Solver:
    """A Caffe solver on the PyTorch runtime (``caffe.get_solver(path)`` and friends in pycaffe).

    ``solver`` is a solver ``.prototxt`` path (nets and data paths in it resolve against the working directory,
    as in Caffe) or a ``SolverParameter`` message. ``solver_type`` overrides the file's ``type`` (pycaffe's
    ``caffe.AdamSolver(path)`` builds an Adam solver whatever the file says); so does the ``solver_type``
    argument. ``hold_inputs``: nets with Input layers train on what the caller writes into their blobs
    (``feeder.held``, zeros at first, as Caffe's blobs); otherwise they are refused. ``python_layers``: what the
    nets' ``Python`` layers compute (``{"module.Layer": cls}``, see :func:`prototxt2py.graph`)."""

    solver_type: str | None = None

    def __init__(self, solver: str | os.PathLike | Any, *, rank: int | None = None, world: int | None = None,
                 device: str | torch.device = "cpu", data_workers: int | None = None,
                 solver_type: str | None = None, warn: Callable[[str], None] | None = None,
                 file: str | None = None, hold_inputs: bool = False,
                 python_layers: Mapping[str, Any] | None = None):
        from ..proto import caffe_pb2

        if not isinstance(solver, (str, os.PathLike, caffe_pb2.SolverParameter)):
            raise TypeError(f"a solver needs a solver file path or a SolverParameter, got {type(solver).__name__}")
        # what the user should know but that does not stop training: by default a Python UserWarning
        self.warn: Callable[[str], None] = warn or _user_warning
        self.param = read_solver_param(solver, self.warn) if isinstance(solver, (str, os.PathLike)) else solver
        # errors name the solver file (``file``: where a SolverParameter given as a message was read from)
        self.hold_inputs = hold_inputs
        self.python_layers = dict(python_layers or {})
        self.file = file or (str(solver) if isinstance(solver, (str, os.PathLike)) else "<solver>")
        if rank is None or world is None:
            rank, world = _dist_rank_world()
        self.rank, self.world = rank, world
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise SolverError(f"unknown device {device!r}: {str(e).splitlines()[0]}", Location(self.file)) from None
        p = self.param
        # the field's default is "SGD"; one written empty is an unknown type to Caffe's registry
        self.type = solver_type or self.solver_type or p.type
        if self.type not in UPDATES:
            raise SolverError(f"unknown solver type '{self.type}' (known: {', '.join(UPDATES)})", Location(self.file))
        self.lr = LrParams.from_solver(p)
        self.lr.check(Location(self.file))
        if p.average_loss < 1:
            raise SolverError("average_loss should be at least 1", Location(self.file))
        if p.eval_type not in ("classification", "detection"):  # Caffe stops at the first test
            raise SolverError(f"unknown eval_type '{p.eval_type}' (classification or detection)", Location(self.file))
        if p.eval_type == "detection" and p.ap_version not in AP_VERSIONS:
            raise SolverError(f"unknown ap_version '{p.ap_version}' ({', '.join(AP_VERSIONS)})", Location(self.file))
        if p.iter_size < 1:
            raise SolverError("iter_size should be at least 1", Location(self.file))
        if self.is_root and p.snapshot:
            check_writable(p.snapshot_prefix)
        if p.snapshot_diff:
            self.warn(f"{self.file}: snapshot_diff is not supported: snapshots hold the weights without their diffs")
        if p.debug_info:
            self.warn(f"{self.file}: debug_info is not supported: the per-layer [Forward]/[Backward]/[Update] lines "
                      "are not logged")
        if p.random_seed >= 0:
            torch.manual_seed(p.random_seed + self.rank)
        self.data_workers = data_workers
        self.data_seed = self._shared_data_seed()
        self.net_source: Any = None  # the NetSource each net was built from (pycaffe's Net.reshape needs it)
        self.test_sources: list[Any] = []
        self.net, self.feeder = self._init_train_net()
        if p.snapshot_format == 0 and self.is_root and (p.snapshot or p.snapshot_after_train):  # HDF5 snapshots
            from ..hdf5_weights import check_layer_names

            try:
                check_layer_names(self.net.graph)
            except WeightsError as e:  # now, not at the first snapshot, hours into training
                raise SolverError(f"{e.message} (snapshot_format: HDF5 in the solver)", Location(self.file),
                                  layer=e.layer) from None
        self.test_nets: list[Any] = []
        self.test_feeders: list[Feeder] = []
        self._init_test_nets()
        files = [name.strip() for w in p.weights for name in w.split(",")]
        missing: set[str] | None = None
        for name in files:
            report = self.load_weights(name, warn_missing=len(files) == 1)
            missing = set(report.missing) if missing is None else missing & set(report.missing)
        if len(files) > 1 and missing:  # left at their fillers by every file (as Caffe, the last file wins)
            self.warn(f"layers without weights in any of {', '.join(files)} (left at their fillers): "
                      + ", ".join(n.name for n in self.net.graph.nodes if n.name in missing))
        self.learnables = self._learnables()
        # Caffe reads the type only for a parameter with weight decay (LOG(FATAL) on an unknown one there)
        decays = any(f32(p.weight_decay) * f32(lp.decay_mult) for lp in self.learnables)
        if decays and p.regularization_type not in ("L1", "L2"):
            raise SolverError(f"unknown regularization_type '{p.regularization_type}' (L1 or L2)", Location(self.file))
        if self.world > 1:
            self._broadcast_from_root()
        try:
            self.update: Update = UPDATES[self.type](p, [lp.tensor for lp in self.learnables])
        except SolverError as e:  # the update rule's own checks (RMSProp's momentum, ...) name the file too
            if e.location is not None:
                raise
            raise SolverError(e.message, Location(self.file)) from None
        self.iter = 0
        self.current_step = 0
        self.last_iter = p.max_iter  # where solve() stops (max_iter, or its ``until``)
        self.requested_early_exit = False
        self.trajectory: list[dict[str, Any]] = []  # per iteration: iter, loss, lr (and sub_losses)
        self.test_results: list[TestResult] = []
        self.smoothed_loss = 0.0
        self._losses: list[float] = []
        self.log: Callable[[str], None] = lambda line: None  # Caffe-style log lines (rank 0 only)
        self.on_iteration: Callable[[dict[str, Any]], None] | None = None  # progress display
        self.action_request: Callable[[], str] | None = None  # Caffe's GetRequestedAction (signals)
        self.on_diverge = STOP  # NaN/inf loss: snapshot and raise DivergedError ("none": go on, as Caffe)
        # Caffe's Solver::Callback: on_start() at each iteration (after its test), on_gradients() before the update
        self.callbacks: list[tuple[Callable[[], Any], Callable[[], Any]]] = []
        # every blob of each forward pass, fn(net, {blob: tensor}): pycaffe's persistent blobs are filled from it
        self.on_blobs: Callable[[Any, dict[str, torch.Tensor]], None] | None = None
        self.last_snapshot: tuple[str, str] | None = None
        self._last_outputs: dict[str, torch.Tensor] = {}

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- nets ------------------------------------------------------------------------------------------------
    def _shared_data_seed(self) -> int:
        """The readers' seed: ``random_seed`` (the same on every rank, so shuffles agree and the ranks' row
        shares stay disjoint), or rank 0's torch seed when the solver sets none."""
        if self.param.random_seed >= 0:
            return int(self.param.random_seed)
        seed = torch.initial_seed() & 0x7FFFFFFF
        if self.world > 1:
            import torch.distributed as dist

            t = torch.tensor([seed], dtype=torch.int64)
            dist.broadcast(t, 0)
            seed = int(t.item())
        return int(seed)

    def close(self) -> None:
        """Stop the data loaders' worker processes."""
        for feeder in (self.feeder, *self.test_feeders):
            feeder.close()

    def _init_train_net(self) -> tuple[Any, Feeder]:
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise SolverError(("the solver must name exactly one train net, " if given else "the solver names no "
                               "train net: set ") + "one of net, net_param, train_net, train_net_param"
                              + (f" (it sets {', '.join(given)})" if given else ""), Location(self.file))
        f = given[0]
        source = _net_source(getattr(p, f), self.file) if f.endswith("_param") else _read_net(getattr(p, f), self.file)
        self.net_source = source
        state = solver_state(TRAIN, source.net, p.train_state)  # the net's or train_state's phase may be TEST
        net, feeder = build_fed_net(source, state.phase_name, tuple(state.stages), state.level, self.rank,
                                    self.world, self.device, self.data_seed, self.data_workers, self.hold_inputs,
                                    self.python_layers)
        net.train(state.phase == TRAIN)
        return net, feeder

    def _init_test_nets(self) -> None:
        p = self.param
        if p.HasField("net") and p.HasField("net_param"):
            raise SolverError("both net and net_param are set", Location(self.file))
        generic = p.HasField("net") or p.HasField("net_param")
        explicit = len(p.test_net_param) + len(p.test_net)
        if (len(p.test_iter) < explicit) if generic else (len(p.test_iter) != explicit):
            raise SolverError("test_iter must be given once for each test net", Location(self.file))
        count = explicit + (len(p.test_iter) - explicit if generic else 0)
        if p.test_state and len(p.test_state) != count:
            raise SolverError("test_state must be unset or given once per test net", Location(self.file))
        if count and p.test_interval <= 0:
            raise SolverError("test nets need test_interval > 0", Location(self.file))
        if not self.is_root:  # only the root solver tests
            return
        sources = [_net_source(n, self.file) for n in p.test_net_param] + [_read_net(n, self.file) for n in p.test_net]
        for _ in range(count - explicit):
            generic = p.HasField("net_param")
            sources.append(_net_source(p.net_param, self.file) if generic else _read_net(p.net, self.file))
        for i, source in enumerate(sources):
            state = solver_state(TEST, source.net, p.test_state[i] if p.test_state else None)
            net, feeder = build_fed_net(source, state.phase_name, tuple(state.stages), state.level, self.rank,
                                        self.world, self.device, self.data_seed, self.data_workers, self.hold_inputs,
                                    self.python_layers)
            net.train(state.phase == TRAIN)
            self._share_trained_layers(net)
            self.test_nets.append(net)
            self.test_feeders.append(feeder)
            self.test_sources.append(source)

    def _share_trained_layers(self, test_net: Any) -> None:
        """Caffe's ``ShareTrainedLayersWith``: a TEST layer named as a TRAIN layer uses its blobs (same tensors,
        so updates and BatchNorm statistics are seen without copying)."""
        train_names = {n.name for n in self.net.graph.nodes}
        for node in test_net.graph.nodes:
            if node.name not in train_names:
                continue
            target, source = test_net.layer(node.name), self.net.layer(node.name)
            names = getattr(target, "blob_names", ())
            src_names = getattr(source, "blob_names", ())
            if len(names) != len(src_names):  # Caffe's ShareTrainedLayersWith CHECK
                raise SolverError(f"Incompatible number of blobs for layer {node.name}: {len(src_names)} in the TRAIN "
                                  f"net, {len(names)} here", node.location, layer=node.name)
            for i, (name, src) in enumerate(zip(names, src_names, strict=True)):
                mine, theirs = getattr(target, name), getattr(source, src)
                if tuple(mine.shape) != tuple(theirs.shape):
                    raise SolverError(f"cannot share blob {i} with the TRAIN net: shape {tuple(theirs.shape)} there, "
                                      f"{tuple(mine.shape)} here", node.location, layer=node.name)
                setattr(target, name, theirs)
        test_net.clear_fold_cache()

    def _learnables(self) -> list[Learnable]:
        """Caffe's ``Net::AppendParam``: one learnable per blob not shared from an earlier layer. A shared blob's
        ``lr_mult``/``decay_mult`` is the first one set by any of the layers using it (1 if none is), and two set
        values must agree."""
        owned: dict[tuple[str, int], int] = {}
        specs: list[ParamInfo] = []  # per learnable: its multipliers, and whether a layer has set them
        tensors: list[tuple[str, int, torch.Tensor]] = []
        graph = self.net.graph
        for (node, module), unique in zip(self.net.node_layers(), graph.unique_names(), strict=True):
            blob_names = getattr(module, "blob_names", ())
            for i, name in enumerate(blob_names):
                info = node.params[i] if i < len(node.params) else ParamInfo()
                if info.owner is None:
                    owned[(unique, i)] = len(specs)
                    specs.append(dataclasses.replace(info))
                    tensors.append((node.name, i, getattr(module, name)))
                    continue
                spec = specs[owned[info.owner]]
                for what in ("lr_mult", "decay_mult"):
                    if not getattr(info, f"{what}_set"):
                        continue
                    first, value = float(getattr(spec, what)), float(getattr(info, what))
                    if getattr(spec, f"{what}_set") and first != value:
                        raise SolverError(f"Shared param '{info.name}' has mismatched {what} ({first:g} where it is "
                                          f"first set, {value:g} here)", node.location, layer=node.name)
                    setattr(spec, what, value)
                    setattr(spec, f"{what}_set", True)
        return [Learnable(layer, i, tensor, float(spec.lr_mult) if isinstance(tensor, torch.nn.Parameter) else 0.0,
                          float(spec.decay_mult))
                for (layer, i, tensor), spec in zip(tensors, specs, strict=True)]

    def load_weights(self, path: str | os.PathLike, warn_missing: bool = True) -> Any:
        """Caffe's ``CopyTrainedLayersFrom`` on the TRAIN net (TEST nets share its tensors; their own layers
        get the weights too). Layers the file lacks (unless ``warn_missing`` is off: one of several files),
        or named like an earlier layer, are warned about. Returns the TRAIN net's load report."""
        from ..weights import load_weights

        # binary or HDF5 (.caffemodel.h5), told apart by content as Caffe does
        report = load_weights(self.net, path)
        for line in report.warnings(missing=warn_missing):
            self.warn(f"{path}: {line}")
        for net in self.test_nets:
            load_weights(net, path)
            net.clear_fold_cache()
        return report

    # -- training loop ---------------------------------------------------------------------------------------
    def _requested_action(self) -> str:
        return self.action_request() if self.action_request is not None else NONE

    def _root_action(self) -> str:
        """The root's requested action, the same on every rank (a signal reaches ranks at different times; all
        must stop at the same iteration or the others would wait forever in the next all-reduce)."""
        request = self._requested_action()
        if self.world == 1:
            return request
        import torch.distributed as dist

        actions = (NONE, STOP, SNAPSHOT)
        code = torch.tensor([actions.index(request)], device=self.learnables[0].tensor.device)
        dist.broadcast(code, 0)
        return actions[int(code.item())]

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a NaN loss on one rank stops them all)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)], device=self.learnables[0].tensor.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _forward_backward(self) -> float:
        inputs = {k: v.to(self.device) for k, v in self.feeder.next_pass().items()}
        blobs = forward_for_loss(self.net, inputs, all_blobs=self.on_blobs is not None)
        if self.on_blobs is not None:
            self.on_blobs(self.net, blobs)
        self._last_outputs = {name: blobs[name].detach() for name in self.net.output_names if name in blobs}
        loss = self.net.loss(blobs)
        if loss.requires_grad:
            loss.backward()
        return float(f32(loss.detach().item()))

    def _clear_diffs(self) -> None:
        for lp in self.learnables:
            lp.tensor.grad = None

    def step(self, iters: int) -> None:
        """Caffe's ``Solver::Step``: ``iters`` iterations (tests, forward/backward, update, snapshots)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self._losses, self.smoothed_loss = [], 0.0
        timer, iters_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self._clear_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                if self.is_root:
                    self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self.callbacks:
                on_start()
            display = p.display and self.iter % p.display == 0
            sub_losses = [self._forward_backward() for _ in range(p.iter_size)]
            loss = f32(0)
            for sub in sub_losses:
                loss = f32(loss + f32(sub))
            loss = float(f32(loss / f32(p.iter_size)))
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display and self.is_root:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iters_last) / (lapse or 1)
                self.log(f"Iteration {self.iter} ({per_s:g} iter/s, {lapse:g}s/{p.display} iters), "
                         f"loss = {self.smoothed_loss:g}")
                timer, iters_last = time.perf_counter(), self.iter
                self._log_outputs("Train", self._last_outputs, self.net.loss_weights)
            if self.on_diverge == STOP and self._any_rank(not math.isfinite(loss)):
                self._diverged(loss)
            if self.world > 1:
                self._all_reduce_gradients()
            for _, on_gradients in self.callbacks:
                on_gradients()
            with uninterrupted():  # weights, iter and trajectory change together or not at all
                rate = self.apply_update()
                self.iter += 1  # the number of updates done, as Caffe's Step counts after ApplyUpdate
                entry = {"iter": self.iter - 1, "loss": loss, "lr": rate}
                if p.iter_size > 1:
                    entry["sub_losses"] = sub_losses
                self.trajectory.append(entry)
            if self.on_iteration is not None and self.is_root:
                self.on_iteration({**entry, "smoothed_loss": self.smoothed_loss, "max_iter": self.last_iter})
            request = self._root_action()
            if (p.snapshot and self.iter % p.snapshot == 0 and self.is_root) or (request == SNAPSHOT and self.is_root):
                self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break

    def _log_outputs(self, which: str, outputs: dict[str, torch.Tensor], loss_weights: dict[str, float]) -> None:
        """Caffe's ``Train net output #k: name = v (* w = w*v loss)`` lines, one per output element."""
        k = 0
        for name, blob in outputs.items():
            weight = loss_weights.get(name, 0.0)
            for v in blob.cpu().numpy().astype(np.float32).ravel():
                extra = f" (* {weight:g} = {float(f32(weight) * v):g} loss)" if weight else ""
                self.log(f"    {which} net output #{k}: {name} = {v:g}{extra}")
                k += 1

    def _diverged(self, loss: float) -> None:
        where = ""
        if self.is_root:
            model, _ = self.snapshot()
            where = f"; the weights before this iteration are in {model}"
        what = "the loss of another rank is NaN or infinite" if math.isfinite(loss) else f"loss is {loss}"
        raise DivergedError(f"{what} at iteration {self.iter}{where} (lower base_lr, check the data, or add "
                            "clip_gradients)")

    def _update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int) -> None:
        """Caffe's running mean of the last ``average_loss`` iteration losses (for display)."""
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = float(f32((f32(self.smoothed_loss) * (size - 1) + f32(loss)) / size))
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss = float(f32(f32(self.smoothed_loss) + (f32(loss) - f32(self._losses[idx])) /
                                           average_loss))
            self._losses[idx] = loss

    def _broadcast_from_root(self) -> None:
        """Every rank starts from rank 0's weights (Caffe's P2PSync copies the root solver's parameters)."""
        import torch.distributed as dist

        with torch.no_grad():
            for lp in self.learnables:
                dist.broadcast(lp.tensor, 0)

    def _all_reduce_gradients(self) -> None:
        """Sum every rank's gradients and divide by the number of ranks (Caffe's P2PSync), in one flat
        buffer."""
        import torch.distributed as dist

        grads = [lp.tensor.grad if lp.tensor.grad is not None else torch.zeros_like(lp.tensor)
                 for lp in self.learnables]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for lp, g in zip(self.learnables, grads, strict=True):
            n = g.numel()
            lp.tensor.grad = flat[offset:offset + n].view_as(lp.tensor).clone()
            offset += n

    def set_base_lr(self, base_lr: float) -> None:
        """Change ``base_lr`` from the next update on (pycaffe's ``solver.param.base_lr = x``), rounded to float as
        the field is."""
        if isinstance(base_lr, bool) or not hasattr(base_lr, "__float__"):  # no strings, as pycaffe's binding
            raise TypeError(f"base_lr must be a number, got {type(base_lr).__name__}")
        self.param.base_lr = float(base_lr)
        self.lr = dataclasses.replace(self.lr, base_lr=self.param.base_lr)

    def learning_rate(self) -> float:
        """The rate of the next update (advances ``multistep``'s step like Caffe's ``GetLearningRate``)."""
        rate, step = learning_rate(self.lr, self.iter, self.current_step)
        if step != self.current_step and self.lr.lr_policy == "multistep":
            self.log(f"MultiStep Status: Iteration {self.iter}, step = {step}")
        self.current_step = step
        return rate

    def apply_update(self) -> float:
        """Caffe's ``SGDSolver::ApplyUpdate`` on the accumulated gradients; returns the learning rate used. As in
        Caffe, the iteration count is ``step``'s to advance, not this method's."""
        p = self.param
        rate = self.learning_rate()
        if p.display and self.iter % p.display == 0 and self.is_root:
            self.log(f"Iteration {self.iter}, lr = {rate:g}")
        diffs = []
        frozen_have_diffs = self.net.graph.force_backward  # Net::Init: force_backward propagates to every blob
        for lp in self.learnables:
            g = lp.tensor.grad
            if g is None or (lp.lr_mult == 0 and not frozen_have_diffs):  # else Caffe computes none for lr_mult 0
                g = torch.zeros_like(lp.tensor)
            diffs.append(g)
        with torch.no_grad():
            self._clip_gradients(diffs)
            weight_decay = f32(p.weight_decay)
            for i, (lp, diff) in enumerate(zip(self.learnables, diffs, strict=True)):
                if p.iter_size != 1:
                    diff.mul_(float(f32(1.0) / f32(p.iter_size)))
                local_decay = float(weight_decay * f32(lp.decay_mult))
                if local_decay:
                    reg = lp.tensor if p.regularization_type == "L2" else torch.sign(lp.tensor)
                    diff.add_(reg, alpha=local_decay)
                self.update.compute(i, diff, float(f32(rate) * f32(lp.lr_mult)), self.iter)
            for lp, diff in zip(self.learnables, diffs, strict=True):
                lp.tensor.sub_(diff)
                if isinstance(lp.tensor, torch.nn.Parameter):
                    lp.tensor.grad = diff
        return rate

    def _clip_gradients(self, diffs: Sequence[torch.Tensor]) -> None:
        clip = float(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = f32(0)
        for d in diffs:
            sumsq = f32(sumsq + f32(torch.dot(d.reshape(-1), d.reshape(-1)).item()))
        norm = float(np.sqrt(sumsq))
        if norm > clip:
            scale = float(f32(clip) / f32(norm))
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {norm:g} > {clip:g}) by scale factor "
                     f"{scale:g}")
            for d in diffs:
                d.mul_(scale)

    def solve(self, resume: str | os.PathLike | None = None, until: int | None = None) -> None:
        """Caffe's ``Solver::Solve``: optionally restore, train to ``max_iter`` (or to iteration ``until``, the
        learning-rate policy still reading ``max_iter``), final snapshot and test."""
        p = self.param
        self.log(f"Solving {self.net.graph.name}")
        self.log(f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        if resume is not None:
            self.log(f"Restoring previous solver status from {resume}")
            self.restore(resume)
        start_iter = self.iter
        self.last_iter = p.max_iter if until is None else until
        self.step(self.last_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) and self.is_root:
            self.snapshot()
        if self.requested_early_exit:
            self.log("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0 and self.is_root:
            with torch.no_grad():
                inputs = {k: v.to(self.device) for k, v in self.feeder.next_pass().items()}
                blobs = forward_for_loss(self.net, inputs, all_blobs=self.on_blobs is not None)
                if self.on_blobs is not None:
                    self.on_blobs(self.net, blobs)
                loss = float(f32(self.net.loss(blobs).item()))
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            self.log(f"Iteration {self.iter}, loss = {self.smoothed_loss:g}")
        if p.test_interval and self.iter % p.test_interval == 0 and self.is_root:
            self.test_all()
        self.log("Optimization Done.")

    # -- testing ---------------------------------------------------------------------------------------------
    def test_all(self) -> list[TestResult]:
        out = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            result = self.test(i)
            if result is not None:
                out.append(result)
        return out

    def test(self, test_net_id: int = 0) -> TestResult | None:
        """Caffe's ``Solver::Test``: ``test_iter`` forward passes, mean of each output element (float32 sums)."""
        p = self.param
        net, feeder = self.test_nets[test_net_id], self.test_feeders[test_net_id]
        self.log(f"Iteration {self.iter}, Testing net (#{test_net_id})")
        n_iter = p.test_iter[test_net_id]
        scores: list[np.float32] = []
        names: list[str] = []
        per_batch = []
        detection = DetectionScores() if p.eval_type == "detection" else None
        loss = f32(0)
        for i in range(n_iter):
            request = self._requested_action()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            with torch.no_grad():
                blobs = net(**{k: v.to(self.device) for k, v in feeder.next_pass().items()}, all_blobs=True)
                if self.on_blobs is not None:
                    self.on_blobs(net, blobs)
                if p.test_compute_loss:
                    loss = f32(loss + f32(net.loss(blobs).item()))
            values = [(name, blobs[name].detach().cpu().numpy().astype(np.float32).ravel())
                      for name in net.output_names]
            per_batch.append({name: v.tolist() for name, v in values})
            if detection is not None:  # SSD's TestDetection: rows gathered, scored once all batches are in
                for j, (name, v) in enumerate(values):
                    detection.add(j, name, v)
                continue
            flat = [(name, x) for name, v in values for x in v]
            if i == 0:
                names = [name for name, _ in flat]
                scores = [f32(x) for _, x in flat]
            else:
                check_output_sizes(names, values, i, f"test net #{test_net_id}")
                scores = [f32(s + x) for s, (_, x) in zip(scores, flat, strict=True)]
        if self.requested_early_exit:
            self.log("Test interrupted.")
            return None
        result = TestResult(self.iter, test_net_id, [], {n: float(w) for n, w in net.loss_weights.items()},
                            per_batch=per_batch)
        if p.test_compute_loss:
            result.loss = float(f32(loss / f32(n_iter)))
            self.log(f"Test loss: {result.loss:g}")
        if detection is not None:
            per_class = self.log if p.show_per_class_result else None
            for k, m_ap in enumerate(detection.mean_ap(p.ap_version, self.warn, per_class)):
                result.outputs.append((net.output_names[k], m_ap))
                self.log(f"    Test net output #{k}: {net.output_names[k]} = {m_ap:g}")
            self.test_results.append(result)
            return result
        for k, (name, s) in enumerate(zip(names, scores, strict=True)):
            mean = float(f32(s / f32(n_iter)))
            result.outputs.append((name, mean))
            weight = net.loss_weights.get(name, 0.0)
            extra = f" (* {weight:g} = {float(f32(weight) * f32(mean)):g} loss)" if weight else ""
            self.log(f"    Test net output #{k}: {name} = {mean:g}{extra}")
        self.test_results.append(result)
        return result

    # -- snapshots -------------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Caffe's ``Snapshot``: ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (``.caffemodel.h5`` and
        ``.solverstate.h5`` with ``snapshot_format: HDF5``), both or neither."""
        from ..weights import write_caffemodel

        prefix = self.param.snapshot_prefix
        hdf5 = self.param.snapshot_format == 0  # SolverParameter.HDF5
        ext, kind = (".h5", "HDF5 file") if hdf5 else ("", "binary proto file")
        model = snapshot_filename(prefix, self.iter, ".caffemodel" + ext)
        state = snapshot_filename(prefix, self.iter, ".solverstate" + ext)
        self.log(f"Snapshotting to {kind} {model}")
        self.log(f"Snapshotting solver state to {kind} {state}")
        if hdf5:
            from .hdf5_snapshot import write_caffemodel_h5, write_solverstate_h5

            write_model, write_state = write_caffemodel_h5, write_solverstate_h5
        else:
            write_model, write_state = write_caffemodel, write_solverstate
        write_together([
            (model, lambda f: write_model(self.net, f)),
            (state, lambda f: write_state(f, self.iter, model, self.current_step, self.update.history)),
        ])
        self.last_snapshot = (model, state)
        return model, state

    def restore(self, path: str | os.PathLike) -> None:
        """Caffe's ``Restore``: iteration, learning-rate step, history and (via ``learned_net``) the weights.
        Everything is checked before anything changes: a state of another net leaves the solver as it was."""
        from ..weights import WeightsError

        ours = self.update.history
        state = read_solverstate(path, [h.numel() for h in ours])
        file = Location(str(path))
        if len(state.history) != len(ours):
            raise SolverError(f"the solver state holds {len(state.history)} history blobs, this {self.type} solver on "
                              f"this net needs {len(ours)} (a state of another net or solver type?)", file)
        for i, (h, mine) in enumerate(zip(state.history, ours, strict=True)):
            if h.size != mine.numel():
                lp = self.learnables[i % len(self.learnables)]
                raise SolverError(f"history blob {i} has shape {h.shape}, parameter {lp.index} of layer "
                                  f"'{lp.layer}' has {tuple(mine.shape)} (a state of another net?)", file)
        if state.learned_net:
            if not Path(state.learned_net).is_file():
                why = "are not a regular file" if Path(state.learned_net).exists() else "do not exist"
                raise SolverError(f"the weights it names, {state.learned_net}, {why} (paths are relative to "
                                  "the working directory)", file)
            try:
                self.load_weights(state.learned_net)
            except WeightsError as e:
                raise SolverError(f"its weights {state.learned_net} do not fit: {e}", file) from None
        with torch.no_grad():
            self.log("SGDSolver: restoring history")
            for h, mine in zip(state.history, ours, strict=True):
                mine.copy_(torch.from_numpy(h.reshape(tuple(mine.shape))))
        self.iter = state.iter
        self.current_step = state.current_step


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then raise it: an update interrupted half-way would leave some blobs
    updated and ``iter`` behind (in pycaffe, KeyboardInterrupt comes between steps, never inside one). Only with
    Python's own SIGINT handler, in the main thread; a handler installed by the caller (the CLI's) is kept."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def check_output_sizes(names: Sequence[str], values: Sequence[tuple[str, Sized]], batch: int, net: str) -> None:
    """Caffe sums a test net's outputs element by element over the batches (``test_score[idx++] += ...``, one
    slot per element of the first batch): an output whose size changes between batches (a Filter's top) has no
    such sum, and Caffe writes past its vector. ``names``: the first batch's output name per element;
    ``values``: this batch's (output name, values)."""
    for name, v in values:
        first = names.count(name)
        if len(v) != first:
            raise SolverError(f"{net} output '{name}' has {len(v)} values in batch {batch} but {first} in batch 0: "
                              "outputs are averaged element by element over the batches, so their sizes must not "
                              "change")


def forward_for_loss(net: Any, inputs: dict[str, torch.Tensor], all_blobs: bool = False) -> dict[str, torch.Tensor]:
    """A forward pass returning the loss-weighted blobs (every blob when a loss blob is not a net output, or when
    asked). A failing layer raises :class:`~prototxt2py.errors.ForwardError` naming it
    (``backends/forward_errors.py``)."""
    need_all = all_blobs or not set(net.loss_weights) <= set(net.output_names)
    return net(**inputs, all_blobs=need_all)


def _user_warning(line: str) -> None:
    """The default ``warn`` of the Python API: a ``UserWarning`` pointing at the caller's code."""
    warnings.warn(line, UserWarning, stacklevel=3)


def _dist_rank_world() -> tuple[int, int]:
    """This process's rank and the world size when ``torch.distributed`` is initialised, else ``(0, 1)``."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
