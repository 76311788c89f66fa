"""``caffe.draw``: pycaffe's drawing functions on the project's own draw_net-compatible diagrams (no pydot).

Signatures and return values as pycaffe's: ``draw_net(net_param, rankdir, ext='png', phase=None,
display_lrm=False)`` returns the image bytes, ``draw_net_to_file(net_param, filename, rankdir='LR', ...)``
writes a file in the format of its extension (``.raw``/``.dot``: the DOT text), ``get_pydot_graph(...)`` returns
the graph (a ``graphviz.Digraph`` here: ``.source``, ``.pipe(format=...)``). ``phase`` is ``caffe.TRAIN``,
``caffe.TEST`` or None (every layer). Rendering needs Graphviz's ``dot`` program.
"""

from __future__ import annotations

import os
from typing import Any

from ..backends import draw as _draw
from ..errors import Prototxt2pyError
from ..fsutil import write_bytes_atomic
from .proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": _draw.LAYER_COLOR_DEFAULT, "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": _draw.NEURON_COLOR, "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": _draw.BLOB_COLOR, "style": "filled"}


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (0 -> 'MAX', ...)."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def get_edge_label(layer: Any) -> str:
    """'Batch N' for Data layers, the output count for Convolution/Deconvolution/InnerProduct, else '""'."""
    return _draw.edge_label(layer) or '""'


def get_layer_lr_mult(layer: Any) -> tuple[float, float]:
    """The (weights, bias) lr_mult of a Convolution/Deconvolution/InnerProduct layer (1.0 by default); a
    ``ValueError`` for other types or more than two param specs, as pycaffe raises."""
    if layer.type not in _draw.LR_MULT_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    if len(layer.param) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    return _draw._lr_mults(layer)


def get_layer_label(layer: Any, rankdir: str, display_lrm: bool = False) -> str:
    """A layer node's label: name, (type), kernel/stride/pad, optionally lr mults; in double quotes, as pycaffe
    returns it (for pydot)."""
    if display_lrm and layer.type in _draw.LR_MULT_TYPES:
        get_layer_lr_mult(layer)  # pycaffe's ValueError for more than two param specs
    return f'"{_draw.layer_label(layer, rankdir, display_lrm)}"'


def choose_color_by_layertype(layertype: str) -> str:
    return _draw.LAYER_COLORS.get(layertype, _draw.LAYER_COLOR_DEFAULT)


def _phase_name(phase: Any) -> str | None:
    if phase is None:
        return None
    names = {caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}
    if phase not in names:
        raise Prototxt2pyError(f"phase must be caffe.TRAIN, caffe.TEST or None, got {phase!r}")
    return names[phase]


def get_pydot_graph(caffe_net: Any, rankdir: str, label_edges: bool = True, phase: Any = None,
                    display_lrm: bool = False) -> Any:
    """The net's graph (a ``graphviz.Digraph``) as pycaffe's ``get_pydot_graph`` builds it."""
    diagram = _draw.build_diagram(caffe_net, rankdir, _phase_name(phase), display_lrm, label_edges)
    return diagram.to_digraph()


def draw_net(caffe_net: Any, rankdir: str, ext: str = "png", phase: Any = None, display_lrm: bool = False) -> bytes:
    """The drawing of a NetParameter encoded as ``ext`` (png, svg, pdf, ...; 'raw'/'dot' = DOT text bytes)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in ("raw", "dot", "gv"):
        return graph.source.encode()
    import graphviz

    try:
        return graph.pipe(format=ext, quiet=True)
    except graphviz.ExecutableNotFound:
        raise Prototxt2pyError("Graphviz's 'dot' program was not found: install it (Debian/Ubuntu: apt-get "
                               "install graphviz), or draw to a .raw/.dot file") from None
    except (graphviz.CalledProcessError, ValueError) as e:
        raise Prototxt2pyError(f"Graphviz cannot render format '{ext}': {str(e)[:200]}") from None


def draw_net_to_file(caffe_net: Any, filename: str | os.PathLike, rankdir: str = "LR", phase: Any = None,
                     display_lrm: bool = False) -> None:
    """Write the drawing to ``filename`` in the format of its extension ('.raw' or '.dot' for DOT text)."""
    name = os.fspath(filename)
    ext = name[name.rfind(".") + 1:]
    write_bytes_atomic(name, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
