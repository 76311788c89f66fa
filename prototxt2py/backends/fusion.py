"""The runtime's inference plan: chains of layers run as one fused step, where only float rounding changes.

In eval mode, when only the net's outputs are requested, :class:`~.torch_runtime.CaffeNet` walks a plan in
which chains found here replace their layers (``all_blobs=True`` and train mode walk every layer: the
reference path). A chain's inner blobs are read by the next member alone and are not net outputs, so nobody
can miss them. The chains:

* ``Convolution [-> BatchNorm [-> Scale]] [-> Eltwise SUM with one other blob] [-> ReLU]``, where the
  convolution is any layer whose spec says it is a plain one (``LayerSpec.plain_convolution``: Convolution,
  ConvolutionDepthwise): on CPU float32 with nothing needing gradients, and big enough to be worth it
  (``ONEDNN_MIN_MACS``), one oneDNN call (``torch.ops.mkldnn._convolution_pointwise``, the kernel
  ``torch.compile`` emits on CPU) with the weights packed once into oneDNN's blocked layout, BatchNorm/Scale
  folded into them, and the addition and ReLU applied as post-ops, in channels-last memory. Measured on a
  2-core AVX-512 machine at batch 1: 1.2-5x faster per convolution than ``F.conv2d`` on NCHW tensors,
  which reorders its weights and activations on every call. Elsewhere (GPU, float64, autograd, tracing,
  compiling) the BatchNorm fold still applies through ``F.conv*`` and the other members run as layers;
* ``BatchNorm [-> Scale]`` with no convolution before it: one ``addcmul``.

Both use the stored statistics only: a BatchNorm normalising with batch statistics (``use_global_stats:
false``) runs its chain layer by layer. Folded and packed weights are cached, keyed by the version counters
and addresses of every blob they come from, so loading or editing weights invalidates them. The packed copy
costs memory once the first eval-mode forward has run (about the convolution weights' size again: ResNet-50
+94 MB, AlexNet +9 MB); :meth:`~.torch_runtime.CaffeNet.clear_fold_cache` frees it.

Channels-last values flow on through layers whose spec says they compute the same on any memory layout
(``LayerSpec.layout_agnostic``: activations, pooling, Eltwise, Concat, ...); any other layer, and the net's
outputs, get contiguous NCHW tensors.

Unlike the other backends, this pass matches specific layer types (BatchNorm, Scale, Eltwise, ReLU, after
a spec-declared convolution): it is an optimisation whose rewrites are only valid for those types'
semantics. A type it does not know simply runs as its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import Graph, Node

# Plan step kinds (shared with the runtime): a layer, an input layer, a fused chain, an InnerProduct on oneDNN,
# and a layer whose inputs must first be made contiguous (they may be channels-last).
LAYER, INPUT, FUSED, LINEAR, DENSE = range(5)

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}



def blobs_of(module: Any) -> list[Any]:
    """A layer module's Caffe blobs, in Caffe's order (``blob_names`` is set on every runtime module)."""
    return [getattr(module, n) for n in module.blob_names]

def _onednn_op(name: str) -> Any:
    """A oneDNN op of this torch build, if it has it (private ops: any failure means "use the public path")."""
    try:
        return getattr(torch.ops.mkldnn, name) if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


ONEDNN_LINEAR = _onednn_op("_linear_pointwise")
ONEDNN_CONV = _onednn_op("_convolution_pointwise")
ONEDNN_PACK = _onednn_op("_reorder_convolution_weight")


@dataclass(frozen=True)
class Fusion:
    """A chain of layers run as one step. Members are module keys (None where absent)."""

    conv: str | None
    bn: str | None
    scale: str | None
    eltwise: str | None
    relu: str | None
    conv_args: tuple  # (stride, pad, dilation, group) of the convolution, () without one
    slope: float | None  # negative slope of the fused ReLU
    other: str | None  # value id of the Eltwise's other bottom
    other_first: bool  # whether that other bottom is the Eltwise's bottom 0
    input: str  # value ids: the chain's input and output
    output: str
    steps: tuple  # the reference plan steps it replaces


def _scale_is_per_channel(node: Node, shape: tuple[int, ...] | None) -> bool:
    """A one-bottom Scale whose learned operand covers exactly axis 1 (what folding per channel needs)."""
    if shape is None or len(node.inputs) != 1 or len(shape) < 2 or not node.param_shapes:
        return False
    axis = node.attrs.axis + len(shape) if node.attrs.axis < 0 else node.attrs.axis
    return axis == 1 and tuple(node.param_shapes[0]) == (shape[1],)


def is_plain_inner_product(node: Node) -> bool:
    """An InnerProduct flattening everything after axis 0 with an ``(N, K)`` weight: a plain 2-D matmul for
    inputs of any rank (``axis: 1`` literally; a negative axis would depend on the rank)."""
    return node.type == "InnerProduct" and len(node.inputs) == 1 and node.attrs.axis == 1 and not node.attrs.transpose


def find_fusions(graph: Graph, node_keys: list[str], layers: nn.ModuleDict, plan: tuple) -> list[Fusion]:
    """Every chain (see the module docstring) whose inner blobs only the next member reads."""
    values = graph.values
    outputs = set(graph.outputs)
    by_name = {n.name: n for n in graph.nodes}
    keys = {id(n): k for n, k in zip(graph.nodes, node_keys, strict=True)}
    steps = {step[1]: step for step in plan}
    fusions: list[Fusion] = []
    taken: set[int] = set()

    def one_to_one(node: Node) -> bool:
        return len(node.inputs) == 1 and len(node.outputs) == 1

    def sole_reader(vid: str) -> Node | None:  # the one layer reading ``vid`` if it is not an output either,
        readers = values[vid].consumers         # and in no chain yet
        if len(readers) != 1 or vid in outputs:
            return None
        reader = by_name[readers[0]]
        return None if id(reader) in taken else reader

    def is_bn(node: Node | None) -> bool:
        return node is not None and one_to_one(node) and callable(getattr(layers[keys[id(node)]], "affine", None))

    for node in graph.nodes:
        if id(node) in taken:
            continue
        conv_args = None
        shape = values[node.inputs[0]].shape if node.inputs else None
        if one_to_one(node) and shape is not None:
            conv_args = node.spec.plain_convolution(node, shape)
        if conv_args is None and not is_bn(node):  # (a BatchNorm a convolution's chain took is in ``taken``)
            continue
        chain = {"conv": node if conv_args is not None else None}
        tail = node
        nxt = sole_reader(tail.outputs[0])
        if chain["conv"] is not None and is_bn(nxt):
            chain["bn"] = tail = nxt
            nxt = sole_reader(tail.outputs[0])
        elif chain["conv"] is None:
            chain["bn"] = node
        if "bn" in chain and nxt is not None and nxt.type == "Scale" and \
                _scale_is_per_channel(nxt, values[tail.outputs[0]].shape):
            chain["scale"] = tail = nxt
            nxt = sole_reader(tail.outputs[0])
        other, other_first, slope = None, False, None
        if chain["conv"] is not None:
            if (nxt is not None and nxt.type == "Eltwise" and nxt.attrs.operation == "SUM"
                    and nxt.attrs.coeffs == (1.0, 1.0) and len(set(nxt.inputs)) == 2):
                other_first = nxt.inputs[1] == tail.outputs[0]
                other = nxt.inputs[0] if other_first else nxt.inputs[1]
                chain["eltwise"] = tail = nxt
                nxt = sole_reader(tail.outputs[0])
            if nxt is not None and nxt.type == "ReLU" and one_to_one(nxt):
                slope = float(nxt.attrs.negative_slope)
                chain["relu"] = tail = nxt
        members = [m for m in chain.values() if m is not None]
        taken.update(id(m) for m in members)
        key = {role: keys[id(m)] if m is not None else None for role, m in chain.items()}
        fusions.append(Fusion(
            conv=key.get("conv"), bn=key.get("bn"), scale=key.get("scale"), eltwise=key.get("eltwise"),
            relu=key.get("relu"), conv_args=conv_args or (), slope=slope, other=other, other_first=other_first,
            input=members[0].inputs[0], output=members[-1].outputs[0],
            steps=tuple(steps[keys[id(m)]] for m in members),  # in plan order: each reads the one before
        ))
    return fusions


def plan_inference(graph: Graph, node_keys: list[str], plan: tuple, fusions: list[Fusion]) -> tuple:
    """The plan with each chain's steps replaced by one step, placed where its last member was (its inputs
    exist earlier, and nothing in between reads its inner blobs), plain InnerProducts marked for oneDNN, and
    layers that may receive channels-last values but are not known to handle them marked DENSE."""
    replaced = {step[1]: fusion for fusion in fusions for step in fusion.steps}
    last = {fusion.steps[-1][1] for fusion in fusions}
    agnostic = {key for node, key in zip(graph.nodes, node_keys, strict=True) if node.spec.layout_agnostic}
    linear = {key for node, key in zip(graph.nodes, node_keys, strict=True) if is_plain_inner_product(node)}
    channels_last: set[str] = set()  # values that may be channels-last
    out = []
    for kind, key, ins, outs in plan:
        fusion = replaced.get(key)
        if fusion is not None:
            if key in last:
                out.append((FUSED, fusion, (fusion.input,), (fusion.output,)))
                channels_last.add(fusion.output)
            continue
        if key in linear and ONEDNN_LINEAR is not None:
            out.append((LINEAR, key, ins, outs))
        elif kind == LAYER and channels_last.intersection(ins):
            if key in agnostic:
                out.append((kind, key, ins, outs))
                channels_last.update(outs)
            else:
                out.append((DENSE, key, ins, outs))
        else:
            out.append((kind, key, ins, outs))
    return tuple(out)


class FusionCache:
    """Convolution weights with BatchNorm/Scale folded in, and their oneDNN-packed form, per chain.

    An entry is keyed by the version counter and address of every blob it comes from: torch's in-place ops
    (``copy_``, ``load_state_dict``, the caffemodel reader) bump a tensor's version, and a replaced tensor
    (``.data = ...``, ``.to()``) has another address. The entry keeps the old storages alive, so no new tensor
    can take over an address it is keyed by. Writes through ``.data`` bump no version: :meth:`clear` after those.
    """

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def clear(self) -> None:
        self.entries.clear()

    def _entry(self, key: str, blobs: list[torch.Tensor], eps: float | None) -> dict[str, Any]:
        stamp = (eps, *[(t._version, t.data_ptr()) for t in blobs])
        entry = self.entries.get(key)
        if entry is None or entry["stamp"] != stamp:
            entry = {"stamp": stamp, "keep": [t.untyped_storage() for t in blobs]}
            self.entries[key] = entry
        return entry

    def folded(self, fusion: Fusion, conv: nn.Module, bn: nn.Module, scale: nn.Module | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution's weight and bias with BatchNorm (+ Scale) folded in."""
        blobs = [*blobs_of(conv), *blobs_of(bn), *(blobs_of(scale) if scale is not None else ())]
        entry = self._entry(fusion.conv, blobs, bn.eps)
        if "weight" not in entry:
            entry["weight"], entry["bias"] = _fold(conv, bn, scale)
        return entry["weight"], entry["bias"]

    def packed(self, fusion: Fusion, modules: Mapping[str, nn.Module], shape: tuple[int, ...]
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (folded) weight in oneDNN's layout, chosen for inputs of ``shape`` (other shapes still work),
        and the bias. A folded weight made only to be packed is not kept."""
        conv = modules[fusion.conv]
        bn, scale = _bn_and_scale(fusion, modules)
        blobs = [*blobs_of(conv), *(blobs_of(bn) if bn is not None else ()),
                 *(blobs_of(scale) if scale is not None else ())]
        entry = self._entry(fusion.conv, blobs, bn.eps if bn is not None else None)
        if "packed" not in entry:
            if bn is None:
                weight, bias = conv.weight, getattr(conv, "bias", None)
            else:
                weight, bias = (entry["weight"], entry["bias"]) if "weight" in entry else _fold(conv, bn, scale)
            with torch.inference_mode(False), torch.no_grad():
                stride, pad, dilation, group = fusion.conv_args
                entry["packed"] = ONEDNN_PACK(weight.contiguous(), list(pad), list(stride), list(dilation), group,
                                               list(shape))
                entry["packed_bias"] = None if bias is None else bias.detach().contiguous()
        return entry["packed"], entry["packed_bias"]


def _fold(conv: nn.Module, bn: nn.Module, scale: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight and bias with BatchNorm (+ Scale) folded in, as normal tensors (usable outside
    ``inference_mode`` later) that autograd does not track."""
    with torch.inference_mode(False), torch.no_grad():
        multiplier, offset = bn_scale_affine(bn, scale)
        weight = conv.weight * multiplier.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
        bias = offset if getattr(conv, "bias", None) is None else torch.addcmul(offset, conv.bias, multiplier)
    return weight, bias


def _bn_and_scale(fusion: Fusion, modules: Mapping[str, nn.Module]) -> tuple[nn.Module | None, nn.Module | None]:
    return (modules[fusion.bn] if fusion.bn else None), (modules[fusion.scale] if fusion.scale else None)


def bn_scale_affine(bn: nn.Module, scale: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(multiplier, offset)`` of BatchNorm (stored statistics) followed by an optional
    per-channel Scale. Differentiable with respect to the Scale's blobs (BatchNorm's are statistics)."""
    multiplier, offset = bn.affine()
    if scale is not None:
        offset = offset * scale.weight
        multiplier = multiplier * scale.weight
        if getattr(scale, "bias", None) is not None:
            offset = offset + scale.bias
    return multiplier, offset


def call_layer(module: nn.Module, *bottoms: torch.Tensor) -> Any:
    """Run one layer. A module-level function so that ``torch.fx`` records it as one opaque call."""
    return module(*bottoms)


def apply_bn_scale(bn: nn.Module, scale: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm (+ Scale) on ``x`` as one multiply-add when BatchNorm uses its stored statistics, else the
    two layers as they are. Decided at call time, so an ``fx``-traced graph stays right in train mode."""
    if not bn.uses_global_stats():
        y = call_layer(bn, x)
        return y if scale is None else call_layer(scale, y)
    multiplier, offset = bn_scale_affine(bn, scale)
    shape = (-1,) + (1,) * (x.dim() - 2)
    return torch.addcmul(offset.reshape(shape), x, multiplier.reshape(shape))


torch.fx.wrap("call_layer")
torch.fx.wrap("apply_bn_scale")


def _symbolic(x: Any) -> bool:
    return isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling()


def _wants_grad(tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


#: Below about this many multiply-adds a layer is faster through ``F.conv2d``/``F.linear``: oneDNN's fused call
#: costs some 15-40 us more per call (MTCNN's 24x24 R-Net: 0.7 ms fused, 0.4 ms layer by layer; its 3->28
#: channel 3x3 convolution, 0.4 M multiply-adds, 43 us in oneDNN and 30 us in ``F.conv2d``, on a 2-core
#: AVX-512 machine).
ONEDNN_MIN_MACS = 1 << 20


def _worth_onednn(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, ...]) -> bool:
    """Whether a convolution is big enough for oneDNN:
    ``N*H*W / stride`` output positions (padding ignored) times ``weight.numel()`` multiply-adds, roughly."""
    return x.numel() // max(x.shape[1], 1) * weight.numel() >= ONEDNN_MIN_MACS * stride[0] * stride[1]


def run_fusion(fusion: Fusion, modules: Mapping[str, nn.Module], cache: FusionCache, env: dict[str, Any],
               execute: Callable[[tuple, dict[str, Any]], dict[str, Any]]) -> torch.Tensor:
    """One fused step: oneDNN where it applies, else the BatchNorm fold and the other members as layers, else
    (batch statistics) the members one by one through ``execute``."""
    x = env[fusion.input]
    other = env[fusion.other] if fusion.other is not None else None
    bn, scale = _bn_and_scale(fusion, modules)
    if bn is not None and not bn.uses_global_stats():
        return execute(fusion.steps, env)[fusion.output]
    if fusion.conv is None:
        return apply_bn_scale(bn, scale, x)
    conv = modules[fusion.conv]
    blobs = [*blobs_of(conv), *(blobs_of(scale) if scale is not None else ())]
    if (ONEDNN_CONV is not None and ONEDNN_PACK is not None and not _symbolic(x) and x.device.type == "cpu"
            and x.dim() == 4 and len(fusion.conv_args[0]) == 2 and _worth_onednn(x, conv.weight, fusion.conv_args[0])
            and all(t.dtype == torch.float32 for t in (x, *blobs) + ((other,) if other is not None else ()))
            and not _wants_grad([x, other, *blobs])):
        return _onednn_conv(fusion, modules, cache, x, other)
    if _symbolic(x) or _wants_grad(blobs):
        y = call_layer(conv, x.contiguous())  # the graph must compute from the live parameters
        if bn is not None:
            y = apply_bn_scale(bn, scale, y)
    elif bn is not None:
        weight, bias = cache.folded(fusion, conv, bn, scale)
        stride, pad, dilation, group = fusion.conv_args
        y = _CONV[len(stride)](x.contiguous(), weight, bias, stride, pad, dilation, group)
    else:
        y = call_layer(conv, x.contiguous())
    if fusion.eltwise is not None:
        pair = (other.contiguous(), y) if fusion.other_first else (y, other.contiguous())
        y = call_layer(modules[fusion.eltwise], *pair)
    if fusion.relu is not None:
        y = call_layer(modules[fusion.relu], y)
    return y


def _onednn_conv(fusion: Fusion, modules: Mapping[str, nn.Module], cache: FusionCache, x: torch.Tensor,
                 other: torch.Tensor | None) -> torch.Tensor:
    weight, bias = cache.packed(fusion, modules, tuple(x.shape))
    stride, pad, dilation, group = fusion.conv_args
    if fusion.slope is None:
        unary, scalars = "none", []
    elif fusion.slope == 0.0:
        unary, scalars = "relu", []
    else:
        unary, scalars = "leaky_relu", [fusion.slope]
    x = x.contiguous(memory_format=torch.channels_last)
    geometry = (list(pad), list(stride), list(dilation), group)
    if other is None:
        return ONEDNN_CONV(x, weight, bias, *geometry, unary, scalars, "")
    other = other.contiguous(memory_format=torch.channels_last)
    unary = None if unary == "none" else unary  # the binary form takes no unary post-op as None
    return ONEDNN_CONV.binary(x, other, weight, bias, *geometry, "add", None, unary, scalars, "")

