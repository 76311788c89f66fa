"""Loss layers and Accuracy as plain runtime modules: the runtime builds exactly the spec's ``Call`` (a helper of
``prototxt2py.nn.losses``), modules copy and pickle and keep no IR/spec/protobuf references, and attributes are
plain values (enum names, not protobuf numbers). Numbers are covered by the golden suite and
``test_layers_losses.py``; the checks here add the default-argument rule of the calls and compiled runs.

:func:`check_modules` is shared by the recurrent and forks module tests."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf.message import Message

import prototxt2py
from prototxt2py.ir import Node
from prototxt2py.layers.base import LayerSpec
from prototxt2py.nn import helpers, resolve
from prototxt2py.reader import read_net_text


def net_of(shapes: dict[str, tuple[int, ...]], layers: str, **load: Any) -> prototxt2py.CaffeNet:
    tops = " ".join(f'top: "{n}"' for n in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes.values())
    text = f'name: "t"\nlayer {{ name: "in" type: "Input" {tops} input_param {{ {dims} }} }}\n{layers}\n'
    return prototxt2py.load(read_net_text(text), **load)


def _foreign(value: Any, seen: set[int], path: str) -> str | None:
    """Path to an IR node, spec, protobuf message or attrs dataclass reachable from ``value``, else None."""
    if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        return None
    seen.add(id(value))
    if isinstance(value, (Node, LayerSpec, Message)) or dataclasses.is_dataclass(value):
        return f"{path}: {type(value).__name__}"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = enumerate(value)
    elif isinstance(value, torch.nn.Module):
        items = vars(value).items()
    else:
        return None
    for key, item in items:
        found = _foreign(item, seen, f"{path}.{key}")
        if found:
            return found
    return None


def check_modules(net: prototxt2py.CaffeNet) -> list[str]:
    """Every layer module that a spec describes by ``module()``: its class is exactly the Call's (a stock
    ``torch.nn`` class or a helper of :mod:`prototxt2py.nn`), it deep-copies and pickles, and nothing in it
    refers to the IR. Returns the Call targets (plugin targets by class name) of the non-input layers."""
    targets = []
    for node in net.graph.nodes:
        if not node.spec.overrides("module") or node.spec.is_input(node):
            continue
        recipe = node.spec.module(node)
        module = net.layer(node.name)
        assert type(module) is type(recipe.build()), f"{node.name}: {type(module)} is not {recipe.target}"
        if not recipe.target.startswith("nn."):
            assert resolve(recipe.target) is type(module)
        assert _foreign(module, set(), node.name) is None, _foreign(module, set(), node.name)
        copied = copy.deepcopy(module)
        assert type(copied) is type(module)
        restored = pickle.loads(pickle.dumps(module))
        for name in getattr(module, "blob_names", ()):
            assert torch.equal(getattr(restored, name), getattr(module, name))
        targets.append(recipe.target.rpartition(":")[2])  # a plugin helper "package.module:Class" by its name
    return targets


LOSS_CASES = [
    ('type: "SoftmaxWithLoss" bottom: "x" bottom: "label"', "SoftmaxWithLoss", {}),
    ('type: "SoftmaxWithLoss" bottom: "x" bottom: "label" loss_param { ignore_label: 2 normalize: false }',
     "SoftmaxWithLoss", {"ignore_label": 2, "normalization": "BATCH_SIZE"}),
    ('type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t"', "SigmoidCrossEntropyLoss", {}),
    ('type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" loss_param { normalization: VALID }',
     "SigmoidCrossEntropyLoss", {"normalization": "VALID"}),
    ('type: "EuclideanLoss" bottom: "x" bottom: "t"', "EuclideanLoss", {}),
    ('type: "HingeLoss" bottom: "x" bottom: "label" hinge_loss_param { norm: L2 }', "HingeLoss", {"norm": "L2"}),
    ('type: "Accuracy" bottom: "x" bottom: "label" top: "per_class" accuracy_param { top_k: 2 }', "Accuracy",
     {"top_k": 2, "per_class": True}),
    ('type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "h"', "InfogainLoss", {}),
]


@pytest.mark.parametrize(("layer", "target", "kwargs"), LOSS_CASES,
                         ids=[c[1] + str(i) for i, c in enumerate(LOSS_CASES)])
def test_loss_calls_and_modules(layer: str, target: str, kwargs: dict) -> None:
    net = net_of({"x": (4, 3), "label": (4,), "t": (4, 3), "h": (3, 3)},
                 f'layer {{ name: "l" {layer} top: "out" }}')
    node = net.graph.node("l")
    recipe = node.spec.module(node)
    assert (recipe.target, dict(recipe.kwargs)) == (target, kwargs)
    assert check_modules(net) == [target]


def test_contrastive_and_multinomial_calls() -> None:
    net = net_of({"a": (2, 3, 1, 1), "b": (2, 3, 1, 1), "y": (2, 1, 1, 1), "p": (2, 3), "label": (2,)},
                 'layer { name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "c" '
                 "contrastive_loss_param { margin: 0.5 legacy_version: true } }\n"
                 'layer { name: "m" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "m" }')
    c = net.graph.node("c")
    assert dict(c.spec.module(c).kwargs) == {"margin": 0.5, "legacy_version": True}
    assert check_modules(net) == ["ContrastiveLoss", "MultinomialLogisticLoss"]


def test_loss_attrs_are_plain_names() -> None:
    net = net_of({"x": (4, 3), "label": (4,)},
                 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
                 "loss_param { normalization: FULL } }\n"
                 'layer { name: "h" type: "HingeLoss" bottom: "x" bottom: "label" top: "h" }')
    assert net.graph.node("l").attrs.normalization == "FULL"
    assert net.graph.node("h").attrs.norm == "L1"


def test_softmax_loss_double_keeps_caffe_gradient() -> None:
    """The helper runs in double; the gradient at a
    probability below FLT_MIN is Caffe's ``p - 1`` (unclamped), not the clamped log's 0."""
    module = helpers()["SoftmaxWithLoss"](ignore_label=1)
    x = torch.tensor([[0.0, 200.0, 0.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    loss = module(x, label)
    loss.backward()
    p = torch.softmax(x.detach(), 1).numpy()
    want = -(np.log(np.float64(np.finfo(np.float32).tiny)) + np.log(p[2, 2])) / 2
    np.testing.assert_allclose(float(loss.detach()), want, rtol=1e-12)
    grad = p.copy()
    grad[0, 0] -= 1
    grad[2, 2] -= 1
    grad[1] = 0
    np.testing.assert_allclose(x.grad.numpy(), grad / 2, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_loss_modules_compile() -> None:
    """``torch.compile`` runs the helpers (autograd Functions included) to the eager numbers."""
    x = torch.randn(4, 3, requires_grad=True)
    label = torch.tensor([0.0, 2.0, 1.0, 1.0])
    for name, kwargs in (("SoftmaxWithLoss", {}), ("Accuracy", {"per_class": True}), ("HingeLoss", {})):
        module = helpers()[name](**kwargs)
        compiled = torch.compile(module, backend="eager")
        torch.testing.assert_close(compiled(x, label), module(x, label))
