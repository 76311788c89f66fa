"""The intermediate graph (IR) every backend consumes.

Nodes are Caffe layers (after upgrade and NetState filtering) in Caffe's order, which is a topological
order because Caffe requires every bottom to be produced by an earlier layer. Values are blob *versions*:
an in-place layer (top == bottom) produces a new version, so every value has exactly one producer and
backends never have to reason about aliasing. ``Value.blob`` keeps the Caffe blob name.

The package is split by job: :mod:`.graph` (data classes), :mod:`.build` (from ``NetParameter``) and
:mod:`.shapes` (inference). Importing it never imports torch.
"""

from __future__ import annotations

from .build import build_graph, registered_types
from .graph import Graph, Node, ParamInfo, Shape, Value
from .shapes import infer_shapes

__all__ = ["Graph", "Node", "ParamInfo", "Shape", "Value", "build_graph", "infer_shapes", "registered_types"]
