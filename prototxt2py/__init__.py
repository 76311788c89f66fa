"""prototxt2py: legacy Caffe models (prototxt, caffemodel, solver) on PyTorch, ONNX and Graphviz.

Python API::

    import prototxt2py
    net = prototxt2py.load("deploy.prototxt", weights="model.caffemodel")   # torch.nn.Module
    out = net(image)                                                        # {blob name: tensor}
    graph = prototxt2py.graph("deploy.prototxt")                            # the intermediate graph
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import Prototxt2pyError
from .netstate import State
from .reader import NetSource, read_net

if TYPE_CHECKING:  # pragma: no cover
    from .backends.torch_runtime import CaffeNet
    from .ir import Graph


def __getattr__(name: str):
    # The IR imports every layer spec, and with them torch: keep ``import prototxt2py`` (and commands
    # such as ``draw`` that need no specs) light by importing it on first use.
    if name == "Graph":
        from .ir import Graph

        return Graph
    raise AttributeError(name)

__version__ = "0.1.0"
__all__ = ["Graph", "NetSource", "Prototxt2pyError", "State", "draw", "graph", "load", "python_source", "read_net",
           "__version__"]


def graph(
    net: str | os.PathLike | NetSource,
    phase: str = "TEST",
    stages: Iterable[str] = (),
    level: int | None = 0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    allow_unknown_types: bool = False,
    infer: bool = True,
    python_layers: Mapping[str, object] | None = None,
) -> Graph:
    """Read (and upgrade) a net definition and build its intermediate graph with inferred shapes.

    The NetState is Caffe's ``Net(file, phase, level, stages)``'s: ``phase`` and ``level`` replace the file's own
    ``state {}`` values (``level=0`` too), ``stages`` are added to its stages; ``level=None`` keeps the file's.

    ``python_layers`` maps ``Python`` layers (``"module.Layer"``: ``python_param.module`` + ``.`` +
    ``python_param.layer``) to what computes them: a :class:`~prototxt2py.layers.LayerSpec` subclass, or an
    ``nn.Module`` class / factory called with the layer's ``param_str`` (see
    :func:`prototxt2py.plugins.python_layer_spec`). The module the model file names is never imported."""
    from .ir import build_graph
    from .plugins import python_specs

    source = net if isinstance(net, NetSource) else read_net(net)
    return build_graph(
        source.net,
        State.from_args(phase, level, stages),
        locations=source.locations,
        dropped=source.dropped,
        input_shapes=input_shapes,
        file=source.file,
        allow_unknown_types=allow_unknown_types,
        infer=infer,
        python_layers=python_specs(python_layers),
    )


def load(
    net: str | os.PathLike | NetSource | Graph,
    weights: str | os.PathLike | None = None,
    phase: str = "TEST",
    stages: Iterable[str] = (),
    level: int = 0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    python_layers: Mapping[str, object] | None = None,
) -> CaffeNet:
    """Build a ``torch.nn.Module`` for a Caffe net, optionally with weights from a ``.caffemodel`` (then
    blobs are not filled before the weights overwrite them; ``net.load_report`` lists layers the file lacked,
    which keep their fillers). ``python_layers``: see :func:`graph` (ignored when ``net`` is a Graph, which
    was built with its own mapping)."""
    from .backends.torch_runtime import CaffeNet
    from .ir import Graph

    g = net if isinstance(net, Graph) else graph(net, phase, stages, level, input_shapes,
                                                 python_layers=python_layers)
    return CaffeNet(g) if weights is None else CaffeNet.from_weights(g, weights)


def draw(
    net: str | os.PathLike,
    rankdir: str = "LR",
    phase: str = "ALL",
    display_lrm: bool = False,
    stages: Iterable[str] = (),
    level: int | None = None,
    shapes: bool = False,
    no_blobs: bool = False,
):
    """A ``graphviz.Digraph`` of the net, as Caffe's draw_net draws it (notebooks display it inline;
    ``.source`` is the DOT text, ``.render()`` writes files). Layers are filtered by ``phase`` alone, as
    draw_net does, unless ``stages`` or ``level`` are given: then by the full NetState rules, as :func:`graph`."""
    from .backends.draw import diagram_of

    return diagram_of(net, rankdir, phase, display_lrm, tuple(stages), level, shapes, no_blobs).to_digraph()


def python_source(
    net: str | os.PathLike | NetSource | Graph,
    phase: str = "TEST",
    stages: Sequence[str] = (),
    level: int = 0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    python_layers: Mapping[str, object] | None = None,
) -> str:
    """The generated PyTorch module for ``net`` (what ``convert --to python`` writes): one self-contained file
    that imports only torch and the standard library (and what plugin helper classes import)."""
    from .backends.codegen import generate

    g = net if hasattr(net, "nodes") else graph(net, phase, stages, level, input_shapes,
                                                python_layers=python_layers)
    return generate(g).source
