"""pycaffe's ``Blob``: a data/diff pair whose numpy arrays are live views of the tensors the runtime computes with.

pycaffe scripts take ``net.blobs['data'].data`` once and write into it, or keep ``net.params['conv1'][0].diff``
and read it after every ``backward()``; both only work if the arrays alias the storage the net computes with.
So a Blob owns (or, for parameters, borrows from the runtime) one tensor for data and one for diff, results are
written into them in place (``copy_``), and ``.data``/``.diff`` are ``tensor.numpy()`` views.

On a CUDA device numpy cannot view the memory. Like Caffe's ``SyncedMemory``, each side then has a host mirror:
reading ``.data`` copies the device values into the mirror and marks the mirror as possibly written; the next
forward/backward pass copies it back first. Arrays taken earlier are refreshed in place by the next ``.data``
access, as in Caffe. Code that changes a parameter tensor on the device between a ``.data`` access and the next
pass (a solver update) must call ``blob.mark_device_written()``, or the pass would copy the older host values back.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backends.fusion import note_param_view
from ..limits import check_shape

_HOST, _DEVICE, _SYNCED = "host", "device", "synced"


class _Synced:
    """One tensor on the compute device and, off the CPU, its host mirror with Caffe's head tracking."""

    __slots__ = ("tensor", "_host", "_head")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self._host: torch.Tensor | None = None
        self._head = _SYNCED

    @property
    def on_cpu(self) -> bool:
        return self.tensor.device.type == "cpu"

    def host(self) -> np.ndarray:
        """The numpy view handed to the user (mutable, like ``mutable_cpu_data``)."""
        if self.on_cpu:
            return self.tensor.detach().numpy()
        if self._host is None or self._host.shape != self.tensor.shape:
            self._host = torch.empty(self.tensor.shape, dtype=self.tensor.dtype)
            self._head = _DEVICE
        if self._head != _HOST:  # SYNCED too: code outside (a solver) may have changed the device tensor
            self._host.copy_(self.tensor.detach())
        self._head = _HOST
        return self._host.numpy()

    def device(self) -> torch.Tensor:
        """The compute tensor, first updated from the host mirror if the user may have written it."""
        if self._head == _HOST and self._host is not None:
            with torch.no_grad():
                self.tensor.copy_(self._host)
            self._head = _SYNCED
        return self.tensor

    def written(self) -> None:
        """The compute tensor was changed: the host mirror is stale."""
        if not self.on_cpu:
            self._head = _DEVICE

    def resize(self, shape: tuple[int, ...]) -> bool:
        """Give the tensor a new shape if it differs; True if it was reallocated. As Caffe's ``Blob::Reshape``
        (which reallocates only to grow), the values stay, read in the new shape, as far as they go; the rest
        is zero. Parameters keep their identity (``set_``), so modules and optimisers holding them stay valid."""
        if tuple(self.tensor.shape) == tuple(shape):
            return False
        self.device()
        with torch.no_grad():
            fresh = torch.zeros(shape, dtype=self.tensor.dtype, device=self.tensor.device)
            kept = min(fresh.numel(), self.tensor.numel())
            fresh.view(-1)[:kept] = self.tensor.reshape(-1)[:kept]
            self.tensor.set_(fresh)
        self._host = None
        self._head = _SYNCED
        return True


class Blob:
    """pycaffe's ``caffe.Blob``: ``.data``, ``.diff`` (float32 numpy views), ``.shape``, ``.count``, legacy
    ``.num/.channels/.height/.width``, ``.reshape(*dims)``."""

    def __init__(self, data: torch.Tensor, diff: torch.Tensor | None = None, param: bool = False):
        self._data = _Synced(data)
        self._diff = _Synced(diff if diff is not None else torch.zeros_like(data))
        #: a layer's blob (weights, BatchNorm statistics: what the runtime folds and packs for inference)
        self._param = param

    # -- pycaffe's interface --------------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        if self._param:  # numpy writes bump no version counter: the runtime's folded weights must be remade
            note_param_view()
        return self._data.host()

    @property
    def diff(self) -> np.ndarray:
        return self._diff.host()

    @property
    def shape(self) -> list[int]:
        # pycaffe returns Caffe's vector<int>; a tuple compares like numpy shapes, a list like pycaffe's.
        return list(self._data.tensor.shape)

    @property
    def count(self) -> int:
        return int(self._data.tensor.numel())

    def _legacy(self, index: int) -> int:
        """Caffe's ``LegacyShape``: a blob of up to 4 axes seen as 4-D, missing trailing axes being 1."""
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"blob has {len(shape)} axes: num/channels/height/width need 4 or fewer (use .shape)")
        return shape[index] if index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *dims: int) -> None:
        """New shape for data and diff: the values stay in memory order as far as they go (Caffe keeps the
        memory when the count does not grow), the rest is zero. Call ``net.reshape()`` afterwards to propagate
        a new input shape through the net."""
        shape = tuple(int(d) for d in dims)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob dimensions must be >= 0, got {shape}")
        # before the zeros are allocated: a huge shape would otherwise be a raw torch allocation error
        check_shape(shape, "Blob.reshape")
        self._data.resize(shape)
        self._diff.resize(shape)

    def __repr__(self) -> str:
        return f"<caffe.Blob shape={self.shape}>"

    # -- the runtime's side -----------------------------------------------------------------------------------
    def tensor(self) -> torch.Tensor:
        return self._data.device()

    def diff_tensor(self) -> torch.Tensor:
        return self._diff.device()

    def write(self, value: torch.Tensor) -> bool:
        """Store a layer's result (reshaping if needed); True if the storage was reallocated."""
        target = self._data.tensor
        grew = False
        if tuple(target.shape) != tuple(value.shape):
            grew = self._data.resize(tuple(value.shape))
            self._diff.resize(tuple(value.shape))
            target = self._data.tensor
        if value.data_ptr() == target.data_ptr() and value.stride() == target.stride():
            pass  # the layer returned its (in-place) bottom itself
        else:
            if _overlaps(value, target):
                value = value.clone()
            with torch.no_grad():
                target.copy_(value.detach())
        self._data._head = _SYNCED
        self._data.written()
        return grew

    def write_diff(self, value: torch.Tensor, accumulate: bool) -> None:
        target = self._diff.device()
        with torch.no_grad():
            if accumulate:
                target.add_(value.detach().reshape(target.shape))
            else:
                target.copy_(value.detach().reshape(target.shape))
        self._diff.written()

    def mark_device_written(self) -> None:
        """The data and diff tensors were changed on the device by code outside this class (a solver update)."""
        self._data.written()
        self._diff.written()

    def fill_diff(self, value: float) -> None:
        with torch.no_grad():
            self._diff.device().fill_(value)
        self._diff.written()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory (then a copy from one into the other needs a temporary)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() == sb.data_ptr()
