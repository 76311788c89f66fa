"""Derive a deploy net from a train_val net, as Caffe users do by hand: ``prototxt2py deploy``.

The transformation works on the upgraded ``NetParameter`` (protobuf level, before the IR, without torch):

1. **NetState**: keep the layers of the TEST phase as Caffe's ``Net(file, TEST, level, stages)`` does (the
   caller's level, 0 by default, replaces the net's own ``state { level }``; the caller's stages are added to
   the net's), then drop every ``include``/``exclude`` rule and write ``state { phase: TEST }``.
2. **Heads**: losses (types ending in ``Loss``, or any layer with a non-zero ``loss_weight``), ``Accuracy`` and
   other metric or sink layers are dropped. The *main* losses — those with the largest loss weight, so that
   GoogLeNet's 0.3-weighted auxiliary heads do not count — define the outputs. A main loss whose spec names a
   ``deploy_head`` becomes that layer over its scores (``SoftmaxWithLoss`` -> ``Softmax``,
   ``SigmoidCrossEntropyLoss`` -> ``Sigmoid``), named ``prob`` with top ``prob`` when there is one such head
   and the name is free, as in BVLC's deploy files, otherwise after the loss layer (a SoftmaxWithLoss's second
   top, the probabilities, keeps its name); where the net computes that head itself, acting alike (Caffe's
   ``imagenet_val.prototxt``: ``prob`` for Accuracy; py-faster-rcnn's ``rpn_cls_prob``), the loss is dropped
   and that layer stays (an output if nothing else reads it). The predictions of any other main loss stay
   outputs: its leading ``prediction_bottoms`` (bottom 0, as Caffe's ``LossLayer`` takes predictions then
   labels, also for types without a spec; two for ContrastiveLoss, three for SSD's MultiBoxLoss; for a loss
   whose bottoms commute, EuclideanLoss, one not computed from labels alone), unless read straight from a
   data layer.
   A training layer whose spec declares ``deploy_bypass`` (py-faster-rcnn's and R-FCN's proposal-target layer)
   is dropped too, its readers of a top reading the bottom named instead (the head pools the proposals, as the
   authors' test.prototxt does), so the ground truth it read is no input of the deploy net.
3. **Label-only branches**: a layer whose tops all feed dropped layers is dropped too (repeatedly, so
   auxiliary classifiers and targets computed from labels vanish whole), and so is a layer that reads a
   dropped layer's top. Layers whose tops feed nothing at all (and fed nothing before the heads were
   converted) are genuine outputs and stay. ``Silence`` keeps no blob alive and stays only if everything it
   silences does, unless every output of the net is silenced: then what the Silence layers read is what the
   net is for (the colorization deploy net ends in ``Silence(class8_ab)``, read from pycaffe) and stays. A net
   left with nothing to compute is an error.
4. **Inputs**: the data layers' surviving tops become one ``Input`` layer (named after its top when it has one,
   as in the shipped deploy files). Each shape is ``--input`` if given, else what the prototxt fixes: batch
   from ``batch_size``, height/width from ``crop_size`` (or ImageData's resize, or a readable mean file's size),
   channels from the ``mean_value`` count, a readable ``mean_file``, ImageData's ``is_color`` or (Data layers,
   whose encoded records obey them) ``force_color``/``force_gray``. Whatever only the data knows is an
   error naming the layer and the ``--input`` to give.

Training-only fields of kept layers (``param`` multipliers, fillers) are left as written: BVLC's own deploy
files disagree (GoogLeNet and LeNet keep both, CaffeNet drops both, AlexNet keeps ``param`` only), fillers are
what an unweighted net is initialised with here, and ``param { name }`` carries weight sharing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import GraphError, Location
from .netstate import TEST, TRAIN, State, layer_included
from .proto import caffe_pb2
from .reader import NetSource, read_net

#: Layers without bottoms whose tops are net inputs (Python layers without bottoms are added by rule).
DATA_TYPES = frozenset({
    "Input", "Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "DummyData", "AnnotatedData",
    "DenseImageData", "ImageLabelmapData", "VideoData",
})
#: Layers that only measure or store results: never part of an inference net.
METRIC_TYPES = frozenset({"Accuracy", "DetectionEvaluate", "HDF5Output"})
#: Data layers whose second top is a classification label of shape (batch,).
_LABEL_PER_ITEM = frozenset({"Data", "ImageData", "WindowData"})
_BATCH_PARAMS = ("data_param", "image_data_param", "window_data_param", "hdf5_data_param", "memory_data_param",
                 "annotated_data_param", "dense_image_data_param", "video_data_param")


@dataclass
class DeployResult:
    """The derived net, its layers' source locations (aligned with ``net.layer``), and notes for the user."""

    net: Any  # caffe_pb2.NetParameter
    locations: list[Location]
    notes: list[str]


def is_loss(layer: Any) -> bool:
    """Caffe gives a loss weight of 1 to top 0 of every ``*Loss`` layer; other layers are losses only when
    the prototxt gives them a non-zero ``loss_weight``."""
    return layer.type.endswith("Loss") or any(w != 0 for w in layer.loss_weight)


def loss_weight(layer: Any) -> float:
    """The layer's total loss weight (Caffe's defaults: 1 on top 0 of a ``*Loss`` layer, 0 elsewhere)."""
    if len(layer.loss_weight):
        return float(sum(layer.loss_weight))
    return 1.0 if layer.type.endswith("Loss") else 0.0


def is_data_layer(layer: Any) -> bool:
    return not len(layer.bottom) and (layer.type in DATA_TYPES or layer.type == "Python")


def derive_deploy(
    source: NetSource,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    stages: Iterable[str] = (),
    level: int = 0,
    check_inputs: bool = True,
    need_shapes: bool = True,
) -> DeployResult:
    """The deploy net of an upgraded train_val net (see the module docstring for the rules). With
    ``check_inputs``, an ``input_shapes`` entry that names no input of the deploy net is an error (``run``
    turns it off: it reports unused arrays of its own). Without ``need_shapes`` (diagrams), an input whose
    shape only the data knows is declared without one instead of raising."""
    net = source.net
    locs = list(source.locations) or [Location(source.file)] * len(net.layer)
    state = State.from_args("TEST", level, stages).merged_with_net(net)
    chosen = _select_layers(net, locs, state)
    layers, locations = [net.layer[i] for i in chosen], [locs[i] for i in chosen]
    shapes = {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()}
    notes: list[str] = []
    layers = _bypass(layers, notes)
    main = _main_loss_weight(layers)
    was_read = {(i, t) for i, tops in enumerate(_readers(layers)[0]) for t, readers in enumerate(tops) if readers}
    layers, outputs = _convert_heads(layers, main, notes)
    kept, live_tops = _prune(layers, main, was_read, outputs)
    if all(is_data_layer(layers[i]) for i in kept):  # every output silenced: what a Silence reads is what the
        # net is for (a script reads those blobs; the colorization deploy net ends in Silence(class8_ab))
        kept, live_tops = _prune(layers, main, was_read, outputs, silenced_live=True)
    if all(is_data_layer(layers[i]) for i in kept):
        raise GraphError("the deploy net would compute nothing: no layer of the TEST net leads to an output",
                         Location(source.file))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.ClearField("state")
    out.state.phase = TEST
    out_locs: list[Location] = []
    input_done = False
    used_names = {layers[i].name for i in kept if not is_data_layer(layers[i])}
    data_idx = [i for i in kept if is_data_layer(layers[i])]
    for i in kept:
        layer = layers[i]
        if is_data_layer(layer):
            if not input_done:
                out.layer.append(_input_layer([layers[j] for j in data_idx], [locations[j] for j in data_idx],
                                              [live_tops[j] for j in data_idx], shapes, source.file, used_names,
                                              need_shapes))
                out_locs.append(locations[i])
                input_done = True
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        new.ClearField("include")
        new.ClearField("exclude")
        out_locs.append(locations[i])
    unknown = sorted(set(shapes) - {t for lay in out.layer if lay.type == "Input" for t in lay.top})
    if unknown and check_inputs:
        raise GraphError(f"--input names {', '.join(unknown)}, which is not an input of the deploy net",
                         Location(source.file))
    return DeployResult(out, out_locs, notes)


def deploy_source(
    source: NetSource,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    stages: Iterable[str] = (),
    level: int = 0,
    check_inputs: bool = True,
    need_shapes: bool = True,
) -> NetSource:
    """A :class:`NetSource` holding the derived deploy net, for every command's ``--deploy``."""
    result = derive_deploy(source, input_shapes, stages, level, check_inputs, need_shapes)
    return NetSource(result.net, source.file, "V2", result.locations, [[] for _ in result.locations],
                     None, source.report)


def deploy_text(result: DeployResult) -> str:
    """The deploy net as prototxt text (Caffe's text format, readable by Caffe and by this package)."""
    from google.protobuf import text_format

    return text_format.MessageToString(result.net)


def deploy_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    stages: Iterable[str] = (),
    level: int = 0,
) -> DeployResult:
    """Read ``src``, derive its deploy net and write it to ``dst`` atomically."""
    from .fsutil import write_text_atomic

    result = derive_deploy(read_net(src), input_shapes, stages, level)
    write_text_atomic(dst, deploy_text(result))
    return result


def _select_layers(net: Any, locations: list[Location], state: State) -> list[int]:
    """Indices of the layers of the TEST net, plus what a deploy net needs from other phases: the losses when
    the TEST net has none (SqueezeNet puts its loss in TRAIN only; a loss the stage or level excludes, as a
    DIGITS net's ``exclude { stage: "deploy" }``, stays out), and a data layer for each blob that no TEST layer
    produces (a train.prototxt whose only data layer is TRAIN's). Caffe's NetState rules decide."""
    included = [i for i, (lay, loc) in enumerate(zip(net.layer, locations, strict=False))
                if layer_included(lay, state, loc)]
    chosen = set(included)
    if not any(is_loss(net.layer[i]) for i in included):
        train = replace(state, phase=TRAIN)
        chosen |= {i for i, (lay, loc) in enumerate(zip(net.layer, locations, strict=False))
                   if is_loss(lay) and layer_included(lay, train, loc)}
    produced: set[str] = set()
    for i in sorted(chosen):
        for b in net.layer[i].bottom:
            if b in produced:
                continue
            donor = next((j for j, lay in enumerate(net.layer) if is_data_layer(lay) and b in lay.top), None)
            if donor is not None and donor not in chosen:
                chosen.add(donor)
                produced.update(net.layer[donor].top)
        produced.update(net.layer[i].top)
    return sorted(chosen)


# -- heads ---------------------------------------------------------------------------------------------------
def _main_loss_weight(layers: list[Any]) -> float | None:
    """The largest loss weight of the net's losses (theirs are the main heads); ``None`` without losses."""
    weights = [loss_weight(lay) for lay in layers if is_loss(lay)]
    return max(weights) if weights else None


def _spec(layer_type: str) -> Any:
    from .layers import REGISTRY

    return REGISTRY.get(layer_type)


def _layer_spec(layer: Any) -> Any:
    """A layer's spec: by type, or a ``Python`` layer's by its ``module.Layer`` (None: no built-in spec)."""
    if layer.type == "Python":
        from .layers import PYTHON_REGISTRY, python_layer_name

        return PYTHON_REGISTRY.get(python_layer_name(layer))
    return _spec(layer.type)


def _bypass(layers: list[Any], notes: list[str]) -> list[Any]:
    """Go around the training layers whose spec declares ``deploy_bypass``: later readers of such a top read
    the named bottom instead (until a layer writes that name again). The layer itself stays, marked to be
    dropped (:func:`_is_dropped_kind`), so what reads its other tops goes with it."""
    renamed: dict[str, str] = {}
    out = []
    for layer in layers:
        if any(b in renamed for b in layer.bottom):
            new = caffe_pb2.LayerParameter()
            new.CopyFrom(layer)
            new.ClearField("bottom")
            new.bottom.extend(renamed.get(b, b) for b in layer.bottom)
            layer = new
        for top in layer.top:
            renamed.pop(top, None)
        pairs = getattr(_layer_spec(layer), "deploy_bypass", ())
        for t, b in pairs:
            if t < len(layer.top) and b < len(layer.bottom) and layer.top[t] != layer.bottom[b]:
                renamed[layer.top[t]] = layer.bottom[b]
                notes.append(f"{layer.type} '{layer.name}' dropped (training only): its readers of "
                             f"{layer.top[t]} read {layer.bottom[b]}")
        out.append(layer)
    return out


def _deploy_head(layer: Any) -> str | None:
    """The layer type a deploy net computes a loss's prediction with (its spec's ``deploy_head``), or None."""
    return getattr(_spec(layer.type), "deploy_head", None)


def _head_field(head: str) -> str | None:
    """The LayerParameter field of a head type's parameters (Softmax: ``softmax_param``), if it has one."""
    from .layers.base import param_field_for

    return param_field_for(head)


def _acts(layer: Any, field: str | None) -> dict[str, Any]:
    """A layer's parameters of a head's type as they act (unset fields at their defaults; the engine, which
    computes the same, left out), for comparing a loss's with a layer's."""
    if field is None:
        return {}
    param = getattr(layer, field)
    return {f.name: getattr(param, f.name) for f in param.DESCRIPTOR.fields if f.name != "engine"}


def _twin(layers: list[Any], loss: Any, head: str) -> Any:
    """The net's own layer of type ``head`` over a loss's scores, acting as the loss's own does (Caffe's
    ``imagenet_val.prototxt``: ``prob`` for its Accuracy beside the loss; py-faster-rcnn's ``rpn_cls_prob`` for
    its proposals; the autoencoder's Sigmoid ``decode1neuron``), or None."""
    field = _head_field(head)
    acts = _acts(loss, field)
    for layer in layers:
        if (layer.type == head and list(layer.bottom) == [loss.bottom[0]] and len(layer.top) == 1
                and _acts(layer, field) == acts):
            return layer
    return None


def _convert_heads(layers: list[Any], main: float | None, notes: list[str]) -> tuple[list[Any], set[str]]:
    """Replace each main loss whose spec names a ``deploy_head`` (SoftmaxWithLoss: Softmax) by that layer over
    its scores; other layers are left alone. Where the net computes the head itself (:func:`_twin`), the loss
    is dropped and that layer's top, returned, stays an output under its own name. One head is named ``prob``
    (BVLC's deploy files) when the name is free; several keep their losses' names."""
    heads = {id(lay): head for lay in layers
             if is_loss(lay) and loss_weight(lay) == main and (head := _deploy_head(lay)) is not None}
    twins = {id(lay): twin for lay in layers if id(lay) in heads
             and (twin := _twin(layers, lay, heads[id(lay)])) is not None}
    taken = {lay.name for lay in layers} | {b for lay in layers for b in (*lay.top, *lay.bottom)}
    single = len(heads) == 1 and "prob" not in taken  # (twins count: with one, another head is not 'prob')
    for key in twins:
        del heads[key]
    out = []
    converted: set[str] = set()
    names = {lay.name for lay in layers}  # layer names stay unique: Caffe copies weights by them
    for layer in layers:
        twin = twins.get(id(layer))
        if twin is not None:
            notes.append(f"{layer.type} '{layer.name}' dropped: the net's {twin.type} '{twin.name}' gives its "
                         f"prediction ({layer.bottom[0]} -> {twin.top[0]})")
        head = heads.get(id(layer))
        if head is not None:
            new = caffe_pb2.LayerParameter()
            new.type = head
            new.bottom.append(layer.bottom[0])
            # a loss may have no name (HED's) and no top (Caffe adds an automatic one): then the other, or the
            # head's type, names it; never a name another layer has (Caffe copies weights by layer name)
            own = (layer.top[0] if len(layer.top) else layer.name) or head.lower()
            new.name = "prob" if single else _unused(layer.name or own, names - {layer.name})  # (it replaces it)
            if len(layer.top) > 1:  # SoftmaxWithLoss's optional second top already names the probabilities
                top = layer.top[1]
            else:
                top = "prob" if single else own if len(layer.top) else _unused(own, taken)
            names.add(new.name)
            taken.add(top)
            new.top.append(top)
            field = _head_field(head)
            if field is not None and layer.HasField(field):
                getattr(new, field).CopyFrom(getattr(layer, field))
            notes.append(f"{layer.type} '{layer.name}' -> {head} '{new.name}' ({layer.bottom[0]} -> {top})")
            converted.add(top)
            layer = new
        out.append(layer)
    return out, converted | {twin.top[0] for twin in twins.values()}


def _unused(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... the first that no layer or blob has."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _is_dropped_kind(layer: Any) -> bool:
    return is_loss(layer) or layer.type in METRIC_TYPES or bool(getattr(_layer_spec(layer), "deploy_bypass", ()))


# -- pruning -------------------------------------------------------------------------------------------------
def _readers(layers: list[Any]) -> tuple[list[list[set[int]]], list[set[int]]]:
    """Who reads what: per layer and top, the layers reading it; per layer, the layers it reads from."""
    consumers: list[list[set[int]]] = [[set() for _ in lay.top] for lay in layers]
    producers: list[set[int]] = [set() for _ in layers]
    writer: dict[str, tuple[int, int]] = {}
    for j, layer in enumerate(layers):
        for b in layer.bottom:
            if b in writer:
                i, t = writer[b]
                consumers[i][t].add(j)
                producers[j].add(i)
        for t, top in enumerate(layer.top):
            writer[top] = (j, t)
    return consumers, producers


def _prune(layers: list[Any], main: float | None, was_read: set[tuple[int, int]], outputs: set[str],
           silenced_live: bool = False) -> tuple[list[int], dict[int, list[str]]]:
    """Indices of the layers to keep (in order) and, for data layers, their tops that are still read.
    ``was_read``: the (layer, top) pairs some layer read before the heads were converted (a label only the
    converted loss read is no output of the deploy net); ``outputs``: the heads' own tops that stay outputs;
    ``silenced_live``: blobs that only Silence layers read stay (with their Silence)."""
    n = len(layers)
    consumers, producers = _readers(layers)
    wanted = _wanted_tops(layers, main)
    wanted |= {(i, t) for i, lay in enumerate(layers) for t, top in enumerate(lay.top) if top in outputs
               and all(_is_dropped_kind(layers[j]) for j in consumers[i][t])}  # (a read head stays as it is)
    dropped = {i for i, lay in enumerate(layers) if _is_dropped_kind(lay)}
    silence = {i for i, lay in enumerate(layers) if lay.type == "Silence"}

    def top_live(i: int, t: int) -> bool:
        readers = consumers[i][t] - silence
        if (i, t) in wanted:
            return True
        if not readers:  # an output nobody reads, nor read before (not silenced, not the converted loss's label)
            if is_data_layer(layers[i]):
                return False
            return (not consumers[i][t] and (i, t) not in was_read) or (silenced_live and bool(consumers[i][t]))
        return bool(readers - dropped)

    changed = True
    while changed:
        changed = False
        for i in reversed(range(n)):
            if i in dropped or i in silence:
                continue
            dead_inputs = producers[i] & dropped
            if dead_inputs or (len(layers[i].top) and not any(top_live(i, t) for t in range(len(layers[i].top)))):
                dropped.add(i)
                changed = True
    for i in silence:  # a Silence stays only over blobs that stay
        if producers[i] & dropped or not all(top_live(j, t) for j in producers[i] for t, readers
                                             in enumerate(consumers[j]) if i in readers):
            dropped.add(i)
    kept = [i for i in range(n) if i not in dropped]
    live_tops = {
        i: [top for t, top in enumerate(layers[i].top) if top_live(i, t)] for i in kept if is_data_layer(layers[i])
    }
    return kept, live_tops


def _wanted_tops(layers: list[Any], main: float | None) -> set[tuple[int, int]]:
    """(layer, top) pairs that must stay outputs: the predictions the main losses left (those not turned into
    a head) read, their leading ``prediction_bottoms`` (SSD's MultiBoxLoss reads loc, conf and priors; a loss
    whose bottoms commute, EuclideanLoss, predicts whichever does not come from labels alone), not read
    straight from a data layer; or the predictions the metrics measure in a net without losses."""
    wanted: set[tuple[int, int]] = set()
    writer: dict[str, tuple[int, int]] = {}
    from_labels: set[str] = set()  # blobs computed from data layers' label tops alone (their top 1 and later)

    def _target(blob: str) -> bool:  # a data layer's top, or computed from labels alone
        return blob in from_labels or (blob in writer and is_data_layer(layers[writer[blob][0]]))
    for j, layer in enumerate(layers):
        head = is_loss(layer) and loss_weight(layer) == main
        if main is None:  # no loss in any phase: the predictions are what the metrics measure
            head = layer.type in METRIC_TYPES
        if head:
            count = _prediction_bottoms(layer.type) if main is not None else 1
            bottoms = list(layer.bottom)
            if getattr(_spec(layer.type), "commutative_bottoms", False) and _target(bottoms[0]) \
                    and not _target(bottoms[-1]):
                bottoms = bottoms[1:] + bottoms[:1]
            for b in bottoms[:count]:
                if b in writer and not is_data_layer(layers[writer[b][0]]):
                    wanted.add(writer[b])
        for t, top in enumerate(layer.top):
            writer[top] = (j, t)
            labels = t > 0 if is_data_layer(layer) else bool(layer.bottom) and all(b in from_labels
                                                                                  for b in layer.bottom)
            if labels:
                from_labels.add(top)
            else:
                from_labels.discard(top)
    return wanted


def _prediction_bottoms(layer_type: str) -> int:
    """How many leading bottoms of a loss of ``layer_type`` are predictions: its spec's ``prediction_bottoms``;
    1 for a type without a spec (Caffe's ``LossLayer``: predictions, then labels)."""
    return getattr(_spec(layer_type), "prediction_bottoms", 1)


# -- the Input layer -----------------------------------------------------------------------------------------
def _input_layer(
    data_layers: list[Any],
    locations: list[Location],
    tops: list[list[str]],
    shapes: dict[str, list[int]],
    file: str,
    used_names: set[str],
    need_shapes: bool = True,
) -> Any:
    """One ``Input`` layer for the surviving tops of every data layer."""
    layer = caffe_pb2.LayerParameter()
    layer.type = "Input"
    all_tops = [t for ts in tops for t in ts]
    layer.name = all_tops[0] if len(all_tops) == 1 and all_tops[0] not in used_names else data_layers[0].name
    for data, loc, names in zip(data_layers, locations, tops, strict=True):
        for top in names:
            layer.top.append(top)
            try:
                shape = shapes.get(top) or _derived_shape(data, list(data.top).index(top), loc, file)
            except GraphError:
                if need_shapes:
                    raise
                shape = []  # a diagram needs no shape: an empty one says "unknown"
            layer.input_param.shape.add().dim.extend(shape)
    return layer


def _derived_shape(layer: Any, index: int, location: Location, file: str) -> list[int]:
    """The shape the prototxt fixes for top ``index`` of a data layer, or an error asking for ``--input``."""
    top = layer.top[index]
    if layer.type == "Input":
        p = layer.input_param
        if not len(p.shape):
            raise GraphError(f"Input layer declares no shape for '{top}': give --input {top}=N,C,H,W", location,
                             layer=layer.name)
        return list(p.shape[index if len(p.shape) > 1 else 0].dim)
    if layer.type == "DummyData":
        return _dummy_shape(layer, index, location)
    batch = _batch_size(layer)
    if index > 0:
        if layer.type in _LABEL_PER_ITEM and batch:
            return [batch]
        if layer.type == "MemoryData" and batch:
            return [batch, 1, 1, 1]
        raise GraphError(f"shape of top '{top}' is only in the data: give --input {top}=...", location,
                         layer=layer.name)
    channels, height, width = _image_dims(layer, file)
    dims = [batch or None, channels, height, width]
    if None in dims:
        hint = ",".join(str(d) if d else "NCHW"[k] for k, d in enumerate(dims))
        what = [w for d, w in zip(dims, ("batch size", "channels", "height", "width"), strict=True) if d is None]
        raise GraphError(
            f"{layer.type} layer: {', '.join(what)} of '{top}' only known from the data "
            f"(no crop_size, mean_value, readable mean_file or is_color says it): give --input {top}={hint}",
            location, layer=layer.name)
    return dims  # type: ignore[return-value]


def _batch_size(layer: Any) -> int:
    for name in _BATCH_PARAMS:
        if name in layer.DESCRIPTOR.fields_by_name and layer.HasField(name):
            p = getattr(layer, name)
            if "batch_size" in p.DESCRIPTOR.fields_by_name and p.batch_size > 0:
                return int(p.batch_size)
    return 0


def _dummy_shape(layer: Any, index: int, location: Location) -> list[int]:
    p = layer.dummy_data_param
    if len(p.shape):
        return list(p.shape[index if len(p.shape) > 1 else 0].dim)
    fields = [p.num, p.channels, p.height, p.width]
    if all(len(f) for f in fields):
        k = index if len(p.num) > 1 else 0
        return [int(f[k]) for f in fields]
    raise GraphError("dummy_data_param declares no shape", location, layer=layer.name)


def _image_dims(layer: Any, file: str) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of a data layer's image top as far as the prototxt tells."""
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return p.channels or None, p.height or None, p.width or None
    tp = layer.transform_param if layer.HasField("transform_param") else caffe_pb2.TransformationParameter()
    channels = height = width = None
    if len(tp.mean_value) > 1:  # Caffe: one mean value for all channels, or exactly one per channel
        channels = len(tp.mean_value)
    if layer.type in ("ImageData", "ImageLabelmapData"):  # Transform(cv::Mat) never reads force_color/gray
        channels = channels or (3 if layer.image_data_param.is_color else 1)
    elif layer.type in ("Data", "AnnotatedData") and (tp.force_color or tp.force_gray):
        channels = 3 if tp.force_color else 1  # what an encoded Datum decodes to; a raw one keeps its own
    if layer.type == "ImageData" and layer.image_data_param.new_height > 0:
        height, width = layer.image_data_param.new_height, layer.image_data_param.new_width
    if tp.HasField("resize_param") and tp.resize_param.height > 0 and tp.resize_param.width > 0:
        height, width = tp.resize_param.height, tp.resize_param.width  # SSD's AnnotatedData
    if tp.crop_size > 0:
        height = width = tp.crop_size
    elif tp.crop_h > 0 and tp.crop_w > 0:
        height, width = tp.crop_h, tp.crop_w
    if tp.mean_file and (channels is None or height is None):
        mean = _mean_file_dims(tp.mean_file, file)
        if mean is not None:
            channels = channels or mean[0]
            if height is None:  # without a crop, Caffe requires the mean image to have the data's size
                height, width = mean[1], mean[2]
    return channels, height, width


def _mean_file_dims(mean_file: str, net_file: str) -> tuple[int, int, int] | None:
    """(channels, height, width) of a mean ``.binaryproto`` if it can be found: as given (relative to the
    working directory, as Caffe opens it), else relative to the net's folder and its parents (Caffe's
    examples name paths from the Caffe root). ``None`` when no readable file is found."""
    candidates = [Path(mean_file)]
    if not Path(mean_file).is_absolute():
        candidates += [parent / mean_file for parent in Path(net_file).resolve().parents]
    for path in candidates:
        if not path.is_file():
            continue
        blob = caffe_pb2.BlobProto()
        try:
            blob.ParseFromString(path.read_bytes())
        except Exception:  # protobuf's DecodeError varies across versions; an unreadable mean tells nothing
            continue
        dims = list(blob.shape.dim) if blob.HasField("shape") else [blob.num, blob.channels, blob.height, blob.width]
        if len(dims) == 4 and all(d > 0 for d in dims[1:]):
            return int(dims[1]), int(dims[2]), int(dims[3])
    return None
