"""draw_net-style diagrams with Graphviz, node for node and edge for edge what Caffe's ``draw.py`` draws.

Caffe's rules reproduced here: a layer node is labelled ``name``, ``(Type)`` (``(Pooling MAX)``), kernel /
stride / pad for convolution and pooling, optionally ``lr mult``; layers with the same name and type are
one node; blobs are octagons; an in-place layer (one bottom == one top) is a green "neuron" node forming a
two-edge cycle with its blob; a blob keeps the style of its *last* mention (filled when last read, plain
when last written); edges out of a layer are labelled with ``Batch N`` (Data) or ``num_output``.

Beyond Caffe: V0/V1 nets (drawn after upgrade), NetState stage/level filtering, ``shapes`` (blob shapes and
parameter counts from the IR), ``no_blobs`` (layer-to-layer edges, for huge nets).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputFileError, Location, Prototxt2pyError
from ..fsutil import output_target, write_bytes_atomic, write_text_atomic
from ..netstate import PHASES, State, layer_included

LAYER_COLOR_DEFAULT = "#6495ED"
NEURON_COLOR = "#90EE90"
BLOB_COLOR = "#E0E0E0"
LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900", "InnerProduct": "#CC33FF"}
RANKDIRS = ("LR", "TB", "BT", "RL")
#: Types whose label can show lr_mult (draw.py's ``get_layer_lr_mult`` knows no others)
LR_MULT_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
#: Output extensions -> Graphviz formats (None: the DOT text; ``.raw`` is what Caffe's draw.py suggests for it).
#: Caffe's draw_net.py hands any extension to dot; these are the ones dot renders.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpe", ".gif": "gif",
           ".ps": "ps", ".eps": "eps", ".bmp": "bmp", ".webp": "webp", ".svgz": "svgz", ".json": "json",
           ".xdot": "xdot", ".plain": "plain", ".canon": "canon", ".dot": None, ".gv": None, ".raw": None}


@dataclass
class DiagramNode:
    id: str
    kind: str  # "layer" or "blob"
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Diagram:
    """The drawing as plain data (what the golden structure tests compare), convertible to Graphviz."""

    name: str
    rankdir: str
    nodes: dict[str, DiagramNode] = field(default_factory=dict)  # insertion order = order of first mention
    edges: list[tuple[str, str, str]] = field(default_factory=list)

    def to_digraph(self) -> Any:
        import graphviz

        g = graphviz.Digraph(graphviz.nohtml(dot_text(self.name)), graph_attr={"rankdir": self.rankdir})
        # DOT ids are short and safe ("a:b" would read as a port); the text goes in the label, never read as
        # HTML (nohtml: a name "<b>x</b>" is text).
        ids = {node.id: f"n{i}" for i, node in enumerate(self.nodes.values())}
        for node in self.nodes.values():
            label = _record_escape(node.id) if node.attrs.get("shape") == "record" else node.id
            g.node(ids[node.id], label=graphviz.nohtml(label), **node.attrs)
        for src, dst, label in self.edges:
            if label:
                g.edge(ids[src], ids[dst], label=graphviz.nohtml(label))
            else:
                g.edge(ids[src], ids[dst])
        return g

    def source(self) -> str:
        return self.to_digraph().source


#: Names longer than this are cut in labels: Graphviz refuses strings over about 16 KB, and nobody reads
#: a label that long.
MAX_LABEL_NAME = 1000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def dot_text(name: str) -> str:
    """A name from the model as literal label text: backslashes doubled (a trailing one would escape the
    closing quote; ``\\n`` would become a line break), control characters shown as ``\\xNN``, and
    overlong names cut. Quotes are escaped by the graphviz package's quoting (which leaves a quote preceded
    by an even number of backslashes to it)."""
    if len(name) > MAX_LABEL_NAME:
        name = f"{name[:MAX_LABEL_NAME]}... ({len(name)} characters)"
    name = name.replace("\\", "\\\\")
    return _CONTROL.sub(lambda m: f"\\\\x{ord(m.group()):02x}", name)


def _record_escape(text: str) -> str:
    """Characters with a meaning inside Graphviz record labels are escaped."""
    for ch in "{}|<>":
        text = text.replace(ch, "\\" + ch)
    return text


def _pool_name(layer: Any) -> str:
    desc = layer.pooling_param.DESCRIPTOR.fields_by_name["pool"].enum_type
    return desc.values_by_number[layer.pooling_param.pool].name


def _lr_mults(layer: Any) -> tuple[float, float]:
    mults = [p.lr_mult for p in layer.param[:2]]
    return (mults + [1.0, 1.0][len(mults) :])[0], (mults + [1.0, 1.0][len(mults) :])[1]


def layer_label(layer: Any, rankdir: str, display_lrm: bool = False, extra: list[str] | None = None) -> str:
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    parts = [dot_text(layer.name)]
    kind = dot_text(layer.type)
    parts.append(f"({kind} {_pool_name(layer)})" if layer.type == "Pooling" else f"({kind})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            k, s, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            k = c.kernel_size[0] if len(c.kernel_size) else 1
            s = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts.append(sep.join([f"kernel size: {k}", f"stride: {s}", f"pad: {pad}"]))
    if display_lrm and layer.type in LR_MULT_TYPES:
        if len(layer.param) > 2:
            raise Prototxt2pyError(f"layer '{layer.name}' has {len(layer.param)} param specs; cannot show lr_mult")
        a, b = _lr_mults(layer)
        if a or b:
            parts.append(f"lr mult: {a:.1f}, {b:.1f}")
    parts += extra or []
    return sep.join(parts)


def _entry_points_present() -> bool:
    from importlib.metadata import entry_points

    from ..plugins import ENTRY_POINT_GROUP

    return bool(entry_points(group=ENTRY_POINT_GROUP))


def plugin_labels(layer: Any, dropped: Sequence[Any] = ()) -> tuple[list[str], str]:
    """Extra node lines and the edge label a registered spec gives a layer of a type Caffe's draw_net has no
    rule for (:meth:`~prototxt2py.layers.LayerSpec.diagram_label`). The layer specs are consulted only when
    they are loaded already or plugins are installed: drawing stays a plain read of the file otherwise."""
    if layer.type in _CAFFE_LABELLED:
        return [], ""
    if "prototxt2py.layers" not in sys.modules and not _entry_points_present():
        return [], ""
    from ..layers import get_spec
    from ..plugins import LayerSource

    spec = get_spec(layer.type)
    if spec is None or not (spec.overrides("diagram_label") or spec.overrides("diagram_edge_label")):
        return [], ""
    try:
        attrs = spec.attrs(LayerSource(layer, dropped))
    except (ValueError, TypeError) as e:
        raise Prototxt2pyError(f"invalid parameters: {e}", layer=layer.name) from None
    return [dot_text(line) for line in spec.diagram_label(attrs)], dot_text(spec.diagram_edge_label(attrs))


_CAFFE_LABELLED = frozenset({"Convolution", "Deconvolution", "Pooling", "InnerProduct", "Data"})


def edge_label(layer: Any) -> str:
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def _included(layer: Any, phase: int | None, state: State | None) -> bool:
    if state is not None:  # full NetState rules (beyond Caffe's draw.py, which looks at the phase only)
        return layer_included(layer, state)
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise Prototxt2pyError("layer has both include and exclude rules", layer=layer.name)
    included = not len(layer.include) or any(r.phase == phase for r in layer.include)
    return included and not any(r.phase == phase for r in layer.exclude)


def build_diagram(
    net: Any,
    rankdir: str = "LR",
    phase: str | None = None,
    display_lrm: bool = False,
    label_edges: bool = True,
    state: State | None = None,
    shapes: dict[str, Any] | None = None,
    param_counts: dict[str, int] | None = None,
    no_blobs: bool = False,
    dropped: Sequence[Sequence[Any]] | None = None,
) -> Diagram:
    """Caffe's ``get_pydot_graph`` as data. ``phase`` is "TRAIN", "TEST" or None/"ALL" (every layer)."""
    if rankdir not in RANKDIRS:
        raise Prototxt2pyError(f"rankdir must be one of {', '.join(RANKDIRS)}, got {rankdir!r}")
    phase_num = None if phase in (None, "ALL") else PHASES[phase]
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    d = Diagram(net.name or "Net", rankdir)
    producer: dict[str, str] = {}  # for no_blobs: blob -> key of the layer that last wrote it
    edges: list[tuple[str, str, str]] = []  # by node key, as Caffe's pydot_edges
    for index, layer in enumerate(net.layer):
        if not _included(layer, phase_num, state):
            continue
        extra, plugin_edge = plugin_labels(layer, dropped[index] if dropped and index < len(dropped) else ())
        if param_counts and param_counts.get(layer.name):
            extra.append(f"params: {param_counts[layer.name]:,}")
        label = layer_label(layer, rankdir, display_lrm, extra)
        key = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        color = NEURON_COLOR if in_place else LAYER_COLORS.get(layer.type, LAYER_COLOR_DEFAULT)
        d.nodes[key] = DiagramNode(label, "layer", {"shape": "record", "fillcolor": color, "style": "filled"})
        if no_blobs:
            for b in layer.bottom:
                if b in producer and not in_place:
                    edges.append((producer[b], key, ""))
            for t in layer.top:
                if not in_place:
                    producer[t] = key
            continue
        for b in layer.bottom:
            # Like Caffe's dict of pydot nodes: the first mention fixes the position, the last the style.
            d.nodes[f"{b}_blob"] = DiagramNode(_blob_id(b, shapes, sep), "blob",
                                               {"shape": "octagon", "fillcolor": BLOB_COLOR, "style": "filled"})
            edges.append((f"{b}_blob", key, ""))
        for t in layer.top:
            d.nodes[f"{t}_blob"] = DiagramNode(_blob_id(t, shapes, sep), "blob", {})
            edges.append((key, f"{t}_blob", (edge_label(layer) or plugin_edge) if label_edges else ""))
    # Caffe keeps edges by node key and looks the nodes up at the end: a layer redefined under the same name and
    # type (other parameters) is one node, the last definition, with every edge of both
    d.edges = [(d.nodes[src].id, d.nodes[dst].id, text) for src, dst, text in edges]
    return d


def _blob_id(blob: str, shapes: dict[str, Any] | None, sep: str) -> str:
    if shapes and shapes.get(blob) is not None:
        return f"{dot_text(blob)}{sep}({', '.join(str(x) for x in shapes[blob])})"
    return dot_text(blob)


def render(diagram: Diagram, output: str | os.PathLike) -> None:
    """Write DOT source (``.dot``/``.gv``) or render with Graphviz's ``dot`` by the output's extension."""
    output_target(output)  # a directory, a missing folder or an input is refused before anything is rendered
    ext = Path(output).suffix.lower()
    if ext not in FORMATS:
        raise InputFileError(f"unknown output format '{ext}' (use one of: {', '.join(FORMATS)})", Location(str(output)))
    fmt = FORMATS[ext]
    source = diagram.source()
    if fmt is None:
        write_text_atomic(output, source)
        return
    import graphviz

    try:
        data = graphviz.Source(source).pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound:
        raise Prototxt2pyError(
            "Graphviz's 'dot' program was not found: install it (Debian/Ubuntu: apt-get install graphviz; "
            "macOS: brew install graphviz), or write .dot output instead"
        ) from None
    except graphviz.CalledProcessError as e:
        raise Prototxt2pyError(f"Graphviz failed to render: {str(e.stderr or e)[:200]}") from None
    write_bytes_atomic(output, data)


def diagram_of(
    net_path: str | os.PathLike,
    rankdir: str = "LR",
    phase: str = "ALL",
    display_lrm: bool = False,
    stages: tuple[str, ...] = (),
    level: int | None = None,
    shapes: bool = False,
    no_blobs: bool = False,
    input_shapes: dict[str, list[int]] | None = None,
) -> Diagram:
    """Read a net file and build its diagram. V2 files are drawn as written (as Caffe does); V0/V1 after
    upgrade (Caffe cannot draw them at all). A :class:`NetSource` (a derived deploy net) is drawn as it is.
    Without ``stages`` and ``level`` (``None``) only the phase filters layers, as in draw.py; with either, the
    full NetState of ``Net(file, phase, level, stages)`` does (a given level replaces the file's own)."""
    from ..reader import NetSource, read_net

    source = net_path if isinstance(net_path, NetSource) else read_net(net_path)
    if source.format == "V2" and source.raw is not None:
        net = source.raw
        dropped = [source.info.dropped_under(("layer", i)) for i in range(len(net.layer))] if source.info else None
    else:
        net, dropped = source.net, source.dropped
    state = None
    if stages or level is not None:
        state = State.from_args("TEST" if phase == "ALL" else phase, level, stages).merged_with_net(net)
    blob_shapes = counts = None
    if shapes:
        from .. import graph as build

        g = build(source, "TEST" if phase == "ALL" else phase, stages, level, input_shapes,
                  allow_unknown_types=True)
        blob_shapes = g.blob_shapes()
        counts = {n.name: n.num_params for n in g.nodes}
    return build_diagram(net, rankdir, phase, display_lrm, True, state, blob_shapes, counts, no_blobs, dropped)


def draw_file(net_path: str | os.PathLike, output: str | os.PathLike, **options: Any) -> Diagram:
    """Read a net file and write its diagram to ``output`` (format from the extension); ``options`` as for
    :func:`diagram_of`."""
    diagram = diagram_of(net_path, **options)
    render(diagram, output)
    return diagram
