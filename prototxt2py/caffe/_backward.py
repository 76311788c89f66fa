"""Caffe's backward pass for :class:`~._net.Net`: which layers get gradients, and one layer's gradients.

:func:`need_backward` is the bookkeeping of Caffe's ``Net::Init``: a blob needs a diff when a learnable parameter
(``lr_mult`` != 0; a missing ``param {}`` counts as 1) or such a blob lies below it; layers that reach no loss
(nothing with a loss weight above them) are then switched off, and ``force_backward`` switches every layer and
bottom back on except those a layer refuses (``LayerSpec.force_backward_refused``). ``propagate_down`` in a layer
overrides its bottoms.

:func:`layer_gradients` computes one layer's bottom and parameter gradients from the blobs' current contents, the
way :mod:`._inplace` says Caffe's ``Backward_cpu`` of that type does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..ir import Graph, Node
from . import _inplace


@dataclass
class Split:
    """A Split layer Caffe's ``InsertSplits`` puts after the layer making ``value``: one top per reading bottom
    (``readers``: ``(layer index, bottom index)``, in Caffe's order) plus one for the value's loss weight, if any
    (top 0, its diff the constant ``loss_weight``). Its backward writes the sum of its tops' diffs into the value's
    diff, when ``need`` (its ``layer_need_backward`` and ``bottom_need_backward``)."""

    value: str
    readers: list[tuple[int, int]]
    loss_weight: float
    need: bool = False


@dataclass
class NeedBackward:
    """Caffe's ``layer_need_backward_``, ``bottom_need_backward_`` and ``param_propagate_down`` per layer, and the
    Split layers Caffe would insert (by the value they split; see :class:`Split`)."""

    layer: list[bool]
    bottom: list[list[bool]]
    param: list[list[bool]]
    splits: dict[str, Split]


def written_loss_weights(node: Node) -> list[float]:
    """The ``loss_weight`` values the prototxt gives (``InsertSplits`` sees these; a loss layer's default 1 is
    added later, by ``LossLayer::LayerSetUp``)."""
    given = list(node.proto.loss_weight) if node.proto is not None else []
    return [float(w) for w in given] + [0.0] * (len(node.outputs) - len(given))


def find_splits(graph: Graph) -> dict[str, Split]:
    """Caffe's ``InsertSplits``: a value read by more than one bottom, counting a nonzero loss weight written on
    it as one more reader, gets a Split."""
    readers: dict[str, list[tuple[int, int]]] = {}
    for i, node in enumerate(graph.nodes):
        for j, vid in enumerate(node.inputs):
            readers.setdefault(vid, []).append((i, j))
    splits = {}
    for node in graph.nodes:
        written = written_loss_weights(node)
        for k, vid in enumerate(node.outputs):
            weight = written[k]
            uses = readers.get(vid, [])
            if len(uses) + (weight != 0) > 1:
                splits[vid] = Split(vid, uses, weight)
    return splits


@dataclass
class _Step:
    """One layer of the net as ``Net::Init`` sees it once ``InsertSplits`` ran: a layer of the graph or a Split,
    its bottoms and tops named as Caffe names blobs, with what the need computation reads."""

    bottoms: list[Any]
    tops: list[Any]
    weights: list[float]  # per top: its loss weight
    lrs: list[float]  # per parameter blob: its lr_mult
    propagate_down: list[bool]
    refused: Any = ()  # bottoms force_backward leaves alone
    split: Split | None = None
    layer: bool = False
    need: bool = False
    bottom_need: list[bool] = field(default_factory=list)
    param_need: list[bool] = field(default_factory=list)


def _steps(graph: Graph, param_counts: Sequence[int], splits: dict[str, Split]) -> list[_Step]:
    """The graph's layers with Caffe's Splits after their producers. A Split top is named by its reader (or
    ``loss``); other blobs by their names, so an in-place top shares its bottom's."""
    steps = []
    for i, node in enumerate(graph.nodes):
        bottoms = [("split", vid, i, j) if vid in splits else node.bottoms[j] for j, vid in enumerate(node.inputs)]
        weights = [0.0 if vid in splits else (float(node.loss_weights[k]) if k < len(node.loss_weights) else 0.0)
                   for k, vid in enumerate(node.outputs)]
        lrs = [node.params[k].lr_mult if k < len(node.params) else 1.0 for k in range(param_counts[i])]
        prop = list(node.proto.propagate_down) if node.proto is not None else []
        steps.append(_Step(bottoms, list(node.tops), weights, lrs, prop, node.spec.force_backward_refused,
                           layer=True))
        for k, vid in enumerate(node.outputs):
            split = splits.get(vid)
            if split is not None:
                tops = ([("split", vid, "loss")] if split.loss_weight else []) + [("split", vid, *r)
                                                                                 for r in split.readers]
                steps.append(_Step([node.tops[k]], tops, [split.loss_weight] + [0.0] * (len(tops) - 1), [], [],
                                   split=split))
    return steps


def need_backward(graph: Graph, param_counts: Sequence[int]) -> NeedBackward:
    """The sets ``Net::Init`` computes, on the net with Caffe's Split layers in place (``param_counts``: parameter
    blobs per layer)."""
    splits = find_splits(graph)
    steps = _steps(graph, param_counts, splits)
    blob_need: dict[Any, bool] = {}
    for step in steps:  # Net::Init's forward pass
        step.bottom_need = [bool(step.propagate_down[j]) if step.propagate_down else blob_need.get(b, False)
                            for j, b in enumerate(step.bottoms)]
        step.param_need = [lr != 0 for lr in step.lrs]
        step.need = any(blob_need.get(b, False) for b in step.bottoms) or any(step.param_need)
        for t in step.tops:  # a new top starts without a need; an in-place one keeps its blob's
            blob_need[t] = blob_need.get(t, False) or step.need
    under_loss: set[Any] = set()
    skip: set[Any] = set()
    for step in reversed(steps):  # its backward pass: what reaches a loss, what a reader does not want
        contributes, skip_down = False, True
        for t, w in zip(step.tops, step.weights, strict=True):
            contributes = contributes or bool(w) or t in under_loss
            skip_down = skip_down and t in skip
            if contributes and not skip_down:
                break
        if step.need and skip_down:
            step.need = False
            step.bottom_need = [False] * len(step.bottoms)
        if not contributes:
            step.need = False
        for j, b in enumerate(step.bottoms):
            if contributes:
                under_loss.add(b)
            else:
                step.bottom_need[j] = False
            if not step.bottom_need[j]:
                skip.add(b)
    if graph.force_backward:
        for step in steps:
            step.need = True
            step.bottom_need = [need or j not in step.refused for j, need in enumerate(step.bottom_need)]
            step.param_need = [True] * len(step.lrs)
    for step in steps:
        if step.split is not None:
            step.split.need = step.need and step.bottom_need[0]
    layers = [step for step in steps if step.layer]
    return NeedBackward([st.need for st in layers], [st.bottom_need for st in layers], [st.param_need for st in layers],
                        splits)


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
    if node.spec.backward_reads == "forward_input" and single and saved is not None:
        bottom_grads[0] = _inplace.swish_private(saved[0][0], tops[0], top_diffs[0], proto.swish_param.beta)
        return bottom_grads, param_grads
    if node.spec.backward_reads == "forward" and saved is not None and saved[1] is not None:
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
