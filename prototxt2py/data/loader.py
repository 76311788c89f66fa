"""Data layers as ``torch.utils.data`` loaders, so reading and transforming overlap training (Caffe's prefetch
thread, here worker processes).

:class:`LayerBatches` is an endless ``IterableDataset`` of one layer's batches (tuples of tensors in top
order). With ``k`` loader workers, worker ``w`` produces the layer's batches ``w, w + k, w + 2k, ...`` (a reader
with ``skip_batches(n)`` passes over the others without decoding them; one marked ``independent_batches``, whose
batches are random draws, needs no skipping), and ``DataLoader`` hands them out round-robin, so the
sequence of batches is the one a single reader produces, as in Caffe. Rank sharding under torchrun is the
reader's job (``DataLayer.rank``/``world``).

:class:`DataFeed` runs every data layer of a net and returns ``{top: tensor}`` per step. MemoryData, which is fed
from Python, always runs in this process (``feed.source(name).reset(data, labels)``).

Workers are forked where the platform can (``forkserver``/``spawn`` cost seconds per worker, importing torch,
and re-run a script without a ``__main__`` guard). An LMDB environment this process holds (a pycaffe
``caffe.Net`` reading the same database) is inherited: the ``lmdb`` package refuses to open a path twice in one
process, which a forked child still is to it, so a child reads through the inherited environment (read-only,
without a lock table: only the memory map, which the child shares). The start method is chosen when the loader
is made; its workers start at its first ``iter()``.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import pickle
from collections.abc import Collection, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .. import plain as _plain
from ..errors import Prototxt2pyError
from ..proto import caffe_pb2
from . import READERS, BatchSource, DataError, DataLayer, open_source
from .seeding import base_seed

#: readers that must run in the caller's process (fed from Python)
IN_PROCESS = frozenset({"MemoryData"})


def open_reader(layer: DataLayer, seed: int | None = None, worker: int = 0) -> BatchSource:
    """Open ``layer``'s reader with a seed and worker index, for readers that accept them."""
    from . import _readers  # noqa: F401  (registers the built-in readers)

    factory = READERS.get(layer.type)
    if factory is None:
        return open_source(layer)  # the registry's own error
    params = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {}
    if "seed" in params:
        kwargs["seed"] = seed
    if "worker" in params:
        kwargs["worker"] = worker
    return factory(layer, **kwargs)


def _close(source: BatchSource) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


def _skip(source: BatchSource, n: int) -> None:
    """Pass over ``n`` batches: cheaply with the source's ``skip_batches``, not at all for sources whose batches
    are independent random draws (``independent_batches = True``), else by reading and dropping them."""
    if n <= 0 or getattr(source, "independent_batches", False):
        return
    skip = getattr(source, "skip_batches", None)
    if skip is not None:
        skip(n)
        return
    for _ in range(n):
        source.next_batch()


class LayerBatches(IterableDataset):
    """Endless batches of one data layer, as tuples of float32 tensors in top order."""

    def __init__(self, layer: DataLayer, seed: int | None = None, check: bool = True):
        self.layer = layer
        self.seed = base_seed(seed)
        if check:  # a missing source is reported here, in the caller's process, not from inside a worker
            _close(open_reader(layer, self.seed))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        source = open_reader(self.layer, self.seed, worker)
        try:
            _skip(source, worker)
            while True:
                yield tuple(torch.from_numpy(a) for a in source.next_batch())
                _skip(source, workers - 1)
        finally:
            _close(source)

    # Plain values are instances of classes generated on demand (prototxt2py.plain); a fresh worker process
    # must generate them before it can unpickle the layer.
    def __getstate__(self) -> dict[str, Any]:
        return {"layer": pickle.dumps(self.layer), "classes": sorted(_plain_classes(self.layer)), "seed": self.seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in state["classes"]:
            _ensure_plain_class(name)
        self.layer = pickle.loads(state["layer"])
        self.seed = state["seed"]


def _plain_classes(value: Any, out: set[str] | None = None) -> set[str]:
    out = set() if out is None else out
    if isinstance(value, _plain.Plain):
        out.add(type(value).__name__)
    if hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _plain_classes(getattr(value, name), out)
    elif isinstance(value, tuple):
        for v in value:
            _plain_classes(v, out)
    return out


def _ensure_plain_class(name: str) -> None:
    if hasattr(_plain, name):
        return
    stack = list(caffe_pb2.DESCRIPTOR.message_types_by_name.values())
    while stack:
        d = stack.pop()
        if d.name == name:
            _plain.plain_class(d)
            return
        stack.extend(d.nested_types)


def _context() -> Any:
    """``fork`` (fast: no re-import of torch), else ``forkserver`` or ``spawn`` (seconds per worker to start)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def one_opener(layer: DataLayer) -> bool:
    """A LevelDB takes one opener at a time (its LOCK file; Caffe opens it once per Data layer), so one loader
    worker reads it, never several."""
    return layer.type == "Data" and getattr(layer.param, "backend", None) == "LEVELDB"


def make_loader(
    layer: DataLayer, workers: int = 2, prefetch: int = 4, seed: int | None = None, pin_memory: bool = False
) -> DataLoader:
    """A ``DataLoader`` over :class:`LayerBatches` with ``workers`` processes keeping about ``prefetch``
    batches ready (Caffe's ``data_param.prefetch``, 4 by default). ``workers=0`` reads in this process."""
    if layer.type in IN_PROCESS and workers:
        raise DataError("MemoryData is fed from Python and cannot be read by loader workers", layer=layer.name)
    if one_opener(layer):
        workers = min(workers, 1)
    dataset = LayerBatches(layer, seed)
    # the loader's own generator: iter() draws a base seed from it (the workers seed themselves from ``seed``),
    # which from torch's global generator would change the weights fillers draw after it (Caffe's data layers
    # never touch the fillers' generator): a solver's weights would depend on its number of loader workers
    generator = torch.Generator().manual_seed(0)
    if workers <= 0:
        return DataLoader(dataset, batch_size=None, num_workers=0, pin_memory=pin_memory, generator=generator)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=max(1, math.ceil(prefetch / workers)),
        persistent_workers=True,
        multiprocessing_context=_context(),
        pin_memory=pin_memory,
        generator=generator,
    )


def _from_worker(error: Prototxt2pyError) -> Prototxt2pyError:
    """torch re-raises a loader worker's error as its type made from "Caught DataError in DataLoader worker
    process 1. Original Traceback ..." and the traceback's text; the error's own line (file, layer, message) is
    that text's last line, after the type's name."""
    text = error.message
    if "Original Traceback" not in text:
        return error
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    return type(error)(last[len(prefix):] if last.startswith(prefix) else last)


class DataFeed:
    """Every data layer of a net, one batch per :meth:`next` as ``{top name: tensor}``."""

    def __init__(self, layers: list[DataLayer], workers: int = 2, prefetch: int = 4, seed: int | None = None):
        seed = base_seed(seed)
        self._sources: dict[str, BatchSource] = {}
        self._iters: dict[str, Iterator[tuple[torch.Tensor, ...]]] = {}
        self._tops = {layer.name: layer.tops for layer in layers}
        for layer in layers:
            if layer.type in IN_PROCESS or workers <= 0:
                self._sources[layer.name] = open_reader(layer, seed)
            else:
                ahead = int(getattr(layer.param, "prefetch", 0) or prefetch)  # data_param.prefetch when set
                self._iters[layer.name] = iter(make_loader(layer, workers, ahead, seed))

    def source(self, layer: str) -> BatchSource:
        """The in-process source of ``layer`` (MemoryData: call ``reset(data, labels)`` on it)."""
        if layer not in self._sources:
            raise DataError("not an in-process data layer of this net", layer=layer)
        return self._sources[layer]

    def next(self, layers: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The next batch of every data layer, or of ``layers`` only (the others do not advance: pycaffe's
        ``forward(start=...)`` runs only the data layers in its range, as Caffe's ``ForwardFromTo``)."""
        if self._tops and not (self._sources or self._iters):
            raise DataError("the data readers are closed (the solver or feed was closed): no more batches")
        out: dict[str, torch.Tensor] = {}
        for name, tops in self._tops.items():
            if layers is not None and name not in layers:
                continue
            if name in self._sources:
                batch = tuple(torch.from_numpy(a) for a in self._sources[name].next_batch())
            else:
                try:
                    batch = next(self._iters[name])
                except Prototxt2pyError as e:
                    raise _from_worker(e) from None
                except RuntimeError as e:  # a worker killed from outside (the OOM killer, kill -9)
                    if not str(e).startswith("DataLoader worker"):
                        raise
                    raise DataError(f"its data loader worker died: {str(e).splitlines()[0]} (out of memory?)",
                                    layer=name) from None
            out.update(zip(tops, batch, strict=True))
        return out

    def close(self) -> None:
        for source in self._sources.values():
            _close(source)
        self._sources.clear()
        self._iters.clear()  # the loaders' workers stop when their iterators are collected

    def __enter__(self) -> DataFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
