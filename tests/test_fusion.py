"""The inference plan's fused chains (``prototxt2py.backends.fusion``): which layers are fused, that the fused
step computes what the layers compute, and where it must not apply."""

from __future__ import annotations

import re
import threading
import weakref
from pathlib import Path
from typing import Any

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


def _recorded_plans(net: CaffeNet) -> list:
    """The plans the net's passes run from now on, in order."""
    plans: list = []
    execute = net._execute
    net._execute = lambda plan, env, tracing=False: plans.append(plan) or execute(plan, env, tracing)
    return plans


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


def test_inputs_onednn_never_takes_run_the_plain_plan(net: CaffeNet) -> None:
    """For inputs oneDNN never takes (here float64, or float32 under autocast; on a GPU every input) the pass
    skips the per-step tests: chains that fold affine layers stay one step, the others are their layers, and
    nothing is marked for oneDNN or made dense. Same values as the layers."""
    kinds = [(step.key, step.kind) for step in net._plain_plan if step.kind is not fusion.INPUT]
    assert kinds == [("c1", fusion.LAYER), ("r1", fusion.LAYER), ("lrn", fusion.LAYER), ("c3", fusion.FUSED),
                     ("c2", fusion.FUSED), ("pool", fusion.LAYER), ("ave", fusion.LAYER), ("ip", fusion.LAYER),
                     ("up", fusion.LAYER)]
    plans = _recorded_plans(net)
    net.double()
    calls = _conv_calls(net)
    with torch.no_grad():
        reference = net(X.double(), all_blobs=True)
        calls.clear()
        plain = net(X.double())
        plain_calls = list(calls)
        net.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(X)
        net(X)
    assert plans == [net._plan, net._plain_plan, net._plain_plan, net._inference_plan]
    assert plain_calls == ["c1", "r1", "sum", "relu"]  # c1 and its ReLU as layers; the folds ran no affine layer
    for name, value in plain.items():
        torch.testing.assert_close(value, reference[name])


def test_one_input_onednn_takes_is_enough_for_the_onednn_plan(tmp_path: Path) -> None:
    """A net whose first input is one oneDNN never takes (here float64 beside a float32 image) still runs its
    image through the oneDNN plan; under autocast no input is one it takes."""
    net = build(tmp_path, """
layer { name: "aux" type: "Input" top: "aux" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "scaled" type: "Power" bottom: "aux" top: "scaled" power_param { scale: 2 } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
""")
    randomise(net)
    net.eval()
    plans = _recorded_plans(net)
    aux = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    with torch.no_grad():
        reference = net(aux, X, all_blobs=True)
        got = net(aux, X)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # then no input is one oneDNN takes
            net(aux, X)
    assert plans[1:] == [net._inference_plan, net._plain_plan]
    torch.testing.assert_close(got["scaled"], aux * 2)
    torch.testing.assert_close(got["c1"], reference["c1"], rtol=1e-5, atol=1e-5)


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


WIDE_1X1 = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 256 dim: 14 dim: 14 } } }
layer { name: "wide" type: "Convolution" bottom: "data" top: "wide"
        convolution_param { num_output: 1024 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "wide" top: "wide" }
"""


def _packings_used(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Size, torch.Tensor]]:
    """(input shape, weight) of every oneDNN convolution call from now on."""
    used: list[tuple[torch.Size, torch.Tensor]] = []
    conv = fusion.ONEDNN_CONV

    def record(x: torch.Tensor, weight: torch.Tensor, *rest: Any) -> torch.Tensor:
        used.append((x.shape, weight))
        return conv(x, weight, *rest)

    monkeypatch.setattr(fusion, "ONEDNN_CONV", record)
    monkeypatch.setattr(fusion, "ONEDNN_CONV_INTO", None)
    return used


@pytest.mark.skipif(not ONEDNN or fusion._packed_layout(fusion.ONEDNN_PACK(torch.ones(1, 1, 1, 1), [0, 0], [1, 1],
                                                                            [1, 1], 1, [1, 1, 1, 1])) is None,
                    reason="no oneDNN convolution, or no way to read its layouts, in this torch")
def test_each_input_shape_runs_on_weights_packed_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN picks a weight's blocking from the input shape too, and reorders a weight packed for another one
    on every call: from its second pass on, a batch size must run on a packing for it, not on the first one
    made. A shape's first pass runs on the first packing (ever new shapes then never pay for packing).
    Packings of one layout are shared, so memory grows per layout, not per shape."""
    net = build(tmp_path, WIDE_1X1)
    randomise(net)
    net.eval()
    used = _packings_used(monkeypatch)
    weight = net.layer("wide").weight.detach()
    batches = (1, 1, 2, 2, 2, 1, 4, 4, 2)
    with torch.no_grad():
        for n in batches:
            x = torch.randn(n, 256, 14, 14, generator=torch.Generator().manual_seed(n))
            torch.testing.assert_close(net(x)["wide"], net(x, all_blobs=True)["wide"], rtol=1e-4, atol=1e-4)
    assert [shape[0] for shape, _ in used] == list(batches)
    fresh = {shape: fusion._packed_layout(fusion.ONEDNN_PACK(weight, [0, 0], [1, 1], [1, 1], 1, list(shape)))
             for shape, _ in used}
    first = used[0][1]
    for i, (shape, packed) in enumerate(used):
        if shape in [s for s, _ in used[:i]]:
            assert fusion._packed_layout(packed) == fresh[shape], (i, shape)
        else:
            assert packed is first, (i, shape)
    kept = {id(packed) for _, packed in used}
    assert len(kept) == len(set(fresh.values()))


@pytest.mark.skipif(not ONEDNN or fusion._packed_layout(fusion.ONEDNN_PACK(torch.ones(1, 1, 1, 1), [0, 0], [1, 1],
                                                                            [1, 1], 1, [1, 1, 1, 1])) is None,
                    reason="no oneDNN convolution, or no way to read its layouts, in this torch")
def test_another_thread_count_gets_its_own_packing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN's layout depends on the thread count too (256->1024 at batch 1: one layout on 1 thread, another
    on 2 here): after ``torch.set_num_threads``, the weights are packed again."""
    net = build(tmp_path, WIDE_1X1)
    randomise(net)
    net.eval()
    used = _packings_used(monkeypatch)
    weight = net.layer("wide").weight.detach()
    x = torch.randn(1, 256, 14, 14)
    threads = torch.get_num_threads()
    layouts = []
    try:
        for n in (threads, 1 if threads > 1 else 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                net(x), net(x)
            fresh = fusion.ONEDNN_PACK(weight, [0, 0], [1, 1], [1, 1], 1, [1, 256, 14, 14])
            layouts.append(fusion._packed_layout(fresh))
    finally:
        torch.set_num_threads(threads)
    assert [fusion._packed_layout(packed) for _, packed in used[1::2]] == layouts


@pytest.mark.skipif(not ONEDNN, reason="no oneDNN convolution in this torch")
def test_packings_stay_bounded_and_work_where_layouts_cannot_be_read(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    net = build(tmp_path, WIDE_1X1)
    randomise(net)
    net.eval()
    monkeypatch.setattr(fusion, "PACKED_SHAPES", 2)
    used = _packings_used(monkeypatch)
    with torch.no_grad():
        for n in (1, 2, 2, 3, 3, 5):
            x = torch.randn(n, 256, 14, 14)
            torch.testing.assert_close(net(x)["wide"], net(x, all_blobs=True)["wide"], rtol=1e-4, atol=1e-4)
    entry = net._fusion_cache.entries["wide"]
    # batches 1 and 2 packed, then forgotten at batch 3 (packed afresh); batch 5 seen once
    threads = torch.get_num_threads()
    assert set(entry["by_shape"]) == {((3, 256, 14, 14), threads)} and entry["seen"] == {((5, 256, 14, 14), threads)}

    net.clear_fold_cache()
    monkeypatch.setattr(fusion, "_packed_layout", lambda packed: None)
    used.clear()
    with torch.no_grad():
        for n in (1, 2, 2):
            x = torch.randn(n, 256, 14, 14)
            torch.testing.assert_close(net(x)["wide"], net(x, all_blobs=True)["wide"], rtol=1e-4, atol=1e-4)
    assert used[0][1] is used[1][1] is used[2][1]  # the first packing serves every shape


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


def test_a_repeated_layer_name_joins_the_right_layer(tmp_path: Path) -> None:
    """Caffe lets layer names repeat: a second in-place ReLU pasted under the first one's name. The chain must
    take the ReLU that reads the sum, and the copy must run after it (it once ran first, on a value not yet
    made: "KeyError: 'sum@1'", exit 3 from ``run`` on a ResNet-50 with a duplicated layer)."""
    relu = 'layer { name: "relu" type: "ReLU" bottom: "sum" top: "sum" }\n'
    net = build(tmp_path, NET.replace(relu, relu + relu))
    randomise(net)
    chains = [(f.conv, f.affine, f.residual, f.post) for f in net._fusions]
    assert chains[1] == ("c2", ("bn2", "s2"), "sum", "relu")
    assert [s.key for s in net._inference_plan if s.key.startswith("relu")] == ["relu_2"]
    with torch.no_grad():
        fused, reference = net.eval()(X), net(X, all_blobs=True)
    for name in ("ip", "up"):
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-5, atol=1e-5)


def test_the_plan_releases_each_value_after_its_last_reader(net: CaffeNet) -> None:
    plan = net._inference_plan
    released = [vid for step in plan for vid in step.release]
    assert len(released) == len(set(released)) and not set(released) & set(net._output_ids)
    for i, step in enumerate(plan):
        for later in plan[i + 1:]:
            reads = set(later.inputs) | {v for m in (later.fusion.steps if later.fusion else ()) for v in m.inputs}
            assert not reads & set(step.release), (step.key, later.key)
    # c2's chain adds c3's result, which nothing else reads: it may be overwritten; no other step may
    assert [step.key for step in plan if step.overwrite] == ["c2"]


def test_released_values_are_freed_during_the_forward_pass(net: CaffeNet) -> None:
    """lrn's output is last read by c3's chain: by the time pool runs, the inference plan has let it go;
    ``all_blobs`` keeps it."""
    refs: list[weakref.ref] = []
    alive: list[bool] = []
    net.layer("lrn").register_forward_hook(lambda _m, _i, out: refs.append(weakref.ref(out)))
    net.layer("pool").register_forward_hook(lambda *_: alive.append(refs[-1]() is not None))
    with torch.no_grad():
        net(X)
        net(X, all_blobs=True)
    assert alive == [False, True]


def _check_not_overwritten(tmp_path: Path, text: str) -> None:
    """No step of ``text``'s plan may overwrite, and the fused outputs equal the layer-by-layer ones."""
    net = build(tmp_path, text)
    randomise(net)
    assert not any(step.overwrite for step in net._inference_plan)
    with torch.no_grad():
        fused, reference = net.eval()(X), net(X, all_blobs=True)
    for name in ("tap", "ip", "up"):
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-5, atol=1e-5)


def test_a_sum_read_again_later_is_not_overwritten(tmp_path: Path) -> None:
    """c3's result is the addition's other bottom, and a Power layer after the addition reads it again: the
    fused addition must not write into it (the Power layer would see the sum)."""
    text = NET.replace('layer { name: "pool"', 'layer { name: "tap" type: "Power" bottom: "c3" top: "tap" }\n'
                                               'layer { name: "pool"')
    _check_not_overwritten(tmp_path, text)


def test_a_sum_with_a_live_alias_is_not_overwritten(tmp_path: Path) -> None:
    """A Split before the addition hands on c3's result as the very same tensor, and a Power layer after the
    addition reads that copy: the addition is c3's last reader, yet must not write into it."""
    text = NET.replace('layer { name: "sum"', 'layer { name: "sp" type: "Split" bottom: "c3" top: "c3a" }\n'
                                              'layer { name: "sum"')
    text = text.replace('layer { name: "pool"', 'layer { name: "tap" type: "Power" bottom: "c3a" top: "tap" }\n'
                                                'layer { name: "pool"')
    _check_not_overwritten(tmp_path, text)


def _kept_passes(net: CaffeNet, inputs: list[torch.Tensor], hold: bool = False) -> list:
    """One fused pass per input, each checked against the layer-by-layer pass. With ``hold``, a hook on
    ``pool`` keeps what it is given (the sum c2's chain wrote into c3's chain result, a kept output here), a
    view of it and a copy; returns those."""
    held: list = []
    if hold:
        net.layer("pool").register_forward_pre_hook(lambda _m, args: held.append((args[0], args[0][0],
                                                                                   args[0].clone())))
    with torch.no_grad():
        for x in inputs:
            fused = net(x)
            reference = net(x, all_blobs=True)
            for name, value in fused.items():
                torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5)
    return held[::2]  # the fused passes'


@pytest.mark.skipif(not ONEDNN or fusion.ONEDNN_CONV_INTO is None, reason="no oneDNN convolution in this torch")
def test_big_results_are_kept_and_written_again(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every result "big", a chain without an addition writes into its last pass's result: c3's chain
    result (into which c2's chain adds) is the very same tensor on every pass, and each pass still computes its
    own input's values."""
    monkeypatch.setattr(fusion, "KEEP_OUTPUT_BYTES", 0)
    _kept_passes(net, [X])
    # c1's chain ends in a leaky rectifier, which the in-place form does not take; c2's has an addition
    assert set(net._fusion_cache.outputs) == {"c3"}
    first = weakref.ref(net._fusion_cache.outputs["c3"][1])
    _kept_passes(net, [-X, X * 3])
    assert net._fusion_cache.outputs["c3"][1] is first()
    # below the size floor nothing is kept
    monkeypatch.setattr(fusion, "KEEP_OUTPUT_BYTES", 1 << 40)
    net.clear_fold_cache()
    _kept_passes(net, [X, -X])
    assert not net._fusion_cache.outputs


@pytest.mark.skipif(not ONEDNN or fusion.ONEDNN_CONV_INTO is None, reason="no oneDNN convolution in this torch")
def test_a_kept_result_someone_holds_is_not_written_again(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward hook that keeps the tensor it is given (or a view of it), as feature extractors do, keeps it
    as it was: the next pass allocates anew."""
    monkeypatch.setattr(fusion, "KEEP_OUTPUT_BYTES", 0)
    held = _kept_passes(net, [X, -X, X * 3], hold=True)
    assert len(held) == 3
    for tensor, view, copy in held:
        assert torch.equal(tensor, copy) and torch.equal(view, copy[0])


@pytest.mark.skipif(not ONEDNN or fusion.ONEDNN_CONV_INTO is None, reason="no oneDNN convolution in this torch")
def test_moving_the_net_frees_its_packed_weights_and_kept_results(net: CaffeNet,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fusion, "KEEP_OUTPUT_BYTES", 0)
    with torch.no_grad():
        net(X)
    assert net._fusion_cache.entries
    kept = weakref.ref(net._fusion_cache.outputs["c3"][1])
    net.to(torch.float64)
    assert not net._fusion_cache.entries and not net._fusion_cache.outputs and kept() is None
    with torch.no_grad():
        torch.testing.assert_close(net(X.double())["ip"], net(X.double(), all_blobs=True)["ip"])


@pytest.mark.skipif(not ONEDNN or fusion.ONEDNN_CONV_INTO is None, reason="no oneDNN convolution in this torch")
def test_kept_results_across_inference_mode_and_threads(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result kept under ``torch.inference_mode()`` (an inference tensor, not writable outside it) is not
    written by a later ``no_grad`` pass; passes of several threads at once each get their own memory."""
    monkeypatch.setattr(fusion, "KEEP_OUTPUT_BYTES", 0)
    inputs = [X * k for k in (1.0, -2.0, 0.5, 3.0)]
    with torch.no_grad():
        expected = [net(x, all_blobs=True)["ip"] for x in inputs]
    with torch.inference_mode():
        net(X)
    with torch.no_grad():
        torch.testing.assert_close(net(X)["ip"], expected[0], rtol=1e-5, atol=1e-5)

    barrier = threading.Barrier(len(inputs))
    errors: list[float] = []

    def serve(i: int) -> None:
        barrier.wait()
        with torch.no_grad():
            for _ in range(30):
                errors.append(float((net(inputs[i])["ip"] - expected[i]).abs().max()))

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 30 * len(inputs) and max(errors) < 1e-4


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
    # the two paths' convolutions sum in other orders (oneDNN's ISA decides: ~2e-6 on values ~10 without AVX);
    # products of such values (PROD, Power) carry that error into elements near zero, hence the absolute 1e-4
    for name, value in fused.items():
        assert value.is_contiguous()
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-4, msg=name)


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


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN fused convolution")
def test_the_size_floor_follows_the_input_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a chain is big enough for oneDNN is remembered for the last input shape only: a bigger input
    takes oneDNN, a smaller one after it the layers again, each with the layer-by-layer results."""
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 50_000)  # c2's chain (the addition): 5,832 at 9x9, 93,312 at 36x36
    net = build(tmp_path, "\n".join(line for line in NET.splitlines() if '"ip"' not in line))  # any input size
    randomise(net)
    net.eval()
    big = torch.randn(2, 4, 36, 36, generator=torch.Generator().manual_seed(4))
    calls = _conv_calls(net)
    for x, on_onednn in ((X, False), (big, True), (X, False), (big, True)):
        with torch.no_grad():
            reference = net(x, all_blobs=True)
            calls.clear()
            fused = net(x)
        assert ("sum" not in calls) is on_onednn, calls  # oneDNN applies the addition and ReLU as post-ops
        for name, value in fused.items():
            torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN convolution")
def test_shapes_too_small_for_onednn_run_the_plain_plan_from_their_second_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass without autograd that made no oneDNN call marks its input shapes (under the size floor of the
    time): the next pass on them runs the plain plan, the same layers without the per-step tests. A bigger
    input still takes oneDNN, so does the same input under a lower floor, and passes with autograd on (whose
    chains may decline oneDNN for its sake) neither mark nor follow the marks. Results stay the layer-by-layer
    ones."""
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 60_000)  # every chain below it at 9x9 (c3: 52,488), not at 36x36
    net = build(tmp_path, "\n".join(line for line in NET.splitlines() if '"ip"' not in line))  # any input size
    randomise(net)
    net.eval()
    big = torch.randn(2, 4, 36, 36, generator=torch.Generator().manual_seed(4))
    plans = _recorded_plans(net)
    inference, plain = net._inference_plan, net._plain_plan
    for x, floor, grad, want in ((X, 60_000, False, [inference, plain, plain]), (big, 60_000, False, [inference] * 3),
                                 (X, 0, False, [inference] * 3), (X, 60_000, True, [inference] * 2),
                                 (X[:1], 60_000, True, [inference] * 2), (X[:1], 60_000, False, [inference, plain])):
        monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", floor)
        plans.clear()
        with torch.set_grad_enabled(grad):
            reference = net(x, all_blobs=True)
            plans.clear()
            for _ in want:
                got = net(x)
                for name, value in got.items():
                    torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5, msg=name)
        assert plans == want, (x.shape, floor, grad)


@pytest.mark.parametrize("geometry", [((1, 1), (0, 0), (1, 1)), ((2, 2), (1, 1), (1, 1)), ((1, 2), (2, 0), (2, 1)),
                                      ((3, 3), (0, 0), (1, 1)), ((1, 1), (0, 0), (3, 3))])
def test_conv_macs_counts_the_output_torch_computes(geometry: tuple) -> None:
    """The size floor's count of multiply-adds: output positions (border, stride and dilation included) times
    the weight's size, against the output shape of ``F.conv2d`` itself."""
    stride, pad, dilation = geometry
    x, weight = torch.empty(2, 6, 11, 9, device="meta"), torch.empty(8, 3, 3, 2, device="meta")
    out = torch.nn.functional.conv2d(x, weight, None, stride, pad, dilation, 2)
    assert fusion.conv_macs(x.shape, weight.shape, (stride, pad, dilation, 2)) == out.numel() * weight[0].numel()


@pytest.mark.parametrize("rel", corpus_deploy_params())
def test_corpus_deploy_net_fused_as_layer_by_layer(rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every corpus deploy net the runtime builds: the fused plan's outputs are the layer-by-layer ones, with every
    chain on oneDNN whatever its size (this file's size floor is 0), on a first pass and on a second one that
    writes again into every result the first kept (all of them here), poisoned in between."""
    monkeypatch.setattr(fusion, "KEEP_OUTPUT_BYTES", 0)
    net, feed = corpus_net_and_inputs(rel)
    net.eval()
    inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.no_grad():
        reference = net(**inputs, all_blobs=True)
        first = {name: value.clone() for name, value in net(**inputs).items()}
        for _, kept in net._fusion_cache.outputs.values():
            kept.fill_(float("nan"))
        second = net(**inputs)
    if not second:
        pytest.skip("every top is consumed (a Silence layer): the net has no outputs to compare")
    for fused in (first, second):
        for name, value in fused.items():
            want = reference[name].numpy()
            scale = float(np.abs(want).max(initial=0.0))
            assert value.is_contiguous()
            assert_close(value.numpy(), want, 1e-4, 1e-5 * max(scale, 1.0), f"output '{name}'")


# -- fusion is open to every spec ------------------------------------------------------------------------------
def test_the_plan_names_no_layer_type() -> None:
    """Every choice the plan makes is a predicate a spec declares: ``fusion.py`` mentions no registered type
    name (not even in prose) and never compares a node's type."""
    from prototxt2py.layers import REGISTRY

    source = Path(fusion.__file__).read_text()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source))
    assert not words & set(REGISTRY), sorted(words & set(REGISTRY))
    assert not re.search(r"(?<!device)\.type\s*(==|!=|in\b)", source)


#: Fork types in chains: depthwise convolution -> SegNet BN -> ReLU6; convolution -> PSPNet BN -> residual add ->
#: ReLU6 (a post-op oneDNN's addition form does not take: run as its layer after it); convolution -> Scale ->
#: Bias -> Clip (no BatchNorm: learned per-channel layers fold too); convolution -> residual add -> leaky ReLU;
#: a PSPNet BN alone (one multiply-add); a SegNet BN alone (already one multiply-add: left as its layer).
FORKS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw" convolution_param { kernel_size: 3 pad: 1 } }
layer { name: "segbn" type: "BN" bottom: "dw" top: "dw" bn_param { bn_mode: INFERENCE } }
layer { name: "r6" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "pspbn" type: "BN" bottom: "pw" top: "pw" bn_param { eps: 0.001 } }
layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "pw" top: "sum" }
layer { name: "r6b" type: "ReLU6" bottom: "sum" top: "sum" }
layer { name: "c3" type: "Convolution" bottom: "sum" top: "c3" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "sc3" type: "Scale" bottom: "c3" top: "c3" scale_param { bias_term: true } }
layer { name: "b3" type: "Bias" bottom: "c3" top: "c3" }
layer { name: "clip" type: "Clip" bottom: "c3" top: "c3" clip_param { min: -0.5 max: 0.75 } }
layer { name: "c4" type: "Convolution" bottom: "sum" top: "c4" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "add4" type: "Eltwise" bottom: "c4" bottom: "sum" top: "add4" }
layer { name: "leaky" type: "ReLU" bottom: "add4" top: "add4" relu_param { negative_slope: 0.2 } }
layer { name: "alone" type: "BN" bottom: "add4" top: "alone" bn_param { frozen: true eps: 0.001 } }
layer { name: "seg_alone" type: "BN" bottom: "add4" top: "seg_alone" bn_param { bn_mode: INFERENCE } }
"""
FORK_MEMBERS = ("dw", "segbn", "r6", "pw", "pspbn", "sum", "r6b", "c3", "sc3", "b3", "clip", "c4", "add4", "leaky",
                "alone")


@pytest.fixture
def fork_net(tmp_path: Path) -> CaffeNet:
    net = build(tmp_path, FORKS)
    randomise(net)
    return net.eval()


def test_fork_types_join_chains(fork_net: CaffeNet) -> None:
    chains = [(f.conv, f.affine, f.residual, f.post, f.unary, f.scalars) for f in fork_net._fusions]
    assert chains == [
        ("dw", ("segbn",), None, "r6", "hardtanh", (0.0, 6.0)),
        ("pw", ("pspbn",), "sum", "r6b", "hardtanh", (0.0, 6.0)),
        ("c3", ("sc3", "b3"), None, "clip", "hardtanh", (-0.5, 0.75)),
        ("c4", (), "add4", "leaky", "leaky_relu", (pytest.approx(0.2),)),
        (None, ("alone",), None, None, "none", ()),
    ]
    pw = fork_net._fusions[1]
    assert fork_net.graph.values[pw.other].blob == "data" and pw.other_first
    kinds = {step.key: step.kind for step in fork_net._inference_plan}
    assert kinds == {"data": fusion.INPUT, "dw": fusion.FUSED, "pw": fusion.FUSED, "c3": fusion.FUSED,
                     "c4": fusion.FUSED, "alone": fusion.FUSED, "seg_alone": fusion.DENSE}  # (not layout-agnostic)
    assert all(isinstance(step, fusion.Step) for step in (*fork_net._plan, *fork_net._inference_plan))


@pytest.mark.parametrize("floor", [0, 1 << 40], ids=["onednn", "torch-ops"])
def test_fork_chains_match_the_layers(fork_net: CaffeNet, floor: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On oneDNN (every chain one call; only the post-ops oneDNN's addition form does not take run as layers)
    and, below the size floor, as ``F.conv2d`` with the affine layers folded: the layer-by-layer values."""
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", floor)
    calls: list[str] = []
    for name in FORK_MEMBERS:
        fork_net.layer(name).register_forward_hook(lambda *_, name=name: calls.append(name))
    with torch.no_grad():
        reference = fork_net(X, all_blobs=True)
        calls.clear()
        fused = fork_net(X)
    if floor == 0 and ONEDNN:
        assert calls == ["r6b", "leaky"]
    elif floor:
        assert calls == ["r6", "sum", "r6b", "clip", "c4", "add4", "leaky"]  # folded convolutions run as F.conv2d
    assert sorted(fused) == ["alone", "c3", "seg_alone"]
    for name, value in fused.items():
        assert value.is_contiguous()
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5, msg=name)


def test_fork_chains_keep_gradients(fork_net: CaffeNet) -> None:
    """Eval mode with autograd on: the chains run differentiable ops (PSPNet BN's scale and shift are trained,
    so its folded form carries their gradients) and give the layer-by-layer gradients."""
    grads = []
    for all_blobs in (False, True):
        fork_net.zero_grad()
        x = X.clone().requires_grad_()
        out = fork_net(x, all_blobs=all_blobs)
        (out["c3"].square().sum() + out["alone"].sum() + out["seg_alone"].sum()).backward()
        grads.append([x.grad, *(p.grad for p in fork_net.parameters())])
    assert fork_net.layer("pspbn").scale.grad is not None
    for fused, plain in zip(*grads, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-4)


#: A MobileNet-v2-style block in the types OpenCV's Caffe reader knows.
MOBILE = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 12 dim: 12 } } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 } }
layer { name: "dw_bn" type: "BatchNorm" bottom: "dw" top: "dw" }
layer { name: "dw_scale" type: "Scale" bottom: "dw" top: "dw" scale_param { bias_term: true } }
layer { name: "dw_relu" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "pw_bn" type: "BatchNorm" bottom: "pw" top: "pw" }
layer { name: "pw_scale" type: "Scale" bottom: "pw" top: "pw" scale_param { bias_term: true } }
layer { name: "add" type: "Eltwise" bottom: "data" bottom: "pw" top: "add" }
layer { name: "add_relu" type: "ReLU" bottom: "add" top: "add" }
layer { name: "head" type: "Convolution" bottom: "add" top: "head" convolution_param { num_output: 5 kernel_size: 3 } }
layer { name: "head_relu" type: "ReLU6" bottom: "head" top: "head" }
"""


def test_depthwise_relu6_chains_match_opencv(tmp_path: Path) -> None:
    """Depthwise convolution, BatchNorm/Scale and ReLU6 fused on oneDNN: OpenCV's outputs for the same weights."""
    cv2 = pytest.importorskip("cv2")
    from prototxt2py.weights import write_caffemodel

    net = build(tmp_path, MOBILE)
    randomise(net, seed=4)
    net.eval()
    assert [f.members for f in net._fusions] == [("dw", "dw_bn", "dw_scale", "dw_relu"),
                                                 ("pw", "pw_bn", "pw_scale", "add", "add_relu"),
                                                 ("head", "head_relu")]
    weights = tmp_path / "w.caffemodel"
    with open(weights, "wb") as f:
        write_caffemodel(net, f)
    x = torch.randn(1, 8, 12, 12, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours = net(x)["head"].numpy()
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "net.prototxt"), str(weights))
    cv_net.setInput(x.numpy())
    theirs = cv_net.forward("head_relu")  # OpenCV names outputs by layer: the last one writing the blob
    assert np.abs(ours).max() > 1.0 and (ours == 6.0).any()  # the clamp is exercised
    assert_close(ours, theirs, 1e-4, 1e-5, "head")
