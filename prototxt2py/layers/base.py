"""The layer-spec contract: everything prototxt2py knows about one Caffe layer type lives in one spec class.

A spec is a stateless singleton registered by Caffe type name. Backends never switch on layer types; they
ask the node's spec:

* ``attrs(layer)``          normalised attributes, Caffe defaults applied (default: the ``*_param`` message)
* ``infer_shapes``          output shapes from input shapes (Caffe's ``Reshape``)
* ``param_shapes``          shapes of the parameter blobs, in Caffe's blob order
* ``macs``                  multiply-accumulate count, for summaries
* ``module``                the torch module computing the layer exactly as Caffe does, as a :class:`Call` of
                            plain values (a ``torch.nn`` class or a helper from :mod:`prototxt2py.nn`); the
                            runtime builds it and the code generator writes it, so both run the same code
* ``fillers``               Caffe's filler of each parameter blob (used when no weights are loaded)
* ``to_onnx``               standard ONNX nodes for the layer (see ``backends/onnx_export.py``)
* ``plain_convolution``, ``per_channel_affine``, ``residual_add``, ``post_op``, ``plain_linear``
                            what the runtime's inference plan may fuse (see ``backends/fusion.py``); each
                            answers "no" unless the spec says otherwise, so a type it does not know runs as
                            its own module

A backend supports a layer iff the spec overrides the matching method, so ``prototxt2py layers`` is derived,
never hand-maintained. Plugins add types with :func:`register` (or the ``prototxt2py.layers`` entry point).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ShapeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..ir import Node

Shape = tuple[int, ...]
MaybeShape = Shape | None


@dataclass(frozen=True)
class Call:
    """A module construction ``target(*args, **kwargs)`` of plain values only.

    ``target`` is ``"nn.<Class>"`` (a stock ``torch.nn`` module) or the name of a helper class of
    :mod:`prototxt2py.nn`. ``num_outputs`` names the keyword (or positional index) holding the layer's output
    count, so generated code can expose it (``num_classes`` of a final classifier)."""

    target: str
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    num_outputs: str | int | None = None

    def build(self) -> torch.nn.Module:
        from ..nn import resolve

        return resolve(self.target)(*self.args, **dict(self.kwargs))


def call(target: str, *args: Any, num_outputs: str | int | None = None, **kwargs: Any) -> Call:
    """:class:`Call` with keyword arguments in the order given (the order generated code shows)."""
    return Call(target, tuple(args), tuple(kwargs.items()), num_outputs)

@dataclass(frozen=True)
class ChannelAffine:
    """How a layer computes ``y = x * multiplier + offset`` with one multiplier and one offset per channel
    (axis 1), read from its module at run time: what lets the inference plan fold it into a preceding
    convolution, or fold a run of such layers into one multiply-add. Either blobs (``multiplier``/``offset``:
    module attributes holding one value per channel, in any shape of ``C`` elements; ``None`` = 1 / 0) or a
    module ``method`` returning ``(multiplier, offset)`` (a form computed from statistics).

    The form must be differentiable wherever the layer's own forward pass is (the plan may run it under
    autograd). Plain strings and flags only: specs stay free of torch."""

    multiplier: str | None = None
    offset: str | None = None
    method: str | None = None
    #: A module method saying whether the affine form holds now (False e.g. while normalising with batch
    #: statistics: the chain then runs layer by layer); ``None`` = always.
    active: str | None = None
    #: Module attributes other than blobs the form depends on (``("eps",)``): cached folds are keyed by them.
    depends_on: tuple[str, ...] = ()
    #: Whether the layer alone is worth running as one multiply-add (its module does more work than that,
    #: e.g. subtract-then-divide); a layer without this joins a chain but never starts one by itself.
    alone: bool = False


#: The post-op kinds :meth:`LayerSpec.post_op` may declare, with their ``scalars``.
POST_OPS = {"relu": (), "leaky_relu": ("negative_slope",), "clamp": ("min", "max")}


@dataclass(frozen=True)
class PostOp:
    """An elementwise function a fused convolution may apply to its result, as ``kind`` and ``scalars`` (see
    :data:`POST_OPS`): ``relu`` is ``max(x, 0)``, ``leaky_relu`` ``x > 0 ? x : slope * x``, ``clamp``
    ``min(max(x, min), max)`` with ``min <= max``. Only exact functions belong here (no approximations): the
    fused result must equal the layer's up to the rounding of the convolution itself."""

    kind: str
    scalars: tuple[float, ...] = ()


class Unknowable(Exception):
    """Raised by a spec when a shape cannot be known statically (not an error in the net), e.g. a data
    layer reading images of unknown size, or a ``Python`` layer whose code is never run. ``shapes`` may give
    the tops that are known anyway (None for the others), e.g. a data layer's ``(batch,)`` label."""

    def __init__(self, message: str, shapes: Sequence[Shape | None] | None = None):
        super().__init__(message)
        self.shapes = list(shapes) if shapes is not None else None


#: ``type`` string -> spec instance.
REGISTRY: dict[str, LayerSpec] = {}


def register(cls: type[LayerSpec]) -> type[LayerSpec]:
    """Class decorator: register a spec under its ``type`` (and ``aliases``). Later registrations win,
    so a plugin may replace a built-in spec."""
    inst = cls()
    for name in (cls.type, *cls.aliases):
        REGISTRY[name] = inst
    return cls


def get_spec(type_name: str) -> LayerSpec | None:
    return REGISTRY.get(type_name)


def _param_field_map() -> dict[str, str]:
    """``*Parameter`` message name (minus the suffix) -> LayerParameter field, from the descriptor
    (as Caffe's net_spec does), so "Convolution" -> "convolution_param" needs no hand table."""
    from ..proto import caffe_pb2

    out: dict[str, str] = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            msg_name = f.message_type.name
            if msg_name.endswith("Parameter"):
                out.setdefault(msg_name[: -len("Parameter")], f.name)
    return out


_PARAM_FIELDS: dict[str, str] | None = None


def param_field_for(type_name: str) -> str | None:
    global _PARAM_FIELDS
    if _PARAM_FIELDS is None:
        _PARAM_FIELDS = _param_field_map()
    return _PARAM_FIELDS.get(type_name)


class LayerSpec:
    """Base class of every layer spec. Subclasses set ``type`` and override what they support."""

    #: Caffe type string, as in ``layer { type: "..." }`` after upgrade.
    type: ClassVar[str] = ""
    #: Other type strings handled by the same spec (e.g. fork spellings).
    aliases: ClassVar[tuple[str, ...]] = ()
    #: LayerParameter field holding this type's parameters; ``None`` = derive from the descriptor.
    param_field: ClassVar[str | None] = None
    #: Allowed numbers of bottoms and tops (inclusive); ``None`` as max = unbounded.
    bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    tops: ClassVar[tuple[int, int | None]] = (1, 1)
    #: Loss layers get loss_weight 1 on their first top unless the prototxt says otherwise (Caffe's LossLayer).
    is_loss: ClassVar[bool] = False
    #: Layers that read data from files (Data, ImageData...): in a deployed net their tops become inputs.
    is_data: ClassVar[bool] = False
    #: Names of the parameter blobs in Caffe order, used as attribute names on torch modules and as
    #: state_dict keys (``<layer>.<blob name>``).
    blob_names: ClassVar[tuple[str, ...]] = ()
    #: One line for ``prototxt2py layers``.
    summary: ClassVar[str] = ""
    #: Which family/file the layer belongs to (for docs).
    family: ClassVar[str] = ""
    #: Whether the torch module computes the same values whatever the memory layout of its inputs (checked by
    #: tests/test_fusion.py): the runtime's inference plan then lets channels-last tensors flow through it
    #: instead of converting them back to NCHW first.
    layout_agnostic: ClassVar[bool] = False

    # -- parameters ------------------------------------------------------------------------------------
    def field_name(self) -> str | None:
        return self.param_field or param_field_for(self.type)

    def attrs(self, layer: Any) -> Any:
        """Normalised attributes as plain frozen values, read once from the ``LayerParameter``. Default: the
        layer's ``*_param`` message as a :func:`~prototxt2py.plain.plain` value (Caffe's defaults applied, enums
        as names). Specs with derived values (kernel h/w from ``kernel_size`` ...) return their own dataclass.
        Nothing after this step reads the protobuf message."""
        from ..plain import plain

        field = self.field_name()
        if not field:
            return None
        return plain(getattr(layer, field))

    # -- shapes ----------------------------------------------------------------------------------------
    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        """Output shapes. Default: every top has the shape of bottom 0 (elementwise layers)."""
        return [tuple(in_shapes[0])] * len(node.tops)

    def param_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        return []

    def macs(self, node: Node, in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]) -> int:
        return 0

    # -- backends --------------------------------------------------------------------------------------
    def module(self, node: Node) -> Call:
        """The torch module of this layer, as a :class:`Call` (see :mod:`prototxt2py.nn`)."""
        raise NotImplementedError

    def fillers(self, node: Node) -> Sequence[Any]:
        """Caffe's filler (:class:`~prototxt2py.plain.Filler` or ``None`` = constant 0) of each parameter
        blob, in blob order. Default: constant 0 for every blob."""
        return [None] * len(node.param_shapes)

    def node_blob_names(self, node: Node) -> tuple[str, ...]:
        """Attribute names of this layer's parameter blobs on its module, in Caffe's blob order. Default: the
        first ``len(param_shapes)`` of :attr:`blob_names` (optional blobs such as a bias come last)."""
        return tuple(self.blob_names[: len(node.param_shapes)])

    def to_onnx(self, node: Node, ctx: Any) -> None:
        raise NotImplementedError

    def plain_convolution(self, node: Node, in_shape: Shape) -> tuple | None:
        """``(stride, pad, dilation, group)`` if, on a bottom of ``in_shape``, this layer is exactly a
        ``torch.nn.functional.conv1d/2d/3d`` of that bottom (channels on axis 1) with its module's ``weight``
        and optional ``bias`` blobs: the runtime may then fuse it with what follows. Default: not one."""
        return None

    def per_channel_affine(self, node: Node) -> ChannelAffine | None:
        """How this one-bottom, one-top layer is a per-channel ``x * multiplier + offset`` (see
        :class:`ChannelAffine`), or None. The runtime folds such layers into a preceding plain convolution
        (and into each other). Default: not one."""
        return None

    def residual_add(self, node: Node) -> bool:
        """Whether this layer is exactly ``bottom0 + bottom1`` of two distinct same-shape bottoms (a residual
        connection): the runtime may then add it as a fused convolution's post-op. Default: no."""
        return False

    def post_op(self, node: Node) -> PostOp | None:
        """The elementwise function (:class:`PostOp`) this one-bottom, one-top layer is exactly, for a fused
        convolution to apply, or None. Default: none."""
        return None

    def plain_linear(self, node: Node) -> bool:
        """Whether this layer is exactly ``torch.nn.functional.linear(bottom.flatten(1), weight, bias)`` with
        its module's ``weight`` (``(N, K)``) and optional ``bias`` blobs, for inputs of any rank: the runtime
        may then run it on oneDNN's matmul. Default: no."""
        return False

    def is_input(self, node: Node) -> bool:
        """Whether the layer's tops are net inputs, fed by the caller (Input, and data layers, which read
        files this tool never opens)."""
        return self.type == "Input" or self.is_data

    # -- helpers for subclasses ------------------------------------------------------------------------
    def supports(self, backend: str, node: Node | None = None) -> bool:
        """Whether ``backend`` handles this type (or, given ``node``, that one layer): the spec overrides the
        backend's method."""
        if backend == "torch":
            return self.overrides("module")
        method = {"onnx": "to_onnx", "shape": "infer_shapes"}[backend]
        return self.overrides(method) or backend == "shape"

    def overrides(self, method: str) -> bool:
        """Whether this spec's class overrides ``method`` of :class:`LayerSpec`."""
        return getattr(type(self), method) is not getattr(LayerSpec, method)

    def fail(self, node: Node, message: str) -> ShapeError:
        """A ShapeError naming the layer and its source location."""
        return ShapeError(message, node.location, layer=node.name)


def canonical_axis(node: Node, spec: LayerSpec, axis: int, num_axes: int) -> int:
    """Caffe's ``Blob::CanonicalAxisIndex``: negative axes count from the end; out of range is an error."""
    if not -num_axes <= axis < max(num_axes, 1) and not (num_axes == 0 and axis in (0, -1)):
        raise spec.fail(node, f"axis {axis} out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Product of ``shape[start:end]`` (Caffe's ``Blob::count``); 1 for an empty range."""
    return math.prod(shape[start:end])
