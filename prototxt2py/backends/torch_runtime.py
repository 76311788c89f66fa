"""PyTorch runtime backend: the IR as a ``torch.nn.Module`` that computes what Caffe computes.

Each IR node becomes a submodule built by its layer spec; ``CaffeNet.forward`` walks a precomputed plan of
the nodes in Caffe's order over a dict of values. The walk is static Python, so ``torch.compile`` sees a
straight-line graph, and ``torch.fx.symbolic_trace`` records one call per layer (layers are opaque there:
their modules need concrete shapes, which symbolic tracing does not have).

Inference plan. In eval mode, when only the net's outputs are requested (``all_blobs=False``), the walk
follows a second plan (see :mod:`.fusion`): chains the layer specs allow (e.g. Convolution/BatchNorm/Scale/
Eltwise/ReLU) run as one oneDNN call with packed, folded weights, BatchNorm alone as one multiply-add, and
plain ``InnerProduct`` layers on oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel
``torch.compile`` uses on CPU; on CPUs where MKL's GEMV is slow (AMD) 1.5x faster at batch 1 and 2.5x at
batch 16 than ``F.linear``, with no copy of the weights). ``all_blobs=True`` and train mode run every layer
as it is (the reference path). Inputs oneDNN never takes (a GPU's, float64, autocast), and input shapes too
small for it (see ``fusion.ONEDNN_MIN_MACS``), follow a third, plain plan: the affine folds, and every other
layer as it is, without the per-step tests.
The rewrites change results only by float rounding.

The fast kernels have no autograd formulas: under ``torch.no_grad()``, ``torch.inference_mode()`` or with
frozen parameters they apply; in eval mode with autograd on, the chains fall back to torch ops so that
gradients stay exact.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import Prototxt2pyError, UnsupportedLayerError
from ..fillers import fill_blob
from ..ir import Graph, Node
from ..layers.base import unsupported_entry
from ..netstate import TRAIN
from . import fusion
from .fusion import (
    DENSE,
    FUSED,
    INPUT,
    LAYER,
    LINEAR,
    ONEDNN_LINEAR,
    FusionCache,
    Step,
    call_layer,
    find_fusions,
    plan_inference,
    run_fusion,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..weights import Blob, LoadReport


# fx wraps a function in the globals of the module that registers it: the runtime calls its own import of
# ``call_layer``, so it registers it here too (layers stay leaf calls when the net is traced).
torch.fx.wrap("call_layer")


def build_module(node: Any) -> nn.Module:
    """The layer's module from its spec's :class:`~prototxt2py.layers.base.Call`: built on the meta device (no
    initialisation work), given uninitialised storage, then filled with Caffe's fillers (deferred when weights
    follow). Its blob attribute names go on the module as ``blob_names``."""
    spec = node.spec
    recipe = spec.module(node)
    if recipe.build_on_meta:
        with torch.device("meta"):
            module = recipe.build()
        module = module.to_empty(device="cpu")
    else:  # a caller's module: built as it is, its own initial values kept until weights overwrite them
        module = recipe.build()
    names = spec.node_blob_names(node)
    for name, shape, filler in zip(names, node.param_shapes, spec.fillers(node), strict=True):
        blob = getattr(module, name)
        if tuple(blob.shape) != tuple(shape):
            raise RuntimeError(f"{recipe.target} made blob '{name}' of shape {tuple(blob.shape)}, Caffe's is {shape}")
        if recipe.build_on_meta:
            fill_blob(blob, filler)
    module.blob_names = names
    return module


# -- the module ----------------------------------------------------------------------------------------------
#: The exception types torch raises for a layer given shapes (or dtypes) it cannot take; a pass failing with
#: one of them (not a subclass, such as ``torch.OutOfMemoryError``) raises a located ``ForwardError`` instead.
_LOCATED = (RuntimeError, ValueError, IndexError)


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
        missing = [unsupported_entry(n) for n in graph.nodes if not n.spec.supports("torch", n)]
        if missing:
            raise UnsupportedLayerError("no PyTorch implementation for: " + ", ".join(missing))
        self.layers = nn.ModuleDict()
        self.layer_keys: dict[str, str] = {}
        plan = []
        self._node_keys: list[str] = graph.layer_keys()  # per node (layer names may repeat; keys do not)
        graph.require_param_shapes()
        for node, key in zip(graph.nodes, self._node_keys, strict=True):
            try:
                module = build_module(node)
            except Prototxt2pyError:
                raise
            except (ValueError, TypeError, RuntimeError, IndexError) as e:
                raise Prototxt2pyError(f"cannot build PyTorch module: {e}", node.location, layer=node.name) from None
            self.layers[key] = module
            self.layer_keys.setdefault(node.name, key)
            kind = INPUT if node.spec.is_input(node) else LAYER
            plan.append(Step(kind, key, tuple(node.inputs), tuple(node.outputs), detach=node.stop_gradient))
        self._plan = tuple(plan)
        self._tie_shared_params()
        self.input_names = [graph.values[v].blob for v in graph.inputs]
        self._input_ids = list(graph.inputs)
        self._input_id_of = dict(zip(self.input_names, self._input_ids, strict=True))
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
        self._fusions = find_fusions(graph, self._node_keys, self._plan)
        self._inference_plan = plan_inference(graph, self._node_keys, self._plan, self._fusions)
        self._plain_plan = plan_inference(graph, self._node_keys, self._plan, self._fusions, onednn=False)
        self._fusion_cache = FusionCache()
        #: what :meth:`from_weights` loaded (layers loaded / missing / extra), else None
        self.load_report: LoadReport | None = None
        #: layers that set their own ``phase``: their training flag, whatever mode the net is put in
        self._own_training = {key: node.own_phase == TRAIN for node, key in zip(graph.nodes, self._node_keys,
                                                                                strict=True)
                              if node.own_phase is not None}
        self.train(graph.state.phase == TRAIN)

    def train(self, mode: bool = True) -> CaffeNet:
        """``nn.Module.train``, except for layers that set their own ``phase``: Caffe's ``Net::Init`` gives the net's
        phase only to layers without one, so a ``phase: TRAIN`` Dropout keeps sampling in a TEST net."""
        super().train(mode)
        for key, training in self._own_training.items():
            self.layers[key].train(training)
        return self

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
        """Each ``param { name }`` shared with an earlier layer becomes the owner's tensor. Caffe's PERMISSIVE
        mode also shares blobs of equal size and another shape, each layer seeing its own shape; one tensor
        cannot, so those are refused here (the IR, diagrams and ONNX export still take them)."""
        by_unique = dict(zip(self.graph.unique_names(), self._node_keys, strict=True))  # owners are named so
        for node, module in self.node_layers():
            for i, p in enumerate(node.params):
                if p.owner is None or i >= len(getattr(module, "blob_names", ())):
                    continue
                owner = self.layers[by_unique[p.owner[0]]]
                tensor = getattr(owner, owner.blob_names[p.owner[1]])
                p.check_one_tensor(getattr(module, module.blob_names[i]).shape, tensor.shape, node)
                setattr(module, module.blob_names[i], tensor)

    def layer(self, caffe_name: str) -> nn.Module:
        """The submodule of a Caffe layer, by its Caffe name (the first layer of that name, as Caffe's lookups)."""
        return self.layers[self.layer_keys[caffe_name]]

    def node_layers(self) -> list[tuple[Node, nn.Module]]:
        """Each layer of the graph with its own submodule, in Caffe's order: how to walk every layer when names
        repeat (Caffe allows it), where ``layer(name)`` would give the first of a name twice."""
        return [(node, self.layers[key]) for node, key in zip(self.graph.nodes, self._node_keys, strict=True)]

    def layer_blobs(self, caffe_name: str) -> list[torch.Tensor]:
        """The parameter blobs of a Caffe layer in Caffe's order (``net.params[name]`` in pycaffe): parameters
        or buffers with Caffe's shapes; a blob shared through ``param { name }`` is the owner's tensor."""
        module = self.layer(caffe_name)
        return [getattr(module, n) for n in getattr(module, "blob_names", ())]

    # -- running -----------------------------------------------------------------------------------------------
    def named_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Inputs given as ``forward`` takes them (positionally in ``input_names`` order, or by name), keyed by
        input name; too many or unknown ones are refused in one line naming the net's inputs."""
        names = self.input_names
        if len(args) > len(names):
            raise TypeError(f"net takes {len(names)} inputs {names}, got {len(args)}")
        inputs = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in self._input_id_of:
                raise TypeError(f"net has no input blob '{name}' (inputs: {names})")
            inputs[name] = value
        return inputs

    def _bind_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        ids = self._input_id_of
        return {ids[name]: value for name, value in self.named_inputs(args, kwargs).items()}

    def _execute(self, plan: tuple[Step, ...], env: dict[str, Any], tracing: bool = False) -> dict[str, Any]:
        """Run plan steps over ``env`` (value id -> tensor). Layers of several tops set only the values not
        already there, so inputs given by the caller are never overwritten. Eagerly, modules are called
        directly (the common one-bottom case without building a list); under ``torch.fx`` through
        :func:`~.fusion.call_layer`, and every layer of one top is taken to return a tensor (the layer
        contract)."""
        modules = self.layers._modules
        for step in plan:
            kind, key, ins, outs = step.kind, step.key, step.inputs, step.outputs
            if kind is LAYER:
                if step.detach:  # propagate_down: false
                    produced = call_layer(modules[key], *_detached(step, env))
                elif tracing:
                    produced = call_layer(modules[key], *[env[i] for i in ins])
                elif len(ins) == 1:
                    produced = modules[key](env[ins[0]])
                else:
                    produced = modules[key](*[env[i] for i in ins])
            elif kind is FUSED:
                produced = run_fusion(step.fusion, modules, self._fusion_cache, env,
                                      lambda steps, env: self._execute(steps, env, tracing), step.overwrite)
            elif kind is LINEAR:
                produced = self._run_linear(modules[key], env[ins[0]])
            elif kind is DENSE:  # inputs that may be channels-last, for a layer not known to handle them
                produced = call_layer(modules[key], *[x.contiguous() for x in _detached(step, env)])
            elif all(o in env for o in outs):  # an input layer whose blobs were given
                continue
            else:
                produced = call_layer(modules[key])  # reports the missing input (or reads data)
            if len(outs) == 1:
                env[outs[0]] = produced if tracing or isinstance(produced, torch.Tensor) else produced[0]
            else:
                for i, vid in enumerate(outs):
                    if vid not in env:
                        env[vid] = produced[i]
            for vid in step.release:
                env.pop(vid, None)
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
        # torch.compile, torch.export and torch.jit.trace record the layers' plain torch ops, not oneDNN calls
        compiling = torch.compiler.is_compiling() or torch.jit.is_tracing()
        reference = all_blobs or self.training or compiling
        if tracing or compiling:  # no try block for the tracers to see
            env = self._execute(self._plan, env, tracing) if reference else self._run_inference(env, tracing)
        else:
            try:
                env = self._execute(self._plan, env) if reference else self._run_inference(env, False)
            except _LOCATED as error:
                located = self._located(args, kwargs, error) if type(error) in _LOCATED else error
                if located is error:
                    raise
                raise located from error
        if all_blobs:
            return {blob: env[vid] for blob, vid in self._final_ids.items()}
        if reference:
            return {blob: env[vid] for blob, vid in self._outputs}
        return {blob: env[vid].contiguous() for blob, vid in self._outputs}  # never channels-last

    def _located(self, args: tuple, kwargs: Mapping[str, Any], error: Exception) -> Exception:
        """The error a failed pass on inputs ``args``/``kwargs`` raises: one naming the layer (see
        :mod:`.forward_errors`), or ``error`` itself should explaining it fail."""
        from .forward_errors import forward_error

        inputs = self.named_inputs(args, kwargs)  # bound once already, so not refused here
        try:
            return forward_error(self, inputs, error)
        except Exception:  # noqa: BLE001 - the explanation must never hide the failure it explains
            return error

    def _run_inference(self, env: dict[str, Any], tracing: bool) -> dict[str, Any]:
        """The oneDNN plan, or the plain plan where oneDNN would not run anyway: when no input is one it takes
        (CPU float32 outside autocast; other inputs, such as integer indices, may sit beside one), and, without
        autograd, for input shapes whose last pass made no oneDNN call."""
        self._fusion_cache.sync()
        if not env:  # the net reads its own data
            return self._execute(self._inference_plan, env, tracing)
        if not any(isinstance(t, torch.Tensor) and fusion.onednn_allowed(t) for t in env.values()):
            return self._execute(self._plain_plan, env, tracing)
        if torch.is_grad_enabled():  # the chains may decline oneDNN for autograd's sake, not for size
            return self._execute(self._inference_plan, env, tracing)
        cache = self._fusion_cache
        key = cache.small_pass(tuple(getattr(t, "shape", None) for t in env.values()))
        if key is None:
            return self._execute(self._plain_plan, env, tracing)
        calls = cache.onednn_calls
        env = self._execute(self._inference_plan, env, tracing)
        cache.note_pass(key, calls)
        return env

    def values(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every value (all versions of in-place blobs), keyed by IR value id."""
        return self._execute(self._plan, self._bind_inputs(args, kwargs))

    def cuda_graph(self, *inputs: torch.Tensor, warmup: int = 3, copy_outputs: bool = True,
                   **named: torch.Tensor) -> Any:
        """This eval-mode net's forward at the shapes of the example ``inputs`` (given as to ``forward``),
        captured as a CUDA graph: a callable taking inputs of those shapes and returning the outputs as
        ``forward`` does, launching every kernel in one replay (at small batch a GPU forward is otherwise bound by
        the launches from Python). It captures again by itself after the weights change; ``copy_outputs=False``
        returns the graph's own output tensors, which the next call overwrites. See :mod:`.cuda_graph`."""
        from .cuda_graph import capture

        return capture(self, inputs, named, warmup=warmup, copy_outputs=copy_outputs)

    def _run_linear(self, module: nn.Module, x: Any) -> Any:
        """A plain InnerProduct on oneDNN when nothing needs gradients (the op has no autograd formula) and the
        operands are what it takes: CPU float32 outside autocast, contiguous weights; else the layer as it is.
        The tests that decide most often (device, size) come first: small nets run this for every layer."""
        if not fusion.onednn_allowed(x):
            return call_layer(module, x)
        weight = module.weight
        if (x.numel() * weight.shape[0] < fusion.ONEDNN_MIN_MACS
                or weight.dtype is not torch.float32 or not weight.is_contiguous()):
            return call_layer(module, x)
        bias = getattr(module, "bias", None)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias) if t is not None):
            return call_layer(module, x)
        self._fusion_cache.onednn_calls += 1
        return ONEDNN_LINEAR(x.reshape(x.shape[0], -1), weight, bias, "none", [], "")

    def clear_fold_cache(self) -> None:
        """Forget the folded and packed convolution weights of the inference plan (they are remade on the next
        eval-mode forward) and the big results it keeps between passes. Needed only after writing blobs through
        ``.data``, which torch does not track, or to give that memory back."""
        self._fusion_cache.clear()

    def _apply(self, fn: Any, recurse: bool = True) -> CaffeNet:
        """Moves (``to``, ``cuda``, ``half``, ...) also drop the inference plan's packed weights and kept results:
        they were made from the old tensors, whose memory they would otherwise keep alive."""
        self._fusion_cache.clear()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the fold cache behind: it is derived data, rebuilt on demand."""
        state = self.__dict__.copy()
        state["_fusion_cache"] = FusionCache()
        return state

    def loss(self, blobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's total loss: sum over blobs with a loss weight of ``weight * sum(blob)``."""
        total = None
        for name, w in self.loss_weights.items():
            term = blobs[name].sum() * w
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())


def _detached(step: Step, env: Mapping[str, Any]) -> list[Any]:
    """A step's inputs, those its layer's ``propagate_down: false`` cuts off detached from autograd."""
    return [env[vid].detach() if j in step.detach else env[vid] for j, vid in enumerate(step.inputs)]


def build(graph: Graph) -> CaffeNet:
    return CaffeNet(graph)

