"""The runtime's inference plan: chains of layers run as one fused step, where only float rounding changes.

In eval mode, when only the net's outputs are requested, :class:`~.torch_runtime.CaffeNet` walks a plan in
which chains found here replace their layers (``all_blobs=True`` and train mode walk every layer: the
reference path). A chain's inner blobs are read by the next member alone and are not net outputs, so nobody
can miss them. Every choice is a predicate the layer's spec declares (:class:`~..layers.base.LayerSpec`), so
a plugin's layer joins chains exactly as a built-in does, and this module knows no layer type by name:

* ``convolution [-> affine ...] [-> residual add] [-> post-op]``: a layer whose spec says it is a plain
  convolution of its bottom (``plain_convolution``), then any run of layers that are a per-channel
  ``x * multiplier + offset`` (``per_channel_affine``: a batch normalisation with stored statistics, a learned
  per-channel scale or bias), then the sum with one other blob (``residual_add``), then an exact elementwise
  function (``post_op``: rectifier, leaky rectifier, clamp). On CPU float32 outside ``torch.autocast``, with
  nothing needing gradients, and big enough to be worth it (``ONEDNN_MIN_MACS``), one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise``, the kernel ``torch.compile`` emits on CPU) with the weights
  packed into oneDNN's blocked layout (once per layout oneDNN picks for the input shapes seen), the affine
  layers folded into them, and the addition and the post-op applied as post-ops, in channels-last memory
  (oneDNN takes only the plain rectifier after an addition: other post-ops then run as their layer).
  Measured on a 2-core AVX-512 machine at batch 1: 1.2-5x faster per convolution than ``F.conv2d`` on NCHW
  tensors, which reorders its weights and activations on every call. Elsewhere (GPU, other dtypes,
  autocast, autograd, tracing, compiling) the fold still applies through ``F.conv*`` and the other members
  run as layers;
* ``affine [-> affine ...]`` with no convolution before it, led by a layer whose form is worth running on its
  own (``ChannelAffine.alone``, e.g. one that subtracts and divides): one ``addcmul``.

Forms that depend on the mode (a normalisation using batch statistics, ``ChannelAffine.active``) make their
chain run layer by layer. Folded and packed weights are cached, keyed by the version counters and addresses
of every blob they come from (and the attributes a form names in ``depends_on``), so loading or editing
weights invalidates them. The packed copy costs memory once the first eval-mode forward has run (about the
convolution weights' size again: ResNet-50 +94 MB, AlexNet +9 MB; ResNet-50 +101 MB after passes at batch 1
and 2-16, whose layouts differ for six of its convolutions);
:meth:`~.torch_runtime.CaffeNet.clear_fold_cache` frees it.

The inference plan drops each value after its last reader, and a chain whose addition reads a dying
convolution result writes into that tensor (``Step.release``, ``Step.overwrite``): activations are then
reused as in a hand-written module instead of allocated afresh on every pass. Results too big for the C
allocator to recycle (``KEEP_OUTPUT_BYTES``) are kept between passes and written again, unless anything else
still holds them (:meth:`FusionCache.take_output`). At batch 16, ResNet-50 took some 110,000 page faults per
pass with neither, none with both (its two 51 MB activations then stay allocated between passes).

Layers whose spec says they are a plain matmul of the flattened bottom (``plain_linear``) run on oneDNN's
matmul. Channels-last values flow on through layers whose spec says they compute the same on any memory
layout (``layout_agnostic``); any other layer, and the net's outputs, get contiguous NCHW tensors.
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import Graph, Node
from ..layers.base import ChannelAffine


class StepKind(enum.Enum):
    """What a plan step runs: a layer, an input layer, a fused chain, a plain matmul on oneDNN, or a layer
    whose inputs must first be made contiguous (they may be channels-last)."""

    LAYER = "layer"
    INPUT = "input"
    FUSED = "fused"
    LINEAR = "linear"
    DENSE = "dense"


LAYER, INPUT, FUSED, LINEAR, DENSE = StepKind.LAYER, StepKind.INPUT, StepKind.FUSED, StepKind.LINEAR, StepKind.DENSE


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a plan (shared with the runtime and the pycaffe layer): ``key`` is the module key of the
    layer it runs (of a fused chain: its first member), ``inputs``/``outputs`` the value ids it reads and
    writes, ``fusion`` the chain of a ``FUSED`` step."""

    kind: StepKind
    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fusion: Fusion | None = None
    #: values no later step reads, dropped once this step has run (inference plan only; see
    #: :func:`plan_inference`)
    release: tuple[str, ...] = ()
    #: a fused step with an addition that may write its result into the addition's other bottom: it reads
    #: that value last, and the value is a fresh convolution result that no other value aliases
    overwrite: bool = False
    #: inputs (by position) passed detached: the layer's ``propagate_down: false`` bottoms (never fused)
    detach: tuple[int, ...] = ()


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

#: oneDNN's unary post-op for each post-op kind a spec may declare (``PostOp.kind``; scalars as declared).
_UNARY = {"relu": "relu", "leaky_relu": "leaky_relu", "clamp": "hardtanh"}
#: The unary post-ops oneDNN's binary (addition) form takes; after an addition, others run as their layer.
_BINARY_UNARY = frozenset({"relu"})


def blobs_of(module: Any) -> list[Any]:
    """A layer module's Caffe blobs, in Caffe's order (``blob_names`` is set on every runtime module). Read
    from the module's parameter and buffer tables directly: ``nn.Module.__getattr__`` is an interpreted call per
    blob, and the inference plan reads every fused chain's blobs on each forward (to key its weight cache)."""
    params, buffers = module._parameters, module._buffers
    return [params[n] if n in params else buffers[n] if n in buffers else getattr(module, n)
            for n in module.blob_names]


def blob_stamp(blobs: Sequence[torch.Tensor]) -> list[Any]:
    """What changes when blobs are edited in place (version counters) or replaced (addresses): anything derived
    from them (a fold, a packing, a captured CUDA graph) is stale once this differs. Inference tensors have no
    version counter (a net moved inside ``torch.inference_mode()``); they cannot be edited outside it either."""
    try:
        stamp: list[Any] = [t._version for t in blobs]
    except RuntimeError:  # an inference tensor: no version counter
        stamp = [None if t.is_inference() else t._version for t in blobs]
    return stamp + [t.data_ptr() for t in blobs]


def chain_blobs(conv: nn.Module, affine: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The blobs a fused chain's weights come from: its convolution's, then its affine layers', in order."""
    blobs = blobs_of(conv)
    for module in affine:
        blobs += blobs_of(module)
    return blobs


def _onednn_op(name: str) -> Any:
    """A oneDNN op of this torch build, if it has it (private ops: any failure means "use the public path")."""
    try:
        return getattr(torch.ops.mkldnn, name) if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


ONEDNN_LINEAR = _onednn_op("_linear_pointwise")
ONEDNN_CONV = _onednn_op("_convolution_pointwise")
ONEDNN_PACK = _onednn_op("_reorder_convolution_weight")
#: ``other = unary(conv(X) + other)`` in place: a residual addition without a new activation buffer
ONEDNN_CONV_INTO = getattr(_onednn_op("_convolution_pointwise_"), "binary", None)

#: How many writable numpy views of parameters pycaffe has handed out (``net.params[...][0].data``). numpy
#: writes bump no version counter, so a fold or packing made before a view was handed out may be stale: each
#: cache forgets its entries when this changed since it last looked (:meth:`FusionCache.sync`).
_PARAM_VIEWS = [0]


def note_param_view() -> None:
    """A parameter's memory was handed out for writing outside torch (pycaffe's ``.data``)."""
    _PARAM_VIEWS[0] += 1


#: Chain results of at least this many bytes are kept between passes and written again (see
#: :meth:`FusionCache.take_output`). glibc serves blocks above 32 MiB (its largest mmap threshold) with fresh
#: pages from the OS and unmaps them on free: ResNet-50's 51 MB first activations at batch 16 cost 12 ms of page
#: faults each per pass, and 3 ms more to unmap, against 1 ms to zero a kept buffer.
KEEP_OUTPUT_BYTES = 32 << 20

#: How many input shapes a chain remembers its packed weight (or its first pass) for (:meth:`FusionCache.packed`);
#: past this many, it forgets them all and packs again.
PACKED_SHAPES = 64


def _holders(t: torch.Tensor) -> tuple[int, int]:
    """References to ``t`` and tensors sharing its memory (views), as counted from a caller holding it
    in one local variable (compare with :data:`_SOLE_HOLDER`, counted the same way)."""
    return sys.getrefcount(t), torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _sole_holder() -> tuple[int, int] | None:
    """What :func:`_holders` says of a tensor only its caller holds; None if this torch cannot tell (outputs
    are then never kept)."""
    try:
        probe = torch.empty(1)
        return _holders(probe)
    except (AttributeError, RuntimeError, TypeError):
        return None


_SOLE_HOLDER = _sole_holder()


@dataclass(frozen=True)
class Fusion:
    """A chain of layers run as one step. Members are module keys."""

    conv: str | None  # the plain convolution heading the chain, if any
    conv_args: tuple  # (stride, pad, dilation, group) of the convolution, () without one
    affine: tuple[str, ...]  # the per-channel affine members, in order
    forms: tuple[ChannelAffine, ...]  # and their forms
    #: the same forms as plain tuples, for :func:`apply_affine` (``torch.fx`` records plain tuples as constants;
    #: a dataclass argument would become a call in the traced graph)
    form_tuples: tuple[tuple, ...]
    residual: str | None  # the residual addition
    other: str | None  # value id of the addition's other bottom
    other_first: bool  # whether that other bottom is the addition's bottom 0
    post: str | None  # the post-op layer
    unary: str  # its oneDNN unary post-op ("none" without one)
    scalars: tuple[float, ...]  # and that post-op's scalars
    input: str  # value ids: the chain's input and output
    output: str
    steps: tuple[Step, ...]  # the reference plan steps it replaces
    #: (module key, attribute) of every attribute the affine forms name in ``depends_on``
    depends_on: tuple[tuple[str, str], ...] = ()

    @property
    def members(self) -> tuple[str, ...]:
        """Every member's module key, in order."""
        return tuple(step.key for step in self.steps)


def find_fusions(graph: Graph, node_keys: list[str], plan: Sequence[Step]) -> list[Fusion]:
    """Every chain (see the module docstring) whose inner blobs only the next member reads."""
    values = graph.values
    outputs = set(graph.outputs)
    keys = {id(n): k for n, k in zip(graph.nodes, node_keys, strict=True)}
    steps = {step.key: step for step in plan}
    fusions: list[Fusion] = []
    taken: set[int] = set()

    def one_to_one(node: Node) -> bool:  # (a layer that cuts a gradient off runs as itself)
        return len(node.inputs) == 1 and len(node.outputs) == 1 and not node.stop_gradient

    def sole_reader(vid: str) -> Node | None:  # the one layer reading ``vid`` if it is not an output either,
        readers = values[vid].consumers         # and in no chain yet
        if len(readers) != 1 or vid in outputs:
            return None
        reader = graph.nodes[readers[0]]
        return None if id(reader) in taken else reader

    def affine_form(node: Node | None) -> ChannelAffine | None:
        return node.spec.per_channel_affine(node) if node is not None and one_to_one(node) else None

    for node in graph.nodes:
        if id(node) in taken:
            continue
        conv_args = None
        shape = values[node.inputs[0]].shape if node.inputs else None
        if one_to_one(node) and shape is not None:
            conv_args = node.spec.plain_convolution(node, shape)
        members = [node]
        affine: list[tuple[Node, ChannelAffine]] = []
        if conv_args is None:
            form = affine_form(node)
            if form is None or not form.alone:  # (an affine layer a chain took is in ``taken``)
                continue
            affine.append((node, form))
        tail = node
        nxt = sole_reader(tail.outputs[0])
        while (form := affine_form(nxt)) is not None:
            affine.append((nxt, form))
            members.append(nxt)
            tail, nxt = nxt, sole_reader(nxt.outputs[0])
        residual = post = other = None
        other_first, unary, scalars = False, "none", ()
        if conv_args is not None:
            if nxt is not None and len(nxt.outputs) == 1 and not nxt.stop_gradient and nxt.spec.residual_add(nxt):
                other_first = nxt.inputs[1] == tail.outputs[0]
                other = nxt.inputs[0] if other_first else nxt.inputs[1]
                residual = nxt
                members.append(nxt)
                tail, nxt = nxt, sole_reader(nxt.outputs[0])
            op = nxt.spec.post_op(nxt) if nxt is not None and one_to_one(nxt) else None
            if op is not None and op.kind in _UNARY:
                unary, scalars = _UNARY[op.kind], tuple(float(v) for v in op.scalars)
                post = nxt
                members.append(nxt)
        taken.update(id(m) for m in members)
        fusions.append(Fusion(
            conv=keys[id(node)] if conv_args is not None else None, conv_args=conv_args or (),
            affine=tuple(keys[id(m)] for m, _ in affine), forms=tuple(f for _, f in affine),
            form_tuples=tuple(astuple(f) for _, f in affine),
            residual=keys[id(residual)] if residual is not None else None, other=other, other_first=other_first,
            post=keys[id(post)] if post is not None else None, unary=unary, scalars=scalars,
            input=members[0].inputs[0], output=members[-1].outputs[0],
            steps=tuple(steps[keys[id(m)]] for m in members),  # in plan order: each reads the one before
            depends_on=tuple((keys[id(m)], name) for m, f in affine for name in f.depends_on),
        ))
    return fusions


def plan_inference(graph: Graph, node_keys: list[str], plan: Sequence[Step], fusions: list[Fusion],
                   onednn: bool = True) -> tuple[Step, ...]:
    """The plan with each chain's steps replaced by one step, placed where its last member was (its inputs
    exist earlier, and nothing in between reads its inner blobs), plain matmuls marked for oneDNN, and
    layers that may receive channels-last values but are not known to handle them marked DENSE.

    ``onednn=False``: the plan for inputs oneDNN never takes (another device or dtype, autocast), which
    :func:`run_fusion` would send down its fallback on every step anyway. Only the chains that fold affine
    layers stay fused (the fold still saves their passes); the others run as their layers, without the
    per-step tests, and no value becomes channels-last. On a GPU at small batches, where the host's time per step
    bounds the speed, that is the plan a hand-written module would run."""
    if not onednn:
        fusions = [fusion for fusion in fusions if fusion.affine]
    replaced = {step.key: fusion for fusion in fusions for step in fusion.steps}
    last = {fusion.steps[-1].key for fusion in fusions}
    agnostic = {key for node, key in zip(graph.nodes, node_keys, strict=True) if node.spec.layout_agnostic}
    linear = {key for node, key in zip(graph.nodes, node_keys, strict=True)
              if node.spec.plain_linear(node) and not node.stop_gradient}
    channels_last: set[str] = set()  # values that may be channels-last
    out: list[Step] = []
    for step in plan:
        fusion = replaced.get(step.key)
        if fusion is not None:
            if step.key in last:
                out.append(Step(FUSED, fusion.steps[0].key, (fusion.input,), (fusion.output,), fusion))
                if onednn:
                    channels_last.add(fusion.output)
            continue
        if onednn and step.key in linear and ONEDNN_LINEAR is not None:
            out.append(replace(step, kind=LINEAR))
        elif step.kind is LAYER and channels_last.intersection(step.inputs):
            if step.key in agnostic:
                out.append(step)
                channels_last.update(step.outputs)
            else:
                out.append(replace(step, kind=DENSE))
        else:
            out.append(step)
    return _with_releases(out, set(graph.outputs))


def _with_releases(plan: list[Step], keep: set[str]) -> tuple[Step, ...]:
    """The plan with each value released after its last reader (net outputs kept). Holding every value to the
    end of the forward pass, as the reference plan must (``all_blobs``), makes each pass allocate all its
    activations afresh: ResNet-50 at batch 16 then takes some 110,000 page faults (430 MB of new pages) per
    pass, 20% of its time, and at batch 1 the memory never stays in cache. Released, a value's memory is
    reused by the next allocation of its size, as in a hand-written module, and peak memory drops too."""
    last: dict[str, int] = {}
    for i, step in enumerate(plan):
        reads = step.inputs
        if step.fusion is not None:  # a chain also reads its addition's other bottom, and falls back to its members
            reads = (*reads, *(v for member in step.fusion.steps for v in member.inputs))
        for vid in reads:
            last[vid] = i
    releases: dict[int, list[str]] = {}
    for vid, i in last.items():
        if vid not in keep:
            releases.setdefault(i, []).append(vid)
    # A chain's result may overwrite its addition's other bottom when that bottom dies here, was made by a
    # chain led by a convolution (a fresh tensor: never an input, a view or another value) and was read only
    # by such chains (which make no views of what they read).
    conv_made = {step.outputs[0] for step in plan if step.fusion is not None and step.fusion.conv is not None}
    foreign = {v for step in plan if step.fusion is None or step.fusion.conv is None for v in step.inputs}
    out = []
    for i, step in enumerate(plan):
        if releases.get(i):
            other = step.fusion.other if step.fusion is not None else None
            step = replace(step, release=tuple(releases[i]),
                           overwrite=other is not None and other in releases[i] and other in conv_made
                           and other not in foreign and other != step.fusion.input)
        out.append(step)
    return tuple(out)


class FusionCache:
    """The convolution weights, with a chain's affine layers folded in, and their oneDNN-packed form, per chain.

    An entry is keyed by the version counter and address of every blob it comes from (and the module
    attributes the affine forms name in ``depends_on``): torch's in-place ops (``copy_``, ``load_state_dict``,
    the caffemodel reader) bump a tensor's version, and a replaced tensor (``.data = ...``, ``.to()``) has
    another address. The entry keeps the old storages alive, so no new tensor can take over an address it is
    keyed by. Writes through ``.data`` bump no version: :meth:`clear` after those. Inference tensors (made
    under ``torch.inference_mode()``, e.g. by ``net.to(device)`` there) have no version counter at all: they
    are keyed by address only, so in-place writes to them (possible only inside inference mode) need
    :meth:`clear` too.

    It also keeps big convolution results between passes (:meth:`take_output`), and the input shapes of
    passes too small for oneDNN (:meth:`small_pass`).
    """

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        #: chain -> (its input's shape, its last result), for results of at least ``KEEP_OUTPUT_BYTES``
        self.outputs: dict[str, tuple[Sequence[int], torch.Tensor]] = {}
        #: chain -> ((input shape, size floor), whether oneDNN is worth it): :meth:`worth_onednn`
        self.sizes: dict[str, tuple[tuple, bool]] = {}
        #: oneDNN calls made so far (a pass that made none could have run the plain plan)
        self.onednn_calls = 0
        #: (input shapes, size floor) of passes without autograd that made no oneDNN call: :meth:`small_pass`
        self.small: dict[tuple, bool] = {}
        #: :meth:`clear` calls so far: what was derived from this cache (a captured CUDA graph reading its folds)
        #: is stale once this differs
        self.generation = 0
        #: :data:`_PARAM_VIEWS` when this cache last looked
        self.param_views = _PARAM_VIEWS[0]

    def sync(self) -> None:
        """Forget everything if pycaffe handed out parameter views since the last look (see
        :data:`_PARAM_VIEWS`); called before each pass that reads the cache."""
        if self.param_views != _PARAM_VIEWS[0]:
            self.clear()
            self.param_views = _PARAM_VIEWS[0]

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()
        self.outputs.clear()
        self.sizes.clear()
        self.small.clear()

    def small_pass(self, shapes: tuple) -> tuple | None:
        """For a pass on inputs of ``shapes`` (no autograd): None if an earlier pass on these shapes made no
        oneDNN call (every layer below the size floor, e.g. MTCNN's P-Net on a small pyramid level; the plain
        plan then computes the same without the per-step tests), else the key to :meth:`note_pass` under."""
        key = (shapes, ONEDNN_MIN_MACS)
        return None if self.small.get(key) else key

    def note_pass(self, key: tuple, calls_before: int) -> None:
        """Remember whether the pass under ``key`` made a oneDNN call. Another thread's calls in the meantime
        count too: the plain plan is then not chosen, which is merely slower."""
        if len(self.small) >= 64:  # e.g. a detector fed ever new image sizes
            self.small.clear()
        self.small[key] = self.onednn_calls == calls_before

    def worth_onednn(self, fusion: Fusion, x: torch.Tensor, conv: nn.Module) -> bool:
        """Whether chain ``fusion``'s 2-D convolution on ``x`` has ``ONEDNN_MIN_MACS`` multiply-adds or more,
        remembered for the last input shape (a pass asks for every chain; the answer changes only with the
        shape, and a stale one would still compute the same result)."""
        key = (x.shape, ONEDNN_MIN_MACS)
        known = self.sizes.get(fusion.conv)
        if known is None or known[0] != key:
            worth = (x.dim() == 4 and len(fusion.conv_args[0]) == 2
                     and conv_macs(x.shape, conv.weight.shape, fusion.conv_args) >= ONEDNN_MIN_MACS)
            known = (key, worth)
            self.sizes[fusion.conv] = known
        return known[1]

    def keep_output(self, key: str, shape: Sequence[int], y: torch.Tensor) -> None:
        """Keep chain ``key``'s result ``y`` (for an input of ``shape``) for the next pass, if it is big."""
        if _SOLE_HOLDER is not None and y.nbytes >= KEEP_OUTPUT_BYTES:
            self.outputs[key] = (shape, y)

    def take_output(self, key: str, shape: Sequence[int]) -> torch.Tensor | None:
        """Chain ``key``'s kept result for an input of ``shape``, to be written again, if nothing else holds
        it or a view of it now: not the pass that made it (values are dropped after their last reader), nor a
        caller, a forward hook or another thread's pass (which then allocates its own). Taken out of the
        table, so two passes never get the same tensor."""
        entry = self.outputs.pop(key, None)
        if entry is None:
            return None
        kept_shape, y = entry
        del entry
        if kept_shape != shape or _holders(y) != _SOLE_HOLDER or (y.is_inference()
                                                                  and not torch.is_inference_mode_enabled()):
            return None
        return y

    def _entry(self, fusion: Fusion, modules: Mapping[str, nn.Module], blobs: Sequence[torch.Tensor]
               ) -> dict[str, Any]:
        """``blobs``: the chain's blobs, as :func:`chain_blobs` reads them."""
        stamp = blob_stamp(blobs)
        if fusion.depends_on:
            stamp += [getattr(modules[k], name) for k, name in fusion.depends_on]
        entry = self.entries.get(fusion.conv)
        if entry is None or entry["stamp"] != stamp:
            entry = {"stamp": stamp, "keep": [t.untyped_storage() for t in blobs]}
            self.entries[fusion.conv] = entry
        return entry

    def folded(self, fusion: Fusion, modules: Mapping[str, nn.Module], blobs: Sequence[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution's weight and bias with the chain's affine layers folded in."""
        entry = self._entry(fusion, modules, blobs)
        if "weight" not in entry:
            entry["weight"], entry["bias"] = _fold(fusion, modules)
        return entry["weight"], entry["bias"]

    def packed(self, fusion: Fusion, modules: Mapping[str, nn.Module], blobs: Sequence[torch.Tensor],
               shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None, tuple]:
        """The (folded) weight in the oneDNN layout chosen for inputs of ``shape``, the bias, and the
        convolution's geometry as the oneDNN ops take it (``[pad], [stride], [dilation], group``).

        oneDNN picks the weight's blocking from the input shape and the thread count too (ResNet-50's
        256->1024 1x1 convolution on 2 threads: 64 output channels a block at batch 1, 48 at batch 2), and a
        weight packed for another blocking is reordered again on every call (ResNet-50 at batch 1 after a pass
        at batch 2: six reorders of 5-6 ms each, 84-99 ms a pass instead of 41-50). So a shape (and thread
        count) seen again gets a packing of its own; a packing equal in layout to one already kept is dropped
        for it, so memory grows by one copy per distinct layout (one or two), not per shape. A shape's first
        pass runs on the first packing made (correct in any layout): packing costs about as much as such a
        pass's reorders (ResNet-50: 50-90 ms), which a stream of ever new shapes would otherwise pay on every
        pass. A folded weight made only to be packed is not kept."""
        entry = self._entry(fusion, modules, blobs)
        by_shape = entry.setdefault("by_shape", {})
        key = (shape, torch.get_num_threads())  # the thread count sways the layout too
        packed = by_shape.get(key)
        if packed is None:
            seen = entry.setdefault("seen", set())
            if len(by_shape) >= PACKED_SHAPES or len(seen) >= PACKED_SHAPES:  # e.g. ever new image sizes
                by_shape.clear()
                seen.clear()
                entry["layouts"] = {}
            if entry.get("layouts") and key not in seen:
                seen.add(key)
                packed = next(iter(entry["layouts"].values()))
            else:
                packed = by_shape[key] = self._pack(entry, fusion, modules, shape)
        return packed, entry["packed_bias"], entry["geometry"]

    @staticmethod
    def _pack(entry: dict[str, Any], fusion: Fusion, modules: Mapping[str, nn.Module], shape: tuple[int, ...]
              ) -> torch.Tensor:
        """The chain's weight packed for inputs of ``shape``, or the kept packing of the same layout."""
        layouts = entry.setdefault("layouts", {})
        if None in layouts:  # this torch cannot tell layouts apart: the first packing serves every shape
            return layouts[None]
        weight, bias = (entry["weight"], entry["bias"]) if "weight" in entry else _fold(fusion, modules)
        stride, pad, dilation, group = fusion.conv_args
        geometry = (list(pad), list(stride), list(dilation), group)
        with torch.inference_mode(False), torch.no_grad():
            packed = ONEDNN_PACK(weight.contiguous(), *geometry, list(shape))
            entry["packed_bias"] = None if bias is None else bias.detach().contiguous()
        entry["geometry"] = geometry
        return layouts.setdefault(_packed_layout(packed), packed)


def _packed_layout(packed: torch.Tensor) -> bytes | None:
    """oneDNN's serialized memory descriptor of a packed weight (its blocked layout), or None if this torch
    has no op for it (a private op: any failure means "cannot tell")."""
    try:
        return torch.ops.mkldnn._get_mkldnn_serialized_md(packed).numpy().tobytes()
    except (AttributeError, RuntimeError, TypeError):
        return None


def _fold(fusion: Fusion, modules: Mapping[str, nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The convolution's weight and bias with the chain's affine layers folded in, as normal tensors (usable
    outside ``inference_mode`` later) that autograd does not track."""
    conv = modules[fusion.conv]
    weight, bias = conv.weight, getattr(conv, "bias", None)
    if not fusion.affine:
        return weight, bias
    with torch.inference_mode(False), torch.no_grad():
        multiplier, offset = chain_affine(tuple(modules[k] for k in fusion.affine), fusion.forms)
        if multiplier is not None:
            weight = weight * multiplier.reshape((-1,) + (1,) * (weight.dim() - 1))
        if bias is None:
            bias = offset
        elif multiplier is None:
            bias = bias if offset is None else bias + offset
        else:
            bias = bias * multiplier if offset is None else torch.addcmul(offset, bias, multiplier)
    return weight, bias


def member_affine(module: nn.Module, form: ChannelAffine) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One affine layer's per-channel ``(multiplier, offset)`` as 1-D tensors (None: 1, 0), read as its
    spec's form says."""
    if form.method is not None:
        multiplier, offset = getattr(module, form.method)()
        return multiplier.reshape(-1), offset.reshape(-1)
    multiplier = getattr(module, form.multiplier).reshape(-1) if form.multiplier is not None else None
    offset = getattr(module, form.offset).reshape(-1) if form.offset is not None else None
    return multiplier, offset


def chain_affine(modules: Sequence[nn.Module], forms: Sequence[ChannelAffine]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-channel ``(multiplier, offset)`` of affine layers applied in order (None: 1, 0). Differentiable
    with respect to the blobs the forms are (statistics-based forms decide that themselves)."""
    multiplier = offset = None
    for module, form in zip(modules, forms, strict=True):
        m, o = member_affine(module, form)
        if m is not None:
            offset = None if offset is None else offset * m
            multiplier = m if multiplier is None else multiplier * m
        if o is not None:
            offset = o if offset is None else offset + o
    return multiplier, offset


def affine_active(modules: Sequence[nn.Module], forms: Sequence[ChannelAffine]) -> bool:
    """Whether every affine layer's form holds now (e.g. no normalisation with batch statistics)."""
    for module, form in zip(modules, forms, strict=True):
        if form.active is not None and not getattr(module, form.active)():
            return False
    return True


def call_layer(module: nn.Module, *bottoms: torch.Tensor) -> Any:
    """Run one layer. A module-level function so that ``torch.fx`` records it as one opaque call."""
    return module(*bottoms)


def apply_affine(x: torch.Tensor, modules: tuple[nn.Module, ...], form_tuples: tuple[tuple, ...]) -> torch.Tensor:
    """Affine layers on ``x`` as one multiply-add when every form (given as :attr:`Fusion.form_tuples`)
    holds, else the layers as they are. Decided at call time, so an ``fx``-traced graph stays right in train
    mode."""
    forms = [ChannelAffine(*t) for t in form_tuples]
    if not affine_active(modules, forms):
        for module in modules:
            x = call_layer(module, x)
        return x
    multiplier, offset = chain_affine(modules, forms)
    shape = (-1,) + (1,) * (x.dim() - 2)
    if multiplier is None:
        return x if offset is None else x + offset.reshape(shape)
    if offset is None:
        return x * multiplier.reshape(shape)
    return torch.addcmul(offset.reshape(shape), x, multiplier.reshape(shape))


torch.fx.wrap("call_layer")
torch.fx.wrap("apply_affine")


def _symbolic(x: Any) -> bool:
    return isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling()


def _wants_grad(tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def onednn_allowed(x: torch.Tensor) -> bool:
    """Whether a oneDNN op may run on ``x`` instead of the layer's own torch ops: eagerly (not traced or
    compiled), on the CPU, and outside ``torch.autocast``, which has no rule for these private ops (they would
    silently compute in float32 where the user asked for bfloat16 or float16). The cheapest tests come first
    (a step runs this on every pass; ``x.device.type`` alone would cost more than all of them)."""
    return (not isinstance(x, torch.fx.Proxy) and x.is_cpu and x.dtype is torch.float32
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu"))


#: Below about this many multiply-adds (output positions times weight size) a layer is faster through
#: ``F.conv2d``/``F.linear``: oneDNN's fused call costs some 15-40 us more per call, and its channels-last result
#: slows the small layers after it. On a 2-core AVX-512 machine a 3->28 channel 3x3 convolution at 22x22 (0.4 M
#: multiply-adds) takes 43 us in oneDNN and 30 us in ``F.conv2d``; in MTCNN's 24x24 R-Net the 28->48 3x3
#: convolution (1.0 M at its 9x9 output, 1.5 M by an estimate that ignored the border) took 94 us through oneDNN
#: and 46 us as its layer.
ONEDNN_MIN_MACS = 1 << 20


def conv_macs(x_shape: Sequence[int], weight_shape: Sequence[int], conv_args: tuple) -> int:
    """Multiply-adds of a 2-D convolution (``conv_args``: a chain's stride, pad, dilation, group) on an input of
    ``x_shape``: output positions times the weight's size."""
    stride, pad, dilation, _ = conv_args
    n, _, height, width = x_shape
    out_h = (height + 2 * pad[0] - dilation[0] * (weight_shape[2] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * pad[1] - dilation[1] * (weight_shape[3] - 1) - 1) // stride[1] + 1
    return n * max(out_h, 0) * max(out_w, 0) * math.prod(weight_shape)


def run_fusion(fusion: Fusion, modules: Mapping[str, nn.Module], cache: FusionCache, env: dict[str, Any],
               execute: Callable[[tuple, dict[str, Any]], dict[str, Any]], overwrite: bool = False
               ) -> torch.Tensor:
    """One fused step: oneDNN where it applies, else the affine fold and the other members as layers, else
    (a form that does not hold now, e.g. batch statistics) the members one by one through ``execute``.
    ``overwrite``: the step's :attr:`Step.overwrite`. Runs on every pass for every chain, so the tests that
    decide most often (size, device) come before reading the blobs."""
    x = env[fusion.input]
    affine = tuple(modules[k] for k in fusion.affine) if fusion.affine else ()
    if affine and not affine_active(affine, fusion.forms):
        return execute(fusion.steps, env)[fusion.output]
    if fusion.conv is None:
        return apply_affine(x, affine, fusion.form_tuples)
    conv = modules[fusion.conv]
    other = env[fusion.other] if fusion.other is not None else None
    blobs = None
    if (ONEDNN_CONV is not None and ONEDNN_PACK is not None and onednn_allowed(x)
            and cache.worth_onednn(fusion, x, conv) and (other is None or other.dtype is torch.float32)):
        blobs = chain_blobs(conv, affine)
        if all(t.dtype is torch.float32 for t in blobs) and not _wants_grad([x, other, *blobs]):
            return _onednn_conv(fusion, modules, cache, blobs, x, other, overwrite)
    if not affine:
        y = call_layer(conv, x.contiguous())
    else:
        blobs = blobs or chain_blobs(conv, affine)
        if _symbolic(x) or _wants_grad(blobs):
            y = apply_affine(call_layer(conv, x.contiguous()), affine, fusion.form_tuples)  # from live parameters
        else:
            weight, bias = cache.folded(fusion, modules, blobs)
            stride, pad, dilation, group = fusion.conv_args
            y = _CONV[len(stride)](x.contiguous(), weight, bias, stride, pad, dilation, group)
    if fusion.residual is not None:
        pair = (other.contiguous(), y) if fusion.other_first else (y, other.contiguous())
        y = call_layer(modules[fusion.residual], *pair)
    if fusion.post is not None:
        y = call_layer(modules[fusion.post], y)
    return y


def _onednn_conv(fusion: Fusion, modules: Mapping[str, nn.Module], cache: FusionCache,
                 blobs: Sequence[torch.Tensor], x: torch.Tensor, other: torch.Tensor | None,
                 overwrite: bool) -> torch.Tensor:
    """The chain as one oneDNN call; with ``overwrite`` (:attr:`Step.overwrite`) the result is written into
    the addition's other bottom (or into its channels-last copy, if it had to be made one). A chain without an
    addition writes into its result kept from the last pass, if there is one (:meth:`FusionCache.take_output`),
    as the addition ``0 + conv(X)``."""
    shape = x.shape
    cache.onednn_calls += 1
    weight, bias, geometry = cache.packed(fusion, modules, blobs, tuple(shape))
    unary, scalars = fusion.unary, list(fusion.scalars)
    x = x.contiguous(memory_format=torch.channels_last)
    if unary != "none" and unary not in _BINARY_UNARY:  # the addition forms cannot apply it
        if other is None:
            return ONEDNN_CONV(x, weight, bias, *geometry, unary, scalars, "")
        y = ONEDNN_CONV.binary(x, other.contiguous(memory_format=torch.channels_last), weight, bias, *geometry,
                               "add", None, None, [], "")
        return call_layer(modules[fusion.post], y)
    post = None if unary == "none" else unary  # the addition forms take no unary post-op as None
    if other is None:
        if ONEDNN_CONV_INTO is None:
            return ONEDNN_CONV(x, weight, bias, *geometry, unary, scalars, "")
        kept = cache.take_output(fusion.conv, shape)
        if kept is None:
            y = ONEDNN_CONV(x, weight, bias, *geometry, unary, scalars, "")
        else:
            y = ONEDNN_CONV_INTO(kept.zero_(), x, weight, bias, *geometry, "add", None, post, scalars, "")
        cache.keep_output(fusion.conv, shape, y)
        return y
    other = other.contiguous(memory_format=torch.channels_last)
    if (overwrite and ONEDNN_CONV_INTO is not None
            and other.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()):
        return ONEDNN_CONV_INTO(other, x, weight, bias, *geometry, "add", None, post, scalars, "")
    return ONEDNN_CONV.binary(x, other, weight, bias, *geometry, "add", None, post, scalars, "")
