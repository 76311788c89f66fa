"""PyTorch runtime backend: the IR as a ``torch.nn.Module`` that computes what Caffe computes.

Each IR node becomes a submodule built by its layer spec; ``CaffeNet.forward`` walks a precomputed plan of
the nodes in Caffe's order over a dict of values. The walk is static Python, so ``torch.compile`` sees a
straight-line graph, and ``torch.fx.symbolic_trace`` records one call per layer (layers are opaque there:
their modules need concrete shapes, which symbolic tracing does not have).

Inference plan. In eval mode, when only the net's outputs are requested (``all_blobs=False``), the walk
follows a second plan with two rewrites; ``all_blobs=True`` and train mode run every layer as it is (the
reference path). Both rewrites change results only by float rounding:

* a ``BatchNorm`` using its stored statistics, with the per-channel ``Scale`` that usually follows it, is one
  per-channel multiply-add: it is folded into the preceding ``Convolution`` (weights and bias rescaled once and
  cached, keyed by the version counters of every blob involved, so loading or editing weights invalidates the
  cache), or applied as a single ``addcmul`` where there is no such convolution. Skipped for layers using
  batch statistics and where a blob inside the chain is read elsewhere; the conv fold is skipped when autograd
  needs gradients for the folded parameters;
* ``InnerProduct`` layers run on oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel
  ``torch.compile`` uses on CPU) when nothing needs gradients: on CPUs where MKL's GEMV is slow (AMD), it is
  1.5x faster at batch 1 and 2.5x at batch 16 than ``F.linear``, with no copy of the weights.

"Nothing needs gradients" means ``torch.no_grad()``, ``torch.inference_mode()`` or frozen parameters: in eval mode
with autograd on, the conv fold and oneDNN are skipped so that gradients stay exact.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Prototxt2pyError, ShapeError, UnsupportedLayerError
from ..ir import Graph, Node
from ..netstate import TRAIN

if TYPE_CHECKING:  # pragma: no cover
    from ..weights import Blob, LoadReport


def module_key(layer_name: str, taken: set[str]) -> str:
    """A submodule name for a Caffe layer name: ``.`` is not allowed in module names, so it becomes ``_``."""
    key = re.sub(r"[.]", "_", layer_name) or "layer"
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}_{i}"
    taken.add(key)
    return key


def _call_layer(module: nn.Module, *bottoms: torch.Tensor) -> Any:
    """Run one layer. A module-level function so that ``torch.fx`` records it as one opaque call."""
    return module(*bottoms)


# -- the inference plan's rewrites ----------------------------------------------------------------------------
def _bn_scale_affine(bn: nn.Module, scale: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(multiplier, offset)`` of BatchNorm (stored statistics) followed by an optional
    per-channel Scale. Differentiable with respect to the Scale's blobs (BatchNorm's are statistics)."""
    multiplier, offset = bn.affine()
    if scale is not None:
        offset = offset * scale.weight
        multiplier = multiplier * scale.weight
        if "bias" in scale.blob_names:
            offset = offset + scale.bias
    return multiplier, offset


def _apply_bn_scale(bn: nn.Module, scale: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm (+ Scale) on ``x`` as one multiply-add when BatchNorm uses its stored statistics, else the
    two layers as they are. Decided at call time, so an ``fx``-traced graph stays right in train mode."""
    if not bn.uses_global_stats():
        y = _call_layer(bn, x)
        return y if scale is None else _call_layer(scale, y)
    multiplier, offset = _bn_scale_affine(bn, scale)
    shape = (-1,) + (1,) * (x.dim() - 2)
    return torch.addcmul(offset.reshape(shape), x, multiplier.reshape(shape))


torch.fx.wrap("_call_layer")
torch.fx.wrap("_apply_bn_scale")


def _find_onednn_linear() -> Any:
    """oneDNN's matmul op if this torch build has it (a private op: any failure means "use F.linear")."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _find_onednn_linear()

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class _Fold:
    """``[Convolution ->] BatchNorm [-> Scale]`` whose intermediate blobs nobody else reads."""

    conv: str | None  # module keys
    bn: str
    scale: str | None
    conv_args: tuple  # (stride, pad, dilation, group) of the convolution, () without one
    input: str  # value ids: the group's input and output
    output: str
    steps: tuple  # the plan steps it replaces, run instead when BatchNorm uses batch statistics


def _scale_is_per_channel(node: Node, shape: tuple[int, ...] | None) -> bool:
    """A one-bottom Scale whose learned operand covers exactly axis 1 (what folding per channel needs)."""
    if shape is None or len(node.inputs) != 1 or len(shape) < 2 or not node.param_shapes:
        return False
    axis = node.attrs.axis + len(shape) if node.attrs.axis < 0 else node.attrs.axis
    return axis == 1 and tuple(node.param_shapes[0]) == (shape[1],)


def _is_plain_inner_product(node: Node) -> bool:
    """An InnerProduct flattening everything after axis 0 with an ``(N, K)`` weight: a plain 2-D matmul for
    inputs of any rank (``axis: 1`` literally; a negative axis would depend on the rank)."""
    return node.type == "InnerProduct" and len(node.inputs) == 1 and node.attrs.axis == 1 and not node.attrs.transpose


def _conv_args(node: Node, shape: tuple[int, ...] | None) -> tuple | None:
    """``(stride, pad, dilation, group)`` of a Convolution over axis 1 with 1-3 spatial axes, else None."""
    if shape is None:
        return None
    try:
        axis, kernel, stride, pad, dilation = node.spec.geometry(node, shape)
    except Prototxt2pyError:
        return None
    if axis != 1 or len(kernel) not in _CONV:
        return None
    return stride, pad, dilation, node.attrs.group


# -- the module ----------------------------------------------------------------------------------------------
_LAYER, _INPUT, _FOLD, _LINEAR = 0, 1, 2, 3


class CaffeNet(nn.Module):
    """A Caffe net on PyTorch.

    ``forward(*inputs, **named_inputs)`` takes the net's input blobs (positionally in ``input_names``
    order, or by Caffe blob name) and returns a dict of the output blobs by Caffe name. With
    ``all_blobs=True`` it returns every blob (final version of in-place blobs), as pycaffe's ``net.blobs``.
    A module traced by ``torch.fx.symbolic_trace`` takes its inputs positionally and returns the outputs.
    """

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph
        missing = [f"'{n.type}' (layer '{n.name}' at {n.location})" for n in graph.nodes
                   if not n.spec.supports("torch")]
        if missing:
            raise UnsupportedLayerError("no PyTorch implementation for: " + ", ".join(missing))
        self.layers = nn.ModuleDict()
        taken: set[str] = set()
        self.layer_keys: dict[str, str] = {}
        plan = []
        self._node_keys: list[str] = []  # per node (layer names may repeat; keys do not)
        unresolved = graph.unresolved()
        for node in graph.nodes:
            key = module_key(node.name, taken)
            self._node_keys.append(key)
            if node.spec.blob_names and not node.param_shapes and unresolved:
                # Parameter blobs are sized from inferred shapes; name the layer whose shapes are unknown.
                layer, why = next(iter(unresolved.items()))
                raise ShapeError(
                    f"cannot size this layer's parameters: shapes are unknown from layer '{layer}' on ({why})",
                    node.location,
                    layer=node.name,
                )
            try:
                module = node.spec.build_torch(node)
            except Prototxt2pyError:
                raise
            except (ValueError, TypeError, RuntimeError, IndexError) as e:
                raise Prototxt2pyError(f"cannot build PyTorch module: {e}", node.location, layer=node.name) from None
            self.layers[key] = module
            self.layer_keys.setdefault(node.name, key)
            kind = _INPUT if node.spec.type == "Input" or node.spec.is_data else _LAYER
            plan.append((kind, key, tuple(node.inputs), tuple(node.outputs)))
        self._plan = tuple(plan)
        self._tie_shared_params()
        self.input_names = [graph.values[v].blob for v in graph.inputs]
        self._input_ids = list(graph.inputs)
        self.output_names = [graph.values[v].blob for v in graph.outputs]
        self._output_ids = list(graph.outputs)
        self._outputs = tuple(zip(self.output_names, self._output_ids, strict=True))
        self._final_ids = {}
        for vid, value in graph.values.items():
            self._final_ids[value.blob] = vid
        self.loss_weights = {
            graph.values[vid].blob: w
            for node in graph.nodes
            for vid, w in zip(node.outputs, node.loss_weights, strict=False)
            if w
        }
        self._folds = self._find_folds()
        self._inference_plan = self._plan_inference(self._folds)
        self._fold_cache: dict[str, tuple] = {}  # BatchNorm key -> (stamp, weight, bias, storages kept alive)
        #: what :meth:`from_weights` loaded (layers loaded / missing / extra), else None
        self.load_report: LoadReport | None = None
        self.train(graph.state.phase == TRAIN)

    @classmethod
    def from_weights(cls, graph: Graph, weights: str | os.PathLike | Mapping[str, list[Blob]]) -> CaffeNet:
        """Build the net and load trained weights, without filling the blobs first (the weights overwrite
        them: filling would be a wasted pass over the model). Blobs the file lacks are filled afterwards with
        their fillers and listed in ``net.load_report.missing``. Bad weights raise ``WeightsError``."""
        from ..fillers import deferred_fills
        from ..weights import load_weights

        with deferred_fills() as deferred:
            net = cls(graph)
        report = load_weights(net, weights)
        deferred.fill_remaining(report.written, itertools.chain(net.parameters(), net.buffers()))
        net.load_report = report
        return net

    def _tie_shared_params(self) -> None:
        for node in self.graph.nodes:
            module = self.layers[self.layer_keys[node.name]]
            for i, p in enumerate(node.params):
                if p.owner is None or i >= len(getattr(module, "blob_names", ())):
                    continue
                owner = self.layers[self.layer_keys[p.owner[0]]]
                setattr(module, module.blob_names[i], getattr(owner, owner.blob_names[p.owner[1]]))

    def layer(self, caffe_name: str) -> nn.Module:
        """The submodule of a Caffe layer, by its Caffe name."""
        return self.layers[self.layer_keys[caffe_name]]

    # -- planning the folds ----------------------------------------------------------------------------------
    def _find_folds(self) -> list[_Fold]:
        """Every ``[Convolution ->] BatchNorm [-> Scale]`` chain whose inner blobs only the chain reads and
        that are not net outputs (requested ones are never folded away)."""
        graph = self.graph
        values = graph.values
        outputs = set(graph.outputs)
        by_name = {n.name: n for n in graph.nodes}
        producer = {vid: n for n in graph.nodes for vid in n.outputs}
        keys = {id(n): k for n, k in zip(graph.nodes, self._node_keys, strict=True)}
        steps = {step[1]: step for step in self._plan}

        def private(vid: str, reader: Node) -> bool:  # read by ``reader`` alone, and not an output
            return vid not in outputs and values[vid].consumers == [reader.name]

        folds = []
        for node in graph.nodes:
            bn = self.layers[keys[id(node)]]
            if not callable(getattr(bn, "affine", None)) or len(node.inputs) != 1 or len(node.outputs) != 1:
                continue
            members = [node]
            scale = None
            mid = node.outputs[0]
            readers = [by_name[c] for c in values[mid].consumers]
            if (len(readers) == 1 and readers[0].type == "Scale" and private(mid, readers[0])
                    and _scale_is_per_channel(readers[0], values[mid].shape)):
                scale = readers[0]
                members.append(scale)
            conv, conv_args = None, ()
            source = producer.get(node.inputs[0])
            if (source is not None and source.type == "Convolution" and len(source.inputs) == 1
                    and len(source.outputs) == 1 and private(node.inputs[0], node)):
                found = _conv_args(source, values[source.inputs[0]].shape)
                if found is not None:
                    conv, conv_args = source, found
                    members.insert(0, conv)
            folds.append(_Fold(
                conv=keys[id(conv)] if conv else None, bn=keys[id(node)], scale=keys[id(scale)] if scale else None,
                conv_args=conv_args, input=members[0].inputs[0], output=members[-1].outputs[0],
                steps=tuple(steps[keys[id(m)]] for m in members),
            ))
        return folds

    def _plan_inference(self, folds: list[_Fold]) -> tuple:
        """The plan with each fold's steps replaced by one step, placed where its last member was (its input
        exists earlier, and nothing in between reads its inner blobs), and plain InnerProducts marked for
        oneDNN."""
        replaced = {step[1]: fold for fold in folds for step in fold.steps}
        last = {fold.steps[-1][1] for fold in folds}
        linear = {key for node, key in zip(self.graph.nodes, self._node_keys, strict=True)
                  if _is_plain_inner_product(node)}
        plan = []
        for step in self._plan:
            fold = replaced.get(step[1])
            if fold is not None:
                if step[1] in last:
                    plan.append((_FOLD, fold, (fold.input,), (fold.output,)))
            elif step[1] in linear and _ONEDNN_LINEAR is not None:
                plan.append((_LINEAR, *step[1:]))
            else:
                plan.append(step)
        return tuple(plan)

    # -- running -----------------------------------------------------------------------------------------------
    def _bind_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = {}
        if len(args) > len(self._input_ids):
            raise TypeError(f"net takes {len(self._input_ids)} inputs {self.input_names}, got {len(args)}")
        for vid, value in zip(self._input_ids, args, strict=False):
            env[vid] = value
        for name, value in kwargs.items():
            vid = next((v for v, n in zip(self._input_ids, self.input_names, strict=True) if n == name), None)
            if vid is None:
                raise TypeError(f"net has no input blob '{name}' (inputs: {self.input_names})")
            env[vid] = value
        return env

    def _execute(self, plan: tuple, env: dict[str, Any], tracing: bool = False) -> dict[str, Any]:
        """Run plan steps over ``env`` (value id -> tensor). Layers of several tops set only the values not
        already there, so inputs given by the caller are never overwritten. Eagerly, modules are called
        directly (the common one-bottom case without building a list); under ``torch.fx`` through
        :func:`_call_layer`, and every layer of one top is taken to return a tensor (the layer contract)."""
        modules = self.layers._modules
        for kind, key, ins, outs in plan:
            if kind == _LAYER:
                if tracing:
                    produced = _call_layer(modules[key], *[env[i] for i in ins])
                elif len(ins) == 1:
                    produced = modules[key](env[ins[0]])
                else:
                    produced = modules[key](*[env[i] for i in ins])
            elif kind == _FOLD:
                produced = self._run_fold(key, env[ins[0]], env)
            elif kind == _LINEAR:
                produced = self._run_linear(modules[key], env[ins[0]])
            elif all(o in env for o in outs):  # an input layer whose blobs were given
                continue
            else:
                produced = _call_layer(modules[key])  # reports the missing input (or reads data)
            if len(outs) == 1:
                env[outs[0]] = produced if tracing or isinstance(produced, torch.Tensor) else produced[0]
            else:
                for i, vid in enumerate(outs):
                    if vid not in env:
                        env[vid] = produced[i]
        return env

    def forward(self, *args: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``forward(*inputs, all_blobs=False, **named_inputs)``. ``all_blobs`` is read from ``kwargs``, not
        declared: ``torch.fx`` would turn a keyword-only parameter into the first positional one."""
        tracing = isinstance(args, torch.fx.Proxy)
        if tracing:  # symbolic tracing: positional inputs, outputs only
            all_blobs, env = False, {vid: args[i] for i, vid in enumerate(self._input_ids)}
        else:
            all_blobs = bool(kwargs.pop("all_blobs", False))
            env = self._bind_inputs(args, kwargs)
        reference = all_blobs or self.training
        env = self._execute(self._plan if reference else self._inference_plan, env, tracing)
        if all_blobs:
            return {blob: env[vid] for blob, vid in self._final_ids.items()}
        return {blob: env[vid] for blob, vid in self._outputs}

    def values(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every value (all versions of in-place blobs), keyed by IR value id."""
        return self._execute(self._plan, self._bind_inputs(args, kwargs))

    def _run_fold(self, fold: _Fold, x: torch.Tensor, env: dict[str, Any]) -> torch.Tensor:
        modules = self.layers._modules
        bn, scale = modules[fold.bn], modules[fold.scale] if fold.scale else None
        if not bn.uses_global_stats():  # batch statistics (use_global_stats: false): run the layers as they are
            return self._execute(fold.steps, env, isinstance(x, torch.fx.Proxy))[fold.output]
        if fold.conv is None:
            return _apply_bn_scale(bn, scale, x)
        conv = modules[fold.conv]
        if self._conv_fold_unsafe(conv, scale, x):
            return _apply_bn_scale(bn, scale, _call_layer(conv, x))
        weight, bias = self._folded_conv(fold, conv, bn, scale)
        stride, pad, dilation, group = fold.conv_args
        return _CONV[len(stride)](x, weight, bias, stride, pad, dilation, group)

    @staticmethod
    def _run_linear(module: nn.Module, x: Any) -> Any:
        """A plain InnerProduct on oneDNN when nothing needs gradients (the op has no autograd formula) and the
        operands are what it takes: CPU float32, contiguous weights; else the layer as it is."""
        weight = module.weight
        bias = module.bias if "bias" in module.blob_names else None
        if (isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling() or x.device.type != "cpu"
                or x.dtype != torch.float32 or weight.dtype != torch.float32 or not weight.is_contiguous()
                or (torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias) if t is not None))):
            return _call_layer(module, x)
        return _ONEDNN_LINEAR(x.reshape(x.shape[0], -1), weight, bias, "none", [], "")

    @staticmethod
    def _conv_fold_unsafe(conv: nn.Module, scale: nn.Module | None, x: Any) -> bool:
        """Whether the cached, pre-multiplied conv weights must not be used: while tracing or compiling (the
        graph must compute from the live parameters), and when autograd wants gradients for them."""
        if isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling():
            return True
        if torch.is_grad_enabled():
            blobs = itertools.chain(conv.caffe_blobs(), scale.caffe_blobs() if scale is not None else ())
            return any(t.requires_grad for t in blobs)
        return False

    def _folded_conv(self, fold: _Fold, conv: nn.Module, bn: nn.Module, scale: nn.Module | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight and bias with BatchNorm (+ Scale) folded in, cached until any blob they
        come from changes: torch's in-place ops (``copy_``, ``load_state_dict``, the caffemodel reader) bump a
        tensor's version, and a replaced tensor (``.data = ...``, ``.to()``) has another address. The entry
        keeps the old storages alive, so no new tensor can take over an address it is keyed by. Writes through
        ``.data`` bump no version: call :meth:`clear_fold_cache` after those."""
        blobs = [*conv.caffe_blobs(), *bn.caffe_blobs(), *(scale.caffe_blobs() if scale is not None else ())]
        stamp = (bn.eps, *[(t._version, t.data_ptr()) for t in blobs])
        cached = self._fold_cache.get(fold.bn)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable later outside inference mode
            multiplier, offset = _bn_scale_affine(bn, scale)
            weight = conv.weight * multiplier.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
            bias = offset if "bias" not in conv.blob_names else torch.addcmul(offset, conv.bias, multiplier)
        self._fold_cache[fold.bn] = (stamp, weight, bias, [t.untyped_storage() for t in blobs])
        return weight, bias

    def clear_fold_cache(self) -> None:
        """Forget the convolution weights with BatchNorm folded in (they are recomputed on the next eval-mode
        forward). Needed only after writing blobs through ``.data``, which torch does not track."""
        self._fold_cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the fold cache behind: it is derived data, rebuilt on demand."""
        state = self.__dict__.copy()
        state["_fold_cache"] = {}
        return state

    def loss(self, blobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's total loss: sum over blobs with a loss weight of ``weight * sum(blob)``."""
        total = None
        for name, w in self.loss_weights.items():
            term = blobs[name].sum() * w
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())


def build(graph: Graph) -> CaffeNet:
    return CaffeNet(graph)

