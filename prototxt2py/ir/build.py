"""Building the IR from an upgraded ``NetParameter``: NetState filtering, SSA values for in-place blobs,
Caffe's top/bottom rules, loss weights, parameter sharing; then shape inference (:mod:`.shapes`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import GraphError, Location, Prototxt2pyError, UnsupportedLayerError
from ..layers import LayerSpec, get_python_spec, get_spec
from ..layers.base import REGISTRY, Unknowable, dialect_specs
from ..netstate import State, layer_included
from ..plugins import LayerSource, python_layer_name
from ..textformat import DroppedField
from .graph import Graph, Node, ParamInfo, Value
from .shapes import infer_shapes


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
    python_layers: Mapping[str, LayerSpec] | None = None,
) -> Graph:
    """Build the IR from an upgraded (V2) ``NetParameter``.

    ``locations``/``dropped`` are aligned with ``net.layer`` (see ``reader.NetSource``). Unknown layer
    types are collected and reported together (never skipped silently) unless ``allow_unknown_types``,
    which the diagram backend uses: it needs structure only. ``python_layers`` maps ``Python`` layers'
    ``module.Layer`` names to specs (:func:`prototxt2py.plugins.python_specs`); registered plugin specs for
    Python layers come next; the model's module is never imported.
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
    force = net.force_backward
    loss_read: set[str] = set()  # values with a written nonzero loss_weight: Caffe's InsertSplits counts a reader
    dialect = dialect_specs(layer.type for layer in net.layer)  # a fork's meaning of built-in types

    for index, layer in enumerate(net.layer):
        loc = locations[index] if locations and index < len(locations) else Location(file)
        if not layer_included(layer, state, loc):
            continue
        spec = _python_spec(layer, python_layers, dialect) if layer.type == "Python" else None
        spec = spec or dialect.get(layer.type) or get_spec(layer.type)
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
                _check_unsplit(inputs[i], inputs, values, nodes, loss_read, loc, name)
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
            values[vid].consumers.append(len(nodes))  # this layer's position once appended below
        for t, vid in zip(tops, outputs, strict=True):
            current[t] = vid
        if layer.loss_weight:  # InsertSplits counts a written nonzero weight (automatic tops have none)
            written = min(len(layer.top), len(layer.loss_weight))
            loss_read.update(vid for vid, w in zip(outputs[:written], layer.loss_weight[:written], strict=True) if w)
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
            loss_weights=_loss_weights(layer, spec, len(tops), loc, name),
            params=[_param_info(p) for p in layer.param],
            stop_gradient=_stop_gradient(layer, spec, force, len(bottoms), loc, name) if layer.propagate_down else (),
            own_phase=layer.phase if layer.HasField("phase") else None,
            phase=layer.phase if layer.HasField("phase") else state.phase,
            dropped=list(dropped[index]) if dropped and index < len(dropped) else [],
        )
        try:
            node.attrs = spec.attrs(LayerSource(layer, node.dropped, loc))
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


def _check_unsplit(
    vid: str, inputs: Sequence[str], values: Mapping[str, Value], nodes: Sequence[Node], loss_read: set[str],
    loc: Location, name: str,
) -> None:
    """Refuse an in-place rewrite of a value with more than one reader, as ``Net::Init`` does.

    Caffe's ``InsertSplits`` gives such a value a Split layer and renames every reader's bottom, this layer's
    included; its top then keeps the old name and ``AppendTop`` finds it taken ("produced by multiple
    sources"). Readers are the earlier layers' bottoms, this layer's own bottoms and a written loss weight.
    """
    consumers = values[vid].consumers
    if len(consumers) + (vid in loss_read) == 0 and inputs.count(vid) == 1:  # the common case: this layer alone
        return
    readers = [f"'{nodes[c].name}'" for c in consumers] + [f"'{name}'"] * inputs.count(vid)
    readers += ["a loss_weight"] if vid in loss_read else []
    if len(readers) > 1:
        raise GraphError(
            f"top '{values[vid].blob}' is rewritten in place but has {len(readers)} readers ({', '.join(readers)}): "
            "Caffe gives it a Split, renames this layer's bottom and refuses the net (top blob produced by multiple "
            "sources)",
            loc,
            layer=name,
        )


def _stop_gradient(layer: Any, spec: LayerSpec, force: bool, bottoms: int, loc: Location, name: str) -> tuple[int, ...]:
    """The bottoms ``propagate_down: false`` cuts off. ``Net::Init`` takes the field for every bottom or for
    none, and a cut bottom gets no gradient from this layer (its parameters still do), unless ``force_backward``
    turns it back on, which it does for every bottom the layer allows (``AllowForceBackward``)."""
    given = list(layer.propagate_down)
    if given and len(given) != bottoms:
        raise GraphError(
            f"propagate_down is given {len(given)} times for {bottoms} bottom(s): Caffe takes it for every "
            "bottom or for none",
            loc,
            layer=name,
        )
    return tuple(j for j, down in enumerate(given) if not down and not (force and j not in spec.force_backward_refused))


def _python_spec(layer: Any, mapping: Mapping[str, LayerSpec] | None,
                 dialect: Mapping[str, LayerSpec]) -> LayerSpec | None:
    """The spec of a ``Python`` layer mapped by the caller, a fork's dialect or a plugin (None: the built-in
    ``Python`` spec)."""
    name = python_layer_name(layer)
    if mapping and name in mapping:
        return mapping[name]
    return dialect.get(name) or get_python_spec(name)


def _check_counts(spec: LayerSpec, name: str, bottoms: list[str], tops: list[str], loc: Location) -> None:
    for what, got, (lo, hi) in (("bottom", len(bottoms), spec.bottoms), ("top", len(tops), spec.tops)):
        if got < lo or (hi is not None and got > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise GraphError(f"{spec.type or 'layer'} takes {want} {what}(s), got {got}", loc, layer=name)


def _loss_weights(layer: Any, spec: LayerSpec, n_tops: int, loc: Location, name: str) -> list[float]:
    weights = list(layer.loss_weight)
    if weights and len(weights) != n_tops:  # Caffe's Layer::SetLossWeights CHECK_EQ
        raise GraphError(f"loss_weight must be unspecified or given once per top: {len(weights)} for {n_tops} "
                         f"top(s)", loc, layer=name)
    if not weights and spec.is_loss and n_tops:
        weights = [1.0]
    return weights + [0.0] * (n_tops - len(weights))


def _param_info(p: Any) -> ParamInfo:
    return ParamInfo(lr_mult=p.lr_mult, decay_mult=p.decay_mult, name=p.name, share_mode=p.share_mode,
                     lr_mult_set=p.HasField("lr_mult"), decay_mult_set=p.HasField("decay_mult"))


def _resolve_sharing(graph: Graph) -> None:
    """Caffe's ``param { name }`` sharing: the first layer using a name owns the blob. Caffe resolves owners by
    layer position, so the owner is named by its unique name (a repeated layer name is ``<name>_2``...)."""
    owners: dict[str, tuple[str, int]] = {}
    for node, unique in zip(graph.nodes, graph.unique_names(), strict=True):
        for i, p in enumerate(node.params):
            if not p.name:
                continue
            if p.name in owners:
                p.owner = owners[p.name]
            else:
                owners[p.name] = (unique, i)


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
    """Every registered type name, installed plugins' included."""
    from ..plugins import load_entry_points

    load_entry_points()
    return sorted(REGISTRY)
