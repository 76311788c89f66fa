"""Weights I/O: ``.caffemodel`` <-> the PyTorch runtime, matched by layer name as Caffe does.

Speed and memory: a caffemodel is mostly packed float arrays. Decoding it with protobuf materialises every
float as a Python-visible repeated field (seconds for AlexNet's 61M values, and a second full copy). Instead
the file is memory-mapped and only the protobuf *framing* is walked (layer names, blob shapes, where each
packed array starts); each array is then read from the file straight into the memory of the parameter
tensor that will hold it (``os.preadv``, in chunks, on several threads), so loading costs less than one plain
read of the file and holds no extra copy. The runtime builds its modules with uninitialised blobs for this
(``CaffeNet.from_weights``): filling them first would be one more pass over the model.

Blob shapes come from ``shape`` or the legacy ``num/channels/height/width`` fields (V1 files); Caffe accepts
a legacy 4-D blob for a target whose shape, left-padded with 1s to 4 axes, is the same, and so do we.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from . import limits
from .errors import Location, Prototxt2pyError, WeightsError
from .fsutil import note_input

# Field numbers (caffe.proto): NetParameter.layer = 100 (V2), .layers = 2 (V1); LayerParameter name 1,
# blobs 7; V1LayerParameter name 4, blobs 6, V0 wrapper 1; V0LayerParameter name 1, blobs 50;
# BlobProto num..width 1-4, data 5, shape 7, double_data 8; BlobShape dim 1.
from .wire import _I32, _I64, _LEN, _VARINT, _Corrupt, _fields, _NonCanonical, _packed_varints, _signed32, _signed64

if TYPE_CHECKING:  # pragma: no cover - torch is imported where tensors are made (the reading part is torch-free)
    import torch


@dataclass
class BlobRef:
    """Where one blob's values are in the file, and its shape."""

    shape: tuple[int, ...]
    legacy: bool
    dtype: str  # "<f4" or "<f8"
    offset: int
    count: int


@dataclass
class Blob:
    """One stored blob: its array (float32) and whether its shape came from the legacy 4-D fields."""

    array: np.ndarray
    legacy: bool = False


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # net layers with blobs that the file lacks
    extra: list[str] = field(default_factory=list)  # file layers with blobs that the net lacks
    #: net layers with blobs named like an earlier layer: Caffe's CopyTrainedLayersFrom copies by name into the
    #: first layer of a name only, so these keep their fillers
    repeated: list[str] = field(default_factory=list)
    #: the tensors the file's values were written into (so a deferred build knows what still needs filling)
    written: list[torch.Tensor] = field(default_factory=list, repr=False)

    def warnings(self, missing: bool = True) -> list[str]:
        """One line per kind of mismatch; ``missing``: include the layers the file lacks (off for one of several
        files loaded in turn, whose gaps the others may fill)."""
        out = []
        if self.missing and missing:
            out.append("layers without weights in the file (left at their fillers): " + ", ".join(self.missing))
        if self.extra:
            out.append("layers in the weights file that the net does not have (ignored): " + ", ".join(self.extra))
        if self.repeated:
            out.append("layers named like an earlier layer, left at their fillers (Caffe copies weights into the "
                       "first layer of a name only; rename them): " + ", ".join(self.repeated))
        return out


def _blob_ref(buf, start: int, end: int) -> BlobRef:
    dims: list[int] = []
    legacy = [0, 0, 0, 0]
    has_legacy = has_shape = False
    runs: dict[str, tuple[int, int]] = {}
    for number, wire, value in _fields(buf, start, end):
        if number in (1, 2, 3, 4) and wire == _VARINT:
            legacy[number - 1] = _signed32(value)
            has_legacy = True
        elif number == 7 and wire == _LEN:
            has_shape = True
            for n2, w2, v2 in _fields(buf, *value):
                if n2 == 1 and w2 == _LEN:
                    if v2[1] - v2[0] > 10 * MAX_BLOB_AXES:
                        raise _Corrupt(f"a blob shape with more than {MAX_BLOB_AXES} axes")
                    dims += _packed_varints(buf, *v2)
                elif n2 == 1 and w2 == _VARINT:
                    dims.append(_signed64(v2))
                if len(dims) > MAX_BLOB_AXES:
                    raise _Corrupt(f"a blob shape with more than {MAX_BLOB_AXES} axes")
        elif number in (5, 8) and wire == _LEN:
            kind = "<f4" if number == 5 else "<f8"
            if kind in runs:  # two packed runs of one field, which protobuf concatenates
                raise _NonCanonical("a blob's values in several runs")
            runs[kind] = value
        elif (number == 5 and wire == _I32) or (number == 8 and wire == _I64):
            # unpacked floats/doubles (non-canonical, but legal): handled by the protobuf fallback, at once
            raise _NonCanonical("unpacked float data")
    # Blob::FromProto: the legacy 4-D fields, when any is set, win over ``shape``; ``double_data``, when it has
    # values, wins over ``data``
    if has_legacy:
        shape = tuple(legacy)
    elif has_shape:
        shape = tuple(dims)
    else:
        shape = None
    doubles = runs.get("<f8")
    if doubles is not None and doubles[1] > doubles[0]:
        data = ("<f8", doubles)
    else:
        data = ("<f4", runs["<f4"]) if "<f4" in runs else None
    if data is None:
        dtype, offset, count = "<f4", start, 0
    else:
        dtype, (a, b) = data
        size = 4 if dtype == "<f4" else 8
        if (b - a) % size:
            raise _Corrupt("packed array length is not a multiple of the element size")
        offset, count = a, (b - a) // size
    if shape is None:  # Caffe writes a 0-axis blob (e.g. a shared PReLU slope) with no shape fields at all
        shape = ()
    return BlobRef(tuple(int(d) for d in shape), has_legacy, dtype, offset, count)


#: Bounds of the framing walk (pure Python, per field): far beyond any real net, they keep a hostile file
#: of millions of tiny fields from taking minutes. Caffe allows at most 32 axes per blob (kMaxBlobAxes).
MAX_LAYERS = 1_000_000
MAX_FIELDS_PER_LAYER = 1_000_000
MAX_BLOB_AXES = 32


def _layer(buf, start: int, end: int, name_field: int, blobs_field: int) -> tuple[str, list[BlobRef]]:
    name, blobs = "", []
    for count, (number, wire, value) in enumerate(_fields(buf, start, end)):
        if count >= MAX_FIELDS_PER_LAYER:
            raise _Corrupt(f"a layer with more than {MAX_FIELDS_PER_LAYER:,} fields")
        if number == name_field and wire == _LEN:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == blobs_field and wire == _LEN:
            blobs.append(_blob_ref(buf, *value))
        elif number == 1 and wire == _LEN and name_field == 4:  # V0 layer nested in a V1 entry
            name, blobs = _layer(buf, *value, name_field=1, blobs_field=50)
    return name, blobs


class LayerRefs(dict):
    """Layer name -> the blobs of its last entry in the file (what ``CopyTrainedLayersFrom``, copying every entry
    in turn, leaves), and ``repeats``: the earlier entries of names the file holds more than once, which loading
    into a net checks too (Caffe stops at an entry that does not fit; a net without the layer ignores them all,
    and so does reading the file on its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats: dict[str, list[list[BlobRef]]] = {}

    def put(self, name: str, blobs: list[BlobRef]) -> None:
        if name in self:
            self.repeats.setdefault(name, []).append(self[name])
        self[name] = blobs


def check_repeats(stored: Mapping[str, Any], name: str, targets: Sequence[tuple[int, ...]],
                  loc: Location | None) -> None:
    """Refuse loading layer ``name`` (blobs of shapes ``targets``) from a file holding it more than once where an
    earlier entry does not fit (see :class:`LayerRefs`): its blob count or a shape (``Blob::ShapeEquals``, legacy
    4-D dims included)."""
    for entry in getattr(stored, "repeats", {}).get(name, ()):
        why = None
        if len(entry) != len(targets):
            why = f"{len(entry)} blobs where the net expects {len(targets)}"
        else:
            for i, (ref, target) in enumerate(zip(entry, targets, strict=True)):
                if not _fits(tuple(target), ref.shape, ref.legacy):
                    why = f"blob {i} of shape {_short_shape(ref.shape)} where the net expects {tuple(target)}"
                    break
        if why:
            raise WeightsError(f"the weights file holds this layer more than once, and an earlier entry has {why}: "
                               "Caffe copies each entry in turn and stops at that one", loc, layer=name)


class MixedVersions(ValueError):
    """V2 ``layer`` and V1 ``layers`` entries in one file: Caffe's ``UpgradeV1Net`` refuses to merge them."""

    MESSAGE = ("the file has both 'layer' (V2) and 'layers' (V1) entries, which Caffe refuses to upgrade "
               "(\"inconsistent NetParameter\")")


def scan_caffemodel(buf) -> LayerRefs:
    """Walk a binary NetParameter's framing: layer name -> blob references (every layer, blob-less ones too,
    whose count Caffe checks as well; the last layer of a name wins)."""
    out = LayerRefs()
    layers = 0
    kinds: set[int] = set()
    for number, wire, value in _fields(buf, 0, len(buf)):
        if wire != _LEN or number not in (2, 100):
            continue
        kinds.add(number)
        if len(kinds) == 2:
            raise MixedVersions()
        layers += 1
        if layers > MAX_LAYERS:
            raise _Corrupt(f"more than {MAX_LAYERS:,} layers")
        name, blobs = _layer(buf, *value, name_field=1 if number == 100 else 4,
                             blobs_field=7 if number == 100 else 6)
        out.put(name, blobs)  # CopyTrainedLayersFrom copies every source layer in turn: the last of a name wins
    if layers == 0:  # valid (Caffe copies nothing) if protobuf agrees it is a NetParameter at all
        raise _NonCanonical("no layers")
    return out


def _open_refs(path: str | os.PathLike) -> tuple[int, mmap.mmap | None, LayerRefs]:
    file = str(path)
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except FileNotFoundError:
        raise WeightsError("no such file", Location(file)) from None
    except OSError as e:
        raise WeightsError(f"cannot open: {e.strerror}", Location(file)) from None
    note_input(fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise WeightsError("not a regular file", Location(file))
    if info.st_size == 0:  # the serialisation of a NetParameter without layers: Caffe reads it as one
        os.close(fd)
        return -1, None, LayerRefs()
    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    try:
        _refuse_text(mm, file)
        try:
            refs = scan_caffemodel(mm)
        except _NonCanonical as e:
            refs = _protobuf_refs(mm, file, str(e))
        except _Corrupt as e:  # never handed to protobuf: a corrupt 1 GB file must not be copied and decoded
            raise WeightsError(f"not a valid .caffemodel (truncated or corrupt: {e})", Location(file)) from None
        except MixedVersions:
            raise WeightsError(MixedVersions.MESSAGE, Location(file)) from None
    except WeightsError:
        mm.close()
        os.close(fd)
        raise
    try:
        for name, blobs in refs.items():
            for i, b in enumerate(blobs):
                if any(d < 0 for d in b.shape):
                    raise WeightsError(f"blob {i} has a negative dimension in shape {_short_shape(b.shape)}",
                                       Location(file), layer=name)
                expected = math.prod(b.shape)
                if b.count != expected:
                    raise WeightsError(f"blob {i} declares shape {_short_shape(b.shape)} but holds {b.count} values",
                                       Location(file), layer=name)
                limits.check_shape(b.shape, f"blob {i}", layer=name, location=Location(file))
    except Prototxt2pyError:
        mm.close()
        os.close(fd)
        raise
    return fd, mm, refs


def _short_shape(shape: tuple[int, ...]) -> str:
    return str(shape) if len(shape) <= 8 else f"({', '.join(map(str, shape[:8]))}, ... {len(shape)} axes)"


def _refuse_text(buf, file: str) -> None:
    """A text file given as weights (a prototxt, a solver) gets its own message, not "corrupt". A binary
    NetParameter cannot pass: its layer field keys (0xa2 0x06 for V2, 0x12 for V1) are not text."""
    head = bytes(buf[:4096])
    if any(chr(b).isalpha() for b in head) and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        raise WeightsError("this is a text file (a prototxt?), not a binary .caffemodel", Location(file))


@dataclass
class _InlineRef(BlobRef):
    """A blob decoded by protobuf (fallback for non-canonical files): values held in memory."""

    values: np.ndarray | None = None


def as_float32(values: Any) -> np.ndarray:
    """Values (``double_data`` included) as the float blob Caffe fills with them: a double beyond float32's range
    becomes inf, as the C++ cast gives it, without numpy's two-line overflow warning on stderr."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32)


def _protobuf_refs(buf, file: str, why: str) -> LayerRefs:
    """Slow path for files the framing walk does not handle (unpacked arrays); real corruption is reported."""
    from .proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(bytes(buf))
    except Exception:
        raise WeightsError(f"not a valid .caffemodel (truncated or corrupt: {why})", Location(file)) from None
    if len(net.layer) and len(net.layers):
        raise WeightsError(MixedVersions.MESSAGE, Location(file))
    out = LayerRefs()
    for entries in (net.layer, net.layers):
        for layer in entries:
            name = layer.name if isinstance(layer.name, str) else layer.name.decode("utf-8", "replace")  # proto2
            refs = []
            for b in layer.blobs:  # Blob::FromProto's precedence, as in _blob_ref
                legacy = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
                shape = (b.num, b.channels, b.height, b.width) if legacy else tuple(b.shape.dim)
                values = as_float32(b.double_data if len(b.double_data) else b.data)
                refs.append(_InlineRef(tuple(int(d) for d in shape), legacy, "<f4", 0, values.size, values))
            out.put(name, refs)
    return out  # no layers at all is valid (Caffe copies nothing); load_weights says if the net needed some


_CHUNK = 8 << 20  # bytes per read: big blobs are split so that the threads share them
_PARALLEL_MIN = 32 << 20  # below this much data one thread is as fast


def _pread_exact(fd: int, offset: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise WeightsError("file ended while reading a blob (truncated?)")
        done += n


def _convert_into(fd: int, ref: BlobRef, flat: torch.Tensor) -> None:
    """The slow cases: values decoded by protobuf, ``double_data``, or a target that is not plain float32."""
    import torch

    if isinstance(ref, _InlineRef):
        values = ref.values.reshape(-1)
    else:
        size = 4 if ref.dtype == "<f4" else 8
        values = as_float32(np.frombuffer(os.pread(fd, ref.count * size, ref.offset), dtype=ref.dtype))
    flat.copy_(torch.from_numpy(values))


def _read_all(fd: int, plan: list[tuple[BlobRef, torch.Tensor]]) -> None:
    """Fill each target with its blob's values. Packed float32 arrays are read from the file straight into the
    tensors' memory, in chunks, by several threads when there is enough to read: ``preadv`` releases the GIL,
    so the copies and the first touches of fresh tensor memory (a page fault per 4 KiB) run on every core,
    which makes loading faster than a plain single-threaded read of the file."""
    import torch

    jobs: list[tuple[int, memoryview]] = []
    for ref, target in plan:
        flat = target.detach().view(-1)
        if isinstance(ref, _InlineRef) or ref.dtype != "<f4" or flat.dtype != torch.float32:
            _convert_into(fd, ref, flat)
            continue
        view = memoryview(flat.numpy()).cast("B")
        jobs += [(ref.offset + start, view[start:start + _CHUNK]) for start in range(0, len(view), _CHUNK)]
    workers = min(torch.get_num_threads(), len(jobs))
    if workers > 1 and sum(len(view) for _, view in jobs) >= _PARALLEL_MIN:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda job: _pread_exact(fd, *job), jobs))
    else:
        for offset, view in jobs:
            _pread_exact(fd, offset, view)
    # written behind torch's back: bump the version counters, which caches of derived values (the runtime's
    # folded BatchNorm) are keyed by
    torch.autograd.graph.increment_version([target for _, target in plan])


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[Blob]]:
    """Layer name -> its blobs as float32 arrays, for the layers that have any (for inspection; ``load_weights``
    avoids this copy)."""
    import torch

    fd, mm, refs = _open_refs(path)
    try:
        plan = [(ref, torch.empty(ref.shape, dtype=torch.float32)) for blobs in refs.values() for ref in blobs]
        _read_all(fd, plan)
        tensors = iter(plan)
        out = {name: [Blob(next(tensors)[1].numpy(), ref.legacy) for ref in blobs] for name, blobs in refs.items()}
        return {name: blobs for name, blobs in out.items() if blobs}
    finally:
        if mm is not None:
            mm.close()
            os.close(fd)


def _names(names: Iterable[str], limit: int = 5) -> str:
    """``'a', 'b', ... (12 layers)``: enough names to recognise a net, in one line."""
    names = list(names)
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f", ... ({len(names)} layers)" if len(names) > limit else "")


def adjusted_blobs(node: Any, arrays: list[np.ndarray], loc: Location | None) -> list[np.ndarray]:
    """A layer's blobs as its spec's ``adjust_blobs`` makes them from the file's arrays (a fork's
    ``CustomCopyBlobs``), the same number as the net's; a refusal is a ``WeightsError`` naming the layer."""
    try:
        out = node.spec.adjust_blobs(node, arrays)
    except ValueError as e:
        raise WeightsError(str(e), loc, layer=node.name) from None
    if len(out) != len(node.param_shapes):
        raise WeightsError(f"{len(out)} blobs adjusted from the weights file, the net expects "
                           f"{len(node.param_shapes)}", loc, layer=node.name)
    return out


def _fits(target: tuple[int, ...], shape: tuple[int, ...], legacy: bool) -> bool:
    if target == shape:
        return True
    if legacy and len(target) <= 4:
        return (1,) * (4 - len(target)) + target == shape
    return False


def filled_layers(graph: Any, hdf5: bool) -> set[str]:
    """The unique names of the layers a file fills where a name repeats: the first layer of a name from a
    binary file (``CopyTrainedLayersFrom`` looks each source layer up from the start), the last from HDF5
    (``CopyTrainedLayersFromHDF5`` uses ``layer_names_index_``, where a later layer replaced the earlier)."""
    chosen: dict[str, str] = {}
    for node, unique in zip(graph.nodes, graph.unique_names(), strict=True):
        if hdf5 or node.name not in chosen:
            chosen[node.name] = unique
    return set(chosen.values())


def check_blobless(node: Any, stored: Sequence[Any] | None, loc: Location | None) -> None:
    """A layer without parameters takes no blobs: ``CopyTrainedLayersFrom`` checks the count of every layer it
    matches by name, so stored blobs for a ReLU stop it ("Incompatible number of blobs")."""
    if stored:
        raise WeightsError(f"weights file has {len(stored)} blobs for this layer, the net expects 0 (a layer of "
                           "this name with parameters in another net?)", loc, layer=node.name)


def check_matches(report: LoadReport, stored: Mapping[str, Sequence[Any]], loc: Location | None) -> None:
    """The file-level checks after matching: a file without any blob, or none matching the net's layers."""
    holding = [name for name, blobs in stored.items() if blobs]
    if report.missing and not holding:
        raise WeightsError("the weights file holds no blobs (valid only for a net without parameters, which "
                           f"Caffe would leave to its fillers): the net needs {_names(report.missing)}", loc)
    if report.missing and not report.loaded:
        raise WeightsError("no layer of the weights file matches a layer of the net (weights of another "
                           f"net?): the file has {_names(holding)}, the net needs {_names(report.missing)}", loc)


def extra_layers(graph: Any, stored: Mapping[str, Sequence[Any]]) -> list[str]:
    """Layers of the file with blobs that the net lacks (Caffe logs "Ignoring source layer")."""
    known = {n.name for n in graph.nodes}
    return [name for name, blobs in stored.items() if blobs and name not in known]


def load_weights(net: Any, weights: Mapping[str, list[Blob]] | str | os.PathLike) -> LoadReport:
    """Copy stored blobs into a ``CaffeNet``'s layer modules, by layer name; counts and shapes are checked
    before anything is written (a mismatching file leaves the net unchanged)."""
    import torch

    from .hdf5_weights import is_hdf5, read_caffemodel_h5

    path = None if isinstance(weights, Mapping) else weights
    hdf5 = path is not None and is_hdf5(path)
    if hdf5:  # as Caffe's CopyTrainedLayersFrom, by content: .caffemodel.h5
        weights = read_caffemodel_h5(path, net.graph)
    if isinstance(weights, Mapping):
        refs = {k: [_InlineRef(tuple(b.array.shape), b.legacy, "<f4", 0, b.array.size, b.array) for b in v]
                for k, v in weights.items()}
        fd, mm, loc = -1, None, None if path is None else Location(str(path))
    else:
        fd, mm, refs = _open_refs(weights)
        loc = Location(str(weights))
    try:
        report = LoadReport()
        plan = []
        custom: list[tuple[Any, list[torch.Tensor], list[torch.Tensor]]] = []  # (node, its blobs, file's arrays)
        filled = filled_layers(net.graph, hdf5)
        for (node, module), unique in zip(net.node_layers(), net.graph.unique_names(), strict=True):
            names = getattr(module, "blob_names", ())
            if unique in filled:
                check_repeats(refs, node.name, [tuple(getattr(module, n).shape) for n in names], loc)
            if not names:
                check_blobless(node, refs.get(node.name) if unique in filled else None, loc)
                continue
            if unique not in filled:  # a repeated name: Caffe copies weights into one layer of a name only
                report.repeated.append(node.name)
                continue
            blobs = refs.get(node.name)
            if blobs is None:
                report.missing.append(node.name)
                continue
            if node.spec.overrides("adjust_blobs"):  # read now, adjusted and copied after the others
                staged = [(ref, torch.empty(ref.shape, dtype=torch.float32)) for ref in blobs]
                plan += staged
                custom.append((node, [getattr(module, n) for n in names], [t for _, t in staged]))
                report.loaded.append(node.name)
                continue
            if len(blobs) != len(names):
                raise WeightsError(f"weights file has {len(blobs)} blobs for this layer, the net expects "
                                   f"{len(names)}", loc, layer=node.name)
            for i, (name, ref) in enumerate(zip(names, blobs, strict=True)):
                target = getattr(module, name)
                if not _fits(tuple(target.shape), ref.shape, ref.legacy):
                    raise WeightsError(f"blob {i} ({name}) has shape {ref.shape} in the weights file, the net "
                                       f"expects {tuple(target.shape)}", loc, layer=node.name)
                plan.append((ref, target))
            report.loaded.append(node.name)
        check_matches(report, refs, loc)
        if fd >= 0:
            size = os.fstat(fd).st_size
            for ref, _ in plan:
                if ref.offset + ref.count * (4 if ref.dtype == "<f4" else 8) > size:
                    raise WeightsError("file is truncated", loc)
        with torch.no_grad():
            _read_all(fd, plan)
            staged = {id(t) for _, _, temps in custom for t in temps}
            report.written = [target for _, target in plan if id(target) not in staged]
            for node, targets, temps in custom:
                arrays = adjusted_blobs(node, [t.numpy() for t in temps], loc)
                for i, (target, array) in enumerate(zip(targets, arrays, strict=True)):
                    if tuple(array.shape) != tuple(target.shape):
                        raise WeightsError(f"blob {i} adjusted to shape {tuple(array.shape)}, the net expects "
                                           f"{tuple(target.shape)}", loc, layer=node.name)
                    target.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
                report.written += targets
        report.extra = extra_layers(net.graph, refs)
        return report
    finally:
        if mm is not None:
            mm.close()
            os.close(fd)


# -- writing -----------------------------------------------------------------------------------------------
def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, length: int) -> bytes:
    return _enc_varint((number << 3) | _LEN) + _enc_varint(length)


def _blob_parts(arr: np.ndarray) -> tuple[list, int]:
    """BlobProto wire parts (bytes and one array to stream) and their total length."""
    arr = np.asarray(arr, dtype="<f4", order="C")  # not ascontiguousarray, which makes a 0-axis blob 1-axis
    dims = b"".join(_enc_varint(int(d)) for d in arr.shape)
    # a 0-axis blob (PReLU/Normalize channel_shared) has no shape field, as Blob::ToProto writes it
    head = _len_field(7, len(dims) + len(_len_field(1, len(dims)))) + _len_field(1, len(dims)) + dims if arr.ndim \
        else b""
    data_head = _len_field(5, arr.nbytes)
    parts = [head, data_head, arr]
    return parts, len(head) + len(data_head) + arr.nbytes


def write_caffemodel(net: Any, f: IO[bytes]) -> None:
    """Write a runtime net as a V2 binary NetParameter with every layer (its definition and blobs), readable by
    Caffe/OpenCV. Arrays are streamed from the tensors' memory; nothing holds a second copy of the model."""
    from .blobstore import NetBlobs

    write_caffemodel_blobs(net.graph, NetBlobs(net), f)


def write_caffemodel_blobs(graph: Any, blobs: Any, f: IO[bytes]) -> None:
    """:func:`write_caffemodel` for an IR graph and a blob provider (``blobs.blobs(node)`` -> float32 arrays,
    see :mod:`.blobstore`): torch-free, each array streamed from wherever it lives (a mapped .caffemodel)."""
    from .proto import caffe_pb2

    name = graph.name.encode()
    if name:
        f.write(_len_field(1, len(name)) + name)
    for node in graph.nodes:
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(node.proto)
        del layer.blobs[:]
        head = layer.SerializeToString()
        parts = [_blob_parts(array) for array in blobs.blobs(node)]
        body = len(head) + sum(len(_len_field(7, size)) + size for _, size in parts)
        f.write(_len_field(100, body) + head)
        for blob, size in parts:
            f.write(_len_field(7, size))
            for part in blob:
                f.write(part if isinstance(part, bytes) else memoryview(part).cast("B"))
