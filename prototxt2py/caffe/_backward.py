"""Caffe's backward pass for :class:`~._net.Net`: which layers get gradients, and one layer's gradients.

:func:`need_backward` is the bookkeeping of Caffe's ``Net::Init``: a blob needs a diff when a learnable parameter
(``lr_mult`` != 0; a missing ``param {}`` counts as 1) or such a blob lies below it; layers that reach no loss
(nothing with a loss weight above them) are then switched off, and ``force_backward`` switches every layer and
bottom back on except those a layer refuses (:data:`._inplace.NO_FORCE_BACKWARD`). ``propagate_down`` in a layer
overrides its bottoms.

:func:`layer_gradients` computes one layer's bottom and parameter gradients from the blobs' current contents, the
way :mod:`._inplace` says Caffe's ``Backward_cpu`` of that type does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..ir import Graph, Node
from . import _inplace


@dataclass
class NeedBackward:
    """Caffe's ``layer_need_backward_``, ``bottom_need_backward_`` and ``param_propagate_down`` per layer."""

    layer: list[bool]
    bottom: list[list[bool]]
    param: list[list[bool]]


def need_backward(graph: Graph, param_counts: Sequence[int]) -> NeedBackward:
    """The three sets, as ``Net::Init`` computes them (``param_counts``: parameter blobs per layer)."""
    blob_need: dict[str, bool] = {}
    layer_need: list[bool] = []
    bottom_need: list[list[bool]] = []
    param_need: list[list[bool]] = []
    for i, node in enumerate(graph.nodes):
        prop = list(node.proto.propagate_down) if node.proto is not None else []
        layer_need.append(any(blob_need.get(b, False) for b in node.bottoms))
        bottom_need.append([prop[j] if prop else blob_need.get(b, False) for j, b in enumerate(node.bottoms)])
        lrs = [node.params[k].lr_mult if k < len(node.params) else 1.0 for k in range(param_counts[i])]
        param_need.append([lr != 0 for lr in lrs])
        layer_need[i] = layer_need[i] or any(param_need[i])
        for t in node.tops:  # a new top starts without a need; an in-place one keeps its blob's
            blob_need.setdefault(t, False)
            if layer_need[i]:
                blob_need[t] = True
    # Caffe's blobs_skip_backp, per value: Caffe gives each reader of a blob read by several layers its own copy
    # (a Split layer), and the Split passes a diff down if any reader wants one. So a value is skipped only when
    # it is read and no reader needs its diff (an Accuracy beside a loss must not switch off the layers below).
    under_loss: set[str] = set()
    read: set[str] = set()
    wanted: set[str] = set()
    for i in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[i]
        contributes, skip_down = False, True
        for k, (t, vid) in enumerate(zip(node.tops, node.outputs, strict=True)):
            if (k < len(node.loss_weights) and node.loss_weights[k]) or t in under_loss:
                contributes = True
            if vid not in read or vid in wanted:
                skip_down = False
            if contributes and not skip_down:
                break
        if layer_need[i] and skip_down:
            layer_need[i] = False
            bottom_need[i] = [False] * len(node.bottoms)
        if not contributes:
            layer_need[i] = False
        for j, (b, vid) in enumerate(zip(node.bottoms, node.inputs, strict=True)):
            if contributes:
                under_loss.add(b)
            else:
                bottom_need[i][j] = False
            read.add(vid)
            if bottom_need[i][j]:
                wanted.add(vid)
    if graph.force_backward:
        for i, node in enumerate(graph.nodes):
            refused = _inplace.NO_FORCE_BACKWARD.get(node.type, frozenset())
            layer_need[i] = True
            bottom_need[i] = [bottom_need[i][j] or j not in refused for j in range(len(node.bottoms))]
            param_need[i] = [True] * len(param_need[i])
    return NeedBackward(layer_need, bottom_need, param_need)


Grads = list[torch.Tensor | None]


def layer_gradients(node: Node, module: nn.Module, proto: Any, bottoms: Sequence[torch.Tensor],
                    tops: Sequence[torch.Tensor], top_diffs: Sequence[torch.Tensor], need_b: Sequence[bool],
                    params: Sequence[torch.Tensor | None], saved: tuple | None) -> tuple[Grads, Grads]:
    """(bottom gradients, parameter gradients) of one layer, None where not needed or not defined.

    ``bottoms``/``tops``: the blobs' current data; ``params``: the parameter tensors to differentiate (None for
    the others); ``saved``: what the forward pass kept for this layer (``(leaves, outputs)`` of its autograd
    graph for private types, ``(inputs, None)`` for types saving their input)."""
    bottom_grads: Grads = [None] * len(bottoms)
    param_grads: Grads = [None] * len(params)
    single = len(bottoms) == 1 and len(tops) == 1 and need_b[0]
    if node.type in _inplace.FORMULAS and single:
        g = _inplace.FORMULAS[node.type](bottoms[0], tops[0], top_diffs[0], proto, node.in_place)
        if g is not None:
            bottom_grads[0] = g
            return bottom_grads, param_grads
    if node.type in _inplace.SAVES_INPUT and single and saved is not None:
        bottom_grads[0] = _inplace.swish_private(saved[0][0], tops[0], top_diffs[0], proto.swish_param.beta)
        return bottom_grads, param_grads
    if node.type in _inplace.PRIVATE and saved is not None and saved[1] is not None:
        leaves, produced = saved
    else:  # recompute from the blobs' current bottom data
        leaves = []
        for t, need in zip(bottoms, need_b, strict=True):
            t = t.detach()
            if need and t.is_floating_point():
                t = (t.clone() if node.in_place else t).requires_grad_(True)
            leaves.append(t)
        with torch.enable_grad():
            out = module(*leaves)
        produced = out if isinstance(out, (tuple, list)) else (out,)
    wrt = [leaf for leaf, need in zip(leaves, need_b, strict=True) if need and leaf.requires_grad]
    wrt_p = [p for p in params if p is not None]
    outputs, grads_out = [], []
    for value, diff in zip(produced, top_diffs, strict=False):
        if isinstance(value, torch.Tensor) and value.requires_grad:  # e.g. not ArgMax indices, pooling masks
            outputs.append(value)
            grads_out.append(diff.reshape(value.shape).to(value.dtype))
    if not outputs or not (wrt or wrt_p):
        return bottom_grads, param_grads
    # retain_graph: a private layer's graph serves every backward() until the next forward, as Caffe's copies do
    grads = iter(torch.autograd.grad(outputs, wrt + wrt_p, grads_out, allow_unused=True, retain_graph=True))
    for j, (leaf, need) in enumerate(zip(leaves, need_b, strict=True)):
        if need and leaf.requires_grad:
            bottom_grads[j] = next(grads)
    for k, p in enumerate(params):
        if p is not None:
            param_grads[k] = next(grads)
    return bottom_grads, param_grads
