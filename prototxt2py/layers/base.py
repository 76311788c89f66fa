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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import Prototxt2pyError, ShapeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..ir import Node

Shape = tuple[int, ...]
MaybeShape = Shape | None


@dataclass(frozen=True)
class Call:
    """A module construction ``target(*args, **kwargs)`` of plain values only.

    ``target`` is ``"nn.<Class>"`` (a stock ``torch.nn`` module), the name of a helper class of
    :mod:`prototxt2py.nn`, or ``"package.module:Class"``: a plugin's helper class in the plugin's own installed
    module (imported when the runtime builds it; its source is copied into generated code, as built-in
    helpers are). ``num_outputs`` names the keyword (or positional index) holding the layer's output count,
    so generated code can expose it (``num_classes`` of a final classifier). ``build_on_meta``: the runtime
    builds the module on the meta device and gives it fresh storage (the helpers' rule: no tensor state
    beyond the blobs); False builds it on the CPU as it is (a caller's module with its own initialisation)."""

    target: str
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    num_outputs: str | int | None = None
    build_on_meta: bool = True

    def build(self) -> torch.nn.Module:
        from ..nn import resolve

        return resolve(self.target)(*self.args, **dict(self.kwargs))


def call(target: str, *args: Any, num_outputs: str | int | None = None, build_on_meta: bool = True,
         **kwargs: Any) -> Call:
    """:class:`Call` with keyword arguments in the order given (the order generated code shows)."""
    return Call(target, tuple(args), tuple(kwargs.items()), num_outputs, build_on_meta)


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


#: ``type`` string -> spec instance (built-ins, plugins registered so far; see :func:`get_spec`).
REGISTRY: dict[str, LayerSpec] = {}
#: ``python_param.module + "." + python_param.layer`` -> spec instance, for ``Python`` layers mapped by a
#: plugin (:attr:`LayerSpec.python_layer`); the model's own module is never imported.
PYTHON_REGISTRY: dict[str, LayerSpec] = {}


class RegistrationError(Prototxt2pyError):
    """A layer type (or alias, or Python layer name) registered twice without ``replace=True``."""


def register(cls: type[LayerSpec] | None = None, *, replace: bool = False) -> Any:
    """Class decorator: register a spec under its ``type`` and ``aliases`` (or, for a spec with
    :attr:`~LayerSpec.python_layer`, under that ``module.Layer`` name for ``Python`` layers).

    ``@register`` refuses a name that is already taken, naming both specs: two plugins silently fighting
    over a type would make results depend on import order. ``@register(replace=True)`` replaces on purpose
    (a plugin overriding a built-in spec)."""

    def apply(spec_cls: type[LayerSpec]) -> type[LayerSpec]:
        if not (isinstance(spec_cls, type) and issubclass(spec_cls, LayerSpec)):
            raise TypeError(f"@register takes a LayerSpec subclass, got {spec_cls!r}")
        if spec_cls.python_layer:
            table, names, what = PYTHON_REGISTRY, (spec_cls.python_layer,), "Python layer"
        else:
            if not spec_cls.type:
                raise RegistrationError(f"{_qualified(spec_cls)} has no 'type' to register under")
            table, names, what = REGISTRY, (spec_cls.type, *spec_cls.aliases), "layer type"
        if not replace:
            for name in names:
                old = table.get(name)
                if old is not None and type(old) is not spec_cls:
                    raise RegistrationError(
                        f"{what} '{name}' is already registered by {_qualified(type(old))}; "
                        f"{_qualified(spec_cls)} cannot register it again (use @register(replace=True) to "
                        "replace it on purpose)")
        inst = spec_cls()
        for name in names:
            table[name] = inst
        return spec_cls

    if cls is None:
        return apply
    return apply(cls)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: marker type -> {type or ``module.Layer``: spec}. Some forks changed a built-in type or a shared Python
#: layer without renaming it (HED's class-balanced ``SigmoidCrossEntropyLoss``, R-FCN's settings of
#: py-faster-rcnn's target layers); a net holding a layer of a type only that fork has (its marker: HED's
#: ``ImageLabelmapData``) was written for it, so its layers of the changed types get the fork's spec.
DIALECTS: dict[str, dict[str, LayerSpec]] = {}


def register_dialect(marker: str) -> Any:
    """Class decorator: the spec is its ``type``'s (a ``Python`` layer spec: its ``python_layer``'s) meaning in
    nets that hold a layer of type ``marker``. Where a net holds several markers, the one registered last
    wins (a fork's variant registers after its base)."""

    def apply(spec_cls: type[LayerSpec]) -> type[LayerSpec]:
        DIALECTS.setdefault(marker, {})[spec_cls.python_layer or spec_cls.type] = spec_cls()
        return spec_cls

    return apply


def dialect_specs(types: Iterable[str]) -> dict[str, LayerSpec]:
    """The fork specs that replace built-in ones in a net whose layers have these types, by type (``Python``
    layers: by ``module.Layer``)."""
    present = set(types)
    out: dict[str, LayerSpec] = {}
    for marker, specs in DIALECTS.items():
        if marker in present:
            out.update(specs)
    return out


def get_spec(type_name: str) -> LayerSpec | None:
    """The spec registered for ``type_name``. A miss loads the ``prototxt2py.layers`` entry points (once)
    before answering: installed plugins register their types as they load, and a plugin that fails to load
    is an error naming it (see :func:`prototxt2py.plugins.load_entry_points`)."""
    spec = REGISTRY.get(type_name)
    if spec is None:
        from ..plugins import load_entry_points

        if load_entry_points():
            spec = REGISTRY.get(type_name)
    return spec


def get_python_spec(name: str) -> LayerSpec | None:
    """The spec a plugin registered for the ``Python`` layer ``module.Layer`` (entry points loaded on a
    miss, as for :func:`get_spec`)."""
    spec = PYTHON_REGISTRY.get(name)
    if spec is None:
        from ..plugins import load_entry_points

        if load_entry_points():
            spec = PYTHON_REGISTRY.get(name)
    return spec


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
    #: For a spec of ``Python`` layers: the ``python_param`` ``module.layer`` it computes (registered in
    #: :data:`PYTHON_REGISTRY`, not under ``type``).
    python_layer: ClassVar[str] = ""
    #: LayerParameter field holding this type's parameters; ``None`` = derive from the descriptor.
    param_field: ClassVar[str | None] = None
    #: Allowed numbers of bottoms and tops (inclusive); ``None`` as max = unbounded.
    bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    tops: ClassVar[tuple[int, int | None]] = (1, 1)
    #: Loss layers get loss_weight 1 on their first top unless the prototxt says otherwise (Caffe's LossLayer).
    is_loss: ClassVar[bool] = False
    #: A loss's leading bottoms that are the net's predictions; the others are its targets (labels, or values a
    #: net computes from them), which ``deploy`` drops with the loss. Caffe's ``LossLayer`` takes predictions,
    #: then labels: 1 unless declared (ContrastiveLoss: its two feature vectors).
    prediction_bottoms: ClassVar[int] = 1
    #: A loss whose bottoms commute (EuclideanLoss: "the result is the same regardless of the order"): nets
    #: list the target first too, so ``deploy`` takes as prediction a bottom not computed from labels alone.
    commutative_bottoms: ClassVar[bool] = False
    #: For a loss: the layer type that computes its prediction in a deploy net (SoftmaxWithLoss: Softmax, sharing
    #: its ``softmax_param``); ``deploy`` replaces a main loss by it. ``None``: its predictions stay outputs.
    deploy_head: ClassVar[str | None] = None
    #: A training layer a deploy net goes around: ``(top, bottom)`` pairs whose top's readers read that bottom
    #: instead; the layer goes, with whatever reads its other tops (py-faster-rcnn's ProposalTargetLayer: the
    #: ROIs it samples for training are, at test time, the proposals themselves).
    deploy_bypass: ClassVar[tuple[tuple[int, int], ...]] = ()
    #: Layers that read data from files (Data, ImageData...): in a deployed net their tops become inputs.
    is_data: ClassVar[bool] = False
    #: Bottoms ``force_backward`` does not reach (Caffe's ``AllowForceBackward`` false: loss labels, recurrent
    #: ``cont`` flags); a ``propagate_down: false`` on any other bottom is overridden by ``force_backward``.
    force_backward_refused: ClassVar[frozenset[int]] = frozenset()
    #: What Caffe's ``Backward_cpu`` of this type reads, which pycaffe's layer-by-layer ``Net.backward`` follows:
    #: ``"blobs"``, the bottom/top blobs as they are when backward runs (after later in-place layers);
    #: ``"forward"``, private copies its forward saved (BatchNorm's normalised values, Dropout's mask, an
    #: unrolled net's state), so the forward's own autograd graph is replayed; ``"forward_input"``, a copy of
    #: the forward-time input beside the current top data (Swish).
    backward_reads: ClassVar[str] = "blobs"
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
    #: Whether ``to_onnx`` stays right when height/width are symbolic (``--dynamic``): it bakes no size that
    #: changes with them (stock ONNX ops whose output sizes follow their inputs), or computes such sizes with
    #: ONNX ops when ``ctx.dynamic_sizes`` is set. A layer whose blobs change with the input size is refused
    #: by the exporter, by name, unless its spec declares this.
    onnx_dynamic_sizes: ClassVar[bool] = False

    # -- parameters ------------------------------------------------------------------------------------
    def field_name(self) -> str | None:
        return self.param_field or param_field_for(self.type)

    def own_field(self, name: str) -> bool:
        """Whether ``name``, a layer-level field our schema lacks, is the parameter block this spec declares as
        its own (``param_field``) and reads from ``layer.unknown``: the reader then does not warn that it was
        dropped. Only a declared name counts, so a misspelt or misplaced block (``deconvolution_param``) is
        still reported."""
        return self.param_field is not None and name == self.param_field

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

    def adjust_blobs(self, node: Node, stored: Sequence[Any]) -> list[Any]:
        """For a layer with a fork's ``CustomCopyBlobs`` (FlowNet2's DataAugmentation, whose file holds a mean
        at the training crop's size): the blobs to load, float32 arrays in the net's shapes, made from the
        weights file's arrays for this layer. Raise ``ValueError`` to refuse them. Not overridden: Caffe's
        plain copy, which checks the count and every shape."""
        raise NotImplementedError

    def to_onnx(self, node: Node, ctx: Any) -> None:
        raise NotImplementedError

    def onnx_top_shapes(self, node: Node) -> Sequence[Sequence[int | str]] | None:
        """For a layer whose top shapes depend on the data (its shape inference raises :class:`Unknowable`)
        but whose ONNX mapping computes them anyway, e.g. SSD's DetectionOutput: each top's ONNX shape, a
        symbol (str) for every data-dependent axis. Such tops can only be net outputs. Default None: the
        export needs static shapes."""
        return None

    def plain_convolution(self, node: Node, in_shape: Shape) -> tuple | None:
        """``(stride, pad, dilation, group)`` if, on a bottom of ``in_shape``, this layer is exactly a
        ``torch.nn.functional.conv1d/2d/3d`` of that bottom (channels on axis 1) with its module's ``weight``
        and optional ``bias`` blobs: the runtime may then fuse it with what follows. Default: not one."""
        return None

    def unsupported_note(self, node: Node) -> str:
        """Why a backend cannot run this layer and what to do about it, appended to the error listing
        unsupported layers (default: nothing to add)."""
        return ""

    def diagram_label(self, attrs: Any) -> Sequence[str]:
        """Extra lines of the layer's node in diagrams (``draw``), under its name and ``(Type)``, from its
        plain attrs -- as Caffe's draw_net shows kernel, stride and pad. Default: none."""
        return ()

    def diagram_edge_label(self, attrs: Any) -> str:
        """Label of the edges from the layer to its tops in diagrams (Caffe's: ``num_output``). Default: none."""
        return ""

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


def unsupported_entry(node: Node) -> str:
    """A layer in a backend's "no implementation for" list, with its spec's note on how to get one."""
    note = node.spec.unsupported_note(node)
    return f"'{node.type}' (layer '{node.name}' at {node.location}" + (f"; {note})" if note else ")")


def canonical_axis(node: Node, spec: LayerSpec, axis: int, num_axes: int) -> int:
    """Caffe's ``Blob::CanonicalAxisIndex``: negative axes count from the end; out of range is an error."""
    if not -num_axes <= axis < max(num_axes, 1) and not (num_axes == 0 and axis in (0, -1)):
        raise spec.fail(node, f"axis {axis} out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


def legacy_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``num()/channels()/height()/width()``: axes 0..3, 1 where the blob has fewer axes (fork layers
    written against the 4-D API read shapes this way). More than 4 axes is a ValueError."""
    if len(shape) > 4:
        raise ValueError(f"a {len(shape)}-axis blob has no num/channels/height/width")
    return tuple(shape[i] if i < len(shape) else 1 for i in range(4))  # type: ignore[return-value]


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Product of ``shape[start:end]`` (Caffe's ``Blob::count``); 1 for an empty range."""
    return math.prod(shape[start:end])
