"""Caffe's weight fillers (``FillerParameter``), so a net built without weights starts like Caffe's would.

When trained weights are about to overwrite every blob, filling them first is wasted work (a full extra pass
over AlexNet's 61M values, seconds with the Gaussian filler). :func:`deferred_fills` makes :func:`fill` hand
out uninitialised tensors and remember how each should be filled, so the loader fills only what the weights
file did not provide.

Two implementations share the formulas here (fans, scales, the sparse mask's probability, the bilinear
kernel): :func:`fill` makes torch tensors for the runtime, :func:`fill_array` numpy arrays for the torch-free
commands (ONNX/caffemodel/safetensors export without weights). torch is imported only by the torch path.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .lazy_numpy import np

if TYPE_CHECKING:  # pragma: no cover
    import torch

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


def _fans(shape: Sequence[int]) -> tuple[float, float]:
    n = math.prod(shape)
    fan_in = n / shape[0] if len(shape) >= 1 and shape[0] else n
    fan_out = n / shape[1] if len(shape) >= 2 and shape[1] else n
    return fan_in, fan_out


def _norm(shape: Sequence[int], variance_norm: int | str) -> float:
    """The fan ``variance_norm`` names: a ``FillerParameter`` number or a plain :class:`Filler`'s name."""
    fan_in, fan_out = _fans(shape)
    if variance_norm in (FAN_OUT, "FAN_OUT"):
        return fan_out
    if variance_norm in (AVERAGE, "AVERAGE"):
        return (fan_in + fan_out) / 2
    return fan_in


def _sparse_keep(shape: Sequence[int], sparse: int) -> float:
    """Probability that the Gaussian filler keeps a value when ``sparse >= 0``: Caffe's GaussianFiller keeps
    ``sparse`` of each output's inputs on average, outputs being axis 0 (``sparse / shape(0)``)."""
    return sparse / shape[0] if shape[0] else 0.0


@dataclass
class DeferredFills:
    """Tensors handed out uninitialised by :func:`fill` inside :func:`deferred_fills`, with their fillers."""

    pending: list[tuple[torch.Tensor, Any, torch.Generator | None]] = field(default_factory=list)

    def fill_remaining(self, written: Iterable[torch.Tensor], alive: Iterable[torch.Tensor]) -> int:
        """Fill every deferred tensor that is still in use (shares storage with one of ``alive``, e.g. the
        net's parameters and buffers) and was not overwritten (shares no storage with ``written``).
        Returns how many were filled. Tensors nobody holds any more (a blob replaced by a shared one) are
        skipped: filling them would be wasted work again."""

        import torch

        def storage(t: torch.Tensor) -> int:
            return t.untyped_storage().data_ptr()

        done = {storage(t) for t in written if t.numel()}
        left = [(storage(item[0]), item) for item in self.pending]
        left = [(ptr, item) for ptr, item in left if ptr not in done]
        self.pending.clear()
        if not left:  # the usual case: the weights file had every blob
            return 0
        used = {storage(t) for t in alive if t.numel()}
        with torch.no_grad():
            for ptr, (tensor, filler, generator) in left:
                if ptr in used:
                    _fill_into(tensor, filler, generator)
        return sum(ptr in used for ptr, _ in left)


_DEFERRED: contextvars.ContextVar[DeferredFills | None] = contextvars.ContextVar("prototxt2py_fills", default=None)


@contextlib.contextmanager
def deferred_fills() -> Iterator[DeferredFills]:
    """Within this block :func:`fill` returns ``torch.empty`` tensors and records them; call
    :meth:`DeferredFills.fill_remaining` after loading weights so no blob is left uninitialised.
    A context variable, so other threads (and other contexts) keep filling normally."""
    deferred = DeferredFills()
    token = _DEFERRED.set(deferred)
    try:
        yield deferred
    finally:
        _DEFERRED.reset(token)


def fill(shape: Sequence[int], filler: Any | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A float32 tensor of ``shape`` filled as Caffe's filler of that type would (not bit-identical to
    Caffe's RNG, same distribution). ``filler`` is a ``FillerParameter`` or ``None`` (constant 0).
    Inside :func:`deferred_fills` the tensor is left uninitialised and its filling is recorded instead."""
    import torch

    shape = tuple(int(d) for d in shape)
    deferred = _DEFERRED.get()
    if deferred is not None:
        _check(shape, filler)  # a bad filler is still refused when the net is built, as Caffe does
        out = torch.empty(shape, dtype=torch.float32)
        if out.numel():
            deferred.pending.append((out, filler, generator))
        return out
    out = torch.empty(shape, dtype=torch.float32)  # every filler writes all of it: one pass, not two
    _fill_into(out, filler, generator)
    return out


def fill_blob(out: torch.Tensor, filler: Any | None) -> None:
    """Fill an existing blob as :func:`fill` would (recorded, not filled, inside :func:`deferred_fills`)."""
    deferred = _DEFERRED.get()
    _check(tuple(out.shape), filler)
    if deferred is not None:
        if out.numel():
            deferred.pending.append((out, filler, None))
        return
    import torch

    with torch.no_grad():
        _fill_into(out, filler, None)


_KINDS = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear", "diagonal")


@dataclass(frozen=True)
class DiagonalFiller:
    """Not a Caffe filler type: square matrices (the blob's last two axes) holding ``values`` on their diagonal
    and zeros elsewhere, the initial value a fork's layer sets itself (CRF-RNN's kernel weights from
    ``*_filter_weights_str``, its compatibility ``-1`` on the diagonal)."""

    values: tuple[float, ...]
    type: str = "diagonal"


def _check(shape: tuple[int, ...], filler: Any | None) -> None:
    """The errors :func:`_fill_into` would raise for this filler, without filling anything."""
    if filler is None:
        return
    if filler.type not in _KINDS:
        raise ValueError(f"unknown filler type {filler.type!r}")
    if filler.type == "bilinear":
        _check_bilinear(shape)
    if filler.type != "diagonal":
        return
    if not isinstance(filler, DiagonalFiller):
        if filler.sparse != -1:
            raise ValueError("the diagonal filler does not support sparse")
        return
    if len(shape) < 2 or shape[-1] != shape[-2] or len(filler.values) != shape[-1]:
        raise ValueError(f"{len(filler.values)} diagonal values for a blob of shape {shape}")


def _diagonal(shape: Sequence[int], filler: Any) -> np.ndarray:
    """A :class:`DiagonalFiller`'s matrices, or FlowNet2's ``diagonal`` filler: zeros but for the kernels
    ``[n, n]`` of each ``n`` below both the blob's num and channels, each ``diag_val[n]`` (1 past the
    list) / the kernel's area (an identity mapping of the first channels, averaged over the kernel)."""
    out = np.zeros(tuple(shape), dtype=np.float32)
    if isinstance(filler, DiagonalFiller):
        k = np.arange(len(filler.values))
        out[..., k, k] = np.asarray(filler.values, dtype=np.float32)
        return out
    num, channels, height, width = (tuple(shape) + (1, 1, 1, 1))[:4] if len(shape) <= 4 else (0, 0, 1, 1)
    legacy = out.reshape(num, channels, height * width) if num and channels else out.reshape(0, 0, 0)
    for n in range(min(num, channels)):
        value = np.float32(filler.diag_val[n]) if n < len(filler.diag_val) else np.float32(1)
        legacy[n, n, :] = value / np.float32(height * width)
    return out


def _check_bilinear(shape: Sequence[int]) -> None:
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError("bilinear filler needs a 4-D blob with square kernels")


def _fill_into(out: torch.Tensor, filler: Any | None, generator: torch.Generator | None) -> None:
    """Fill ``out`` in place as the filler would (``None`` = constant 0)."""
    import torch

    shape = tuple(out.shape)
    if filler is None or out.numel() == 0:
        out.zero_()
        return
    _check(shape, filler)
    kind = filler.type
    if kind == "constant":
        out.fill_(filler.value)
    elif kind == "uniform":
        out.uniform_(filler.min, filler.max, generator=generator)
    elif kind == "gaussian":
        out.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0 and shape:
            keep = torch.rand(shape, generator=generator) < _sparse_keep(shape, filler.sparse)
            out.mul_(keep)
    elif kind == "positive_unitball":
        out.uniform_(0, 1, generator=generator)
        flat = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        flat.div_(flat.sum(dim=1, keepdim=True).clamp_min(1e-12))
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _norm(shape, filler.variance_norm))
        out.uniform_(-scale, scale, generator=generator)
    elif kind == "msra":
        std = math.sqrt(2.0 / _norm(shape, filler.variance_norm))
        out.normal_(0.0, std, generator=generator)
    elif kind == "diagonal":
        out.copy_(torch.from_numpy(_diagonal(shape, filler)))
    else:  # bilinear (_check refused every other type)
        out.copy_(bilinear_kernel(shape))


def bilinear_kernel(shape: Sequence[int]) -> torch.Tensor:
    """Caffe's ``bilinear`` filler: the upsampling kernel FCN uses with Deconvolution."""
    import torch

    return torch.from_numpy(bilinear_array(shape))


def bilinear_array(shape: Sequence[int]) -> np.ndarray:
    """:func:`bilinear_kernel` as a numpy array (float32, computed in float32 as Caffe master does)."""
    _check_bilinear(shape)
    k = shape[-1]
    f = math.ceil(k / 2.0)
    c = np.float32((k - 1) / (2.0 * f))
    x = np.arange(k, dtype=np.float32)
    w1 = np.float32(1) - np.abs(x / np.float32(f) - c)
    kernel = w1[:, None] * w1[None, :]
    return np.ascontiguousarray(np.broadcast_to(kernel, tuple(shape)), dtype=np.float32)


def fill_array(shape: Sequence[int], filler: Any | None, rng: np.random.Generator | None = None) -> np.ndarray:
    """A float32 numpy array of ``shape`` filled as :func:`fill` fills a tensor (same formulas and
    distributions, numpy's random generator): what the torch-free exporters use for blobs that no weights
    file provides. ``filler`` is a ``FillerParameter``, a plain ``Filler`` or ``None`` (constant 0)."""
    shape = tuple(int(d) for d in shape)
    _check(shape, filler)
    if filler is None or math.prod(shape) == 0:
        return np.zeros(shape, dtype=np.float32)
    rng = rng if rng is not None else np.random.default_rng()
    kind = filler.type
    if kind == "constant":
        out = np.full(shape, filler.value, dtype=np.float32)
    elif kind == "uniform":
        out = rng.uniform(filler.min, filler.max, shape)
    elif kind == "gaussian":
        out = rng.normal(filler.mean, filler.std, shape)
        if filler.sparse >= 0 and shape:
            out *= rng.random(shape) < _sparse_keep(shape, filler.sparse)
    elif kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape)
        flat = out.reshape(shape[0] if shape else 1, -1)
        flat /= np.maximum(flat.sum(axis=1, keepdims=True), 1e-12)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _norm(shape, filler.variance_norm))
        out = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        out = rng.normal(0.0, math.sqrt(2.0 / _norm(shape, filler.variance_norm)), shape)
    elif kind == "diagonal":
        return _diagonal(shape, filler)
    else:  # bilinear (_check refused every other type)
        return bilinear_array(shape)
    return np.asarray(out, dtype=np.float32)
