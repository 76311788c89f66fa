"""Bring legacy Caffe nets and solvers up to the current format, as Caffe itself does when it loads them.

Caffe silently upgrades old files on load (``UpgradeNetAsNeeded`` / ``UpgradeSolverAsNeeded``): V0 nets
(``layers { layer { type: "conv" } }``), V1 nets (``layers { type: CONVOLUTION }``), data-layer transformation
fields, net-level ``input``/``input_dim``/``input_shape`` and three-param-spec ``BatchNorm`` layers. Every
later stage of this package only understands the current (V2) ``layer`` format, so this module replays the
same passes, in the same order and with the same results, on protobuf messages.

Where Caffe only *logs* a problem and carries on, the problem is collected in :attr:`UpgradeReport.errors`
and the upgrade continues. Where Caffe aborts (``LOG(FATAL)`` / failed ``CHECK``), :class:`UpgradeError` is
raised instead, naming the file, line and layer when the text source is known. After an ``UpgradeError``
the message may be partly upgraded and should be discarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import Location, UpgradeError
from .proto import caffe_pb2
from .textformat import SourceInfo, is_repeated

STEP_V0_TO_V1 = "V0_to_V1"
STEP_DATA_TRANSFORM = "data_transform_param"
STEP_V1_TO_V2 = "V1_to_V2"
STEP_INPUT_LAYER = "input_fields_to_Input_layer"
STEP_BATCHNORM = "batchnorm_param_specs"
STEP_SOLVER_TYPE = "solver_type_enum_to_type"

# V0 layer type strings -> V1 LayerType enum names (Caffe's UpgradeV0LayerType). "padding" never gets here:
# padding layers are folded into their consumer first.
_V0_TYPES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# Where each V0 field goes in the V1 layer, per V0 layer type: {v0_type: (param_message, field)}. The key "*"
# means "whatever the type" (Caffe moves the transformation fields unconditionally). An empty target field
# means the whole V0 sub-message is copied into the param message. Order follows Caffe's, so logged
# problems come out in the same order.
_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA, _HDF5, _IMAGES, _WINDOW = "data_param", "hdf5_data_param", "image_data_param", "window_data_param"
_V0_ROUTES: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {
        "data": (_DATA, "source"),
        "hdf5_data": (_HDF5, "source"),
        "images": (_IMAGES, "source"),
        "window_data": (_WINDOW, "source"),
        "infogain_loss": ("infogain_loss_param", "source"),
    },
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": {
        "data": (_DATA, "batch_size"),
        "hdf5_data": (_HDF5, "batch_size"),
        "images": (_IMAGES, "batch_size"),
        "window_data": (_WINDOW, "batch_size"),
    },
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": (_DATA, "rand_skip"), "images": (_IMAGES, "rand_skip")},
    "shuffle_images": {"images": (_IMAGES, "shuffle")},
    "new_height": {"images": (_IMAGES, "new_height")},
    "new_width": {"images": (_IMAGES, "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": (_WINDOW, "fg_threshold")},
    "det_bg_threshold": {"window_data": (_WINDOW, "bg_threshold")},
    "det_fg_fraction": {"window_data": (_WINDOW, "fg_fraction")},
    "det_context_pad": {"window_data": (_WINDOW, "context_pad")},
    "det_crop_mode": {"window_data": (_WINDOW, "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}
# V0 fields handled outside the routing table.
_V0_DIRECT = ("name", "type", "blobs", "blobs_lr", "weight_decay")

# V1 LayerType enum names -> current type strings (Caffe's UpgradeV1LayerType).
_V1_TYPES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    "CROP": "Crop",  # fork value (CRF-RNN / FCN-era forks), the layer BVLC later added as "Crop"
}
# V1 fields handled explicitly; every other set message field is copied to the same-named LayerParameter field.
_V1_DIRECT = (
    "bottom",
    "top",
    "name",
    "include",
    "exclude",
    "type",
    "blobs",
    "param",
    "blob_share_mode",
    "blobs_lr",
    "weight_decay",
    "loss_weight",
    "layer",
)

# V1 data layer types whose own param message used to hold the transformation fields.
_DATA_TRANSFORM_PARAMS: dict[str, str] = {"DATA": _DATA, "IMAGE_DATA": _IMAGES, "WINDOW_DATA": _WINDOW}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# SolverParameter.SolverType enum names -> current ``type`` strings. NVCaffe's fork value SAG has no BVLC
# solver, so it is refused rather than guessed.
_SOLVER_TYPES: dict[str, str] = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}


@dataclass
class UpgradeReport:
    """What an upgrade did: the passes that ran (golden ``upgrade_steps`` names) and the problems it met.

    ``errors`` are the problems Caffe logs as errors but survives (its upgrade tools then exit with 1);
    ``warnings`` note things Caffe drops or changes silently.
    """

    steps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``unchanged``, ``upgraded`` or ``upgraded_with_errors``, as in the golden ``case.json`` files."""
        if not self.steps:
            return "unchanged"
        return "upgraded_with_errors" if self.errors else "upgraded"


@dataclass
class _Context:
    """Shared state of one net upgrade: where messages came from, and the report being filled."""

    file: str
    source: SourceInfo | None
    report: UpgradeReport
    # For each current V1 ``layers`` entry, its index in the file as parsed (V0 padding layers vanish).
    origin: list[int] | None = None

    def location(self, path: tuple) -> Location:
        """Location of a sub-message in the original text, or just the file when unknown (binary input)."""
        if self.source is None:
            return Location(self.file)
        loc = self.source.locations.get(tuple(path))
        return loc if loc is not None else Location(self.source.file or self.file)

    def v1_location(self, index: int) -> Location:
        """Location of the ``layers`` entry now at ``index``, mapped back through the V0 padding fold."""
        original = self.origin[index] if self.origin is not None and index < len(self.origin) else index
        return self.location(("layers", original))

    def error(self, message: str, location: Location | None = None, layer: str | None = None) -> None:
        self.report.errors.append(str(UpgradeError(message, location or Location(self.file), layer)))

    def warn(self, message: str, location: Location | None = None, layer: str | None = None) -> None:
        self.report.warnings.append(str(UpgradeError(message, location or Location(self.file), layer)))


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def net_needs_upgrade(net: Message) -> bool:
    """True if Caffe would change anything in ``net`` when loading it (``NetNeedsUpgrade``)."""
    return (
        _needs_v0_upgrade(net)
        or _needs_v1_upgrade(net)
        or _needs_data_upgrade(net)
        or _needs_input_upgrade(net)
        or _needs_batchnorm_upgrade(net)
    )


def upgrade_net(net: Message, file: str = "<string>", source: SourceInfo | None = None) -> UpgradeReport:
    """Upgrade a ``NetParameter`` (text or binary) in place to the current format, as Caffe does on load.

    Runs Caffe's passes in Caffe's order, each only when needed. ``source`` (from
    :func:`prototxt2py.textformat.parse`) lets errors point at the offending layer's line and column.
    Raises :class:`UpgradeError` for files Caffe refuses; problems Caffe merely logs end up in the report.
    """
    ctx = _Context(file, source, UpgradeReport())
    if _needs_v0_upgrade(net):
        ctx.report.steps.append(STEP_V0_TO_V1)
        _upgrade_v0_net(net, ctx)
    if _needs_data_upgrade(net):
        ctx.report.steps.append(STEP_DATA_TRANSFORM)
        _upgrade_data_transform(net)
    if _needs_v1_upgrade(net):
        ctx.report.steps.append(STEP_V1_TO_V2)
        _upgrade_v1_net(net, ctx)
    if _needs_input_upgrade(net):
        ctx.report.steps.append(STEP_INPUT_LAYER)
        _upgrade_input_fields(net, ctx)
    if _needs_batchnorm_upgrade(net):
        ctx.report.steps.append(STEP_BATCHNORM)
        _upgrade_batchnorm(net)
    return ctx.report


def solver_needs_upgrade(solver: Message) -> bool:
    """True if the solver still uses the ``solver_type`` enum (Caffe's ``SolverNeedsTypeUpgrade``)."""
    return solver.HasField("solver_type")


def upgrade_solver(solver: Message, file: str = "<string>") -> UpgradeReport:
    """Replace the legacy ``solver_type`` enum by the ``type`` string, as Caffe's ``UpgradeSolverAsNeeded``.

    Caffe aborts when both fields are set, since it cannot tell which one the author meant; so do we.
    """
    report = UpgradeReport()
    if not solver_needs_upgrade(solver):
        return report
    report.steps.append(STEP_SOLVER_TYPE)
    enum_name = solver.DESCRIPTOR.fields_by_name["solver_type"].enum_type.values_by_number[solver.solver_type].name
    if solver.HasField("type"):
        raise UpgradeError(
            f"solver sets both the legacy 'solver_type: {enum_name}' and 'type: \"{solver.type}\"'; "
            "Caffe refuses such files - keep only 'type'",
            Location(file),
        )
    type_name = _SOLVER_TYPES.get(enum_name)
    if type_name is None:
        raise UpgradeError(f"solver_type {enum_name} has no known 'type' string", Location(file))
    solver.type = type_name
    solver.ClearField("solver_type")
    return report


# --------------------------------------------------------------------------------------------------------
# Which passes are needed (Caffe's NetNeeds* predicates)
# --------------------------------------------------------------------------------------------------------


def _needs_v0_upgrade(net: Message) -> bool:
    """A V0 net wraps each layer's settings in a nested ``layer { }`` inside ``layers { }``."""
    return any(entry.HasField("layer") for entry in net.layers)


def _needs_v1_upgrade(net: Message) -> bool:
    """Any V1 ``layers`` entry at all means the net is not in the current format."""
    return len(net.layers) > 0


def _needs_data_upgrade(net: Message) -> bool:
    """V1 data layers that still keep scale/mean_file/crop_size/mirror in their own param message."""
    for layer in net.layers:
        param_name = _DATA_TRANSFORM_PARAMS.get(_v1_type_name(layer))
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        if any(param.HasField(name) for name in _TRANSFORM_FIELDS):
            return True
    return False


def _needs_input_upgrade(net: Message) -> bool:
    """Net-level ``input`` fields are replaced by an ``Input`` layer."""
    return len(net.input) > 0


def _needs_batchnorm_upgrade(net: Message) -> bool:
    """Old BatchNorm definitions declared exactly three param specs to freeze the statistics blobs."""
    return any(_is_old_batchnorm(layer) for layer in net.layer)


def _is_old_batchnorm(layer: Message) -> bool:
    return layer.type == "BatchNorm" and len(layer.param) == 3


# --------------------------------------------------------------------------------------------------------
# V0 -> V1
# --------------------------------------------------------------------------------------------------------


def _upgrade_v0_net(net: Message, ctx: _Context) -> None:
    """Rebuild the net from its V0 part, the way Caffe's ``UpgradeV0Net`` does.

    Caffe keeps only the name, the V0 layers, ``input``, ``input_dim`` and ``force_backward``: everything
    else (V2 ``layer`` entries, ``input_shape``, ``state``, ...) is silently lost. We do the same, for identical
    results, but say so in the warnings. ``net`` is only replaced once the whole V0 part converted.
    """
    folds = _plan_v0_padding_folds(net, ctx)
    upgraded = caffe_pb2.NetParameter()
    if net.HasField("name"):
        upgraded.name = net.name
    origin: list[int] = []
    for index, entry in enumerate(net.layers):
        if entry.layer.type == "padding":
            continue
        origin.append(index)
        _v0_layer_to_v1(entry, upgraded.layers.add(), ctx, index, folds.get(index))
    upgraded.input.extend(net.input)
    upgraded.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        upgraded.force_backward = net.force_backward
    _warn_net_fields_lost(net, ctx)
    net.CopyFrom(upgraded)
    ctx.origin = origin


def _warn_net_fields_lost(net: Message, ctx: _Context) -> None:
    """Name the net-level fields the V0 rebuild drops, since Caffe drops them without a word."""
    kept = {"name", "layers", "input", "input_dim", "force_backward"}
    for fd, value in net.ListFields():
        if fd.name in kept:
            continue
        what = f"{len(value)} '{fd.name}' entries" if is_repeated(fd) else f"field '{fd.name}'"
        first = ctx.location((fd.name, 0)) if fd.name == "layer" else Location(ctx.file)
        ctx.warn(f"V0 upgrade drops {what} of the net, as Caffe does", first)


@dataclass
class _PaddingFold:
    """A consumer of a V0 padding layer: the pad it takes over and its rewired bottoms (index -> blob)."""

    pad: int
    bottoms: dict[int, str]


def _plan_v0_padding_folds(net: Message, ctx: _Context) -> dict[int, _PaddingFold]:
    """Find the consumers of V0 ``padding`` layers (by ``layers`` index) and what they take over.

    V0 had a separate padding layer in front of convolutions and poolings; V1 has a ``pad`` field. The
    consumer takes over the padding layer's ``pad`` and its input. Caffe aborts on anything else feeding
    from a padding layer, on blobs that no earlier layer produced, and on multi-blob padding layers.
    """
    last_producer: dict[str, int] = {name: -1 for name in net.input}
    folds: dict[int, _PaddingFold] = {}
    for i, entry in enumerate(net.layers):
        for j, blob in enumerate(entry.bottom):
            if blob not in last_producer:
                raise UpgradeError(
                    f"bottom '{blob}' is not produced by any earlier layer nor a net input; "
                    "Caffe cannot upgrade this V0 net",
                    ctx.location(("layers", i)),
                    entry.layer.name or None,
                )
            producer = last_producer[blob]
            if producer >= 0 and net.layers[producer].layer.type == "padding":
                _check_padding_fold(net, i, producer, ctx)
                pad_entry = net.layers[producer]
                fold = folds.setdefault(i, _PaddingFold(0, {}))
                fold.pad = pad_entry.layer.pad
                fold.bottoms[j] = pad_entry.bottom[0]
        for blob in entry.top:
            last_producer[blob] = i
    return folds


def _check_padding_fold(net: Message, consumer: int, padding: int, ctx: _Context) -> None:
    """Refuse what Caffe refuses: padding feeding a non-conv/pool layer, or more than one blob in or out."""
    entry = net.layers[consumer]
    pad_entry = net.layers[padding]
    where = ctx.location(("layers", consumer))
    name = entry.layer.name or None
    pad_name = pad_entry.layer.name
    if entry.layer.type not in ("conv", "pool"):
        raise UpgradeError(
            f"V0 padding layer '{pad_name}' feeds layer type '{entry.layer.type}'; Caffe can only fold padding "
            "into a following 'conv' or 'pool' layer",
            where,
            name,
        )
    if len(entry.bottom) != 1:
        raise UpgradeError(
            f"takes padding layer '{pad_name}' as input but has {len(entry.bottom)} bottoms; Caffe needs exactly one",
            where,
            name,
        )
    if len(pad_entry.bottom) != 1 or len(pad_entry.top) != 1:
        raise UpgradeError(
            "V0 padding layer must have exactly one bottom and one top",
            ctx.location(("layers", padding)),
            pad_name or None,
        )


def _v0_layer_to_v1(entry: Message, out: Message, ctx: _Context, index: int, fold: _PaddingFold | None) -> None:
    """Convert one V0 ``layers`` entry to a V1 layer (Caffe's ``UpgradeV0LayerParameter``)."""
    bottoms = list(entry.bottom)
    if fold is not None:
        for j, blob in fold.bottoms.items():
            bottoms[j] = blob
    out.bottom.extend(bottoms)
    out.top.extend(entry.top)
    where = ctx.location(("layers", index))
    if not entry.HasField("layer"):
        ctx.warn("entry has no V0 'layer' block: only its bottoms and tops survive the V0 upgrade, as in Caffe", where)
        return
    v0 = entry.layer
    name = v0.name or None
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        enum_name = _V0_TYPES.get(v0.type)
        if enum_name is None:
            known = ", ".join(sorted([*_V0_TYPES, "padding"]))
            raise UpgradeError(f"unknown V0 layer type '{v0.type}' (known: {known})", where, name)
        out.type = caffe_pb2.V1LayerParameter.LayerType.Value(enum_name)
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    present = {fd.name: (fd, value) for fd, value in v0.ListFields()}
    if fold is not None:  # the folded padding layer's pad replaces the consumer's own
        present["pad"] = (v0.DESCRIPTOR.fields_by_name["pad"], fold.pad)
    _route_v0_fields(v0.type, present, out, ctx, where, name)


def _route_v0_fields(
    v0_type: str, present: dict, out: Message, ctx: _Context, where: Location, name: str | None
) -> None:
    """Move each V0 setting into the V1 param message its layer type uses; log those that fit none.

    ``present`` maps the set V0 field names to (descriptor, value).
    """
    for v0_field, routes in _V0_ROUTES.items():
        if v0_field not in present:
            continue
        target = routes.get("*") or routes.get(v0_type)
        if target is None:
            ctx.error(f"V0 field '{v0_field}' does not apply to layer type '{v0_type}'; dropped", where, name)
            continue
        param_name, target_field = target
        source_fd, value = present[v0_field]
        param = getattr(out, param_name)
        if not target_field:
            param.CopyFrom(value)
        elif not _assign(param, target_field, source_fd, value):
            ctx.error(f"V0 value {value!r} of '{v0_field}' has no equivalent; dropped", where, name)
    for v0_field in present:
        if v0_field not in _V0_ROUTES and v0_field not in _V0_DIRECT:
            ctx.warn(f"V0 field '{v0_field}' has no V1 equivalent and is dropped, as in Caffe", where, name)


def _assign(target: Message, target_field: str, source_fd: FieldDescriptor, value: object) -> bool:
    """Store a value taken from another message type: append to repeated fields, map enums by value name.

    Returns False when an enum value has no same-named counterpart in the target enum.
    """
    fd = target.DESCRIPTOR.fields_by_name[target_field]
    if fd.type == FieldDescriptor.TYPE_ENUM:
        value = _map_enum(source_fd, value, fd)
        if value is None:
            return False
    value = _c_integer(fd, value)
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(target, target_field).CopyFrom(value)
    elif is_repeated(fd):
        getattr(target, target_field).append(value)
    else:
        setattr(target, target_field, value)
    return True


_WRAPPED = {FieldDescriptor.CPPTYPE_UINT32: (0, 1 << 32), FieldDescriptor.CPPTYPE_INT32: (-(1 << 31), 1 << 32)}


def _c_integer(fd: FieldDescriptor, value: object) -> object:
    """An integer as C++'s implicit conversion stores it in a 32-bit field of the other signedness: V0's int32
    ``new_height: -1`` becomes ``ImageDataParameter``'s uint32 4294967295, as ``set_new_height`` does."""
    wrap = _WRAPPED.get(fd.cpp_type)
    if wrap is None or not isinstance(value, int) or isinstance(value, bool):
        return value
    low, size = wrap
    return (value - low) % size + low


def _map_enum(source_fd: FieldDescriptor, value: int, target_fd: FieldDescriptor) -> int | None:
    """Translate an enum value between two enum types that share value names (V0/V1 vs current enums)."""
    source_value = source_fd.enum_type.values_by_number.get(value)
    if source_value is None:
        return None
    mapped = target_fd.enum_type.values_by_name.get(source_value.name)
    return mapped.number if mapped is not None else None


# --------------------------------------------------------------------------------------------------------
# Data layer transformation fields -> transform_param
# --------------------------------------------------------------------------------------------------------


def _upgrade_data_transform(net: Message) -> None:
    """Move scale/mean_file/crop_size/mirror from V1 data layers' params into ``transform_param``.

    Like Caffe, every Data/ImageData/WindowData layer ends up with both its param and ``transform_param``
    present (possibly empty), which shows in the output as ``transform_param { }``.
    """
    for layer in net.layers:
        param_name = _DATA_TRANSFORM_PARAMS.get(_v1_type_name(layer))
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        param.SetInParent()
        layer.transform_param.SetInParent()
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


# --------------------------------------------------------------------------------------------------------
# V1 -> V2
# --------------------------------------------------------------------------------------------------------


def _upgrade_v1_net(net: Message, ctx: _Context) -> None:
    """Turn every V1 ``layers`` entry into a current ``layer`` (Caffe's ``UpgradeV1Net``).

    All refusals are checked before anything changes. Blobs move over unchanged; each V1 entry's blobs are
    released as soon as they are copied, so a large ``.caffemodel`` is not held twice.
    """
    _check_v1_net(net, ctx)
    for i, v1 in enumerate(net.layers):
        layer = net.layer.add()
        _v1_layer_to_v2(v1, layer, ctx, i)
        v1.ClearField("blobs")
    net.ClearField("layers")


def _check_v1_net(net: Message, ctx: _Context) -> None:
    """Refuse what Caffe refuses: a mix of ``layers`` and ``layer``, and V1 types with no current name."""
    if len(net.layer) > 0:
        v1_at = ctx.v1_location(0)
        v2_at = ctx.location(("layer", 0))
        raise UpgradeError(
            f"the net has both V1 'layers' entries and current 'layer' entries (first 'layer' at {v2_at}); "
            "Caffe refuses such mixed files - rewrite the 'layers { type: ENUM }' entries as "
            "'layer { type: \"String\" }'",
            v1_at,
        )
    for i, v1 in enumerate(net.layers):
        if v1.HasField("type") and _v1_type_name(v1) not in _V1_TYPES:
            raise UpgradeError(
                f"V1 layer type {_v1_type_name(v1)} has no current-format equivalent",
                ctx.v1_location(i),
                v1.name or None,
            )


def _v1_layer_to_v2(v1: Message, layer: Message, ctx: _Context, index: int) -> None:
    """Convert one V1 layer (Caffe's ``UpgradeV1LayerParameter``)."""
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = _V1_TYPES[_v1_type_name(v1)]
    layer.blobs.extend(v1.blobs)
    _v1_param_specs(v1, layer, ctx, index)
    layer.loss_weight.extend(v1.loss_weight)
    _copy_v1_params(v1, layer, ctx, index)
    if v1.HasField("layer"):
        ctx.error("V1 layer still holds a V0 'layer' block; ignored", ctx.v1_location(index), v1.name or None)


def _v1_param_specs(v1: Message, layer: Message, ctx: _Context, index: int) -> None:
    """Gather V1's parallel per-blob lists (names, share modes, lr, decay) into one ParamSpec per blob.

    A spec exists up to the longest list; values a shorter list lacks stay unset, as in Caffe.
    """
    count = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    specs = [layer.param.add() for _ in range(count)]
    for spec, name in zip(specs, v1.param, strict=False):
        spec.name = name
    mode_fd = v1.DESCRIPTOR.fields_by_name["blob_share_mode"]
    spec_mode_fd = caffe_pb2.ParamSpec.DESCRIPTOR.fields_by_name["share_mode"]
    for spec, mode in zip(specs, v1.blob_share_mode, strict=False):
        mapped = _map_enum(mode_fd, mode, spec_mode_fd)
        if mapped is None:
            raise UpgradeError(f"unknown blob_share_mode {mode}", ctx.v1_location(index), v1.name or None)
        spec.share_mode = mapped
    for spec, lr in zip(specs, v1.blobs_lr, strict=False):
        spec.lr_mult = lr
    for spec, decay in zip(specs, v1.weight_decay, strict=False):
        spec.decay_mult = decay


def _copy_v1_params(v1: Message, layer: Message, ctx: _Context, index: int) -> None:
    """Copy every ``*_param`` (and any other sub-message) to the same-named field of the current layer.

    Caffe lists the V1 param messages one by one; all of them exist in LayerParameter under the same name
    and type, so a by-name copy gives the same result and also carries fork fields that both messages share.
    """
    targets = layer.DESCRIPTOR.fields_by_name
    for fd, value in v1.ListFields():
        if fd.name in _V1_DIRECT:
            continue
        target = targets.get(fd.name)
        if target is not None and fd.message_type is not None and target.message_type is fd.message_type:
            getattr(layer, fd.name).CopyFrom(value)
        else:
            ctx.warn(
                f"V1 field '{fd.name}' has no current-format equivalent and is dropped",
                ctx.v1_location(index),
                v1.name or None,
            )


def _v1_type_name(v1: Message) -> str:
    """The V1 LayerType enum name of a layer (``NONE`` when unset)."""
    enum = v1.DESCRIPTOR.fields_by_name["type"].enum_type
    value = enum.values_by_number.get(v1.type)
    return value.name if value is not None else str(v1.type)


# --------------------------------------------------------------------------------------------------------
# Net-level inputs -> Input layer
# --------------------------------------------------------------------------------------------------------


def _upgrade_input_fields(net: Message, ctx: _Context) -> None:
    """Replace net-level ``input`` + ``input_shape``/``input_dim`` by one ``Input`` layer named "input", first.

    ``input_shape`` wins over ``input_dim`` (4 dims per input). Inputs with neither are simply dropped: Caffe
    treats them as the leftovers of an old ``.caffemodel``.
    """
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    if has_shape or has_dim:
        _check_input_dims(net, has_shape, ctx)
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
        net.layer.insert(0, layer)
    else:
        names = ", ".join(f"'{n}'" for n in net.input)
        ctx.warn(f"net-level input {names} has no input_dim/input_shape; dropped, as in Caffe")
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _check_input_dims(net: Message, has_shape: bool, ctx: _Context) -> None:
    """Caffe reads past the end of the lists when shapes are missing; refuse instead of guessing."""
    inputs = len(net.input)
    if has_shape and len(net.input_shape) < inputs:
        raise UpgradeError(
            f"{inputs} net-level inputs but only {len(net.input_shape)} input_shape entries", Location(ctx.file)
        )
    if not has_shape and len(net.input_dim) < 4 * inputs:
        raise UpgradeError(
            f"{inputs} net-level inputs need {4 * inputs} input_dim values, found {len(net.input_dim)}",
            Location(ctx.file),
        )


# --------------------------------------------------------------------------------------------------------
# BatchNorm param specs
# --------------------------------------------------------------------------------------------------------


def _upgrade_batchnorm(net: Message) -> None:
    """Zero lr_mult/decay_mult of old three-spec BatchNorm layers: their blobs are statistics, not weights."""
    for layer in net.layer:
        if _is_old_batchnorm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


