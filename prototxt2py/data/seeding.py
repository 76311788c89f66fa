"""Random streams of the readers.

Caffe draws crop offsets, mirror flips and shuffles from per-layer generators seeded from its global RNG
(``random_seed`` in the solver). Here every stream is a numpy generator seeded from one integer (by default
``torch.initial_seed()``, so ``torch.manual_seed``/the solver's ``random_seed`` makes data reproducible), the
layer name and the stream's purpose. Streams that decide *which* records are read (shuffle, rand_skip) depend
on nothing else, so every rank and every loader worker sees the same order and the strides stay disjoint;
transformation streams also take the rank and worker, so they differ between processes.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def base_seed(seed: int | None) -> int:
    """``seed``, or the torch seed of this process when ``None``."""
    return int(seed) if seed is not None else int(torch.initial_seed())


def stream(seed: int, layer: str, purpose: str, *extra: int) -> np.random.Generator:
    """A generator for one purpose of one layer (``extra``: rank, worker, ... for per-process streams)."""
    words = [seed & 0xFFFFFFFFFFFFFFFF, zlib.crc32(layer.encode()), zlib.crc32(purpose.encode()), *extra]
    return np.random.default_rng(np.random.SeedSequence(words))
