"""pycaffe's ``caffe.Net`` on the PyTorch runtime: persistent blobs, layer ranges, Caffe's backward semantics.

A ``caffe.Net`` wraps a :class:`~prototxt2py.backends.torch_runtime.CaffeNet` and walks its plan (``net._plan``,
one step per layer in Caffe's order) itself, over one :class:`~._blob.Blob` per Caffe blob name, so that
``forward(start=..., end=...)`` and ``backward(...)`` can run any range of layers on what the blobs hold, as
Caffe's ``ForwardFromTo``/``BackwardFromTo`` do. An in-place layer's top is the same Blob as its bottom.

Backward. Caffe decides once, at construction, which layers and bottoms need a gradient
(``layer_need_backward``, ``bottom_need_backward``: along paths from learnable parameters to a loss, everything
under ``force_backward`` except the bottoms a layer refuses, see ``LayerSpec.force_backward_refused``);
:mod:`._backward` computes the same sets. ``backward()`` then visits those layers in reverse and computes each
gradient as Caffe's ``Backward_cpu`` does, from the blobs' *current* contents (see :mod:`._inplace` for the three ways).
Bottom diffs are overwritten; where one value feeds several bottoms (or also carries a loss weight) Caffe inserts a
Split layer, emulated here without a name: each reader writes its own copy of the diff, and the Split sums them into
the value's diff when it runs, just before its producer (see :class:`._backward.Split`). Parameter diffs accumulate,
as in Caffe, until ``clear_param_diffs()``.

Data layers (Data, ImageData, HDF5Data, WindowData) read their sources as Caffe's do, one batch per forward pass
that runs them (:mod:`._data`); a layer whose source does not exist reads nothing and its tops are blobs the
caller fills (``net.blobs[name].data[...] = ...``), as Input blobs are; ``set_input_arrays`` feeds a MemoryData
layer.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import zip_longest
from typing import Any

import numpy as np
import torch

import prototxt2py

from ..backends.forward_errors import layer_error, unfit_blobs
from ..backends.fusion import INPUT
from ..data.layers import layer_reader_key
from ..errors import GraphError, InputFileError, Location, Prototxt2pyError, WeightsError
from ..fsutil import atomic_output
from ..netstate import State
from ..reader import NetSource, read_net
from . import _mode
from ._backward import Split, layer_gradients, need_backward
from ._blob import Blob
from ._data import READ_SOURCE, open_readers
from ._phase import TEST, TRAIN

_PHASES = {TRAIN: "TRAIN", TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}


class CaffeUsageError(Prototxt2pyError, ValueError, RuntimeError):
    """A pycaffe call that Caffe would refuse (unknown layer or blob, inputs not matching the net, ...). Also a
    ``RuntimeError``, what pycaffe's C++ checks (``set_input_arrays``, ...) raise, so scripts catching it work."""


class Layer:
    """pycaffe's ``caffe.Layer`` of a net: ``.type`` and ``.blobs`` (the same Blob objects as ``net.params``)."""

    def __init__(self, name: str, type_: str, blobs: list[Blob]):
        self.name = name
        self.type = type_
        self.blobs = blobs

    def __repr__(self) -> str:
        return f"<caffe.Layer '{self.name}' type={self.type}>"


class NetFileError(InputFileError, RuntimeError):
    """A net or weights file ``caffe.Net`` cannot open. Also a ``RuntimeError``, what pycaffe's ``CheckFile``
    raises (a C++ ``std::runtime_error``), so scripts catching it keep working."""


def _check_file(path: str | os.PathLike | None) -> None:
    """Caffe's ``CheckFile``: a clear error before any parsing when a model file is missing."""
    if path is not None and not os.path.isfile(os.fspath(path)):
        raise NetFileError(f"Could not open file {os.fspath(path)}", Location(os.fspath(path)))


def _phase_name(phase: Any) -> str:
    if phase not in _PHASES:
        raise CaffeUsageError(f"phase must be caffe.TRAIN or caffe.TEST, got {phase!r}")
    return _PHASES[phase]


class Net:
    """``caffe.Net(prototxt, phase, level=0, stages=None, weights=None)`` or legacy ``caffe.Net(prototxt,
    weights, phase)``. The prototxt is read once, so it may be deleted right after construction.

    Beyond pycaffe, ``input_shapes={'data': [64, 1, 28, 28], 'label': [64]}`` sizes input or data-layer blobs
    whose shapes the file alone does not give, where the data source is absent (an existing source is read, and
    its shapes win, as Caffe's data layers reshape their tops),
    and ``python_layers={'module.Layer': MyModule}`` says what ``Python`` layers compute (pycaffe imports the
    module the file names; this never does, see :func:`prototxt2py.graph`)."""

    def __init__(self, network_file: str | os.PathLike, *args: Any, level: int = 0,
                 stages: Sequence[str] | None = None, weights: str | os.PathLike | None = None,
                 phase: Any = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 python_layers: Mapping[str, Any] | None = None):
        if len(args) == 2 and isinstance(args[0], (str, os.PathLike)):  # legacy Net(proto, weights, phase)
            if weights is not None:
                raise CaffeUsageError("weights given twice (legacy positional form and weights=)")
            weights, phase = args
        elif 1 <= len(args) <= 4 and not isinstance(args[0], (str, os.PathLike)):
            # pycaffe's Net(network_file, phase, level=0, stages=None, weights=None), positionally too
            named = {"level": level, "stages": stages, "weights": weights}
            for key, value in zip(("level", "stages", "weights"), args[1:], strict=False):
                if named[key] not in (None, 0):
                    raise CaffeUsageError(f"{key} given twice (positionally and as {key}=)")
                named[key] = value
            phase, level, stages, weights = args[0], named["level"], named["stages"], named["weights"]
        elif args:
            raise CaffeUsageError("Net(network_file, phase, level=0, stages=None, weights=None) or legacy "
                                  "Net(network_file, weights, phase)")
        if phase is None:
            raise CaffeUsageError("Net() needs a phase: caffe.TRAIN or caffe.TEST")
        _check_file(network_file)
        _check_file(weights)
        self._phase = _phase_name(phase)
        try:  # boost.python's int and list of str, refused as one error
            if level is None:
                raise GraphError("level must be an integer, got None")
            state = State.from_args(self._phase, level, stages or ())
        except GraphError as e:
            raise CaffeUsageError(str(e)) from None
        self._level, self._stages = int(state.level), tuple(state.stages)
        self._source: NetSource = read_net(network_file)
        self._device = _mode.device()
        self._callbacks: dict[str, list[Callable[[int], Any]]] = {k: [] for k in ("bf", "af", "bb", "ab")}
        self._memory_data: tuple[np.ndarray, np.ndarray, int] | None = None
        self._python_layers = dict(python_layers or {})
        self._links_grad = True
        self._feeder: Any = None
        # (a deploy net: no second graph)
        if any(layer_reader_key(layer) in READ_SOURCE for layer in self._source.net.layer):
            skeleton = prototxt2py.graph(self._source, self._phase, self._stages, self._level, infer=False,
                                         python_layers=self._python_layers)
            self._feeder = open_readers(skeleton, self._phase, set(input_shapes or ()))
        if self._feeder is not None:  # the data's shapes win, as in Caffe, whose data layers reshape their tops
            input_shapes = {**(input_shapes or {}), **self._feeder.shapes()}
        graph = prototxt2py.graph(self._source, self._phase, self._stages, self._level, input_shapes=input_shapes,
                                  python_layers=self._python_layers)
        self._adopt(graph, prototxt2py.load(graph, weights=weights).to(self._device))

    @classmethod
    def _over(cls, runtime: Any, source: NetSource, feeder: Any = None, links_grad: bool = True,
              python_layers: Mapping[str, Any] | None = None) -> Net:
        """A Net over a runtime built elsewhere (a solver's TRAIN or TEST net): its modules and parameter tensors
        are shared, not copied. ``feeder`` (a :class:`~prototxt2py.train.feeding.Feeder`) gives the data layers'
        next batch when ``forward`` runs them, as Caffe's data layers read their sources. ``links_grad``: the
        parameter diffs are the tensors' ``.grad`` (the TRAIN net, whose gradients the solver applies); a TEST
        net's parameters are the TRAIN net's tensors, but its diffs are its own, as in Caffe. ``python_layers``: the
        mapping the runtime was built with (a ``reshape`` builds the graph again)."""
        state = runtime.graph.state
        net = cls.__new__(cls)
        net._phase = state.phase_name
        net._level, net._stages = int(state.level), tuple(state.stages)
        net._source = source
        first = next(iter(runtime.parameters()), None)
        net._device = first.device if first is not None else torch.device("cpu")
        net._callbacks = {k: [] for k in ("bf", "af", "bb", "ab")}
        net._memory_data = None
        net._python_layers = dict(python_layers or {})  # reshape rebuilds the graph with them
        net._feeder = feeder
        net._links_grad = links_grad
        net._adopt(runtime.graph, runtime)
        return net

    # -- construction ----------------------------------------------------------------------------------------
    def _adopt(self, graph: Any, runtime: Any) -> None:
        """Blobs, layers and backward sets over ``runtime`` (a CaffeNet of ``graph`` on this net's device)."""
        self._graph = graph
        self._net = runtime
        # the LayerParameter of each layer of *this* phase (a train_val net may reuse a name across phases)
        self._layer_names = [n.name for n in graph.nodes]
        self._plan = runtime._plan
        # Blobs in Caffe's creation order: a layer's new tops, in order; in-place tops reuse their blob.
        self._blobs_dict: OrderedDict[str, Blob] = OrderedDict()
        for value in graph.values.values():
            if value.blob not in self._blobs_dict:
                shape = value.shape if value.shape is not None else (0,)
                self._blobs_dict[value.blob] = Blob(torch.zeros(shape, device=self._device))
        self._value_blob = {vid: self._blobs_dict[v.blob] for vid, v in graph.values.items()}
        self._node_params: list[list[Blob]] = []
        seen: dict[int, Blob] = {}
        for _, module in runtime.node_layers():  # each layer its own, even where names repeat
            blobs = []
            for t in (getattr(module, n) for n in getattr(module, "blob_names", ())):
                if id(t) not in seen:
                    if isinstance(t, torch.nn.Parameter) and self._links_grad:
                        if t.grad is None or t.grad.shape != t.shape:
                            t.grad = torch.zeros_like(t)
                        seen[id(t)] = Blob(t, t.grad, param=True)
                    else:
                        seen[id(t)] = Blob(t, torch.zeros_like(t), param=True)
                blobs.append(seen[id(t)])
            self._node_params.append(blobs)
        # a pycaffe Python layer is its own object, as boost.python hands back the instance Caffe runs (scripts
        # call their own methods on it: py-faster-rcnn's solver.net.layers[0].set_roidb(roidb))
        self.layers = [getattr(m, "pycaffe_layer", None) or Layer(n.name, n.type, b)
                       for (n, m), b in zip(runtime.node_layers(), self._node_params, strict=True)]
        self._fixed_tops = self._dummy_fixed_tops()
        self._compute_need_backward()
        self._loss_weight = self._blob_seeds()
        self._saved: dict[int, tuple] = {}
        self._reset_loss_diffs()
        self._run_fixed_fills()

    def _dummy_fixed_tops(self) -> dict[int, set[int]]:
        """Tops a layer fills once and keeps (DummyData's constant filler, its module's ``holds``): Caffe fills
        them at set-up, so values written by the caller stay."""
        fixed: dict[int, set[int]] = {}
        for i, (node, module) in enumerate(self._net.node_layers()):
            holds = getattr(module, "holds", None)
            if callable(holds):
                fixed[i] = {t for t in range(len(node.tops)) if holds(t)}
        return fixed

    def _push_held(self) -> None:
        """Before a solver's pass, which runs the runtime's modules: each held top's blob (written by the
        caller, or changed by in-place layers since, as in Caffe where nothing refills it) is what its layer
        gives from now on."""
        layers = self._net.node_layers()
        for i, tops in self._fixed_tops.items():
            node, module = layers[i]
            for t in tops:
                blob = self._blobs_dict.get(node.tops[t])
                if blob is not None and tuple(blob.shape) == tuple(module.shapes[t]):
                    module.hold(t, blob.tensor())
        held = self._feeder.held if self._feeder is not None else {}
        for name in held:  # Input blobs: what was written into them is the solver's next input, as in Caffe
            held[name] = self._blobs_dict[name].tensor()

    def _run_fixed_fills(self) -> None:
        for i in self._fixed_tops:
            self._forward_layer(i, initial=True)

    def _reset_loss_diffs(self) -> None:
        """Caffe's ``SetLossWeights``: a loss top's diff holds its loss weight, so ``backward()`` needs no seed."""
        for name, w in self._loss_weight.items():
            self._blobs_dict[name].fill_diff(w)

    def _blob_seeds(self) -> dict[str, float]:
        """Each blob's own loss weight (its diff's seed, ``blob_loss_weights``). Where a written loss weight moved
        to a Split (the blob is also read), Caffe cleared the layer's weights, and ``LossLayer::LayerSetUp`` gave
        a loss layer's top 0 the default 1 again; other layers' tops then have none."""
        seeds: dict[str, float] = {}
        for node in self._graph.nodes:
            weights = list(node.loss_weights)
            if any(v in self._splits and self._splits[v].loss_weight for v in node.outputs):
                weights = [1.0 if k == 0 and node.spec.is_loss else 0.0 for k in range(len(node.outputs))]
            for vid, w in zip(node.outputs, weights, strict=False):
                if w:
                    seeds[self._graph.values[vid].blob] = float(w)
        return seeds

    def _compute_need_backward(self) -> None:
        need = need_backward(self._graph, [len(p) for p in self._node_params])
        self._layer_need, self._bottom_need, self._param_need = need.layer, need.bottom, need.param
        self._splits_after: dict[int, list[Split]] = {}  # producer layer -> the Splits of its tops
        for i, node in enumerate(self._graph.nodes):
            here = [need.splits[v] for v in node.outputs if v in need.splits]
            if here:
                self._splits_after[i] = here
        self._splits = need.splits
        self._split_diffs: dict[tuple[int, int], torch.Tensor] = {}  # each Split top's diff, by its reader

    # -- pycaffe's properties ----------------------------------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        """Blobs by Caffe name, in Caffe's creation order (Caffe's automatic Split copies do not exist here)."""
        return self._blobs_dict

    @property
    def _blob_names(self) -> list[str]:
        return list(self._blobs_dict)

    @property
    def _blobs(self) -> list[Blob]:
        return list(self._blobs_dict.values())

    @property
    def params(self) -> OrderedDict[str, list[Blob]]:
        """Layer name -> its parameter Blobs, for layers that have any (a shared blob is the same object)."""
        return OrderedDict((layer.name, layer.blobs) for layer in self.layers if layer.blobs)

    @property
    def layer_dict(self) -> OrderedDict[str, Layer]:
        return OrderedDict(zip(self._layer_names, self.layers, strict=True))

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [self._loss_weight.get(name, 0.0) for name in self._blobs_dict]

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        return OrderedDict(zip(self._blobs_dict, self._blob_loss_weights, strict=True))

    @property
    def inputs(self) -> list[str]:
        """Tops of ``Input`` layers (and upgraded ``input:`` fields), as pycaffe; data layers' tops are not."""
        return [t for n in self._graph.nodes if n.type == "Input" for t in n.tops]

    @property
    def outputs(self) -> list[str]:
        """Blobs no layer consumes, sorted by name as Caffe lists them."""
        return [self._graph.values[v].blob for v in self._graph.outputs]

    @property
    def _inputs(self) -> list[int]:
        names = self._blob_names
        return [names.index(b) for b in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        names = self._blob_names
        return [names.index(b) for b in self.outputs]

    def _top_ids(self, i: int) -> list[int]:
        names = self._blob_names
        return [names.index(t) for t in self._graph.nodes[i].tops]

    def _bottom_ids(self, i: int) -> list[int]:
        names = self._blob_names
        return [names.index(b) for b in self._graph.nodes[i].bottoms]

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((n.name, list(n.tops)) for n in self._graph.nodes)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((n.name, list(n.bottoms)) for n in self._graph.nodes)

    @property
    def runtime(self) -> torch.nn.Module:
        """The underlying :class:`~prototxt2py.backends.torch_runtime.CaffeNet` (shares the parameters)."""
        return self._net

    @property
    def layer_need_backward(self) -> list[bool]:
        """Caffe's ``layer_need_backward_``: layers ``backward()`` visits."""
        return list(self._layer_need)

    # -- running -----------------------------------------------------------------------------------------------
    def _layer_index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise CaffeUsageError(f"no layer named '{name}' in the net") from None

    def _forward_layer(self, i: int, initial: bool = False) -> None:
        step = self._plan[i]
        kind, key, ins, outs = step.kind, step.key, step.inputs, step.outputs
        node = self._graph.nodes[i]
        if node.type == "MemoryData" and self._memory_data is not None:
            self._next_memory_batch(outs)
            return
        if kind == INPUT:
            return  # Input and data layers: their tops hold what the caller wrote
        module = self._net.layers[key]
        bottoms = [self._value_blob[v].tensor() for v in ins]
        if self._layer_need[i] and node.spec.backward_reads != "blobs":
            leaves = [b.detach().clone() for b in bottoms]
            if node.spec.backward_reads == "forward":
                for leaf, need in zip(leaves, self._bottom_need[i], strict=True):
                    if need and leaf.is_floating_point():
                        leaf.requires_grad_(True)
                with torch.enable_grad():
                    produced = module(*leaves)
                self._saved[i] = (leaves, produced if isinstance(produced, tuple) else (produced,))
            else:
                with torch.no_grad():
                    produced = module(*bottoms)
                self._saved[i] = (leaves, None)
        else:
            with torch.no_grad():
                produced = module(*bottoms)
        tops = produced if isinstance(produced, (tuple, list)) else (produced,)
        fixed = self._fixed_tops.get(i, ())
        for k, (vid, value) in enumerate(zip(outs, tops, strict=False)):
            if k in fixed and not initial:
                continue
            blob = self._value_blob[vid]
            if blob.write(value):
                name = self._graph.values[vid].blob
                if name in self._loss_weight:
                    blob.fill_diff(self._loss_weight[name])

    def _forward(self, start: int, end: int) -> float:
        """Caffe's ``ForwardFromTo``: layers ``start``..``end`` inclusive; returns the loss of that range."""
        loss = 0.0
        self._push_params()  # off the CPU: values written through params' host arrays reach the device
        if self._feeder is not None:
            self._feed(start, end)
        for i in range(start, end + 1):
            for fn in self._callbacks["bf"]:
                fn(i)
            try:
                self._forward_layer(i)
            except Prototxt2pyError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                node = self._graph.nodes[i]
                shapes = [self._value_blob[v].shape for v in node.inputs]
                raise layer_error(node, self._net.layer(node.name), shapes, e) from None
            node = self._graph.nodes[i]
            for vid, w in zip(node.outputs, node.loss_weights, strict=False):
                if w:
                    loss += w * float(self._value_blob[vid].tensor().sum())
            for fn in self._callbacks["af"]:
                fn(i)
        return loss

    def forward(self, blobs: Iterable[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Run layers ``start``..``end`` (names, inclusive) on the blobs; ``kwargs`` set input blobs first.
        Returns ``{blob: data}`` for the outputs (or ``end``'s tops) plus ``blobs``."""
        blobs = list(blobs or [])
        self._check_names(blobs)
        start_i = self._layer_index(start, 0)
        if end is not None:
            end_i = self._layer_index(end, 0)
            outputs = set(self.top_names[self._layer_names[end_i]] + blobs)
        else:
            end_i = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise CaffeUsageError(f"Input blob arguments do not match net inputs: got {sorted(kwargs)}, "
                                      f"the net's inputs are {self.inputs}")
            for name, value in kwargs.items():
                self._assign(name, "data", value, "Input is not batch sized")
        self._forward(start_i, end_i)
        return {out: self._blobs_dict[out].data for out in outputs}

    def backward(self, diffs: Iterable[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Backpropagate from layer ``start`` down to ``end`` (names, inclusive); ``kwargs`` set output diffs
        first. Returns ``{blob: diff}`` for the inputs (or ``end``'s bottoms) plus ``diffs``."""
        diffs = list(diffs or [])
        self._check_names(diffs)
        start_i = self._layer_index(start, len(self.layers) - 1)
        if end is not None:
            end_i = self._layer_index(end, 0)
            outputs = set(self.bottom_names[self._layer_names[end_i]] + diffs)
        else:
            end_i = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeUsageError(f"Top diff arguments do not match net outputs: got {sorted(kwargs)}, "
                                      f"the net's outputs are {self.outputs}")
            for name, value in kwargs.items():
                self._assign(name, "diff", value, "Diff is not batch sized")
        self._backward(start_i, end_i)
        return {out: self._blobs_dict[out].diff for out in outputs}

    def _check_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self._blobs_dict]
        if unknown:
            raise CaffeUsageError(f"no blob named {', '.join(repr(n) for n in unknown)} in the net")

    def _assign(self, name: str, field: str, value: Any, batch_message: str) -> None:
        blob = self._blobs_dict[name]
        value = np.asarray(value)
        if value.ndim == 0 or not blob.shape or value.shape[0] != blob.shape[0]:
            raise CaffeUsageError(f"{batch_message}: '{name}' has shape {tuple(blob.shape)}, got an array of shape "
                                  f"{value.shape} (reshape the blob and call net.reshape() for another size)")
        try:
            getattr(blob, field)[...] = value
        except ValueError:
            raise CaffeUsageError(f"array of shape {value.shape} does not fit blob '{name}' of shape "
                                  f"{tuple(blob.shape)} (reshape the blob and call net.reshape() first)") from None

    # -- backward ----------------------------------------------------------------------------------------------
    def _backward(self, start: int, end: int) -> None:
        """Caffe's ``BackwardFromTo``: layers ``start`` down to ``end``, where Caffe computes gradients. The Splits
        Caffe inserts after a layer run with it, just before its own backward, except after ``start``: there
        they sit past the range (Caffe's index ``start + 1``), so ``start`` reads its tops' diffs as the caller
        left them (DeepDream's ``dst.diff[:] = g; net.backward(start=end)`` on a blob with several readers)."""
        self._push_params()
        for i in range(start, end - 1, -1):
            for split in self._splits_after.get(i, ()) if i != start else ():
                if split.need:
                    self._backward_split(split)
            for fn in self._callbacks["bb"]:
                fn(i)
            if self._layer_need[i]:
                try:
                    self._backward_layer(i)
                except Prototxt2pyError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    node = self._graph.nodes[i]
                    raise Prototxt2pyError(f"backward failed: {str(e).splitlines()[0]}", node.location,
                                           layer=node.name) from None
            for fn in self._callbacks["ab"]:
                fn(i)

    def _backward_split(self, split: Split) -> None:
        """Caffe's ``SplitLayer::Backward_cpu``: the value's diff is the sum of its Split tops' diffs (the loss
        weight's constant first, then each reader's, in Caffe's order); a top no reader wrote is zeros."""
        blob = self._value_blob[split.value]
        shape = tuple(blob.shape)
        parts = [self._split_diffs.get(r) for r in split.readers]
        parts = [p for p in parts if p is not None and tuple(p.shape) == shape]
        total = torch.full(shape, split.loss_weight, dtype=blob.diff_tensor().dtype, device=self._device) \
            if split.loss_weight else None
        for part in parts:
            total = part.clone() if total is None else total.add_(part)
        blob.write_diff(total if total is not None else torch.zeros_like(blob.diff_tensor()), accumulate=False)

    def _backward_layer(self, i: int) -> None:
        """One layer's backward: bottom diffs overwritten (a bottom reading a Split top writes that top's diff,
        which the Split sums into the value's diff), parameter diffs accumulated."""
        step = self._plan[i]
        kind, key, ins, outs = step.kind, step.key, step.inputs, step.outputs
        node = self._graph.nodes[i]
        need_b = self._bottom_need[i]
        blobs = self._node_params[i]
        params = [b._data.tensor if n and isinstance(b._data.tensor, torch.nn.Parameter) else None
                  for b, n in zip(blobs, self._param_need[i], strict=True)]
        if kind == INPUT or (not any(need_b) and all(p is None for p in params)):
            return
        bottom_grads, param_grads = layer_gradients(
            node, self._net.layers[key], node.proto,
            [self._value_blob[v].tensor() for v in ins], [self._value_blob[v].tensor() for v in outs],
            [self._value_blob[v].diff_tensor() for v in outs], need_b, params, self._saved.get(i))
        for j, (v, need, g) in enumerate(zip(ins, need_b, bottom_grads, strict=True)):
            if not need:
                continue
            blob = self._value_blob[v]
            if g is None:
                if node.type != "Silence":  # Caffe's Silence writes zeros; other unused bottoms keep their diff
                    continue
                g = torch.zeros_like(blob.diff_tensor())
            if v in self._splits:
                self._split_diffs[(i, j)] = g.detach().reshape(blob.shape).clone()
            else:
                blob.write_diff(g, accumulate=False)
        for blob, g in zip(blobs, param_grads, strict=True):
            if g is not None:
                tensor = blob._data.tensor
                if self._links_grad and tensor.grad is not blob._diff.tensor:  # re-link after zero_grad(None)
                    tensor.grad = blob._diff.tensor
                blob.write_diff(g, accumulate=True)

    # -- batches -------------------------------------------------------------------------------------------
    def _batch(self, blobs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Split arrays into the net's batch size, the last batch padded with zeros (pycaffe's ``_batch``)."""
        num = len(next(iter(blobs.values())))
        batch_size = next(iter(self._blobs_dict.values())).shape[0]
        for i in range(0, num - num % batch_size, batch_size):
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        remainder = num % batch_size
        if remainder:
            yield {name: np.concatenate([blobs[name][-remainder:],
                                         np.zeros((batch_size - remainder,) + blobs[name].shape[1:])])
                   for name in blobs}

    def forward_all(self, blobs: Iterable[str] | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """``forward`` over arrays of any length, batch by batch; outputs concatenated, padding dropped."""
        blobs = list(blobs or [])
        self._need_arrays(kwargs, "forward_all")
        all_outs: dict[str, list] = {out: [] for out in set(self.outputs + blobs)}
        for batch in self._batch(kwargs):
            for out, value in self.forward(blobs=blobs, **batch).items():
                all_outs[out].extend(value.copy())
        result = {out: np.asarray(v) for out, v in all_outs.items()}
        pad = len(next(iter(result.values()))) - len(next(iter(kwargs.values())))
        return {k: v[:-pad] for k, v in result.items()} if pad else result

    def forward_backward_all(self, blobs: Iterable[str] | None = None, diffs: Iterable[str] | None = None,
                             **kwargs: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``forward`` + ``backward`` batch by batch: inputs and output diffs from ``kwargs``."""
        blobs, diffs = list(blobs or []), list(diffs or [])
        self._need_arrays(kwargs, "forward_backward_all")
        all_outs: dict[str, list] = {out: [] for out in set(self.outputs + blobs)}
        all_diffs: dict[str, list] = {d: [] for d in set(self.inputs + diffs)}
        fwd = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs}) if any(
            k in kwargs for k in self.inputs) else iter(())
        bwd = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs}) if any(
            k in kwargs for k in self.outputs) else iter(())
        for fb, bb in zip_longest(fwd, bwd, fillvalue={}):
            for out, value in self.forward(blobs=blobs, **fb).items():
                all_outs[out].extend(value.copy())
            for d, value in self.backward(diffs=diffs, **bb).items():
                all_diffs[d].extend(value.copy())
        outs = {k: np.asarray(v) for k, v in all_outs.items()}
        grads = {k: np.asarray(v) for k, v in all_diffs.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        if pad:
            outs = {k: v[:-pad] for k, v in outs.items()}
            grads = {k: v[:-pad] for k, v in grads.items()}
        return outs, grads

    @staticmethod
    def _need_arrays(kwargs: Mapping[str, Any], method: str) -> None:
        """pycaffe's ``*_all`` methods size their result from the arrays given (pycaffe itself raises a bare
        ``StopIteration`` without any)."""
        if not kwargs:
            raise CaffeUsageError(f"{method} needs the arrays to run over, as keyword arguments (e.g. data=...)")

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Feed a ``MemoryData`` first layer: ``forward()`` then takes the next batch of ``data``/``labels``."""
        if not self._graph.nodes or self._graph.nodes[0].type != "MemoryData":
            raise CaffeUsageError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        p = self._graph.nodes[0].proto.memory_data_param
        for what, arr in (("data array", data), ("labels array", labels)):
            if arr.dtype != np.float32 or arr.ndim != 4:
                raise CaffeUsageError(f"{what} must be 4-d float32")
        if data.shape[1:] != (p.channels, p.height, p.width):
            raise CaffeUsageError(f"data array has shape {data.shape[1:]} per item, the layer expects "
                                  f"{(p.channels, p.height, p.width)}")
        if labels.shape[1:] != (1, 1, 1):  # pycaffe's CheckContiguousArray(labels, "labels array", 1, 1, 1)
            raise CaffeUsageError(f"labels array has shape {labels.shape[1:]} per item, the layer expects (1, 1, 1): "
                                  "one label per item")
        if len(data) != len(labels):
            raise CaffeUsageError("data and labels must have the same first dimension")
        if len(data) % p.batch_size:
            raise CaffeUsageError("first dimensions of input arrays must be a multiple of batch size")
        name = self._graph.nodes[0].name
        if self._feeder is not None and any(layer.name == name for layer in self._feeder.layers):
            # a solver's net: its reader serves the training steps and forward() alike
            self._feeder.feed.source(name).reset(data, labels)
            return
        self._memory_data = (np.ascontiguousarray(data), np.ascontiguousarray(labels), 0)

    def _next_memory_batch(self, outs: Sequence[str]) -> None:
        data, labels, pos = self._memory_data
        n = self._graph.nodes[0].proto.memory_data_param.batch_size
        for vid, arr in zip(outs, (data, labels), strict=False):
            self._value_blob[vid].write(torch.from_numpy(arr[pos:pos + n]).to(self._device))
        self._memory_data = (data, labels, (pos + n) % len(data))

    # -- a solver's net -----------------------------------------------------------------------------------------
    def _feed(self, start: int, end: int) -> None:
        """The data layers among layers ``start``..``end`` take their next batch from the net's readers (a
        solver's, whose cursors training and testing share, as in Caffe; or this net's own)."""
        read = {layer.name for layer in self._feeder.layers}
        names = {self._graph.nodes[i].name for i in range(start, end + 1) if self._plan[i].kind == INPUT} & read
        if names:  # only the data layers in the range read their next batch, as each runs in Caffe
            self._take_blobs(self._feeder.next(names))

    def _take_blobs(self, blobs: Mapping[str, torch.Tensor]) -> None:
        """Copy a forward pass's results (by blob name) into the persistent blobs, as if this net had run it."""
        for name, value in blobs.items():
            blob = self._blobs_dict.get(name)
            if blob is not None:
                blob.write(value.detach().to(self._device))

    def _take_param_diffs(self) -> None:
        """After a solver's backward or update: each parameter's gradient becomes its blob's diff (copied, so
        arrays taken earlier see it) and the blob's diff tensor becomes the parameter's ``.grad`` again, so that
        diffs written by the caller reach the next update. Data changed on the device is marked as such."""
        for blobs in self._node_params:
            for b in blobs:
                b.mark_device_written()
                t = b._data.tensor
                if not isinstance(t, torch.nn.Parameter):
                    continue
                diff = b._diff.tensor
                if t.grad is not None and t.grad is not diff:
                    if diff.shape != t.grad.shape:
                        b._diff.resize(tuple(t.grad.shape))
                        diff = b._diff.tensor
                    with torch.no_grad():
                        diff.copy_(t.grad)
                t.grad = diff

    # -- shapes, weights ---------------------------------------------------------------------------------------
    def reshape(self) -> None:
        """Propagate the current shapes of the input blobs through the net (Caffe's ``Net::Reshape``)."""
        inputs = {self._graph.values[v].blob for v in self._graph.inputs}
        shapes = {b: self._blobs_dict[b].shape for b in inputs}
        graph = prototxt2py.graph(self._source, self._phase, self._stages, self._level, input_shapes=shapes,
                                  python_layers=self._python_layers)
        unfit = unfit_blobs(graph, self._net.layer, ", ".join(f"{b} {tuple(s)}" for b, s in shapes.items()))
        if unfit is not None:  # Caffe's Reshape checks too: "Input size incompatible with ... parameters"
            raise unfit
        for vid, value in graph.values.items():
            if value.shape is not None and value.blob not in inputs:
                self._value_blob[vid].reshape(*value.shape)
        self._reset_loss_diffs()

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff, in place (arrays taken earlier see the zeros)."""
        for blobs in self._node_params:
            for b in blobs:
                b.fill_diff(0.0)

    def copy_from(self, weights: str | os.PathLike) -> None:
        """Load a ``.caffemodel`` into the parameters, in place, by layer name (Caffe's
        ``CopyTrainedLayersFrom``)."""
        _check_file(weights)
        self._push_params()
        from ..weights import load_weights

        load_weights(self._net, weights)
        self._mark_params_written()

    def share_with(self, other: Net) -> None:
        """Use ``other``'s parameter data for every layer of the same name (Caffe's ``ShareTrainedLayersWith``):
        data is shared, diffs stay separate."""
        for name, src in other.params.items():
            if name not in self._layer_names:
                continue
            dst = self.layers[self._layer_names.index(name)].blobs
            if len(dst) != len(src):
                raise WeightsError(f"Incompatible number of blobs for layer {name}: {len(dst)} here, "
                                   f"{len(src)} in the other net", layer=name)
            for k, (d, s) in enumerate(zip(dst, src, strict=True)):
                if d.shape != s.shape:
                    raise WeightsError(f"Cannot share param {k} weights from layer '{name}': shape {s.shape}, "
                                       f"this net has {d.shape}", layer=name)
                with torch.no_grad():
                    d._data.tensor.set_(s.tensor().detach())
                d._data._host = None

    def save(self, filename: str | os.PathLike) -> None:
        """Write a binary ``.caffemodel`` (every layer and its blobs) that Caffe and OpenCV load."""
        from ..weights import write_caffemodel

        self._push_params()
        with atomic_output(filename) as f:
            write_caffemodel(self._net, f)

    def save_hdf5(self, filename: str | os.PathLike) -> None:
        """Caffe's ``ToHDF5``: group ``data/<layer>/<i>`` per own parameter blob (shared copies are skipped)."""
        from ._hdf5 import save_params

        self._push_params()
        save_params(self, filename)

    def load_hdf5(self, filename: str | os.PathLike) -> None:
        """Caffe's ``CopyTrainedLayersFromHDF5``: read ``data/<layer>/<i>`` into the parameters of same-named
        layers, in place."""
        from ._hdf5 import load_params

        _check_file(filename)
        self._push_params()
        load_params(self, filename)
        self._mark_params_written()

    def _push_params(self) -> None:
        """Modules read their parameters directly: copy host writes (off the CPU) to the device first."""
        if self._device.type == "cpu":
            return
        for blobs in self._node_params:
            for b in blobs:
                b.tensor()
                b.diff_tensor()

    def _mark_params_written(self) -> None:
        for blobs in self._node_params:
            for b in blobs:
                b._data.written()

    # -- callbacks (pycaffe's before_forward/after_forward/...: fn(layer_index)) -----------------------------
    def before_forward(self, fn: Callable[[int], Any]) -> None:
        self._callbacks["bf"].append(fn)

    def after_forward(self, fn: Callable[[int], Any]) -> None:
        self._callbacks["af"].append(fn)

    def before_backward(self, fn: Callable[[int], Any]) -> None:
        self._callbacks["bb"].append(fn)

    def after_backward(self, fn: Callable[[int], Any]) -> None:
        from ._parallel import NCCL

        if isinstance(fn, NCCL):  # layer-wise reduction: nothing to reduce without NCCL, as in such a Caffe
            return
        self._callbacks["ab"].append(fn)

    def __repr__(self) -> str:
        layers, blobs = len(self.layers), len(self._blobs_dict)
        return f"<caffe.Net '{self._graph.name}' {self._phase}: {layers} layers, {blobs} blobs>"
