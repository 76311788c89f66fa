"""Pooling-family modules (Pooling, SPP, LRN, MVN) as plain Calls: the runtime's module is exactly the Call's
build, holds nothing of the IR or protobuf, deep-copies and pickles; stock ``nn.MaxPool2d``/``nn.AvgPool2d``
are chosen only where they equal Caffe's pooling for every input size (checked against the helper over many
sizes); global pooling as adaptive pooling is the mean/max of the plane."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from golden import cases
from google.protobuf.message import Message
from kernel_count import KernelCount
from test_golden_layers import run_golden_case
from torch import nn

import prototxt2py
from prototxt2py.ir import Graph, Node
from prototxt2py.layers.base import LayerSpec
from prototxt2py.layers.pooling import torch_pools_as_caffe
from prototxt2py.nn import pooling
from prototxt2py.nn.pooling import LRN, MVN, SPP, Pooling
from prototxt2py.reader import read_net_text

FORBIDDEN = (Node, Graph, LayerSpec, Message)


def net_of(layers: str, shape: tuple[int, ...], phase: str = "TEST") -> prototxt2py.CaffeNet:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'name: "t"\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n{layers}'
    return prototxt2py.load(read_net_text(text), phase=phase)


def _walk(value: Any, path: str, seen: set[int]) -> None:
    """Fail on any IR node, graph, spec or protobuf message reachable from ``value``'s attributes."""
    if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        return
    seen.add(id(value))
    assert not isinstance(value, FORBIDDEN), f"{path} holds a {type(value).__name__}"
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{path}[{k!r}]", seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]", seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for k, v in vars(value).items():
            _walk(v, f"{path}.{k}", seen)


def assert_plain_modules(net: prototxt2py.CaffeNet, types: set[str], inputs: tuple[torch.Tensor, ...]) -> None:
    """Every layer of ``types``: the module is its Call's build (same class and printout, same blobs), it
    references nothing of the IR/protobuf, and deep copies and pickles compute what it computes."""
    checked = 0
    for node in net.graph.nodes:
        if node.type not in types:
            continue
        module = net.layer(node.name)
        built = node.spec.module(node).build()
        assert type(module) is type(built), node.name
        assert repr(module) == repr(built), node.name
        assert {k: v.shape for k, v in module.state_dict().items()} == \
               {k: v.shape for k, v in built.state_dict().items()}, node.name
        _walk(module, node.name, set())
        buffer = io.BytesIO()
        torch.save(module, buffer)  # pickles the whole module
        clones = [copy.deepcopy(module), pickle.loads(pickle.dumps(module))]
        x = [net(*inputs, all_blobs=True)[b] for b in node.bottoms]
        with torch.no_grad():
            torch.manual_seed(0)
            want = module(*x)
            for clone in clones:
                torch.manual_seed(0)
                got = clone(*x)
                for a, b in zip(want if isinstance(want, tuple) else (want,),
                                got if isinstance(got, tuple) else (got,), strict=True):
                    assert torch.equal(a, b), node.name
        checked += 1
    assert checked, f"no layer of {types} in the net"


POOLING_NET = """
layer { name: "max" type: "Pooling" bottom: "x" top: "max" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave" type: "Pooling" bottom: "x" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "floor" type: "Pooling" bottom: "x" top: "floor"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR } }
layer { name: "bigpad" type: "Pooling" bottom: "x" top: "bigpad" pooling_param { pool: AVE kernel_size: 3 pad: 2 } }
layer { name: "skip" type: "Pooling" bottom: "x" top: "skip" pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
layer { name: "mask" type: "Pooling" bottom: "x" top: "mpool" top: "mask" pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "sto" type: "Pooling" bottom: "x" top: "sto" pooling_param { pool: STOCHASTIC kernel_size: 2 } }
layer { name: "gmax" type: "Pooling" bottom: "x" top: "gmax" pooling_param { pool: MAX global_pooling: true } }
layer { name: "gave" type: "Pooling" bottom: "x" top: "gave" pooling_param { pool: AVE global_pooling: true } }
layer { name: "spp" type: "SPP" bottom: "x" top: "spp" spp_param { pyramid_height: 3 pool: AVE } }
layer { name: "lrn" type: "LRN" bottom: "x" top: "lrn" lrn_param { local_size: 3 alpha: 0.1 beta: 0.6 k: 2 } }
layer { name: "lrnw" type: "LRN" bottom: "x" top: "lrnw" lrn_param { norm_region: WITHIN_CHANNEL alpha: 0.5 } }
layer { name: "mvn" type: "MVN" bottom: "x" top: "mvn" mvn_param { across_channels: true } }
"""

#: layer -> the class the runtime builds for it
EXPECTED = {
    "max": nn.MaxPool2d, "ave": nn.AvgPool2d, "floor": nn.MaxPool2d, "bigpad": Pooling, "skip": Pooling,
    "mask": Pooling, "sto": Pooling, "gmax": nn.AdaptiveMaxPool2d, "gave": nn.AdaptiveAvgPool2d, "spp": SPP,
    "lrn": LRN, "lrnw": LRN, "mvn": MVN,
}


@pytest.fixture(scope="module")
def pooling_net() -> prototxt2py.CaffeNet:
    return net_of(POOLING_NET, (2, 3, 9, 10))


def test_modules_are_their_calls(pooling_net: prototxt2py.CaffeNet) -> None:
    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(0))
    assert_plain_modules(pooling_net, {"Pooling", "SPP", "LRN", "MVN"}, (x,))
    assert {name: type(pooling_net.layer(name)) for name in EXPECTED} == EXPECTED
    assert pooling_net.layer("max").ceil_mode and pooling_net.layer("max").stride == 2


def test_modules_run_in_double_and_under_fx(pooling_net: prototxt2py.CaffeNet) -> None:
    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(1))
    want = pooling_net(x, all_blobs=True)
    got = copy.deepcopy(pooling_net).double()(x.double(), all_blobs=True)
    for name, value in want.items():
        assert got[name].dtype == torch.float64, name
        torch.testing.assert_close(got[name].float(), value, rtol=1e-5, atol=1e-6, msg=name)
    got = trace_with_leaf_helpers(pooling_net)(x)
    assert set(got) == set(pooling_net.output_names)
    for name, value in got.items():
        assert torch.equal(value, want[name]), name


class LeafHelperTracer(torch.fx.Tracer):
    """Records every module of ``prototxt2py.nn`` as one call, as the runtime means to (their geometry is
    decided on concrete input shapes)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("prototxt2py.nn.") or super().is_leaf_module(m, qualname)


def trace_with_leaf_helpers(net: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(net, LeafHelperTracer().trace(net))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_stock_pooling_is_caffe_for_every_size(pool: str) -> None:
    """Wherever ``torch_pools_as_caffe`` lets the runtime use ``nn.MaxPool2d``/``nn.AvgPool2d``, they give the
    helper's values (Caffe's, checked against Caffe's loops in test_layers_pooling.py) on every input size;
    the configurations it refuses do differ from torch's on some size."""
    gen = torch.Generator().manual_seed(3)
    refused_differ = 0
    for kernel in range(1, 5):
        for stride in range(1, 6):
            for pad in range(0, kernel):
                for ceil in (True, False):
                    exact = torch_pools_as_caffe((kernel, kernel), (pad, pad), (stride, stride), ceil)
                    helper = Pooling(pool, (kernel, kernel), (stride, stride), (pad, pad), ceil)
                    for size in range(max(1, kernel - pad), 13):
                        x = torch.randn(1, 2, size, size + 1, generator=gen)
                        try:
                            want = helper(x)
                        except ValueError:  # Caffe refuses this geometry
                            continue
                        if pad > kernel // 2:
                            assert not exact
                            continue
                        stock = (nn.MaxPool2d if pool == "MAX" else nn.AvgPool2d)(kernel, stride, pad, ceil_mode=ceil)
                        got = stock(x)
                        same = got.shape == want.shape and torch.allclose(got, want, rtol=1e-6, atol=1e-7)
                        if exact:
                            assert same, f"{pool} k{kernel} s{stride} p{pad} ceil={ceil} on {size}"
                        refused_differ += not same
    assert refused_differ  # the refused configurations are not all harmless


def test_global_pooling_is_the_plane_mean_and_max() -> None:
    x = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(nn.AdaptiveAvgPool2d(1)(x), x.mean((2, 3), keepdim=True))
    assert torch.equal(nn.AdaptiveMaxPool2d(1)(x), x.amax((2, 3), keepdim=True))
    xg = x.clone().requires_grad_(True)
    nn.AdaptiveMaxPool2d(1)(xg).sum().backward()  # one winner per plane, as Caffe's first maximum
    assert torch.equal(xg.grad.sum((2, 3)), torch.ones(2, 5))


def test_helper_checks_geometry_at_run_time() -> None:
    """A module used on an input smaller than the net's refuses it as Caffe's Reshape would."""
    with pytest.raises(ValueError, match="does not fit"):
        Pooling("MAX", (5, 5), (1, 1), (0, 0), ceil_mode=False)(torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="padding"):
        Pooling("STOCHASTIC", (3, 3), (1, 1), (1, 1))(torch.zeros(1, 1, 5, 5))


@pytest.mark.slow
def test_helpers_compile_without_graph_breaks() -> None:
    """Every helper of both families under ``torch.compile(fullgraph=True)``: eager's values, and a backward."""
    from prototxt2py.nn.elementwise import Clip, Exp, ForkDropout, Log, Power, ScaledELU, SharedPReLU, Swish

    helpers = [Pooling("AVE", (3, 3), padding=(2, 2)), Pooling("MAX", (2, 2), (2, 2), return_mask=True),
               Pooling("STOCHASTIC", (2, 2)), SPP("MAX", 3), LRN(3, alpha=0.1, beta=0.6, k=2.0),
               LRN(5, across_channels=False), MVN(across_channels=True), Power(0.0, 1.0, 5.0), Power(2.0, 0.5, 1.0),
               Exp(2.0, 0.5, 1.0), Log(10.0, 1.0, 1.0), Clip(0.5, -0.5), ForkDropout(0.5, scale_train=False),
               ScaledELU(1.5, 1.1), Swish(2.0), SharedPReLU()]
    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(5))
    for module in helpers:
        module.eval()
        want = module(x)
        got = torch.compile(module, backend="aot_eager", fullgraph=True)(x)
        for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,),
                        strict=True):
            torch.testing.assert_close(a, b, equal_nan=True, msg=repr(module))
        xg = x.clone().requires_grad_(True)
        y = torch.compile(module, backend="aot_eager", fullgraph=True)(xg)
        (y[0] if isinstance(y, tuple) else y).sum().backward()
        assert xg.grad is not None, repr(module)


LRN_CASES = [case for case in cases("layers") if case.name.startswith("lrn_")]


@pytest.mark.parametrize("case", LRN_CASES, ids=lambda c: c.name)
def test_lrn_accelerator_form_is_caffe(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the LRN takes its fewest-kernel form (one sum pooling over channels, ``pow``): here forced on
    the CPU, against Caffe's outputs and gradients."""
    monkeypatch.setattr(pooling, "_on_accelerator", lambda x: True)
    run_golden_case(case)


def test_lrn_accelerator_form_launches_fewer_kernels_than_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where each launch costs more than a small kernel's work, our LRN must not launch more kernels than
    ``nn.LocalResponseNorm``; and the forced form's window sum is the CPU's shifted-add sum."""
    x = torch.randn(2, 7, 5, 6, generator=torch.Generator().manual_seed(2))
    for n in (1, 3, 5, 9):  # 9 > channels: the padding covers whole windows
        shifted = pooling._lrn_channel_window_sum(x, n)
        torch.testing.assert_close(pooling._pooled_channel_window_sum(x, n), shifted)
    ours, stock = LRN(5, alpha=1e-4, beta=0.75), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
    with torch.inference_mode():
        with KernelCount() as cpu:
            ours(x)
        monkeypatch.setattr(pooling, "_on_accelerator", lambda x: True)
        with KernelCount() as accelerator:
            got = ours(x)
        with KernelCount() as reference:
            want = stock(x)
    torch.testing.assert_close(got, want)
    assert len(accelerator.names) <= len(reference.names) < len(cpu.names), (accelerator.names, reference.names)
