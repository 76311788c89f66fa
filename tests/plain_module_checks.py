"""Shared checks for the per-family module tests (``tests/test_modules_<family>.py``): a runtime module is its
spec's :class:`~prototxt2py.layers.base.Call` built, copies and pickles, and holds only plain values."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import torch
from google.protobuf.message import Message
from torch import nn

from prototxt2py.backends.torch_runtime import CaffeNet
from prototxt2py.layers.base import LayerSpec

#: Types a layer module's attributes may have besides tensors and modules: plain values only.
_PLAIN = (type(None), bool, int, float, str, bytes)


def foreign_values(module: nn.Module) -> list[str]:
    """Paths to attribute values of ``module`` and its submodules that are not plain values, tensors or modules
    (an IR node, spec, protobuf message, attrs dataclass ... would make the module depend on this package)."""
    found: list[str] = []

    def walk(value: Any, path: str, seen: set[int]) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor | torch.dtype | torch.device):
            return
        if isinstance(value, Message | LayerSpec) or type(value).__module__.startswith("prototxt2py.ir"):
            found.append(f"{path}: {type(value).__name__}")
            return
        if isinstance(value, tuple | list | set | frozenset):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]", seen)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key, f"{path}.key", seen)
                walk(item, f"{path}[{key!r}]", seen)
        elif isinstance(value, nn.Module):
            for key, item in vars(value).items():
                walk(item, f"{path}.{key}", seen)
        elif not (type(value).__module__.startswith(("torch", "collections", "builtins"))):
            found.append(f"{path}: {type(value).__module__}.{type(value).__name__}")

    walk(module, "module", set())
    return found


def check_modules(net: CaffeNet, families: tuple[str, ...]) -> dict[str, str]:
    """For every layer of ``families`` in ``net``: the module is exactly its Call built (same class, same
    blobs with the same shapes), deep-copies and pickles with equal blobs, and holds only plain values.
    Returns layer name -> Call target, for the caller to assert which class each layer got."""
    targets: dict[str, str] = {}
    for node in net.graph.nodes:
        if node.spec.family not in families:
            continue
        module = net.layer(node.name)
        recipe = node.spec.module(node)
        targets[node.name] = recipe.target
        fresh = recipe.build()
        assert type(module) is type(fresh), node.name
        assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in module.state_dict().items()}, node.name
        assert [tuple(t.shape) for t in net.layer_blobs(node.name)] == [tuple(s) for s in node.param_shapes]
        assert foreign_values(module) == [], node.name
        for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert type(clone) is type(module)
            for key, value in module.state_dict().items():
                assert torch.equal(clone.state_dict()[key], value), (node.name, key)
    return targets
