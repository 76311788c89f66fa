"""``Python`` layers by explicit mapping: the base class of plugin specs for them, and the spec of a layer
mapped to a torch module by the caller (``prototxt2py.load(..., python_layers={"module.Layer": M})``).

A ``Python`` layer names user code (``python_param { module: "m" layer: "L" }``) that pycaffe imports and
runs. prototxt2py never imports it: model files are untrusted and the code is usually not installed anyway.
Instead the caller says what ``m.L`` computes, as a :class:`PythonLayerSpec` subclass (every hook: shapes,
ONNX, generated code) or as a torch module (runtime, and generated code when the class is importable).
Without a mapping, a ``Python`` layer with no bottoms is a data layer (see :mod:`.data`); any other is
refused by every backend with an error saying how to map it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..plain import plain
from .base import LayerSpec, Shape, call

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..ir import Node

FAMILY = "python"

#: Appended to "no implementation" errors for unmapped Python layers.
HOW_TO_MAP = ("map it explicitly: prototxt2py.load(..., python_layers={'%s': MyLayer}) (also caffe.Net and "
              "caffe.SGDSolver) with a caffe.Layer class, an nn.Module class or factory(param_str), or a plugin spec "
              "with python_layer = '%s' (the model's module is never imported)")


@dataclass(frozen=True)
class PythonParamAttrs:
    """The plain ``python_param`` of a built-in ``Python`` layer (subclasses add what its ``param_str`` says)."""

    module: str
    layer: str
    param_str: str
    share_in_parallel: bool


def param_str_mapping(text: str) -> dict:
    """The mapping a ``param_str`` holds: a block of YAML ``key: value`` lines (py-faster-rcnn), or a ``{...}``
    flow mapping, which is also a Python dict literal (FCN's ``str(dict(...))``), read as Python literals.
    Nothing in it is ever executed (the layers themselves ``eval`` it)."""
    import ast

    body = text.strip()
    if not body.startswith("{"):
        body = "{" + ", ".join(line for line in body.splitlines() if line.strip()) + "}"
    try:
        value = ast.literal_eval(body) if len(body) <= 4096 else None
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as e:
        raise ValueError(f"python_param.param_str {text[:80]!r} is not a YAML mapping of literals ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"python_param.param_str {text[:80]!r} is not a YAML mapping of literals (at most 4096 "
                         "characters)")
    return value


def python_settings(layer: Any, layer_name: str, required: str | None = None) -> tuple[dict, dict]:
    """A built-in ``Python`` layer's ``python_param`` fields (for :class:`PythonParamAttrs`) and its ``param_str``
    mapping, which must hold ``required``; ``layer_name`` says whose layer it is in that error."""
    p = plain(layer.python_param)
    given = param_str_mapping(p.param_str)
    if required is not None and required not in given:
        raise ValueError(f"python_param.param_str needs '{required}' ({layer_name} reads it)")
    fields = {"module": p.module, "layer": p.layer, "param_str": p.param_str, "share_in_parallel": p.share_in_parallel}
    return fields, given


class PythonLayerSpec(LayerSpec):
    """Base class of specs for ``Python`` layers: set :attr:`python_layer` to ``"module.Layer"`` (the layer's
    ``python_param.module`` + ``.`` + ``python_param.layer``) and ``@register`` it, or pass the class in
    ``python_layers``. ``node.attrs`` is the plain ``python_param`` (``param_str`` is the layer's own
    configuration string, as Caffe hands it to ``setup``)."""

    type = "Python"
    param_field = "python_param"
    bottoms = (0, None)
    tops = (0, None)
    family = FAMILY



class PythonDataLayerSpec(PythonLayerSpec):
    """Base class of built-in ``Python`` data layers (FCN's readers, py-faster-rcnn's RoIDataLayer): no bottoms,
    tops that are net inputs a registered reader fills (``register_reader`` under the same ``module.Layer`` name);
    ``attrs`` gives ``param`` (what the reader is opened with) and ``transform`` (None)."""

    bottoms = (0, 0)
    is_data = True

    def is_input(self, node: Node) -> bool:
        return True

    def module(self, node: Node):
        return call("NetInput", tuple(node.tops))

    def to_onnx(self, node: Node, ctx: Any) -> None:
        """The tops are graph inputs, which the exporter declares: nothing to compute."""

class ModulePythonLayer(PythonLayerSpec):
    """A ``Python`` layer computed by a caller's torch module: ``factory(param_str)`` builds it (an
    ``nn.Module`` class or any callable returning one) and ``forward(*bottoms)`` returns one tensor or a tuple
    of tensors, one per top. Shapes come from running the module on meta tensors (no data, no compute); its
    direct parameters, in registration order, are the layer's Caffe blobs (loaded from a ``.caffemodel``,
    else kept as the module initialised them)."""

    summary = "a Python layer mapped to a torch module by the caller"

    def __init__(self, name: str, factory: Callable[[str], Any]):
        from ..nn import register_object

        self.python_name = name
        self.factory = factory
        module = getattr(factory, "__module__", None) or "__main__"
        qualname = getattr(factory, "__qualname__", None) or f"python_layer_{id(factory):x}"
        self.target = register_object(f"{module}:{qualname}", factory)

    def _build(self, node: Node, device: str = "meta") -> torch.nn.Module:
        import torch

        with torch.device(device):
            module = self.factory(node.attrs.param_str)
        if not isinstance(module, torch.nn.Module):
            raise self.fail(node, f"python_layers['{self.python_name}'] returned {type(module).__name__}, "
                                  "not an nn.Module")
        return module

    def infer_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        import torch

        try:
            module = self._build(node)
            with torch.no_grad():
                out = module(*(torch.empty(s, device="meta") for s in in_shapes))
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: run it once on zeros
            module = self._build(node, "cpu")
            with torch.no_grad():
                out = module(*(torch.zeros(s) for s in in_shapes))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(node.tops) or not all(isinstance(t, torch.Tensor) for t in outs):
            raise self.fail(node, f"python_layers['{self.python_name}'] returned {len(outs)} value(s) for "
                                  f"{len(node.tops)} top(s); forward must return one tensor per top")
        return [tuple(t.shape) for t in outs]

    def param_shapes(self, node: Node, in_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(p.shape) for _, p in self._build(node).named_parameters(recurse=False)]

    def node_blob_names(self, node: Node) -> tuple[str, ...]:
        return tuple(name for name, _ in self._build(node).named_parameters(recurse=False))

    def module(self, node: Node):
        return call(self.target, node.attrs.param_str, build_on_meta=False)
