"""The PyTorch runtime: inputs and outputs, Caffe's phase semantics, weight sharing, BatchNorm folding at
inference, and ``torch.fx`` / ``torch.compile``."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from golden import CORPUS, DEVICE, GOLDEN, assert_close, case_params, meta, npz, to_numpy, zoo_net_and_inputs
from test_golden_nets import SLOW_ZOO

import prototxt2py
from prototxt2py.backends.torch_runtime import CaffeNet
from prototxt2py.errors import UnsupportedLayerError
from prototxt2py.weights import load_weights, read_caffemodel, write_caffemodel


def build(tmp_path: Path, text: str, **kwargs) -> CaffeNet:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return prototxt2py.load(path, **kwargs)


def randomise(net: CaffeNet, seed: int = 0) -> None:
    """Random blobs; BatchNorm gets positive variance sums and a scale factor of 2 (so stored sums matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.graph.nodes:
            module = net.layer(node.name)
            for name in getattr(module, "blob_names", ()):
                blob = getattr(module, name)
                if name == "scale_factor":
                    blob.fill_(2.0)
                elif name == "variance":
                    blob.uniform_(0.5, 3.0, generator=gen)
                else:
                    blob.normal_(0.0, 0.5, generator=gen)


TWO_INPUTS = """
name: "two"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -2 } }
layer { name: "relu" type: "ReLU" bottom: "sum" top: "sum" }
"""


# -- inputs and outputs ----------------------------------------------------------------------------------------
def test_positional_and_named_inputs(tmp_path: Path) -> None:
    net = build(tmp_path, TWO_INPUTS)
    a, b = torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[0.0, 2, 1], [1, 1, 4]])
    want = torch.tensor([[1.0, 0, 1], [2, 3, 0]])
    assert net.input_names == ["a", "b"] and net.output_names == ["sum"]
    for out in (net(a, b), net(a=a, b=b), net(b=b, a=a), net(a, b=b)):
        assert list(out) == ["sum"] and torch.equal(out["sum"], want)


def test_input_errors(tmp_path: Path) -> None:
    net = build(tmp_path, TWO_INPUTS)
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"input blob\(s\) \['b'\] were not given"):
        net(x)
    with pytest.raises(TypeError, match=r"net takes 2 inputs \['a', 'b'\], got 3"):
        net(x, x, x)
    with pytest.raises(TypeError, match="net has no input blob 'c'"):
        net(x, x, c=x)


def test_all_blobs_and_values(tmp_path: Path) -> None:
    net = build(tmp_path, TWO_INPUTS)
    a, b = torch.tensor([[1.0, -1, 0]] * 2), torch.ones(2, 3)
    blobs = net(a, b, all_blobs=True)
    assert sorted(blobs) == ["a", "b", "sum"]
    assert torch.equal(blobs["a"], a) and torch.equal(blobs["sum"], torch.zeros(2, 3))  # after the in-place ReLU
    versions = [v for v in net.values(a, b).values()]
    assert any(torch.equal(v, a - 2 * b) for v in versions)  # the pre-ReLU version of 'sum' is kept too


# -- phases ----------------------------------------------------------------------------------------------------
DROPOUT = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 1000 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.25 } }
"""


def test_dropout_follows_the_mode(tmp_path: Path) -> None:
    x = torch.ones(4, 1000)
    test_net = build(tmp_path, DROPOUT)
    assert not test_net.training and torch.equal(test_net(x)["x"], x)
    train_net = build(tmp_path, DROPOUT, phase="TRAIN")
    assert train_net.training
    y = train_net(x)["x"]
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))  # Caffe scales kept units in training
    assert 0.65 < kept.float().mean().item() < 0.85
    assert torch.equal(train_net.eval()(x)["x"], x)


BN_SCALE = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 8 dim: 3 dim: 4 dim: 4 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }
layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
"""


def _stored_bn(net: CaffeNet) -> None:
    bn = net.layer("bn")
    with torch.no_grad():
        bn.mean.copy_(torch.tensor([2.0, 4.0, 6.0]))  # sums: the layer divides by scale_factor = 2
        bn.variance.copy_(torch.tensor([8.0, 2.0, 4.0]))
        bn.scale_factor.fill_(2.0)
        net.layer("sc").weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
        net.layer("sc").bias.copy_(torch.tensor([0.0, 1.0, 0.5]))


def test_batchnorm_uses_stored_statistics_in_eval_and_batch_statistics_in_train(tmp_path: Path) -> None:
    net = build(tmp_path, BN_SCALE)
    _stored_bn(net)
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 3 + 1
    g, beta = torch.tensor([1.0, 2.0, -1.0]).view(3, 1, 1), torch.tensor([0.0, 1.0, 0.5]).view(3, 1, 1)
    mean, var = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1), torch.tensor([4.0, 1.0, 2.0]).view(3, 1, 1)
    stored = (x - mean) / torch.sqrt(var + 1e-5) * g + beta
    for all_blobs in (False, True):  # folded and layer by layer
        torch.testing.assert_close(net(x, all_blobs=all_blobs)["bn"], stored, rtol=1e-5, atol=1e-5)

    net.train()
    batch_mean, batch_var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    want = (x - batch_mean.view(3, 1, 1)) / torch.sqrt(batch_var.view(3, 1, 1) + 1e-5) * g + beta
    torch.testing.assert_close(net(x)["bn"], want, rtol=1e-5, atol=1e-5)
    bn = net.layer("bn")  # Caffe's moving sums: s = s * 0.999 + 1, sums likewise with the unbiased variance
    m = x.numel() // 3
    torch.testing.assert_close(bn.scale_factor, torch.tensor([2 * 0.999 + 1]))
    torch.testing.assert_close(bn.mean, torch.tensor([2.0, 4.0, 6.0]) * 0.999 + batch_mean)
    torch.testing.assert_close(bn.variance, torch.tensor([8.0, 2.0, 4.0]) * 0.999 + batch_var * m / (m - 1))


# -- weight sharing --------------------------------------------------------------------------------------------
SHARED = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" eltwise_param { coeff: 1 coeff: 3 } }
"""


def test_permissive_sharing_of_another_shape_is_refused_naming_both_layers(tmp_path: Path) -> None:
    from test_onnx_export import PERMISSIVE

    expected = (f"{tmp_path / 'net.prototxt'}:6:7: layer 'ip_b': parameter 'w' has shape (12, 2) here and (4, 6) "
                "in layer 'ip_a' (share_mode: PERMISSIVE): the PyTorch runtime shares parameters of one shape only")
    with pytest.raises(UnsupportedLayerError) as caught:
        build(tmp_path, PERMISSIVE)
    assert str(caught.value) == expected
    # the generated source refuses it too (it tied the tensors and crashed on the first forward)
    with pytest.raises(UnsupportedLayerError) as caught:
        prototxt2py.python_source(tmp_path / "net.prototxt")
    assert str(caught.value) == expected


def test_shared_params_stay_tied_and_gradients_add_up(tmp_path: Path) -> None:
    net = build(tmp_path, SHARED)
    randomise(net)
    a, b = net.layer("ip_a"), net.layer("ip_b")
    assert a.weight is b.weight and a.bias is b.bias
    assert len(list(net.parameters())) == 2
    x = torch.tensor([[1.0, 2, 3, 4], [-1, 0, 1, 0.5]])
    net(x)["s"].sum().backward()
    # s = (1 + 3) * (x W^T + b): dW[i, :] = 4 * sum over the batch of x, db = 4 * batch size
    torch.testing.assert_close(a.weight.grad, 4 * x.sum(0).expand(3, 4))
    torch.testing.assert_close(a.bias.grad, torch.full((3,), 8.0))
    with torch.no_grad():
        a.weight.add_(1.0)  # an update through one layer is seen by the other
    assert torch.equal(b.weight, a.weight)
    path = tmp_path / "shared.caffemodel"
    with open(path, "wb") as f:
        write_caffemodel(net, f)
    stored = read_caffemodel(path)  # Caffe writes a shared blob under every layer that uses it
    assert stored["ip_a"][0].array.tobytes() == stored["ip_b"][0].array.tobytes()
    again = prototxt2py.load(tmp_path / "net.prototxt", weights=path)
    assert again.layer("ip_a").weight is again.layer("ip_b").weight
    assert torch.equal(again.layer("ip_a").weight, a.weight)


# -- BatchNorm folding -----------------------------------------------------------------------------------------
FOLDS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "bn2" type: "BatchNorm" bottom: "conv1" top: "bn2" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 1 bias_term: false group: 2 } }
layer { name: "bn3" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "sum" type: "Eltwise" bottom: "bn2" bottom: "conv2" top: "out" }
"""


def _folds(net: CaffeNet) -> list[tuple]:
    return [(f.conv, *f.affine) for f in net._fusions if f.affine]


def _bn_calls(net: CaffeNet) -> list[str]:
    calls: list[str] = []
    for name in ("bn1", "bn2", "bn3"):
        net.layer(name).register_forward_hook(lambda *_, name=name: calls.append(name))
    return calls


@pytest.fixture
def fold_net(tmp_path: Path) -> CaffeNet:
    net = build(tmp_path, FOLDS)
    randomise(net)
    return net


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def test_folds_found(fold_net: CaffeNet) -> None:
    assert _folds(fold_net) == [("conv1", "bn1", "sc1"), (None, "bn2"), ("conv2", "bn3")]


def test_folding_matches_layer_by_layer_and_skips_the_layers(fold_net: CaffeNet) -> None:
    calls = _bn_calls(fold_net)
    with torch.no_grad():
        reference = fold_net(X, all_blobs=True)["out"]
        assert calls == ["bn1", "bn2", "bn3"]
        folded = fold_net(X)["out"]
    assert calls == ["bn1", "bn2", "bn3"]  # no BatchNorm layer ran in the folded pass
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(folded, fold_net.train()(X)["out"])  # train mode: batch statistics, layer by layer
    assert calls == ["bn1", "bn2", "bn3"] * 2


def test_folding_sees_every_kind_of_weight_change(fold_net: CaffeNet, tmp_path: Path) -> None:
    def check() -> None:
        with torch.no_grad():
            torch.testing.assert_close(fold_net(X)["out"], fold_net(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)

    check()
    with torch.no_grad():
        fold_net.layer("bn1").mean.add_(1.0)  # in place
    check()
    state = {k: v + 0.25 for k, v in fold_net.state_dict().items()}
    fold_net.load_state_dict(state)  # copy_ into the existing tensors
    check()
    fold_net.layer("sc1").weight.data = torch.full((4,), 3.0)  # a new tensor (no version bump on the old one)
    check()
    fold_net.layer("conv1").weight.data.mul_(2.0)  # invisible to torch's version counters: documented
    fold_net.clear_fold_cache()
    check()
    clone = copy.deepcopy(fold_net)
    assert fold_net._fusion_cache.entries and not clone._fusion_cache.entries  # derived data is not copied
    torch.testing.assert_close(clone(X)["out"], fold_net(X)["out"])
    path = tmp_path / "w.caffemodel"
    other = build(tmp_path, FOLDS)
    randomise(other, seed=9)
    with open(path, "wb") as f:
        write_caffemodel(other, f)
    load_weights(fold_net, path)  # read straight into the tensors' memory
    check()
    torch.testing.assert_close(fold_net(X)["out"], other(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)
    fold_net.double()  # new dtype, new memory
    with torch.no_grad():
        torch.testing.assert_close(fold_net(X.double())["out"], fold_net(X.double(), all_blobs=True)["out"])


def test_eval_mode_gradients_are_those_of_the_unfolded_net(fold_net: CaffeNet) -> None:
    grads = []
    for all_blobs in (False, True):
        fold_net.zero_grad()
        x = X.clone().requires_grad_()
        fold_net(x, all_blobs=all_blobs)["out"].square().sum().backward()
        grads.append([x.grad, *(p.grad for p in fold_net.parameters())])
    for folded, plain in zip(*grads, strict=True):
        torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5)


def test_fold_cache_from_inference_mode_serves_frozen_nets_with_input_gradients(fold_net: CaffeNet) -> None:
    """Folded weights made under ``inference_mode`` are normal tensors: later, with autograd on for the input
    only (frozen parameters, e.g. a saliency map), the same cache entry is used and gradients flow."""
    with torch.inference_mode():
        first = fold_net(X)["out"]
    for param in fold_net.parameters():
        param.requires_grad_(False)
    x = X.clone().requires_grad_()
    out = fold_net(x)["out"]
    out.square().sum().backward()
    x2 = X.clone().requires_grad_()
    fold_net(x2, all_blobs=True)["out"].square().sum().backward()
    torch.testing.assert_close(out.detach(), first, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_batch_statistics_in_test_phase_are_not_folded(tmp_path: Path) -> None:
    net = build(tmp_path, FOLDS.replace('top: "bn2" }', 'top: "bn2" batch_norm_param { use_global_stats: false } }'))
    randomise(net)
    calls = _bn_calls(net)
    with torch.no_grad():
        got = net(X)["out"]
    assert "bn2" in calls and "bn1" not in calls
    h = net(X, all_blobs=True)["conv1"]
    normalised = (h - h.mean((0, 2, 3), keepdim=True)) / torch.sqrt(h.var((0, 2, 3), unbiased=False, keepdim=True)
                                                                    + 1e-5)
    conv2 = net(X, all_blobs=True)["conv2"]
    torch.testing.assert_close(got, normalised + conv2, rtol=1e-4, atol=1e-4)


def test_blobs_read_elsewhere_are_not_folded_away(tmp_path: Path) -> None:
    """conv1's output also feeds a second layer: BatchNorm + Scale fold to a multiply-add, the conv stays. (Not
    in place: Caffe refuses an in-place rewrite of a blob another layer has read.)"""
    text = FOLDS.replace('layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
                         'layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" '
                         'scale_param { bias_term: true } }\n'
                         'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n',
                         'layer { name: "tap0" type: "Power" bottom: "conv1" top: "tap0" }\n'
                         'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "b1" }\n'
                         'layer { name: "sc1" type: "Scale" bottom: "b1" top: "s1" scale_param { bias_term: true } }\n'
                         'layer { name: "tap" type: "Power" bottom: "s1" top: "tap" }\n'
                         'layer { name: "relu1" type: "ReLU" bottom: "s1" top: "r1" }\n')
    text = text.replace('bottom: "conv1" top: "bn2"', 'bottom: "r1" top: "bn2"')
    text = text.replace('bottom: "conv1" top: "conv2"', 'bottom: "r1" top: "conv2"')
    assert text.count('"r1"') == 3
    net = build(tmp_path, text)
    randomise(net)
    assert _folds(net)[0] == (None, "bn1", "sc1")
    with torch.no_grad():
        got, want = net(X), net(X, all_blobs=True)
    assert sorted(got) == ["out", "tap", "tap0"]
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_real_resnet_stem_folded_matches_caffe(tmp_path: Path) -> None:
    """The corpus net with real BatchNorm/Scale weights: folded outputs against the golden Caffe outputs."""
    case = GOLDEN / "nets" / "caffe_onnx_test_net"
    inputs, outputs = npz(case / "inputs.npz"), npz(case / "outputs.npz")
    net = prototxt2py.load(CORPUS / "htshinichi__caffe-onnx/caffemodel/test/test.prototxt",
                           weights=CORPUS / "htshinichi__caffe-onnx/caffemodel/test/test.caffemodel",
                           input_shapes={"data": list(inputs["data"].shape)})
    assert _folds(net) == [("conv1", "bn_conv1", "scale_conv1")]
    with torch.no_grad():
        got = net(torch.from_numpy(inputs["data"]))["pool1"]
    torch.testing.assert_close(got, torch.from_numpy(outputs["pool1"]), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", case_params("zoo", slow=SLOW_ZOO))
def test_inference_plan_matches_caffe_on_the_zoo(case: Path, dtype: torch.dtype) -> None:
    """The eval-mode outputs-only path against real Caffe's outputs, on ``golden.DEVICE``: on the CPU in float32
    the oneDNN plan (folds, fused chains, oneDNN InnerProducts), in float64 the plain plan (folds only, no
    per-step tests); on a GPU the plain plan in both."""
    m = meta(case)
    net, inputs = zoo_net_and_inputs(case)
    net.eval().to(DEVICE, dtype)
    feed = {k: torch.from_numpy(v).to(DEVICE, dtype) for k, v in inputs.items() if k in net.input_names}
    with torch.no_grad():
        blobs = net(**feed)
    want = npz(case / "outputs.npz")
    compared = [name for name in blobs if name in want]
    if not blobs:
        pytest.skip("every top is consumed (a Silence layer): the net has no outputs to compare")
    assert compared, "no output blob of the net in the golden outputs"
    for name in compared:
        scale = float(np.abs(want[name]).max()) if want[name].size else 1.0
        assert_close(to_numpy(blobs[name].float()), want[name], max(m.get("rtol", 1e-5), 1e-4),
                     max(m.get("atol", 1e-6), 1e-5 * scale), f"blob '{name}'")


# -- InnerProduct on oneDNN -----------------------------------------------------------------------------------
IPS = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 dim: 2 dim: 5 } } }
layer { name: "plain" type: "InnerProduct" bottom: "x" top: "plain" inner_product_param { num_output: 7 } }
layer { name: "nobias" type: "InnerProduct" bottom: "plain" top: "nobias"
        inner_product_param { num_output: 3 bias_term: false } }
layer { name: "t" type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 6 transpose: true } }
layer { name: "ax2" type: "InnerProduct" bottom: "x" top: "ax2" inner_product_param { num_output: 2 axis: 2 } }
"""


def test_inner_products_run_on_onednn_when_nothing_needs_gradients(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prototxt2py.backends import fusion, torch_runtime

    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 0)  # these are tiny: oneDNN whatever the size

    net = build(tmp_path, IPS)
    randomise(net)
    calls: list[str] = []
    for name in ("plain", "nobias", "t", "ax2"):
        net.layer(name).register_forward_hook(lambda *_, name=name: calls.append(name))
    x = torch.randn(3, 4, 2, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = net(x, all_blobs=True)
        calls.clear()
        fast = net(x)
    if torch_runtime.ONEDNN_LINEAR is not None:
        assert calls == ["t", "ax2"]  # transposed weights and axis 2 are not a plain matmul: the layers run
    assert sorted(fast) == ["ax2", "nobias", "t"]
    for name, value in fast.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5)
    calls.clear()
    net(x)["nobias"].sum().backward()  # gradients wanted: the layers themselves run
    assert calls == ["plain", "nobias", "t", "ax2"]
    assert net.layer("plain").weight.grad is not None


# -- fx and compile --------------------------------------------------------------------------------------------
def test_fx_symbolic_trace(fold_net: CaffeNet, tmp_path: Path) -> None:
    two = build(tmp_path, TWO_INPUTS)
    traced = torch.fx.symbolic_trace(two)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(traced(a, b)["sum"], two(a, b)["sum"])

    gm = torch.fx.symbolic_trace(fold_net)  # in eval mode: the folds are traced as calls that read live blobs
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert len(calls) == 9 - 3 + 2  # layers, minus the 3 folded-away BatchNorms and Scale, plus 2 conv calls
    with torch.no_grad():
        torch.testing.assert_close(gm(X)["out"], fold_net(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)
        fold_net.layer("bn3").mean.add_(2.0)
        torch.testing.assert_close(gm(X)["out"], fold_net(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)
    gm.train()  # the traced calls decide at run time: train mode uses batch statistics
    torch.testing.assert_close(gm(X)["out"], fold_net.train()(X)["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_without_graph_breaks(fold_net: CaffeNet, backend: str) -> None:
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(fold_net, backend=backend, fullgraph=True)  # a fresh net: nothing ran before
        got = compiled(X)["out"]
        torch.testing.assert_close(got, fold_net(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)
    fold_net.train()
    x = X.clone().requires_grad_()
    compiled(x)["out"].sum().backward()
    x2 = X.clone().requires_grad_()
    fold_net(x2)["out"].sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_torch_compile_fresh_net(tmp_path: Path) -> None:
    torch._dynamo.reset()
    net = build(tmp_path, FOLDS)
    randomise(net)
    compiled = torch.compile(net, backend="eager")
    with torch.no_grad():
        got = compiled(X)["out"]
        torch.testing.assert_close(got, net(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)


def test_torch_export_saves_and_loads(fold_net: CaffeNet, tmp_path: Path) -> None:
    """``torch.export`` (the path to AOTInductor and ExecuTorch) captures the eval-mode net as one graph holding
    the current weights; saved and loaded back, it computes what the layers compute."""
    with torch.no_grad():
        fold_net.layer("bn3").mean.add_(1.0)
    exported = torch.export.export(fold_net, (X,))
    torch.export.save(exported, tmp_path / "net.pt2")
    loaded = torch.export.load(tmp_path / "net.pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X)["out"], fold_net(X, all_blobs=True)["out"], rtol=1e-5, atol=1e-5)


def test_torch_jit_trace_saves_and_loads_a_zoo_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.jit.trace`` (deprecated in torch 2.x, still the way to LibTorch) records the layers' torch ops, not
    the oneDNN plan's calls, whose arguments TorchScript cannot hold ("unsupported input list type: Scalar?")."""
    from prototxt2py.backends import fusion

    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 0)  # the oneDNN plan would run every chain
    case = GOLDEN / "zoo" / "mtcnn_det2"
    net, inputs = zoo_net_and_inputs(case)
    feed = tuple(torch.from_numpy(inputs[name]) for name in net.input_names)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated", category=DeprecationWarning)
        traced = torch.jit.trace(net.eval(), feed, strict=False)  # dict outputs need strict=False
        traced.save(str(tmp_path / "net.ts"))
        got = torch.jit.load(str(tmp_path / "net.ts"))(*feed)
    want = npz(case / "outputs.npz")
    assert set(got) & set(want)
    for name in set(got) & set(want):
        assert_close(got[name].detach().numpy(), want[name], 1e-4, 1e-5, f"blob '{name}'")


def test_torch_export_matches_caffe_on_a_zoo_net() -> None:
    case = GOLDEN / "zoo" / "mtcnn_det2"
    net, inputs = zoo_net_and_inputs(case)
    feed = tuple(torch.from_numpy(inputs[name]) for name in net.input_names)
    got = torch.export.export(net.eval(), feed).module()(*feed)
    want = npz(case / "outputs.npz")
    assert set(got) & set(want)
    for name in set(got) & set(want):
        assert_close(got[name].detach().numpy(), want[name], 1e-4, 1e-5, f"blob '{name}'")


@pytest.mark.slow
def test_torch_compile_inductor_on_lenet() -> None:
    net = prototxt2py.load(CORPUS / "ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt",
                           weights=CORPUS / "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net)(x)["prob"], net(x)["prob"], rtol=1e-5, atol=1e-6)


def test_from_weights_accepts_arrays() -> None:
    prototxt = CORPUS / "ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt"
    weights = CORPUS / "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel"
    from_file = prototxt2py.load(prototxt, weights=weights)
    from_arrays = CaffeNet.from_weights(prototxt2py.graph(prototxt), read_caffemodel(weights))
    for (k, a), (_, b) in zip(from_file.state_dict().items(), from_arrays.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.rand(2, 1, 28, 28)
    logits = F.softmax(from_arrays(x, all_blobs=True)["ip2"], dim=1)
    torch.testing.assert_close(from_file(x)["prob"], logits)


def test_fx_traces_nets_with_shape_dependent_helpers() -> None:
    """Layers are leaf calls under torch.fx even when their module reads input shapes (AVE pooling with Caffe's
    rounding, SPP): the runtime registers its ``call_layer`` with fx."""
    from prototxt2py.reader import read_net_text

    net = prototxt2py.load(read_net_text("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
        layer { name: "p" type: "Pooling" bottom: "x" top: "p"
                pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "s" type: "SPP" bottom: "p" top: "s" spp_param { pyramid_height: 2 } }
    """)).eval()
    traced = torch.fx.symbolic_trace(net)
    x = torch.randn(1, 2, 9, 9)
    torch.testing.assert_close(traced(x)["s"], net(x)["s"])
