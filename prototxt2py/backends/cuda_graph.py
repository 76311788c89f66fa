"""An eval-mode forward on a GPU captured once as a CUDA graph and replayed (:meth:`CaffeNet.cuda_graph`).

Why: at small batch a GPU forward costs the launch of each layer's kernels from Python, not the kernels
(issue 21 measured AlexNet at batch 1 on an H200: 1.55 ms in the runtime against 1.11 ms for a hand-written
module). A replay launches every recorded kernel in one call, so neither the plan's Python nor the layers'
is paid again. What replays is exactly what the capture ran: the inference plan with its folded weights, at
the captured input shapes, dtypes, device and autocast state.

What a plain ``torch.cuda.graph`` capture leaves to its user is handled here:

* inputs are copied into the captured input tensors, after checking that they have the captured shape, dtype
  and device (a replay cannot change them; another shape needs another capture);
* the weights the capture read are stamped (:func:`~.fusion.blob_stamp`, 46 µs a call for ResNet-50's 320
  blobs on a 2-core CPU): after a blob is edited in place or given new storage (``load_weights``, an optimizer
  step, ``.data =``) the next call captures again, since the recorded kernels read the folds made from the old
  values. A blob or layer swapped for another object (a new ``nn.Parameter``, buffer or module assigned)
  makes it capture again too: :func:`registrations` counts those assignments process-wide, which costs
  nothing per call, where walking the net's module tree again would cost 0.5 ms for ResNet-50;
* so is the net's fold cache (:attr:`~.fusion.FusionCache.generation`): after ``net.clear_fold_cache()``
  (needed after writes through ``.data``, which bump no version) or a move, the next call captures again. A
  graph holds raw addresses, not tensors, so the cache entries a capture read are also held here: their memory
  is never reused while the graph can still be replayed;
* outputs are copied out of the graph's memory, which the next replay overwrites (``copy_outputs=False``
  returns that memory itself, for callers that consume each result before the next call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import Prototxt2pyError, ShapeError
from .fusion import blob_stamp

if TYPE_CHECKING:
    from .torch_runtime import CaffeNet


_REGISTRATIONS = [0]


def _count_registration(module: torch.nn.Module, name: str, value: Any) -> None:
    _REGISTRATIONS[0] += 1


for _register in (torch.nn.modules.module.register_module_parameter_registration_hook,
                  torch.nn.modules.module.register_module_buffer_registration_hook,
                  torch.nn.modules.module.register_module_module_registration_hook):
    _register(_count_registration)


def registrations() -> int:
    """Parameters, buffers and submodules assigned to any module since this module was imported (torch's
    global registration hooks): a graph captured before the count changed may read tensors its net no longer
    holds. Constructing modules counts too, so building another model between calls only costs a capture."""
    return _REGISTRATIONS[0]


def _describe(t: torch.Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


class CudaGraphForward:
    """``net(**inputs)`` replayed from a CUDA graph; call it as the net is called (positional inputs in
    ``net.input_names`` order, or by name). ``warmup`` eager passes on a side stream come before each capture
    (cuDNN picks its algorithms and the plan makes its folds there, not inside the graph)."""

    def __init__(self, net: CaffeNet, inputs: Mapping[str, torch.Tensor], warmup: int = 3,
                 copy_outputs: bool = True) -> None:
        if net.training:
            raise Prototxt2pyError("cuda_graph: call net.eval() first (a captured graph replays an inference pass)")
        devices = {t.device for t in inputs.values()} | {t.device for t in self._blobs(net)}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":  # CUDA graphs replay GPU kernels only
            where = ", ".join(sorted(str(d) for d in devices))
            raise Prototxt2pyError("cuda_graph: the net's blobs and inputs must all be on one CUDA device "
                                   f"(net.to('cuda'), inputs too); got {where}")
        self.net, self.warmup, self.copy_outputs = net, warmup, copy_outputs
        self.device = next(iter(devices))
        with torch.inference_mode(False):  # normal tensors even when made inside inference mode: calls outside it
            self.static = {name: t.detach().clone() for name, t in inputs.items()}  # copy into them
        self._capture()

    @staticmethod
    def _blobs(net: CaffeNet) -> list[torch.Tensor]:
        return [*net.parameters(), *net.buffers()]

    def _stamp(self, blobs: list[torch.Tensor]) -> list[Any]:
        self.net._fusion_cache.sync()
        return [*blob_stamp(blobs), self.net._fusion_cache.generation, registrations()]

    def _capture(self) -> None:
        """Warm up and capture; the graph, and the stamp of the weights it read, change only once it succeeded
        (a failed capture again must not leave the old graph looking current)."""
        net, device = self.net, self.device
        blobs = self._blobs(net)  # kept: walking the module tree on every call costs 0.5 ms for ResNet-50
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(self.warmup):
                net(**self.static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.no_grad(), torch.cuda.graph(graph):
                outputs = net(**self.static)
        except RuntimeError as error:  # a layer that syncs with the host or allocates pinned memory
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise Prototxt2pyError(f"cuda_graph: capturing the forward failed ({first}); call the net eagerly "
                                   "instead") from error
        # stamped after the capture: whatever it registered or bumped is part of what every replay reproduces
        self.graph, self.outputs, self.blobs, self.stamp = graph, outputs, blobs, self._stamp(blobs)
        self.held = [dict(entry) for entry in net._fusion_cache.entries.values()]  # the folds the kernels read

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        given = self.net.named_inputs(args, kwargs)
        if given.keys() != self.static.keys():
            raise TypeError(f"cuda_graph was captured with inputs {sorted(self.static)}; got {sorted(given)}")
        for name, value in given.items():
            want = self.static[name]
            if value.shape != want.shape or value.dtype != want.dtype or value.device != want.device:
                raise ShapeError(f"cuda_graph: input '{name}' was captured as {_describe(want)}; got "
                                 f"{_describe(value)} (capture again with net.cuda_graph for other shapes)")
        if self._stamp(self.blobs) != self.stamp:  # weights or fold cache changed since the capture
            self._capture()
        for name, value in given.items():
            self.static[name].copy_(value)
        self.graph.replay()
        if not self.copy_outputs:
            return dict(self.outputs)
        return {name: t.clone() for name, t in self.outputs.items()}

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {_describe(v)}" for k, v in self.static.items())
        return f"CudaGraphForward({shapes})"


def capture(net: CaffeNet, args: tuple[torch.Tensor, ...], kwargs: Mapping[str, Any], **options: Any
            ) -> CudaGraphForward:
    """:meth:`CaffeNet.cuda_graph` on example inputs."""
    return CudaGraphForward(net, net.named_inputs(args, kwargs), **options)
