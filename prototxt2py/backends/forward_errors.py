"""Why a forward pass failed, as one line that names the layer and what it expected: Caffe stops at the layer
whose ``Reshape`` check fails ("Input size incompatible with inner product parameters"), while torch only
says "mat1 and mat2 shapes cannot be multiplied", and oneDNN only "could not create a primitive descriptor".

Nothing here runs unless a pass has failed. The inputs' shapes are then pushed through the net's shape
inference, as a reshape would. Three causes are told apart: an input with another number of axes than the net
declares, a layer that cannot take the shapes reaching it (negative sizes, bottoms that do not match), and a
layer whose blobs were made for other shapes (an InnerProduct after a bigger image). If none of them applies,
torch's message is kept, with the layer that raised it and its bottoms' shapes and types (and, for a loss
layer indexing out of bounds, the likely cause: a label outside the prediction's classes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ForwardError, Prototxt2pyError
from ..ir import Graph, Node
from ..ir.shapes import reinferred
from .fusion import Step, blobs_of

if TYPE_CHECKING:
    from .torch_runtime import CaffeNet


def forward_error(net: CaffeNet, inputs: Mapping[str, Any], error: Exception) -> ForwardError:
    """The located error for ``error``, raised by a pass of ``net`` on ``inputs`` (input blob name -> value)."""
    shapes = {name: tuple(value.shape) for name, value in inputs.items() if isinstance(value, torch.Tensor)}
    given = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
    graph = net.graph
    for vid in graph.inputs:
        value = graph.values[vid]
        declared, got = value.shape, shapes.get(value.blob)
        if declared is not None and got is not None and len(declared) != len(got):
            return ForwardError(f"input '{value.blob}' has {len(got)} axes {got}; the net takes {len(declared)} "
                                f"axes, as in its declared shape {declared}")
    try:
        probe = reinferred(graph, shapes)
    except Prototxt2pyError as e:
        return ForwardError(f"inputs {given}: {e.message}", e.location, layer=e.layer)
    return unfit_blobs(probe, net.layer, given) or _as_raised(net, error, given)


def unfit_blobs(graph: Graph, layer: Callable[[str], Any], given: str) -> ForwardError | None:
    """The first layer of ``graph`` (its shapes inferred for the inputs described by ``given``) whose blobs, as
    ``layer(name)`` holds them, have other shapes than those inputs need, as Caffe's ``Reshape`` checks ("Input
    size incompatible with inner product parameters"); None if every blob fits."""
    for node in graph.nodes:
        error = _unfit(node, node.param_shapes, layer(node.name), f"inputs {given}")
        if error is not None:
            return error
    return None


def unfit_layer_blobs(node: Node, in_shapes: Sequence[Sequence[int]], module: Any, bottoms: str
                      ) -> ForwardError | None:
    """:func:`unfit_blobs` for one layer, on bottoms of ``in_shapes`` (described by ``bottoms``): pycaffe runs
    layers one at a time, with no inputs to start from."""
    try:
        need = node.spec.param_shapes(node, [tuple(s) for s in in_shapes])
    except Exception:  # noqa: BLE001 - bottoms the layer cannot size: its own failure says more
        return None
    return _unfit(node, need, module, f"bottoms {bottoms}")


def layer_error(node: Node, module: Any, shapes: Sequence[Sequence[int]], error: Exception) -> ForwardError:
    """The located error for one layer run on its own (pycaffe's layer ranges, ``time``) that raised ``error`` on
    bottoms of ``shapes``: blobs sized for other bottoms, as Caffe's ``Reshape`` says, else torch's first line."""
    described = ", ".join(f"{b} {tuple(s)}" for b, s in zip(node.bottoms, shapes, strict=False))
    unfit = unfit_layer_blobs(node, shapes, module, described)
    if unfit is not None:
        return unfit
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if node.spec.is_loss and ("index" in message or "bound" in message):
        message += " (a label outside 0..C-1 of the prediction's channels?)"
    return ForwardError(f"forward pass failed: {message} (bottoms {described})", node.location, layer=node.name)


def _unfit(node: Node, need: Sequence[Sequence[int]], module: Any, what: str) -> ForwardError | None:
    for i, (name, blob) in enumerate(zip(getattr(module, "blob_names", ()), blobs_of(module), strict=True)):
        shape = tuple(need[i]) if i < len(need) else None
        have = tuple(getattr(blob, "shape", ()))
        if shape is not None and shape != have:
            return ForwardError(f"blob {i} ({name}) has shape {have}; {what} need {shape}", node.location,
                                layer=node.name)
    return None


def _as_raised(net: CaffeNet, error: Exception, given: str) -> ForwardError:
    """torch's own message, with the layer whose step raised it and its bottoms' shapes."""
    step, env = _failed_step(error.__traceback__)
    message = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if step is None:
        return ForwardError(f"forward pass failed: {message} (inputs {given})")
    node = dict(zip(net._node_keys, net.graph.nodes, strict=True))[step.key]  # of a chain: its first layer
    if node.spec.is_loss and ("index" in message or "bound" in message):
        message += " (a label outside 0..C-1 of the prediction's channels?)"
    bottoms = ", ".join(_described(env.get(v)) for v in step.inputs)
    return ForwardError(f"forward pass failed: {message} (bottoms {bottoms}; inputs {given})", node.location,
                        layer=node.name)


def _described(value: Any) -> str:
    """A bottom as ``(1, 3, 224, 224) float64``."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"


def _failed_step(tb: TracebackType | None) -> tuple[Step | None, dict[str, Any]]:
    """The plan step that raised, and the values at the time: the locals of the innermost frame that walks a
    plan (a chain run layer by layer walks its own steps inside its step)."""
    from .torch_runtime import CaffeNet

    step, env = None, {}
    while tb is not None:
        if tb.tb_frame.f_code is CaffeNet._execute.__code__:
            step, env = tb.tb_frame.f_locals.get("step"), tb.tb_frame.f_locals.get("env", {})
        tb = tb.tb_next
    return step, env
