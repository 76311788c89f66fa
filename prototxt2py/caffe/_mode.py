"""Caffe's process-wide mode (CPU/GPU, device id), read by each ``caffe.Net`` when it is made."""

from __future__ import annotations

import torch

_state = {"gpu": False, "device": 0}


def set_mode_cpu() -> None:
    """Nets made from now on run on the CPU."""
    _state["gpu"] = False


def set_mode_gpu() -> None:
    """Nets made from now on run on the CUDA device chosen by :func:`set_device` (the CPU where none exists)."""
    _state["gpu"] = True


def set_device(device_id: int) -> None:
    """The CUDA device for nets made in GPU mode from now on."""
    if int(device_id) < 0:
        raise ValueError(f"device id must be >= 0, got {device_id}")
    _state["device"] = int(device_id)


def device() -> torch.device:
    """Where a net made now computes: ``cuda:<id>`` in GPU mode when that device exists, else the CPU (Caffe
    would abort without a GPU; running on the CPU keeps scripts working unchanged)."""
    if _state["gpu"] and torch.cuda.is_available() and _state["device"] < torch.cuda.device_count():
        return torch.device("cuda", _state["device"])
    return torch.device("cpu")


def set_random_seed(seed: int) -> None:
    """Seed the generators of fillers and random layers (Dropout, random DummyData), as Caffe's seed does."""
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))
