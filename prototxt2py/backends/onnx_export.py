"""ONNX export: standard ONNX built straight from the IR, checked before anything is written.

Why not ``torch.onnx.export`` of the runtime module: tracing would bake in whatever torch ops the runtime
happens to use (custom autograd functions, explicit padding tricks) and is slow for big nets. Here every layer
spec states its Caffe semantics once, with standard ONNX ops, in ``to_onnx(node, ctx)``; the exporter only
walks the IR and hands each spec an :class:`OnnxContext`. Nothing is traced, and nothing imports torch or
``onnx/__init__`` (see :mod:`.onnx_proto`): the weights stay numpy arrays until the serialized model is
assembled around them in one copy (:meth:`_Built.encode`, byte for byte protobuf's own serialization), so
exporting ResNet-50 as a whole process stays under a second.

Guarantees:

* only standard ``ai.onnx`` ops: a layer without a mapping (or a configuration its spec refuses, e.g. a
  random ``DummyData`` filler) stops the export with one :class:`UnsupportedLayerError` naming every such
  layer (type, name, location) — never a custom op, never a skipped layer;
* the model passes ``onnx.checker.check_model(full_check=True)`` (strict shape inference included) before it
  is written, atomically; models whose weights exceed protobuf's 2 GB limit keep them as ONNX external data in
  ``<output>.data`` next to the model;
* graph inputs and outputs are named by their Caffe blobs, nodes by their Caffe layers (extra nodes of a
  layer get a ``/<op>`` suffix); intermediate in-place versions of a blob get unique names (``blob@1`` ...).

Opsets: :data:`MIN_OPSET` (13: per-axis ``Softmax``, ``ReduceSum``/``Split``/``Squeeze`` taking tensors) up to
:func:`newest_opset` — the newest that both the installed ``onnx`` and (if installed) ``onnxruntime`` accept.
The default, :data:`DEFAULT_OPSET` = 17, is what current runtimes (onnxruntime, TensorRT >= 8.6, OpenVINO)
all load; no Caffe layer needs anything newer.

``dynamic_batch`` makes the first axis of every input the symbol ``N``; outputs get the shapes ONNX shape
inference derives from that (``N`` where they follow the batch). Specs build reshape targets with
:meth:`OnnxContext.reshape`, which writes the batch axis as ``0`` (copy) or ``-1`` (infer), so the graph stays
valid at any batch size.

``dynamic`` (``--dynamic``) also makes height and width symbolic (``H``, ``W``: every axis from 2 on of each
input with 3 or more axes), for fully convolutional nets such as MTCNN's P-Net run on an image pyramid. Which
blob axes then change with the input size is found by inferring the net's shapes again at two other input
sizes (:func:`_varying_axes`); a layer whose parameter shapes change (an InnerProduct over spatial axes) or
whose blobs change while its spec does not declare :attr:`~prototxt2py.layers.base.LayerSpec.onnx_dynamic_sizes`
is refused by name. Specs that declare it compute Caffe's size arithmetic (pooling's CEIL rounding and
dropped last window, Crop's reference size, Flatten/Reshape targets) with ONNX ops (``Shape``, ``Div`` ...)
when ``ctx.dynamic_sizes`` is set, and :meth:`OnnxContext.reshape` refuses to bake such sizes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..blobstore import GraphBlobs, blobs_for
from ..errors import InputFileError, Location, Prototxt2pyError, ShapeError, UnsupportedLayerError
from ..fsutil import current_umask, output_target, replace_together, write_bytes_atomic
from ..ir import Node
from ..ir.shapes import reinferred
from ..layers.base import Shape
from ..netstate import TRAIN
from . import onnx_proto as op

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Oldest opset exported: the first with per-axis Softmax and axes given as tensors to ReduceSum/Squeeze.
MIN_OPSET = 13
#: Default opset: loaded by every current ONNX runtime, and nothing newer is needed for Caffe's layers.
DEFAULT_OPSET = 17
#: Above this many bytes of weights the model is written with external data (protobuf refuses messages of
#: 2 GiB or more; the headroom is for the graph itself).
EXTERNAL_DATA_LIMIT = 2**31 - 2**26
#: Symbol of the batch axis with ``dynamic_batch``.
BATCH_SYMBOL = "N"
#: Symbols of the axes from 2 on with ``dynamic`` (prefixed by the input's name when the net has several).
SPATIAL_SYMBOLS = ("H", "W", "D3", "D4", "D5")
#: Input size changes (added to height, width) at which shapes are inferred again to find the blob axes that
#: follow the input size: one of a pixel or two, one larger than common total strides (32 or 64).
PROBE_DELTAS = ((1, 2), (67, 71))
#: A further probe, far larger: the deepest maps of detection heads (SSD's last 1x1 and 2x2 maps) keep their
#: size under the probes above yet change at other sizes. Only used where the net runs there (a net that cannot
#: grow that much is still exported for the sizes around its own).
FAR_PROBE_DELTA = (509, 521)

_FLOAT = np.dtype(np.float32)
#: ONNX element types (``TensorProto.DataType``, fixed by the standard).
_ONNX_FLOAT, _ONNX_INT64, _ONNX_DOUBLE = 1, 7, 11
_INT = np.dtype(np.int64)


@functools.cache
def newest_opset() -> int:
    """The newest opset that the installed ``onnx`` knows and the installed ``onnxruntime`` (if any) loads.

    onnxruntime has no API for this, so a one-node model is offered to it at each opset from onnx's newest
    down (in practice the first try succeeds; the answer is cached)."""
    newest = op.newest_known_opset()
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - onnxruntime is optional for exporting
        return newest
    for opset in range(newest, MIN_OPSET, -1):
        model = op.pb().ModelProto()
        model.graph.name = "probe"
        model.graph.node.append(op.make_node("Identity", ["x"], ["y"]))
        model.graph.input.append(op.make_value_info("x", _ONNX_FLOAT, [1]))
        model.graph.output.append(op.make_value_info("y", _ONNX_FLOAT, [1]))
        _stamp(model, opset)
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime's exception types are not part of its API
            continue
        return opset
    return MIN_OPSET


def resolve_opset(opset: int | None) -> int:
    """``opset`` checked against the supported range, or the default."""
    if opset is None:
        return DEFAULT_OPSET
    newest = newest_opset()
    if not MIN_OPSET <= opset <= newest:
        raise Prototxt2pyError(f"ONNX opset {opset} is not supported: choose {MIN_OPSET} to {newest} "
                               f"(default {DEFAULT_OPSET})")
    return int(opset)


def _stamp(model: onnx.ModelProto, opset: int) -> None:
    """Opset, producer and the oldest IR version that allows the opset, so older runtimes can load it."""
    from .. import __version__

    model.opset_import.append(op.make_opsetid("", opset))
    model.ir_version = op.min_ir_version(opset)
    model.producer_name = "prototxt2py"
    model.producer_version = __version__


class FixedSizesError(UnsupportedLayerError):
    """A layer's mapping needs sizes that ``--dynamic`` makes symbolic (reported with the layers that cannot
    take symbolic sizes, not as a missing mapping)."""


# ---------------------------------------------------------------------------------------------------------
# The context handed to the specs
# ---------------------------------------------------------------------------------------------------------
class OnnxContext:
    """What a spec's ``to_onnx(node, ctx)`` builds with.

    Tensor names: ``input(i)``/``output(i)`` are the names of the layer's bottoms/tops; a spec must produce
    every top with :meth:`add` (the last node of a chain writes ``output(i)``). ``in_shape``/``out_shape`` are
    the IR's inferred (static) shapes; with ``dynamic_batch`` the batch axis may differ at run time, so shape
    constants go through :meth:`reshape`. ``param(i)`` is the layer's Caffe blob ``i`` (float32, Caffe's
    shape); :meth:`const` turns arrays into initializers. A configuration that standard ONNX cannot express
    calls :meth:`unsupported`, which the exporter reports together with every other unsupported layer.
    """

    #: ONNX element types for ``Cast`` (so specs need not import onnx).
    FLOAT = _ONNX_FLOAT
    INT64 = _ONNX_INT64
    DOUBLE = _ONNX_DOUBLE

    def __init__(self, net: Any, opset: int, dynamic_batch: bool, blobs: Any = None,
                 varying: dict[str, tuple[bool, ...]] | None = None):
        #: The runtime net, or None when exporting an IR graph (torch-free: blobs from a file or fillers).
        self.net = net if hasattr(net, "layer_blobs") else None
        self.graph = net.graph if self.net is not None else net
        self.opset = opset
        #: Whether height/width are symbolic (``--dynamic``; the batch is then dynamic too).
        self.dynamic_sizes = varying is not None
        self.dynamic_batch = dynamic_batch or self.dynamic_sizes
        #: With symbolic sizes: per IR value, which axes change with the input height/width.
        self.varying = varying or {}
        #: Where ``param(i)`` comes from: the net's tensors, or a :class:`~prototxt2py.blobstore.GraphBlobs`.
        self.blobs = blobs if blobs is not None else blobs_for(net)
        #: Whether the runtime module is in training mode (TRAIN phase unless changed with ``net.eval()``; for
        #: a graph, its phase): the export computes what the module computes (batch statistics, random dropout
        #: are refused ...).
        self.training = bool(net.training) if self.net is not None else self.graph.state.phase == TRAIN
        self._net_training = self.training
        #: The model under construction, without its initializers: those stay numpy arrays in
        #: :attr:`initializers` until the model is encoded (copying 100s of MB of weights into protobuf
        #: messages and serializing them again is what made exporting slow).
        self.model = op.pb().ModelProto()
        #: ``(TensorProto with name, type and dims but no data, its little-endian contiguous array)``.
        self.initializers: list[tuple[Any, np.ndarray]] = []
        self.nodes: list[onnx.NodeProto] = []
        self.initializer_bytes = 0
        self.silenced: list[str] = []
        self.node: Node | None = None
        self._tensor_names: set[str] = set()
        self._node_names: set[str] = set()
        self._produced: set[str] = set()
        self._small_consts: dict[tuple, str] = {}
        self._shapes: dict[str, str] = {}  # tensor -> its Shape node's output
        self._param_by_array: dict[int, np.ndarray] = {}  # id(array) -> array, for arrays from param()
        self._param_consts: dict[int, str] = {}  # id(array) -> initializer name
        #: Tensors whose first axis is only known at run time (a Filter's tops and what follows them along
        #: that axis) -> the symbol naming that axis in the graph's outputs.
        self.variable_first: dict[str, str] = {}
        self.value_names = self._name_values()
        self._graph_inputs = {self.value_names[v] for v in self.graph.inputs}

    # -- naming ------------------------------------------------------------------------------------------
    def _claim(self, preferred: str) -> str:
        name, i = preferred, 1
        while name in self._tensor_names:
            i += 1
            name = f"{preferred}_{i}"
        self._tensor_names.add(name)
        return name

    def _name_values(self) -> dict[str, str]:
        """Tensor name of every IR value: Caffe blob names for graph inputs and outputs (their final
        versions), value ids (``blob@k``) elsewhere, made unique."""
        g = self.graph
        names: dict[str, str] = {}
        for vid in g.inputs:
            names[vid] = self._claim(g.values[vid].blob)
        for vid in g.outputs:
            if vid not in names:
                blob = g.values[vid].blob
                names[vid] = self._claim(blob if blob not in self._tensor_names else vid)
        for vid, value in g.values.items():
            if vid not in names:
                names[vid] = self._claim(vid if vid not in self._tensor_names else f"{value.blob}@{value.version}")
        return names

    def tmp(self, hint: str) -> str:
        """A fresh tensor name for an intermediate result of the current layer."""
        return self._claim(f"{self._layer_name()}/{hint}")

    def _layer_name(self) -> str:
        return self.node.name if self.node is not None else "graph"

    # -- the current layer -------------------------------------------------------------------------------
    def begin(self, node: Node) -> None:
        self.node = node
        if node.own_phase is not None:  # the layer keeps its own phase, as in the runtime module
            self.training = node.own_phase == TRAIN
        else:
            self.training = self._net_training


    def finish(self) -> None:
        """Check that the spec produced every top of the layer."""
        node = self.node
        for i, vid in enumerate(node.outputs):
            name = self.value_names[vid]
            if name not in self._produced and name not in self._graph_inputs:
                raise Prototxt2pyError(f"internal: the ONNX mapping did not produce top {i} ('{node.tops[i]}')",
                                       node.location, layer=node.name)
        self._follow_variable_first()
        self.node = None

    def variable_first_axis(self, i: int, symbol: str) -> None:
        """Mark top ``i`` as having a first axis known only at run time (its static shape says the most it
        can be), named ``symbol`` where it is a graph output."""
        self.variable_first[self.output(i)] = symbol

    def is_static(self, name: str) -> bool:
        """Whether tensor ``name`` has its static shape at run time (no dynamic batch, not after a Filter)."""
        return not self.dynamic_batch and name not in self.variable_first

    def _follow_variable_first(self) -> None:
        """A top whose first axis has the static size of a variable-first bottom's is taken to follow it
        (elementwise layers, InnerProduct, Softmax ... of filtered items), so :meth:`reshape` keeps that
        axis symbolic and the graph outputs declare it so."""
        sources = [(self.in_shape(i), self.variable_first[self.input(i)]) for i in range(self.num_inputs)
                   if self.input(i) in self.variable_first]
        for i in range(self.num_outputs):
            shape, name = self.out_shape(i), self.output(i)
            for in_shape, symbol in sources:
                if shape and in_shape and shape[0] == in_shape[0]:
                    self.variable_first.setdefault(name, symbol)

    def input(self, i: int = 0) -> str:
        return self.value_names[self.node.inputs[i]]

    def output(self, i: int = 0) -> str:
        return self.value_names[self.node.outputs[i]]

    def in_shape(self, i: int = 0) -> Shape:
        return self.graph.values[self.node.inputs[i]].shape

    def out_shape(self, i: int = 0) -> Shape:
        return self.graph.values[self.node.outputs[i]].shape

    # -- symbolic sizes (--dynamic) ----------------------------------------------------------------------
    def in_varies(self, i: int = 0) -> tuple[bool, ...]:
        """Per axis of bottom ``i``: whether it changes with the input height/width (all False unless
        ``dynamic_sizes``; the batch axis is not counted: :meth:`reshape` handles it)."""
        return self._varies(self.node.inputs[i])

    def axis_symbolic(self, i: int, axis: int) -> bool:
        """Whether axis ``axis`` of bottom ``i`` has a size known only at run time: one that changes with the
        input height/width (:meth:`in_varies`), or the batch axis of a bottom without a static batch."""
        return self.in_varies(i)[axis] or (axis == 0 and not self.is_static(self.input(i)))

    def out_varies(self, i: int = 0) -> tuple[bool, ...]:
        """Per axis of top ``i``: whether it changes with the input height/width (see :meth:`in_varies`)."""
        return self._varies(self.node.outputs[i])

    def _varies(self, vid: str) -> tuple[bool, ...]:
        shape = self.graph.values[vid].shape or ()
        return self.varying.get(vid, (False,) * len(shape))

    @property
    def sizes_vary(self) -> bool:
        """Whether any blob of the current layer changes with the input height/width: its mapping must then
        compute every size it uses with ONNX ops."""
        return any(any(self._varies(v)) for v in (*self.node.inputs, *self.node.outputs))

    def shape_of(self, x: str) -> str:
        """``Shape(x)`` (int64, one node per tensor)."""
        if x not in self._shapes:
            self._shapes[x] = self.add("Shape", [x])
        return self._shapes[x]

    def dims(self, x: str, start: int, end: int | None = None) -> str:
        """Axes ``start:end`` of ``x``'s run-time shape as a 1-D int64 tensor."""
        return self.slice(self.shape_of(x), [start], [np.iinfo(np.int64).max if end is None else end], [0])

    def concat_ints(self, parts: Sequence[str | Sequence[int]], hint: str = "shape") -> str:
        """A 1-D int64 tensor joining run-time pieces (tensor names) and constant pieces (int lists)."""
        names = [p if isinstance(p, str) else self.ints(p, hint) for p in parts if isinstance(p, str) or len(p)]
        return names[0] if len(names) == 1 else self.add("Concat", names, axis=0)

    @property
    def num_inputs(self) -> int:
        return len(self.node.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.node.outputs)

    @property
    def num_params(self) -> int:
        return len(self.blobs.names(self.node))

    def param(self, i: int) -> np.ndarray:
        """The layer's Caffe blob ``i`` as float32 with Caffe's shape (shared blobs are the same array, so
        passing it unchanged to :meth:`const` stores it once)."""
        array = self.blobs.blobs(self.node)[i]
        self._param_by_array[id(array)] = array
        return array

    def unsupported(self, reason: str) -> NoReturn:
        """Refuse this layer's configuration; reported with every other unsupported layer."""
        raise UnsupportedLayerError(reason, self.node.location, layer=self.node.name)

    def fixed_sizes_only(self, reason: str) -> NoReturn:
        """Refuse symbolic height/width for this layer (``--dynamic``); reported with every other such layer."""
        raise FixedSizesError(reason, self.node.location, layer=self.node.name)

    def silence(self, name: str) -> None:
        """Record a blob consumed by a ``Silence`` layer: if the net has no other output, these become the
        outputs (what Caffe's net reports in that case)."""
        self.silenced.append(name)

    # -- constants ---------------------------------------------------------------------------------------
    def const(self, value: Any, hint: str = "const") -> str:
        """An initializer holding ``value`` (floats as float32, integers as int64, booleans kept); small
        constants with equal contents are shared across the graph."""
        if isinstance(value, np.ndarray) and self._param_by_array.get(id(value)) is value:
            if id(value) not in self._param_consts:
                self._param_consts[id(value)] = self._add_initializer(value, hint)
            return self._param_consts[id(value)]
        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = array.astype(_FLOAT, copy=False)
        elif array.dtype.kind in "iu":
            array = array.astype(_INT, copy=False)
        if array.size > 16:
            return self._add_initializer(array, hint)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._small_consts:
            self._small_consts[key] = self._add_initializer(array, hint)
        return self._small_consts[key]

    def _add_initializer(self, array: np.ndarray, hint: str) -> str:
        """An initializer: its header now, its data kept as the array itself (no copy for float32 weights
        already contiguous and little-endian) until :func:`_encode` writes it."""
        name = self._claim(f"{self._layer_name()}/{hint}")
        tensor = op.pb().TensorProto()
        tensor.dims.extend(array.shape)
        tensor.data_type = op.tensor_type(array.dtype)
        tensor.name = name
        self.initializers.append((tensor, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))))
        self.initializer_bytes += array.nbytes
        return name

    def double(self, value: Any, hint: str = "const") -> str:
        """A float64 initializer (:meth:`const` stores floats as float32): exact operands for arithmetic the
        original does in double."""
        return self._add_initializer(np.asarray(value, dtype=np.float64), hint)

    def scalar(self, value: float) -> str:
        """A float32 scalar (0-D, broadcasts against anything)."""
        return self.const(np.array(value, dtype=_FLOAT), "scalar")

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        """A 1-D int64 tensor (shapes, axes, pads, starts ...)."""
        return self.const(np.array(list(values), dtype=_INT).reshape(-1), hint)

    # -- nodes -------------------------------------------------------------------------------------------
    def add(self, op_type: str, inputs: Sequence[str], outputs: str | Sequence[str] | None = None,
            **attrs: Any) -> str:
        """Append a node of the current layer; returns its (first) output name, a fresh one if not given.
        The layer's first node is named after the layer, later ones ``<layer>/<op>``."""
        if outputs is None:
            outputs = [self.tmp(op_type.lower())]
        elif isinstance(outputs, str):
            outputs = [outputs]
        base = self._layer_name()
        name = base if base not in self._node_names else f"{base}/{op_type}"
        i = 1
        while name in self._node_names:
            i += 1
            name = f"{base}/{op_type}_{i}"
        self._node_names.add(name)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(op.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))
        self._produced.update(outputs)
        return outputs[0]

    @contextlib.contextmanager
    def subgraph(self) -> Iterator[list[onnx.NodeProto]]:
        """Nodes added inside the block go to the yielded list (the body of a ``Scan``/``Loop``), not to the
        main graph; names stay unique across both, and constants are main-graph initializers, which a body
        reads from the outer scope."""
        saved, self.nodes = self.nodes, []
        try:
            yield self.nodes
        finally:
            self.nodes = saved

    def identity(self, x: str, out: str) -> str:
        return self.add("Identity", [x], out)

    def reshape(self, x: str, x_shape: Sequence[int], target: Sequence[int], out: str | None = None) -> str:
        """Reshape ``x`` (static shape ``x_shape``) to ``target``. With a dynamic batch the first axis is
        written as 0 (copy) when it is ``x``'s batch axis, else as -1 (infer: the batch is folded into it)."""
        if self.dynamic_sizes and self.sizes_vary:
            self.fixed_sizes_only("its ONNX mapping reshapes to sizes fixed at export, which change with the input "
                                  "height/width")
        shape = [int(d) for d in target]
        if (self.dynamic_batch or x in self.variable_first) and shape and x_shape and -1 not in shape[1:]:
            shape[0] = 0 if shape[0] == x_shape[0] else -1
        return self.add("Reshape", [x, self.ints(shape, "shape")], out)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True,
               out: str | None = None) -> str:
        """``Reduce*`` over ``axes``: an input tensor for ReduceSum and from opset 18 on, an attribute before."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.add(op_type, [x, self.ints(axes, "axes")], out, keepdims=int(keepdims))
        return self.add(op_type, [x], out, axes=list(axes), keepdims=int(keepdims))

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None, out: str | None = None) -> str:
        inputs = [x, self.ints(starts, "starts"), self.ints(ends, "ends"), self.ints(axes, "axes")]
        if steps is not None:
            inputs.append(self.ints(steps, "steps"))
        return self.add("Slice", inputs, out)

    def broadcast_const(self, array: np.ndarray, axis: int, rank: int, hint: str) -> str:
        """An operand covering axes ``axis .. axis + array.ndim`` of a ``rank``-axis tensor, as an
        initializer with trailing ones so that ONNX's trailing-aligned broadcasting lines it up."""
        if array.ndim == 0:
            return self.const(array, hint)
        return self.const(array.reshape(array.shape + (1,) * (rank - axis - array.ndim)), hint)

    def broadcast(self, x: str, x_rank: int, axis: int, rank: int) -> str:
        """A runtime operand of ``x_rank`` axes lined up at ``axis`` of a ``rank``-axis tensor (Unsqueeze
        adds the trailing ones; no shape constant, so any batch size works)."""
        trailing = rank - axis - x_rank
        if x_rank == 0 or trailing == 0:
            return x
        return self.add("Unsqueeze", [x, self.ints(range(x_rank, x_rank + trailing), "axes")])


# ---------------------------------------------------------------------------------------------------------
# Building and writing the model
# ---------------------------------------------------------------------------------------------------------
def _blob_source(net: Any, weights: Any) -> Any:
    """The blobs of a runtime net (its tensors) or of a graph (``weights``: path, provider or None)."""
    if isinstance(weights, GraphBlobs):
        return weights
    return blobs_for(net, weights)


def _describe(node: Node, reason: str | None = None) -> str:
    text = f"'{node.type}' (layer '{node.name}' at {node.location})"
    return f"{text}: {reason}" if reason else text


def _raise_unsupported(problems: Sequence[tuple[Node, str | None]]) -> None:
    """One error for every layer without an ONNX mapping (or with a configuration its spec refuses)."""
    if len(problems) == 1:
        node, reason = problems[0]
        raise UnsupportedLayerError(f"no ONNX mapping for '{node.type}'" + (f": {reason}" if reason else ""),
                                    node.location, layer=node.name)
    if problems:
        raise UnsupportedLayerError(f"no ONNX mapping for {len(problems)} layers: "
                                    + "; ".join(_describe(node, reason) for node, reason in problems))


def _require_shapes(graph: Any) -> dict[str, list[int | str]]:
    """ONNX export needs every shape; name the layers whose shapes could not be inferred. Exception: tops
    whose shapes depend on the data but which their layer's mapping computes anyway (the spec's
    ``onnx_top_shapes``, e.g. DetectionOutput) if they are net outputs; returns their ONNX shapes by value."""
    data_dependent: dict[str, list[int | str]] = {}
    for n in graph.nodes:
        if all(graph.values[v].shape is not None for v in n.inputs):
            shapes = n.spec.onnx_top_shapes(n) if any(graph.values[v].shape is None for v in n.outputs) else None
            data_dependent.update((v, list(s)) for v, s in zip(n.outputs, shapes or (), strict=False))
    unknown = [n for n in graph.nodes
               if any(graph.values[v].shape is None and v not in data_dependent for v in n.outputs)]
    causes = [n for n in unknown if n.shape_note and not set(n.outputs) <= set(data_dependent)] or unknown
    if causes:
        details = "; ".join(_describe(n, n.shape_note or _dynamic_bottom(graph, n, data_dependent))
                            for n in causes[:5])
        more = f" (and {len(causes) - 5} more)" if len(causes) > 5 else ""
        raise ShapeError(f"ONNX export needs every blob shape; unknown for {details}{more}", Location(graph.file))
    return data_dependent


def _dynamic_bottom(graph: Any, node: Node, data_dependent: dict[str, list[int | str]]) -> str | None:
    """Why a layer after a data-dependent top has no shape."""
    blobs = [graph.values[v].blob for v in node.inputs if v in data_dependent]
    return f"its bottom '{blobs[0]}' has a data-dependent shape (only a net output may)" if blobs else None


def _value_info(name: str, shape: Sequence[int | str] | None, batch: int | None = None,
                spatial: Sequence[str] = (), first: str | None = None) -> onnx.ValueInfoProto:
    """A float32 graph input/output (no shape if ``shape`` is None); with ``batch``, a first axis of that size
    becomes the batch symbol; ``spatial`` names the axes from 2 on (``--dynamic``); ``first`` names a first
    axis known only at run time (a Filter's items)."""
    dims: list[int | str] | None = None if shape is None else list(shape)
    if batch is not None and dims and dims[0] == batch:
        dims[0] = BATCH_SYMBOL
    if dims and spatial:
        dims[2:] = spatial
    if first is not None and dims:
        dims[0] = first
    return op.make_value_info(name, _ONNX_FLOAT, dims)


# ---------------------------------------------------------------------------------------------------------
# Symbolic height/width (--dynamic)
# ---------------------------------------------------------------------------------------------------------
def _sized_input(shape: Shape | None) -> bool:
    """Inputs whose axes from 2 on become symbolic with ``--dynamic``: images (and volumes), not vectors."""
    return shape is not None and len(shape) >= 3


def _spatial_symbols(graph: Any) -> dict[str, tuple[str, ...]]:
    """Symbol names of the symbolic axes of each sized input (``H``, ``W``; prefixed with the input's name
    when there are several)."""
    sized = [v for v in graph.inputs if _sized_input(graph.values[v].shape)]
    out = {}
    for vid in sized:
        value = graph.values[vid]
        prefix = f"{value.blob}_" if len(sized) > 1 else ""
        out[vid] = tuple(f"{prefix}{SPATIAL_SYMBOLS[i]}" for i in range(len(value.shape) - 2))
    return out


def _probe(graph: Any, delta: tuple[int, int]) -> Any:
    """``graph`` with its shapes inferred again for sized inputs grown by ``delta`` on height/width (``delta``
    cycles over further axes)."""
    grown, kept = {}, {}  # the other inputs keep their shapes as given (--input label=2), not the file's
    for vid in graph.inputs:
        shape = graph.values[vid].shape
        if _sized_input(shape):
            grown[graph.values[vid].blob] = (*shape[:2], *(d + delta[i % 2] for i, d in enumerate(shape[2:])))
        elif shape is not None:
            kept[graph.values[vid].blob] = tuple(shape)
    try:
        return reinferred(graph, {**kept, **grown})
    except Prototxt2pyError as e:
        sizes = ", ".join(f"{b} {tuple(s)}" for b, s in grown.items())
        raise ShapeError(f"--dynamic: the net cannot run at other input sizes (tried {sizes}): {e.message}",
                         e.location, layer=e.layer) from None


def _output_dims(graph: Any, varying: dict[str, tuple[bool, ...]]) -> dict[str, list[int | str | None]]:
    """Per IR value, what its declared output shape should say where ONNX shape inference loses track
    (sizes computed from data): ``N`` for an axis that follows the batch (found by inferring shapes again at
    batch + 1), the size for an axis that never changes, None for one that follows height/width."""
    batched = {}
    overrides = {graph.values[v].blob: (shape[0] + 1, *shape[1:]) for v in graph.inputs
                 if (shape := graph.values[v].shape)}
    with contextlib.suppress(Prototxt2pyError):  # a net that needs its batch size: no axis is named N
        batched = reinferred(graph, overrides).values
    out: dict[str, list[int | str | None]] = {}
    for vid, value in graph.values.items():
        other = batched[vid].shape if vid in batched else None
        out[vid] = [None if varies else BATCH_SYMBOL if other is not None and other[i] != d else d
                    for i, (d, varies) in enumerate(zip(value.shape or (), varying[vid], strict=True))]
    return out


def _varying_axes(graph: Any) -> tuple[dict[str, tuple[bool, ...]], list[tuple[Node, str | None]]]:
    """Per IR value, which axes change with the input height/width (shapes inferred again at
    :data:`PROBE_DELTAS`), and the layers that cannot take symbolic sizes: parameter shapes that change (the
    net is not fully convolutional there), or changing blobs with a spec that does not declare
    ``onnx_dynamic_sizes``."""
    probes = [_probe(graph, delta) for delta in PROBE_DELTAS]
    with contextlib.suppress(Prototxt2pyError):
        probes.append(_probe(graph, FAR_PROBE_DELTA))
    varying: dict[str, tuple[bool, ...]] = {}
    for vid, value in graph.values.items():
        shape = value.shape or ()
        varying[vid] = tuple(any(p.values[vid].shape is None or p.values[vid].shape[i] != d for p in probes)
                             for i, d in enumerate(shape))
    problems: list[tuple[Node, str | None]] = []
    for index, node in enumerate(graph.nodes):
        params = [p.nodes[index].param_shapes for p in probes]
        if any(shapes != node.param_shapes for shapes in params):
            problems.append((node, f"its parameter shapes {_shapes_text(node.param_shapes)} change with the input "
                                   f"size ({_shapes_text(params[0])} at the next size): the net is not fully "
                                   "convolutional here"))
        elif (any(any(varying[v]) for v in (*node.inputs, *node.outputs))
              and not node.spec.onnx_dynamic_sizes and not node.spec.is_input(node)):
            changing = [graph.values[v].blob for v in node.outputs if any(varying[v])] or \
                       [graph.values[v].blob for v in node.inputs if any(varying[v])]
            problems.append((node, f"its blob sizes ({', '.join(changing)}) change with the input height/width "
                                   "and its ONNX mapping cannot compute them at run time"))
    return varying, problems


def _shapes_text(shapes: Sequence[Shape]) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes)


def _raise_not_dynamic(problems: Sequence[tuple[Node, str | None]]) -> None:
    """One error naming every layer that prevents symbolic height/width."""
    if problems:
        details = "; ".join(_describe(node, reason) for node, reason in problems)
        raise UnsupportedLayerError(f"--dynamic (symbolic height/width) is not possible for {details}; "
                                    "export with fixed sizes (--input NAME=...) or --dynamic-batch",
                                    Location(problems[0][0].location.file))


def _declare_io(onnx_graph: onnx.GraphProto, ctx: OnnxContext, dynamic_batch: bool,
                data_dependent: dict[str, list[int | str]]) -> None:
    """Graph inputs (the net's input blobs) and outputs: the blobs no layer consumes, except inputs passed
    through untouched; failing any, the blobs consumed by Silence layers (what Caffe reports then). With a
    dynamic batch the outputs are declared without shapes here (see :func:`_infer_output_shapes`)."""
    graph, names = ctx.graph, ctx.value_names
    first = graph.values[graph.inputs[0]].shape if graph.inputs else None
    batch = first[0] if dynamic_batch and first else None
    spatial = _spatial_symbols(graph) if ctx.dynamic_sizes else {}
    inputs = set(graph.inputs)
    outputs = [v for v in graph.outputs if v not in inputs]
    if not outputs:
        by_name = {names[v]: v for v in graph.values}
        outputs = [by_name[n] for n in dict.fromkeys(ctx.silenced) if by_name[n] not in inputs]
    if not outputs:
        raise Prototxt2pyError("nothing to export: the net computes no output blob", Location(graph.file))
    onnx_graph.input.extend(_value_info(names[v], graph.values[v].shape, batch, spatial.get(v, ()))
                            for v in graph.inputs)
    onnx_graph.output.extend(
        _value_info(names[v], None if dynamic_batch else data_dependent.get(v, graph.values[v].shape),
                    first=ctx.variable_first.get(names[v]))
        for v in outputs)


def _infer_output_shapes(model: onnx.ModelProto, initializers: Sequence[tuple[Any, np.ndarray]],
                         known: dict[str, list[int | str | None]]) -> None:
    """Declare the outputs of a dynamic-batch model with the shapes ONNX shape inference derives from the
    symbolic inputs: an output follows the batch (``N``) only where the graph makes it do so (a PriorBox or
    a full Reduction does not). Inference runs on a copy whose large initializers are stubs with dims only,
    so no weights are copied. Where inference loses track of an axis (sizes computed from data with
    ``--dynamic``), ``known`` (by output name, see :func:`_output_dims`) names it: ``N``, a fixed size, or
    None (a symbol of its own)."""
    light = op.pb().ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for header, data in initializers:
        stub = g.initializer.add()
        stub.CopyFrom(header)
        if data.size <= 64:  # shape-like constants: inference reads their values
            stub.raw_data = data.tobytes()
    inferred = op.infer_shapes(light)
    for declared, found in zip(model.graph.output, inferred.graph.output, strict=True):
        dims = known.get(declared.name)
        declared.type.CopyFrom(found.type)
        if dims is None:
            continue
        shape = declared.type.tensor_type.shape
        if not declared.type.tensor_type.HasField("shape"):  # sizes from data (MaxUnpool's output_shape)
            shape.dim.extend(op.pb().TensorShapeProto.Dimension() for _ in dims)
        for i, (dim, want) in enumerate(zip(shape.dim, dims, strict=False)):
            if dim.HasField("dim_value"):
                continue
            if isinstance(want, int):
                dim.dim_value = want
            else:
                dim.dim_param = want or dim.dim_param or f"{declared.name}_{i}"


class _Built:
    """An exported model before encoding: the proto without initializer data, and the initializers."""

    def __init__(self, model: onnx.ModelProto, initializers: list[tuple[Any, np.ndarray]], payload: int):
        self.model, self.initializers, self.payload = model, initializers, payload

    def proto(self) -> onnx.ModelProto:
        """The complete ``ModelProto`` (copies the weights into it)."""
        for header, data in self.initializers:
            tensor = self.model.graph.initializer.add()
            tensor.CopyFrom(header)
            tensor.raw_data = data.tobytes()
        self.initializers = []
        return self.model

    def encode(self) -> bytes:
        """The serialized model, byte for byte what ``proto().SerializeToString()`` gives, assembled from the
        pieces: protobuf encodes fields in field-number order, and the initializers (GraphProto field 5) and
        their ``raw_data`` (TensorProto field 9, its last field set) are written straight from the arrays.
        Serializing a ModelProto holding the weights took longer than everything else in the export."""
        model, graph = self.model, self.model.graph
        if graph.initializer:
            raise ValueError("internal: initializers were already moved into the model")
        pb = op.pb()
        graph_head, graph_tail = pb.GraphProto(), pb.GraphProto()
        graph_head.node.extend(graph.node)
        graph_head.name = graph.name
        graph_tail.CopyFrom(graph)
        graph_tail.ClearField("node")
        graph_tail.ClearField("name")
        parts: list[Any] = [graph_head.SerializeToString()]
        for header, data in self.initializers:
            head = header.SerializeToString()
            raw = memoryview(data.reshape(-1)).cast("B")
            field = b"\x4a" + _varint(raw.nbytes)  # raw_data: field 9, length-delimited
            parts += [b"\x2a" + _varint(len(head) + len(field) + raw.nbytes), head, field, raw]  # initializer: 5
        parts.append(graph_tail.SerializeToString())
        graph_size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        model_head, model_tail = pb.ModelProto(), pb.ModelProto()
        model_head.CopyFrom(model)
        model_head.ClearField("graph")
        model_head.ClearField("opset_import")
        model_tail.opset_import.extend(model.opset_import)
        if model_head.metadata_props or model_head.training_info or model_head.functions:
            raise ValueError("internal: model fields after the graph are not encoded")
        return b"".join([model_head.SerializeToString(), b"\x3a" + _varint(graph_size), *parts,
                         model_tail.SerializeToString()])  # graph: field 7


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _build(net: Any, opset: int | None, dynamic_batch: bool, weights: Any = None,
           dynamic: bool = False) -> _Built:
    """The unchecked model, its initializers kept apart."""
    opset = resolve_opset(opset)
    graph = net.graph if hasattr(net, "layer_blobs") else net
    data_dependent = _require_shapes(graph)
    varying, not_dynamic = None, []
    if dynamic:
        varying, not_dynamic = _varying_axes(graph)
        _raise_not_dynamic(not_dynamic)
    dynamic_batch = dynamic_batch or dynamic
    ctx = OnnxContext(net, opset, dynamic_batch, _blob_source(net, weights), varying)
    problems: list[tuple[Node, str | None]] = []
    for node in graph.nodes:
        if not node.spec.supports("onnx", node):
            problems.append((node, node.spec.unsupported_note(node) or None))
            continue
        ctx.begin(node)
        try:
            node.spec.to_onnx(node, ctx)
        except FixedSizesError as e:
            not_dynamic.append((node, e.message))
            continue
        except UnsupportedLayerError as e:
            problems.append((node, e.message))
            continue
        except Prototxt2pyError:
            raise
        except (ValueError, TypeError, IndexError) as e:
            raise Prototxt2pyError(f"cannot export to ONNX: {e}", node.location, layer=node.name) from None
        ctx.finish()
    _raise_unsupported(problems)
    _raise_not_dynamic(not_dynamic)

    model = ctx.model
    _declare_io(model.graph, ctx, dynamic_batch, data_dependent)
    model.graph.name = graph.name or "caffe_net"
    model.graph.doc_string = f"Caffe net {Path(graph.file).name}, converted by prototxt2py"
    model.graph.node.extend(ctx.nodes)
    _stamp(model, opset)
    if dynamic_batch:
        known = _output_dims(graph, varying) if varying is not None else {}
        known.update(data_dependent)  # the spec's names for data-dependent axes, not inference's unk__i
        for vid in graph.outputs:  # at least the rank, where inference loses it (MaxUnpool's data-sized output)
            known.setdefault(vid, [None] * len(graph.values[vid].shape or ()))
        _infer_output_shapes(model, ctx.initializers, {ctx.value_names[v]: dims for v, dims in known.items()})
        symbols = {ctx.value_names[v]: dims for v, dims in data_dependent.items()}
        for output in model.graph.output:  # the spec's names for data-dependent axes, not inference's unk__i
            for dim, given in zip(output.type.tensor_type.shape.dim, symbols.get(output.name, ()), strict=False):
                if isinstance(given, str) and not dim.HasField("dim_value"):
                    dim.dim_param = given
    return _Built(model, ctx.initializers, ctx.initializer_bytes)


def to_onnx_model(net: Any, opset: int | None = None, dynamic_batch: bool = False,
                  weights: Any = None, dynamic: bool = False) -> onnx.ModelProto:
    """The net as an ONNX model: a :class:`~prototxt2py.backends.torch_runtime.CaffeNet` (its weights), or an
    IR graph with ``weights`` (a ``.caffemodel`` path, a :class:`~prototxt2py.blobstore.GraphBlobs`, or None
    for Caffe's fillers) — the graph path never imports torch.

    Checked with ``onnx.checker.check_model(full_check=True)`` when it fits in one protobuf message (under
    2 GB); bigger models are checked by :func:`export_onnx` once written with external data.

    ``dynamic_batch`` makes the batch axis symbolic; ``dynamic`` makes batch, height and width symbolic
    (fully convolutional nets; other layers are refused by name)."""
    built = _build(net, opset, dynamic_batch, weights, dynamic)
    model = built.proto()
    if built.payload < EXTERNAL_DATA_LIMIT:
        op.check_model(model.SerializeToString(), full_check=True)
    return model


def export_onnx(net: Any, output: str | os.PathLike, opset: int | None = None, dynamic_batch: bool = False,
                weights: Any = None, dynamic: bool = False) -> None:
    """Write the net (a runtime net, or a graph with ``weights``, see :func:`to_onnx_model`) as a checked ONNX
    model to ``output`` (atomically: nothing is written if anything fails). Over 2 GB of weights go to
    ``<output>.data`` as ONNX external data. ``dynamic_batch``/``dynamic``: see :func:`to_onnx_model`."""
    built = _build(net, opset, dynamic_batch, weights, dynamic)
    if built.payload < EXTERNAL_DATA_LIMIT:
        data = built.encode()
        op.check_model(data, full_check=True)  # the very bytes written
        write_bytes_atomic(output, data)
    else:
        _write_with_external_data(built.proto(), Path(output))


def _write_with_external_data(model: onnx.ModelProto, target: Path) -> None:
    """Stage model + ``<name>.data`` in a temporary folder next to ``target``, check the staged model (the checker
    reads external data only from files), then move both into place, each guarded as any output (never over an
    input) and following the umask. The data file is written here, not by ``onnx.save_model``, whose check for an
    existing data file looks in the working directory instead of the model's folder."""
    side = target.parent / f"{target.name}.data"
    if target.is_symlink() or side.is_symlink():  # readers look for the data beside the path they open, by name
        raise InputFileError(f"{'the output' if target.is_symlink() else side.name} is a symbolic link: a model with "
                             "external data is found beside the path it is opened by, so write it to a plain path",
                             Location(str(target)))
    target = output_target(target)
    location = f"{target.name}.data"
    data_target = output_target(target.parent / location)
    import onnx  # only for > 2 GB of weights
    from onnx.external_data_helper import set_external_data

    where = target
    try:
        with tempfile.TemporaryDirectory(prefix=".onnx.", dir=target.parent) as tmp:
            staged, staged_data = Path(tmp) / target.name, Path(tmp) / location
            where = data_target
            with open(staged_data, "wb") as f:
                for tensor in model.graph.initializer:
                    if tensor.HasField("raw_data") and len(tensor.raw_data) > 1024:
                        set_external_data(tensor, location, f.tell(), len(tensor.raw_data))
                        f.write(tensor.raw_data)
                        tensor.data_location = onnx.TensorProto.EXTERNAL
                        tensor.ClearField("raw_data")
            where = target
            onnx.save_model(model, staged)
            try:
                onnx.checker.check_model(staged, full_check=True)
            except onnx.checker.ValidationError as e:  # e.g. a data file name the checker reads as a parent path
                raise InputFileError(f"onnx's checker refuses the model written with external data "
                                     f"'{location}': {str(e).splitlines()[0]}", Location(str(target))) from None
            mode = 0o666 & ~current_umask()
            for path in (staged, staged_data):
                os.chmod(path, mode)
            replace_together([(staged_data, data_target), (staged, target)])  # an earlier pair stays whole
    except OSError as e:  # a full disk, a file-size limit, a folder in the way: one line naming the output
        raise InputFileError(f"cannot write the output: {e.strerror or e}", Location(str(where))) from None
