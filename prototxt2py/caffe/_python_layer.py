"""pycaffe's own Python layers, run by the PyTorch runtime: a script's ``class L(caffe.Layer)`` with ``setup``,
``reshape``, ``forward`` and ``backward`` working on blobs, mapped with ``python_layers={'module.L': L}``.

Caffe's ``PythonLayer`` builds one instance per layer, sets ``param_str`` and ``phase``, calls ``setup(bottom,
top)`` once, then ``reshape`` and ``forward`` on every pass, and ``backward(top, propagate_down, bottom)`` with the
tops' diffs holding the gradient. Here the same calls run on pycaffe :class:`~._blob.Blob` objects (float32 numpy
arrays, on the CPU) inside an autograd function, so such a layer trains in a solver and its gradient reaches the
layers below: what ``backward`` writes into ``bottom[i].diff`` is the bottom's gradient, exactly as Caffe would
use it (a loss layer that ignores its top diff ignores a ``loss_weight`` in Caffe too). The class comes from the
caller's script; the module the model file names is never imported. Learnable blobs of a Python layer
(``self.blobs``) are not supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers.python import ModulePythonLayer
from ..nn import register_object
from ._blob import Blob
from ._phase import TEST, TRAIN, Phase

_METHODS = ("setup", "reshape", "forward", "backward")


def is_pycaffe_layer(target: Any) -> bool:
    """A pycaffe-style layer class: a subclass of ``caffe.Layer``, or any class (not a torch module) with
    pycaffe's ``setup``, ``reshape`` and ``forward`` (``backward`` is needed only when a gradient is)."""
    from ._net import Layer

    if not isinstance(target, type) or issubclass(target, nn.Module):
        return False
    return issubclass(target, Layer) or all(callable(getattr(target, m, None)) for m in _METHODS[:3])


def _method(layer: Any, name: str) -> Any:
    """The layer's ``name`` method, or one line saying it has none (Caffe's call would fail there too)."""
    method = getattr(layer, name, None)
    if not callable(method):
        from ._net import CaffeUsageError

        raise CaffeUsageError(f"Python layer {type(layer).__qualname__} has no {name}() method")
    return method


class _NoBlobs(list):
    """``self.blobs`` of a Python layer: empty; adding learnable blobs is refused in one line."""

    def add_blob(self, *shape: int) -> None:
        from ._net import CaffeUsageError

        raise CaffeUsageError("learnable blobs of Python layers (self.blobs.add_blob) are not supported; write the "
                              "layer as an nn.Module with parameters instead")


class PycaffeLayer(nn.Module):
    """One Python layer instance of ``cls`` behind the runtime's module interface: ``forward(*bottoms)`` returns
    one tensor per top (a tuple when there are several)."""

    def __init__(self, cls: type, param_str: str, tops: int, phase: int | None = None,
                 in_place: Sequence[tuple[int, int]] = ()):
        super().__init__()
        layer = cls.__new__(cls)  # Caffe constructs it from the LayerParameter, never through our Layer.__init__
        layer.param_str = param_str
        layer.param_str_ = param_str  # caffe-fast-rcnn's name for it (py-faster-rcnn's layers read this one)
        layer.blobs = _NoBlobs()
        with contextlib.suppress(AttributeError):  # pycaffe's layer.type (unless the class defines its own)
            layer.type = "Python"
        layer.phase = TRAIN if phase is None else Phase(phase)
        self.layer, self.cls = layer, cls
        self.tops = [Blob(torch.zeros(0)) for _ in range(tops)]
        #: (bottom, top) positions naming one blob: Caffe hands the layer that one Blob as both
        self.in_place = tuple((int(b), int(t)) for b, t in in_place)
        self._set_up = False
        self.passes = 0  # forward passes so far: a backward belongs to the latest one only (the layer's state)
        # follows .to(dtype/device), so tops of a layer without bottoms come out like the rest of the net
        self.register_buffer("like", torch.zeros(0), persistent=False)

    @property
    def pycaffe_layer(self) -> Any:
        """The script's layer object (what pycaffe's ``net.layers[i]`` is for a Python layer)."""
        return self.layer

    def extra_repr(self) -> str:
        return f"{self.cls.__qualname__}, param_str={self.layer.param_str!r}"

    def shapes(self, bottom_shapes: Sequence[Sequence[int]], phase: int | None) -> list[tuple[int, ...]]:
        """The tops' shapes for bottoms of these shapes: ``setup`` (the first time) and ``reshape``, on zeros."""
        bottoms = [Blob(torch.zeros(tuple(s))) for s in bottom_shapes]
        self.prepare(bottoms, phase)
        return [tuple(t.shape) for t in self.top_blobs(bottoms)]

    def top_blobs(self, bottoms: list[Blob]) -> list[Blob]:
        """The tops this pass: the bottom's own Blob where a top names the same blob (in place), as in Caffe."""
        tops = list(self.tops)
        for b, t in self.in_place:
            tops[t] = bottoms[b]
        return tops

    def prepare(self, bottoms: list[Blob], phase: int | None = None) -> None:
        """Caffe's ``LayerSetUp`` once, then ``Reshape`` (which ``Layer::Forward`` calls before every pass).
        ``phase``: the layer's (shape inference); else the module's mode, as the runtime's phase follows it."""
        self.layer.phase = Phase(phase) if phase is not None else TRAIN if self.training else TEST
        if not self._set_up:
            _method(self.layer, "setup")(list(bottoms), self.top_blobs(bottoms))  # fresh lists each call, as boost's
            self._set_up = True
        _method(self.layer, "reshape")(list(bottoms), self.top_blobs(bottoms))

    def forward(self, *bottoms: torch.Tensor) -> Any:
        outs = _Run.apply(self, *bottoms)
        return outs[0] if len(outs) == 1 else outs


class _Run(torch.autograd.Function):
    """``forward`` and ``backward`` of a Python layer as one autograd node."""

    @staticmethod
    def forward(ctx: Any, module: PycaffeLayer, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bottoms = [Blob(x.detach().to("cpu", torch.float32, copy=True)) for x in inputs]
        module.prepare(bottoms)
        _method(module.layer, "forward")(list(bottoms), module.top_blobs(bottoms))
        module.passes += 1
        ctx.module, ctx.bottoms, ctx.pass_ = module, bottoms, module.passes  # backward sees these blobs, as Caffe's
        ctx.like = [(x.device, x.dtype) for x in inputs]
        like = inputs[0] if inputs else module.like
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return tuple(t.tensor().detach().clone().to(like.device, dtype) for t in module.top_blobs(bottoms))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        module, bottoms = ctx.module, ctx.bottoms
        if ctx.pass_ != module.passes:  # the layer's state (and its tops) are a later pass's now
            from ._net import CaffeUsageError

            raise CaffeUsageError(f"Python layer {module.cls.__qualname__} ran forward again before the backward of "
                                  "an earlier pass: its backward reads the state of its latest forward only, as "
                                  "in Caffe (run backward after each forward)")
        tops = module.top_blobs(bottoms)
        shared = {b for b, _ in module.in_place}
        for i, bottom in enumerate(bottoms):
            if i not in shared:  # an in-place bottom's diff is its top's, set next
                bottom.diff[...] = 0
        for top, grad in zip(tops, grads, strict=True):
            top.diff[...] = 0 if grad is None else grad.detach().to("cpu", torch.float32).numpy()
        down = [bool(n) for n in ctx.needs_input_grad[1:]]
        _method(module.layer, "backward")(tops, down, list(bottoms))
        out = [torch.from_numpy(b.diff.copy()).to(device, dtype) if d else None
               for b, d, (device, dtype) in zip(bottoms, down, ctx.like, strict=True)]
        return (None, *out)


class PycaffePythonLayer(ModulePythonLayer):
    """The spec of ``Python`` layers mapped to a pycaffe layer class: shapes from ``setup``/``reshape`` on zeros
    (never a forward), no blobs, the runtime module a :class:`PycaffeLayer`. No ONNX or generated code: the
    layer is the script's numpy code."""

    summary = "a Python layer mapped to a pycaffe layer class (setup/reshape/forward/backward) by the caller"
    backward_reads = "forward"  # Caffe calls forward once a pass: pycaffe's backward must not run it again

    def __init__(self, name: str, cls: type):
        self.python_name = name
        self.factory = cls
        module = getattr(cls, "__module__", None) or "__main__"
        self.target = register_object(f"{module}:{cls.__qualname__}.pycaffe", self._instance)
        #: the instance shape inference set up, per node, handed to the first runtime built from the graph: Caffe
        #: runs ``setup`` once, at ``Net::Init``, on the object it then runs
        self._set_up: dict[int, PycaffeLayer] = {}

    def _instance(self, param_str: str, tops: int, key: int | None = None,
                  in_place: Sequence[tuple[int, int]] = ()) -> PycaffeLayer:
        built = self._set_up.pop(key, None) if key is not None else None
        return built if built is not None else PycaffeLayer(self.factory, param_str, tops, in_place=in_place)

    @staticmethod
    def _in_place(node: Any) -> tuple[tuple[int, int], ...]:
        return tuple((b, t) for t, top in enumerate(node.tops) for b, bottom in enumerate(node.bottoms)
                     if top == bottom)

    def _build(self, node: Any, device: str = "meta") -> nn.Module:
        return PycaffeLayer(self.factory, node.attrs.param_str, len(node.tops), node.phase, self._in_place(node))

    def infer_shapes(self, node: Any, in_shapes: Sequence[Any]) -> list[Any]:
        module = self._set_up.get(id(node)) or self._build(node)
        self._set_up[id(node)] = module
        return module.shapes(in_shapes, node.phase)

    def module(self, node: Any) -> Any:
        from ..layers.base import call

        return call(self.target, node.attrs.param_str, len(node.tops), id(node), self._in_place(node),
                    build_on_meta=False)
