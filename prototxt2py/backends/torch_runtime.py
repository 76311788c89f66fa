"""PyTorch runtime backend: the IR as a ``torch.nn.Module`` that computes what Caffe computes.

Each IR node becomes a submodule built by its layer spec; ``CaffeNet.forward`` walks the nodes in Caffe's
order over a dict of values. The walk is static Python, so ``torch.fx.symbolic_trace`` and
``torch.compile`` see a plain straight-line graph.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import Prototxt2pyError, UnsupportedLayerError
from ..ir import Graph
from ..netstate import TRAIN


def module_key(layer_name: str, taken: set[str]) -> str:
    """A submodule name for a Caffe layer name: ``.`` is not allowed in module names, so it becomes ``_``."""
    key = re.sub(r"[.]", "_", layer_name) or "layer"
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}_{i}"
    taken.add(key)
    return key


class CaffeNet(nn.Module):
    """A Caffe net on PyTorch.

    ``forward(*inputs, **named_inputs)`` takes the net's input blobs (positionally in ``input_names``
    order, or by Caffe blob name) and returns a dict of the output blobs by Caffe name. With
    ``all_blobs=True`` it returns every blob (final version of in-place blobs), as pycaffe's ``net.blobs``.
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
        for node in graph.nodes:
            key = module_key(node.name, taken)
            try:
                module = node.spec.build_torch(node)
            except Prototxt2pyError:
                raise
            except (ValueError, TypeError, RuntimeError) as e:
                raise Prototxt2pyError(f"cannot build PyTorch module: {e}", node.location, layer=node.name) from None
            self.layers[key] = module
            self.layer_keys.setdefault(node.name, key)
            is_input = node.spec.type == "Input" or node.spec.is_data
            plan.append((key, tuple(node.inputs), tuple(node.outputs), is_input))
        self._plan = tuple(plan)
        self._tie_shared_params()
        self.input_names = [graph.values[v].blob for v in graph.inputs]
        self._input_ids = list(graph.inputs)
        self.output_names = [graph.values[v].blob for v in graph.outputs]
        self._output_ids = list(graph.outputs)
        self._final_ids = {}
        for vid, value in graph.values.items():
            self._final_ids[value.blob] = vid
        self.loss_weights = {
            graph.values[vid].blob: w
            for node in graph.nodes
            for vid, w in zip(node.outputs, node.loss_weights, strict=False)
            if w
        }
        self.train(graph.state.phase == TRAIN)

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

    def forward(self, *args: torch.Tensor, all_blobs: bool = False, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        env = self._bind_inputs(args, kwargs)
        layers = self.layers
        for key, ins, outs, is_input in self._plan:
            if is_input:
                missing = [o for o in outs if o not in env]
                if not missing:
                    continue
                produced = layers[key]()
            else:
                produced = layers[key](*[env[i] for i in ins])
            if isinstance(produced, torch.Tensor):
                env[outs[0]] = produced
            else:
                for vid, t in zip(outs, produced, strict=True):
                    if vid not in env:
                        env[vid] = t
        if all_blobs:
            return {blob: env[vid] for blob, vid in self._final_ids.items()}
        return {self.graph.values[vid].blob: env[vid] for vid in self._output_ids}

    def values(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every value (all versions of in-place blobs), keyed by IR value id."""
        env = self._bind_inputs(args, kwargs)
        for key, ins, outs, is_input in self._plan:
            if is_input and all(o in env for o in outs):
                continue
            produced = self.layers[key](*[env[i] for i in ins])
            if isinstance(produced, torch.Tensor):
                produced = (produced,)
            for vid, t in zip(outs, produced, strict=True):
                env.setdefault(vid, t)
        return env

    def loss(self, blobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Caffe's total loss: sum over blobs with a loss weight of ``weight * sum(blob)``."""
        total = None
        for name, w in self.loss_weights.items():
            term = blobs[name].sum() * w
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())


def build(graph: Graph) -> CaffeNet:
    return CaffeNet(graph)
