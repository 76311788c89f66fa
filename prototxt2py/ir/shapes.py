"""Shape inference over the IR: each layer's spec gives its tops' shapes and its parameter shapes.

Unknowable shapes (data read from files, user code) propagate as ``None`` with a note on the layer that caused
them; real inconsistencies raise :class:`~prototxt2py.errors.ShapeError` naming the layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from .. import limits
from ..errors import Location, Prototxt2pyError, ShapeError, UnknownInputError
from ..layers.base import Unknowable
from .graph import Graph, Node, Shape, _prod


def infer_shapes(graph: Graph, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Run every spec's shape inference in order. Unknowable shapes propagate as ``None`` with a note on
    the layer that caused them; real inconsistencies raise :class:`ShapeError` naming the layer."""
    overrides = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
    known_inputs = {graph.values[v].blob for v in graph.inputs}
    for k in overrides:
        if k not in known_inputs:
            raise UnknownInputError(
                f"--input {k}: the net has no input blob named '{k}' (inputs: {', '.join(sorted(known_inputs))})",
                Location(graph.file), k, sorted(known_inputs),
            )
    by_name = dict(zip(graph.unique_names(), graph.nodes, strict=True))  # owners of shared params go by these
    param_elements = 0
    for node in graph.nodes:
        in_shapes = [graph.values[v].shape for v in node.inputs]
        node.in_shapes = in_shapes
        if any(s is None for s in in_shapes):
            for vid in node.outputs:
                graph.values[vid].shape = None
            continue
        try:
            if node.spec.is_input(node) and any(t in overrides for t in node.tops):
                out_shapes = _input_override(node, overrides)
            else:
                out_shapes = node.spec.infer_shapes(node, in_shapes)
            node.param_shapes = [tuple(s) for s in node.spec.param_shapes(node, in_shapes)]
            _check_param_count(node)
        except Unknowable as e:
            node.shape_note = str(e)
            known = e.shapes if e.shapes is not None and len(e.shapes) == len(node.outputs) else []
            for i, vid in enumerate(node.outputs):
                graph.values[vid].shape = tuple(known[i]) if known and known[i] is not None else None
            continue
        except Prototxt2pyError:
            raise
        except (ValueError, IndexError, ZeroDivisionError, TypeError, OverflowError) as e:
            raise ShapeError(f"cannot infer shapes: {e}", node.location, layer=node.name) from None
        if len(out_shapes) != len(node.outputs):
            raise ShapeError(
                f"shape inference gave {len(out_shapes)} shapes for {len(node.outputs)} tops",
                node.location,
                layer=node.name,
            )
        for vid, shape in zip(node.outputs, out_shapes, strict=True):
            if shape is not None and any(d < 0 for d in shape):
                raise ShapeError(f"negative output dimension {tuple(shape)} for top '{graph.values[vid].blob}'",
                                 node.location, layer=node.name)
            graph.values[vid].shape = None if shape is None else tuple(int(d) for d in shape)
        limits.check_node_shapes(node, out_shapes)  # Caffe's int32 dims and element counts, before any allocation
        param_elements += limits.check_param_shapes(node, node.param_shapes)
        _check_shared_shapes(node, by_name)
        try:
            node.macs = int(node.spec.macs(node, in_shapes, [graph.values[v].shape for v in node.outputs]))
        except (ValueError, TypeError, IndexError):
            node.macs = 0
    limits.check_param_bytes(param_elements, location=Location(graph.file))


def reinferred(graph: Graph, input_shapes: Mapping[str, Sequence[int]]) -> Graph:
    """A copy of ``graph`` (nodes and values copied, specs and attributes shared) with its shapes inferred
    again for ``input_shapes``; ``graph`` itself is left as it is."""
    nodes = [dataclasses.replace(n, param_shapes=[], in_shapes=[], shape_note=None, macs=0) for n in graph.nodes]
    values = {k: dataclasses.replace(v, consumers=list(v.consumers)) for k, v in graph.values.items()}
    probe = dataclasses.replace(graph, nodes=nodes, values=values, warnings=[])
    infer_shapes(probe, input_shapes)
    return probe


def _input_override(node: Node, overrides: Mapping[str, Shape]) -> list[Shape | None]:
    try:
        default = node.spec.infer_shapes(node, [])
    except Unknowable as e:
        default = e.shapes if e.shapes is not None and len(e.shapes) == len(node.tops) else [None] * len(node.tops)
    return [overrides.get(t, default[i]) for i, t in enumerate(node.tops)]


def _check_param_count(node: Node) -> None:
    """Caffe's ``Net::Init`` (``AppendParam``'s caller) refuses more ``param {}`` blocks than the layer has
    blobs, in any phase: the extra blocks would name nothing to learn or share."""
    blobs = len(node.param_shapes)
    if len(node.params) > blobs:
        raise ShapeError(f"Too many params specified for layer {node.name}: {len(node.params)} param {{}} blocks "
                         f"for {blobs} blob{'' if blobs == 1 else 's'}", node.location, layer=node.name)


def _check_shared_shapes(node: Node, by_name: Mapping[str, Node]) -> None:
    for i, p in enumerate(node.params):
        if p.owner is None or i >= len(node.param_shapes):
            continue
        owner = by_name.get(p.owner[0])
        if owner is None or p.owner[1] >= len(owner.param_shapes):
            continue
        mine, theirs = node.param_shapes[i], owner.param_shapes[p.owner[1]]
        same = mine == theirs if p.share_mode == 0 else _prod(mine) == _prod(theirs)
        if not same:
            raise ShapeError(
                f"shared parameter '{p.name}' has shape {mine} here but {theirs} in layer '{owner.name}'",
                node.location,
                layer=node.name,
            )
