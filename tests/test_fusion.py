"""The inference plan's fused chains (``prototxt2py.backends.fusion``): which layers are fused, that the fused
step computes what the layers compute, and where it must not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from golden import assert_close, corpus_deploy_params, corpus_net_and_inputs
from test_runtime import build, randomise

from prototxt2py.backends import fusion
from prototxt2py.backends.torch_runtime import CaffeNet

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.1 } }
layer { name: "lrn" type: "LRN" bottom: "c1" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "c2" type: "Convolution" bottom: "lrn" top: "c2" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "c2" top: "c2" }
layer { name: "s2" type: "Scale" bottom: "c2" top: "c2" scale_param { bias_term: true } }
layer { name: "c3" type: "Convolution" bottom: "lrn" top: "c3"
        convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 bias_term: false } }
layer { name: "bn3" type: "BatchNorm" bottom: "c3" top: "c3" }
layer { name: "sum" type: "Eltwise" bottom: "c3" bottom: "c2" top: "sum" }
layer { name: "relu" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave" type: "Pooling" bottom: "pool" top: "ave" pooling_param { pool: AVE kernel_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "up" type: "Deconvolution" bottom: "sum" top: "up"
        convolution_param { num_output: 3 kernel_size: 2 stride: 2 } }
"""
X = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(3))
ONEDNN = fusion.ONEDNN_CONV is not None and fusion.ONEDNN_PACK is not None


@pytest.fixture(autouse=True)
def no_size_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """These nets are tiny: take oneDNN whatever the size (the floor itself is tested below)."""
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 0)


@pytest.fixture
def net(tmp_path: Path) -> CaffeNet:
    net = build(tmp_path, NET)
    randomise(net)
    return net.eval()


def _conv_calls(net: CaffeNet) -> list[str]:
    calls: list[str] = []
    for name in ("c1", "c2", "c3", "bn2", "bn3", "sum", "relu", "r1"):
        net.layer(name).register_forward_hook(lambda *_, name=name: calls.append(name))
    return calls


def test_chains_found(net: CaffeNet) -> None:
    chains = [(f.conv, f.affine, f.residual, f.post, f.unary, tuple(round(s, 6) for s in f.scalars))
              for f in net._fusions]
    assert chains == [("c1", (), None, "r1", "leaky_relu", (0.1,)), ("c2", ("bn2", "s2"), "sum", "relu", "relu", ()),
                      ("c3", ("bn3",), None, None, "none", ())]
    c2 = net._fusions[1]
    assert net.graph.values[c2.other].blob == "c3" and c2.other_first  # c3 is the Eltwise's bottom 0
    assert c2.members == ("c2", "bn2", "s2", "sum", "relu")
    kinds = {step.key: step.kind for step in net._inference_plan}
    # Deconvolution may receive channels-last values and is not known to handle them: made dense. LRN and
    # pooling take them as they are (layout-agnostic).
    assert kinds["up"] == fusion.DENSE
    assert kinds["lrn"] == kinds["pool"] == kinds["ave"] == fusion.LAYER
    assert kinds["c1"] == kinds["c2"] == kinds["c3"] == fusion.FUSED


def test_fused_plan_matches_the_layers(net: CaffeNet) -> None:
    calls = _conv_calls(net)
    with torch.no_grad():
        reference = net(X, all_blobs=True)
        calls.clear()
        fused = net(X)
    if ONEDNN:
        assert calls == []  # every chain ran as one oneDNN call
    assert sorted(fused) == ["ave", "ip", "up"]
    for name, value in fused.items():
        assert value.is_contiguous(), f"output '{name}' is not a contiguous NCHW tensor"
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5)


def test_with_autograd_the_chains_run_differentiable_ops(net: CaffeNet) -> None:
    grads = []
    for all_blobs in (False, True):
        net.zero_grad()
        x = X.clone().requires_grad_()
        out = net(x, all_blobs=all_blobs)
        (out["ip"].square().sum() + out["up"].sum()).backward()
        grads.append([x.grad, *(p.grad for p in net.parameters())])
    for fused, plain in zip(*grads, strict=True):  # sums of ~1000 products, rounded in another order
        torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-4)


def test_packed_weights_follow_weight_changes(net: CaffeNet) -> None:
    def check() -> None:
        with torch.no_grad():
            fused, reference = net(X), net(X, all_blobs=True)
        for name, value in fused.items():
            torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5)

    check()
    with torch.no_grad():
        net.layer("c1").weight.mul_(-1.0)
        net.layer("bn3").variance.mul_(4.0)
        net.layer("s2").bias.add_(1.0)
    check()
    net.layer("c2").weight.data = torch.randn(6, 6, 1, 1)
    check()


def test_other_dtypes_and_batch_sizes_fall_back_or_repack(net: CaffeNet) -> None:
    with torch.no_grad():
        for x in (X[:1], torch.cat([X, X, X])):  # packed for batch 2, run at 1 and 6
            fused, reference = net(x), net(x, all_blobs=True)
            torch.testing.assert_close(fused["ip"], reference["ip"], rtol=1e-5, atol=1e-5)
        net.double()
        fused, reference = net(X.double()), net(X.double(), all_blobs=True)
    torch.testing.assert_close(fused["up"], reference["up"])


def test_batch_statistics_run_the_chain_layer_by_layer(tmp_path: Path) -> None:
    net = build(tmp_path, NET.replace('top: "c3" }', 'top: "c3" batch_norm_param { use_global_stats: false } }'))
    randomise(net)
    net.eval()
    calls = _conv_calls(net)
    with torch.no_grad():
        fused = net(X)["ip"]
        assert "bn3" in calls and "c3" in calls
        torch.testing.assert_close(fused, net(X, all_blobs=True)["ip"], rtol=1e-5, atol=1e-5)


def test_a_blob_read_twice_ends_the_chain(tmp_path: Path) -> None:
    """c2's output also feeds a Power layer: the conv and BatchNorm/Scale fuse, the Eltwise and ReLU do not."""
    text = NET.replace('layer { name: "c3"', 'layer { name: "tap" type: "Power" bottom: "c2" top: "tap" }\n'
                                             'layer { name: "c3"')
    net = build(tmp_path, text)
    randomise(net)
    chains = [(f.conv, f.affine, f.residual, f.post) for f in net._fusions]
    assert chains[1:] == [("c2", ("bn2", "s2"), None, None), ("c3", ("bn3",), "sum", "relu")]
    with torch.no_grad():
        fused, reference = net.eval()(X), net(X, all_blobs=True)
    for name in ("tap", "ip", "up"):
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-5, atol=1e-5)


AGNOSTIC = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 10 dim: 11 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "data" top: "c2"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "split" type: "Split" bottom: "c1" top: "s1" top: "s2" }
layer { name: "pm" type: "Pooling" bottom: "s1" top: "pm" top: "mask"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pa" type: "Pooling" bottom: "s2" top: "pa" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ps" type: "Pooling" bottom: "c1" top: "ps" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }
layer { name: "pg" type: "Pooling" bottom: "c1" top: "pg" pooling_param { pool: AVE global_pooling: true } }
layer { name: "lrn" type: "LRN" bottom: "c1" top: "lrn" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "lrnw" type: "LRN" bottom: "c2" top: "lrnw" lrn_param { norm_region: WITHIN_CHANNEL beta: 0.6 } }
layer { name: "emax" type: "Eltwise" bottom: "c1" bottom: "c2" top: "emax" eltwise_param { operation: MAX } }
layer { name: "eprod" type: "Eltwise" bottom: "c1" bottom: "c2" top: "eprod" eltwise_param { operation: PROD } }
layer { name: "esum" type: "Eltwise" bottom: "c1" bottom: "c2" top: "esum" eltwise_param { coeff: 0.5 coeff: -2 } }
layer { name: "cat" type: "Concat" bottom: "c1" bottom: "c2" top: "cat" }
layer { name: "pw" type: "Power" bottom: "c1" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "ex" type: "Exp" bottom: "c2" top: "ex" }
layer { name: "lg" type: "Log" bottom: "ex" top: "lg" }
layer { name: "cl" type: "Clip" bottom: "c1" top: "cl" clip_param { min: -0.1 max: 0.2 } }
layer { name: "bnll" type: "BNLL" bottom: "c1" top: "bnll" }
layer { name: "sw" type: "Swish" bottom: "c1" top: "sw" }
layer { name: "elu" type: "ELU" bottom: "c1" top: "elu" }
layer { name: "abs" type: "AbsVal" bottom: "c1" top: "abs" }
layer { name: "drop" type: "Dropout" bottom: "c1" top: "drop" }
layer { name: "relu" type: "ReLU" bottom: "c1" top: "relu" }
layer { name: "relu6" type: "ReLU6" bottom: "c1" top: "relu6" }
layer { name: "sig" type: "Sigmoid" bottom: "c1" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "c1" top: "tanh" }
layer { name: "prelu" type: "PReLU" bottom: "c1" top: "prelu" }
layer { name: "scale" type: "Scale" bottom: "c1" top: "scale" scale_param { bias_term: true } }
layer { name: "scale2" type: "Scale" bottom: "c1" bottom: "c2" top: "scale2" scale_param { axis: 0 } }
layer { name: "bias" type: "Bias" bottom: "c2" top: "bias" }
layer { name: "flat" type: "Flatten" bottom: "c1" top: "flat" flatten_param { axis: 2 } }
layer { name: "reshape" type: "Reshape" bottom: "c2" top: "reshape" reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }
"""


def test_layout_agnostic_layers_give_the_same_on_channels_last_values(tmp_path: Path) -> None:
    """Every type the plan lets channels-last values into: the same values as on NCHW inputs, and the outputs
    handed back contiguous."""
    net = build(tmp_path, AGNOSTIC)
    randomise(net)
    net.eval()
    from prototxt2py.layers import REGISTRY

    agnostic = {spec.type for spec in REGISTRY.values() if spec.layout_agnostic}
    assert {n.type for n in net.graph.nodes} >= agnostic  # each one is checked here
    assert {step.kind for step in net._inference_plan} == {fusion.INPUT, fusion.FUSED, fusion.LAYER}
    with torch.no_grad():
        x = torch.randn(2, 4, 10, 11, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        fused = net(x)
        torch.manual_seed(0)
        reference = net(x, all_blobs=True)
    for name, value in fused.items():
        assert value.is_contiguous()
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_small_layers_skip_onednn(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``ONEDNN_MIN_MACS`` the fused call's fixed cost outweighs its speed: the layers run as torch ops
    (BatchNorm still folded), with the same results."""
    # (N*H*W positions) x weight.numel(): c2 5,832, c1 17,496, c3 52,488
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 20_000)
    calls = _conv_calls(net)
    with torch.no_grad():
        fused, reference = net(X), net(X, all_blobs=True)
        calls.clear()
        net(X)
    # c1 and its ReLU as layers; c2 as F.conv2d with BatchNorm/Scale folded, then Eltwise and ReLU as layers;
    # c3 (big enough) on oneDNN
    assert calls == ["c1", "r1", "sum", "relu"]
    for name, value in fused.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rel", corpus_deploy_params())
def test_corpus_deploy_net_fused_as_layer_by_layer(rel: str) -> None:
    """Every corpus deploy net the runtime builds: the fused plan's outputs are the layer-by-layer ones, with every
    chain on oneDNN whatever its size (this file's size floor is 0)."""
    net, feed = corpus_net_and_inputs(rel)
    net.eval()
    inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.no_grad():
        reference = net(**inputs, all_blobs=True)
        fused = net(**inputs)
    if not fused:
        pytest.skip("every top is consumed (a Silence layer): the net has no outputs to compare")
    for name, value in fused.items():
        want = reference[name].numpy()
        scale = float(np.abs(want).max(initial=0.0))
        assert value.is_contiguous()
        assert_close(value.numpy(), want, 1e-4, 1e-5 * max(scale, 1.0), f"output '{name}'")
