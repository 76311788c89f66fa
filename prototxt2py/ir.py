"""The intermediate graph (IR) every backend consumes.

Nodes are Caffe layers (after upgrade and NetState filtering) in Caffe's order, which is a topological
order because Caffe requires every bottom to be produced by an earlier layer. Values are blob *versions*:
an in-place layer (top == bottom) produces a new version, so every value has exactly one producer and
backends never have to reason about aliasing. ``Value.blob`` keeps the Caffe blob name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GraphError, Location, Prototxt2pyError, ShapeError, UnsupportedLayerError
from .layers import LayerSpec, Shape, get_spec
from .layers.base import REGISTRY, Unknowable
from .netstate import State, layer_included
from .textformat import DroppedField


@dataclass
class Value:
    id: str
    blob: str
    producer: str | None
    version: int = 0
    shape: Shape | None = None
    consumers: list[str] = field(default_factory=list)


@dataclass
class ParamInfo:
    """One parameter blob of a layer: its Caffe ``param {}`` spec and how it is shared."""

    lr_mult: float = 1.0
    decay_mult: float = 1.0
    name: str = ""
    share_mode: int = 0  # 0 STRICT, 1 PERMISSIVE
    owner: tuple[str, int] | None = None  # (layer, blob index) this blob is shared from, if not its own


@dataclass
class Node:
    name: str
    type: str
    spec: LayerSpec
    proto: Any  # caffe_pb2.LayerParameter (V2)
    attrs: Any
    bottoms: list[str]
    tops: list[str]
    inputs: list[str]  # value ids
    outputs: list[str]  # value ids
    location: Location
    loss_weights: list[float] = field(default_factory=list)
    params: list[ParamInfo] = field(default_factory=list)
    param_shapes: list[Shape] = field(default_factory=list)
    in_shapes: list[Shape | None] = field(default_factory=list)  # bottom shapes, set by shape inference
    dropped: list[DroppedField] = field(default_factory=list)
    shape_note: str | None = None
    macs: int = 0

    @property
    def in_place(self) -> bool:
        return len(self.bottoms) == 1 and len(self.tops) == 1 and self.bottoms[0] == self.tops[0]

    @property
    def num_params(self) -> int:
        """Parameters this layer owns (blobs shared from another layer are not counted)."""
        total = 0
        for i, shape in enumerate(self.param_shapes):
            if i < len(self.params) and self.params[i].owner is not None:
                continue
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


@dataclass
class Graph:
    name: str
    state: State
    nodes: list[Node]
    values: dict[str, Value]
    inputs: list[str]
    outputs: list[str]
    file: str = "<string>"
    force_backward: bool = False
    warnings: list[str] = field(default_factory=list)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def final_value(self, blob: str) -> Value:
        """The last version of a Caffe blob (what Caffe reports under that name after a forward pass)."""
        found = None
        for v in self.values.values():
            if v.blob == blob and (found is None or v.version > found.version):
                found = v
        if found is None:
            raise KeyError(blob)
        return found

    def blob_shapes(self) -> dict[str, Shape | None]:
        """Shape of every Caffe blob by name (final version), in order of first appearance."""
        out: dict[str, Shape | None] = {}
        for v in self.values.values():
            out[v.blob] = v.shape
        return out

    @property
    def total_params(self) -> int:
        return sum(n.num_params for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def unresolved(self) -> dict[str, str]:
        """Layers whose shapes could not be inferred, with the reason."""
        return {n.name: n.shape_note for n in self.nodes if n.shape_note}


# ---------------------------------------------------------------------------------------------------------
def build_graph(
    net: Any,
    state: State | None = None,
    *,
    locations: Sequence[Location] | None = None,
    dropped: Sequence[Sequence[DroppedField]] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    file: str = "<string>",
    allow_unknown_types: bool = False,
    infer: bool = True,
) -> Graph:
    """Build the IR from an upgraded (V2) ``NetParameter``.

    ``locations``/``dropped`` are aligned with ``net.layer`` (see ``reader.NetSource``). Unknown layer
    types are collected and reported together (never skipped silently) unless ``allow_unknown_types``,
    which the diagram backend uses: it needs structure only.
    """
    state = (state or State()).merged_with_net(net)
    if len(net.layers):
        raise GraphError("net still has V1 'layers' entries; upgrade it first", Location(file))
    nodes: list[Node] = []
    values: dict[str, Value] = {}
    current: dict[str, str] = {}  # blob name -> id of its latest value
    versions: dict[str, int] = {}
    unknown: list[str] = []
    names_seen: set[str] = set()
    duplicate_names: list[str] = []

    for index, layer in enumerate(net.layer):
        loc = locations[index] if locations and index < len(locations) else Location(file)
        if not layer_included(layer, state, loc):
            continue
        spec = get_spec(layer.type)
        if spec is None:
            unknown.append(f"'{layer.type}' (layer '{layer.name}' at {loc})")
            spec = _opaque_spec(layer.type)
        name = layer.name or f"{layer.type}_{index}"
        if name in names_seen:  # Caffe allows it (weights then match the first layer of that name)
            duplicate_names.append(name)
        names_seen.add(name)
        bottoms, tops = list(layer.bottom), list(layer.top)
        if spec.is_loss and len(tops) < spec.tops[0]:  # Caffe's AutoTopBlobs: old loss layers had no top
            tops += [f"({name} automatic {i})" for i in range(len(tops), spec.tops[0])]
        _check_counts(spec, name, bottoms, tops, loc)
        inputs = []
        for b in bottoms:
            if b not in current:
                raise GraphError(f"bottom '{b}' is not produced by any earlier layer", loc, layer=name)
            inputs.append(current[b])
        outputs = []
        for i, t in enumerate(tops):
            if i < len(bottoms) and bottoms[i] == t:  # Caffe's in-place rule: same position
                versions[t] += 1
                vid = f"{t}@{versions[t]}"
            elif t in current or t in tops[:i]:
                raise GraphError(
                    f"top '{t}' is produced by more than one layer (only top i == bottom i is in-place)",
                    loc,
                    layer=name,
                )
            else:
                versions[t] = 0
                vid = t
            values[vid] = Value(vid, t, name, versions[t])
            outputs.append(vid)
        for vid in inputs:
            values[vid].consumers.append(name)
        for t, vid in zip(tops, outputs, strict=True):
            current[t] = vid
        node = Node(
            name=name,
            type=layer.type,
            spec=spec,
            proto=layer,
            attrs=None,
            bottoms=bottoms,
            tops=tops,
            inputs=inputs,
            outputs=outputs,
            location=loc,
            loss_weights=_loss_weights(layer, spec, len(tops)),
            params=[_param_info(p) for p in layer.param],
            dropped=list(dropped[index]) if dropped and index < len(dropped) else [],
        )
        try:
            node.attrs = spec.attrs(layer)
        except Prototxt2pyError:
            raise
        except (ValueError, TypeError) as e:
            raise GraphError(f"invalid parameters: {e}", loc, layer=name) from None
        nodes.append(node)

    if unknown and not allow_unknown_types:
        raise UnsupportedLayerError(
            f"unknown layer type{'s' if len(unknown) > 1 else ''}: " + ", ".join(unknown), Location(file)
        )
    consumed_last = {vid for n in nodes for vid in n.inputs}
    outputs = sorted((vid for vid in current.values() if vid not in consumed_last), key=lambda v: values[v].blob)
    inputs = [vid for n in nodes if n.spec.is_input(n) for vid in n.outputs]
    graph = Graph(
        name=net.name,
        state=state,
        nodes=nodes,
        values=values,
        inputs=inputs,
        outputs=outputs,
        file=file,
        force_backward=net.force_backward,
    )
    if duplicate_names:
        graph.warnings.append("several layers share the name(s) " + ", ".join(sorted(set(duplicate_names))))
    _resolve_sharing(graph)
    if infer:
        infer_shapes(graph, input_shapes or {})
    return graph


def _check_counts(spec: LayerSpec, name: str, bottoms: list[str], tops: list[str], loc: Location) -> None:
    for what, got, (lo, hi) in (("bottom", len(bottoms), spec.bottoms), ("top", len(tops), spec.tops)):
        if got < lo or (hi is not None and got > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise GraphError(f"{spec.type or 'layer'} takes {want} {what}(s), got {got}", loc, layer=name)


def _loss_weights(layer: Any, spec: LayerSpec, n_tops: int) -> list[float]:
    weights = list(layer.loss_weight)
    if not weights and spec.is_loss and n_tops:
        weights = [1.0]
    return weights + [0.0] * (n_tops - len(weights))


def _param_info(p: Any) -> ParamInfo:
    return ParamInfo(lr_mult=p.lr_mult, decay_mult=p.decay_mult, name=p.name, share_mode=p.share_mode)


def _resolve_sharing(graph: Graph) -> None:
    """Caffe's ``param { name }`` sharing: the first layer using a name owns the blob."""
    owners: dict[str, tuple[str, int]] = {}
    for node in graph.nodes:
        for i, p in enumerate(node.params):
            if not p.name:
                continue
            if p.name in owners:
                p.owner = owners[p.name]
            else:
                owners[p.name] = (node.name, i)


def infer_shapes(graph: Graph, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Run every spec's shape inference in order. Unknowable shapes propagate as ``None`` with a note on
    the layer that caused them; real inconsistencies raise :class:`ShapeError` naming the layer."""
    overrides = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
    known_inputs = {graph.values[v].blob for v in graph.inputs}
    for k in overrides:
        if k not in known_inputs:
            raise ShapeError(
                f"--input {k}: the net has no input blob named '{k}' (inputs: {', '.join(sorted(known_inputs))})",
                Location(graph.file),
            )
    by_name = {n.name: n for n in graph.nodes}
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
        except Unknowable as e:
            node.shape_note = str(e)
            known = e.shapes if e.shapes is not None and len(e.shapes) == len(node.outputs) else []
            for i, vid in enumerate(node.outputs):
                graph.values[vid].shape = tuple(known[i]) if known and known[i] is not None else None
            continue
        except Prototxt2pyError:
            raise
        except (ValueError, IndexError, ZeroDivisionError, TypeError) as e:
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
        _check_shared_shapes(node, by_name)
        try:
            node.macs = int(node.spec.macs(node, in_shapes, [graph.values[v].shape for v in node.outputs]))
        except (ValueError, TypeError, IndexError):
            node.macs = 0


def _input_override(node: Node, overrides: Mapping[str, Shape]) -> list[Shape | None]:
    try:
        default = node.spec.infer_shapes(node, [])
    except Unknowable as e:
        default = e.shapes if e.shapes is not None and len(e.shapes) == len(node.tops) else [None] * len(node.tops)
    return [overrides.get(t, default[i]) for i, t in enumerate(node.tops)]


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


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


_OPAQUE: dict[str, LayerSpec] = {}


def _opaque_spec(type_name: str) -> LayerSpec:
    """Stand-in spec for a type nothing is registered for: structure only, no shapes, no backends."""
    if type_name not in _OPAQUE:

        class Opaque(LayerSpec):
            type = type_name
            bottoms = (0, None)
            tops = (0, None)

            def attrs(self, layer):
                return None

            def infer_shapes(self, node, in_shapes):
                raise Unknowable(f"no layer spec for type '{type_name}'")

        _OPAQUE[type_name] = Opaque()
    return _OPAQUE[type_name]


def registered_types() -> list[str]:
    return sorted(REGISTRY)
