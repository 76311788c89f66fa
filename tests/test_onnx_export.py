"""ONNX export against Caffe: golden layer cases, nets and zoo nets are exported, checked with the full ONNX
checker, run in onnxruntime and compared with Caffe's blobs; corpus deploy nets export and agree with the
PyTorch runtime; plus error reporting, opsets, a dynamic batch and external data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from golden import (
    CORPUS,
    SHARED,
    assert_close,
    assert_same_detections,
    case_params,
    corpus_deploy_params,
    corpus_net_and_inputs,
    detection_rows,
    meta,
    npz,
    recipe_weights,
    zoo_net_and_inputs,
)
from test_golden_nets import SLOW_ZOO

import prototxt2py
from prototxt2py.backends import onnx_export
from prototxt2py.backends.onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx, newest_opset, to_onnx_model
from prototxt2py.cli import main
from prototxt2py.errors import Prototxt2pyError, UnsupportedLayerError

#: Golden layer cases that cannot be exported, and why (the README's ONNX section lists them); exporting each
#: must fail with one error naming every layer that has no mapping. Empty: every layers/ case, losses, Accuracy,
#: Filter and the recurrent layers included, exports with standard ops and matches Caffe in onnxruntime.
EXCLUDED: dict[str, str] = {}


def run_onnx(model: onnx.ModelProto | str | Path, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model in onnxruntime (CPU) on the inputs it declares; outputs by name."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, {i.name: feed[i.name] for i in session.get_inputs()})
    return dict(zip(names, results, strict=True))


def runtime_blobs(net: prototxt2py.backends.torch_runtime.CaffeNet, feed: Mapping[str, np.ndarray]) -> dict:
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in feed.items() if k in net.input_names}, all_blobs=True)
    return {k: v.detach().numpy() for k, v in blobs.items()}


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], rtol: float, atol: float) -> None:
    """Every ONNX output that Caffe reports must match; at least one must be compared."""
    common = [name for name in got if name in want]
    assert common, f"no ONNX output ({list(got)}) among the reference blobs"
    for name in common:
        assert_close(got[name], want[name], rtol, atol, f"ONNX output '{name}'")


def case_net(case: Path, m: dict) -> prototxt2py.backends.torch_runtime.CaffeNet:
    """The case's net with the case's weights, every layer kept (losses and metrics too: their tops are what
    ``caffe test`` reports, and the export must give Caffe's values)."""
    g = prototxt2py.graph(case / "net.prototxt", phase=m.get("phase", "TEST"), stages=m.get("stages", ()),
                          level=m.get("level", 0))
    weights = case / "weights.caffemodel"
    return prototxt2py.load(g, weights=weights if weights.exists() else None)


# ---------------------------------------------------------------------------------------------------------
# Golden suites
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, newest_opset()])
@pytest.mark.parametrize("case", case_params("layers") + case_params("mixed"))
def test_golden_layer_case(case: Path, opset: int) -> None:
    m = meta(case)
    if case.name in EXCLUDED:
        net = case_net(case, m)
        with pytest.raises(UnsupportedLayerError) as e:
            to_onnx_model(net, opset=opset)
        unsupported = [n.name for n in net.graph.nodes if not n.spec.supports("onnx")]
        assert unsupported and all(f"layer '{name}'" in str(e.value) for name in unsupported), str(e.value)
        return
    model = to_onnx_model(case_net(case, m), opset=opset)
    got = run_onnx(model, npz(case / "inputs.npz"))
    compare(got, npz(case / "outputs.npz"), m.get("rtol", 1e-5), m.get("atol", 1e-6))


def golden_net(case: Path) -> prototxt2py.backends.torch_runtime.CaffeNet:
    """A nets/ case's net with its trained weights, at the input shapes of its inputs."""
    m = meta(case)
    shapes = {k: list(v.shape) for k, v in npz(case / "inputs.npz").items()}
    return prototxt2py.load(SHARED / m["prototxt"], weights=SHARED / m["weights"], input_shapes=shapes)


@pytest.mark.parametrize("case", case_params("nets"))
def test_golden_net(case: Path) -> None:
    m = meta(case)
    inputs = npz(case / "inputs.npz")
    got = run_onnx(to_onnx_model(golden_net(case)), inputs)
    compare(got, npz(case / "outputs.npz"), m.get("rtol", 1e-5), m.get("atol", 1e-6))


#: Zoo nets that only repeat bvlc_alexnet's layers in another file format or with another head, 60M parameters
#: each (drawing the recipe weights, exporting and loading them takes seconds): slow, like SLOW_ZOO.
ALEXNET_VARIANTS = {"alexnet_v1", "bvlc_finetune_flickr_style", "bvlc_rcnn_ilsvrc13", "bvlc_reference_caffenet",
                    "flickr_style_v1", "imagenet_v0", "rcnn_ilsvrc13_v1"}


@pytest.mark.parametrize("case", case_params("zoo", slow=SLOW_ZOO | ALEXNET_VARIANTS))
def test_golden_zoo_net(case: Path) -> None:
    m = meta(case)
    net, inputs = zoo_net_and_inputs(case)
    got = run_onnx(to_onnx_model(net), inputs)
    compare(got, npz(case / "outputs.npz"), m.get("rtol", 1e-5), m.get("atol", 1e-6))


# ---------------------------------------------------------------------------------------------------------
# Corpus deploy nets: export, check, run, and agree with the PyTorch runtime on the same random inputs
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", corpus_deploy_params())
def test_corpus_deploy_net(rel: str) -> None:
    net, feed = corpus_net_and_inputs(rel, data_dependent_outputs=True)
    got = run_onnx(to_onnx_model(net), feed)
    want = runtime_blobs(net, feed)
    detections = {net.graph.values[v].blob for n in net.graph.nodes if n.type == "DetectionOutput" for v in n.outputs}
    for name, value in got.items():
        assert np.isfinite(want[name]).all(), f"runtime output '{name}' is not finite: nothing to compare"
        if name in detections:  # random weights: boxes whose scores differ in the last bit may swap places
            assert_same_detections(detection_rows(value, False), detection_rows(want[name], False), name)
            continue
        scale = float(np.abs(want[name]).max(initial=0.0))
        assert_close(value, want[name], 1e-4, 1e-5 * max(scale, 1.0), f"ONNX output '{name}' vs the runtime")


# ---------------------------------------------------------------------------------------------------------
# Edges the golden data does not reach, against the PyTorch runtime
# ---------------------------------------------------------------------------------------------------------
EDGE_NET = """
name: "edges"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 9 } } }
layer { name: "max_past" type: "Pooling" bottom: "data" top: "max_past" top: "max_mask"
        pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
layer { name: "ave_past" type: "Pooling" bottom: "data" top: "ave_past"
        pooling_param { pool: AVE kernel_size: 2 stride: 4 } }
layer { name: "stoch" type: "Pooling" bottom: "data" top: "stoch"
        pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }
layer { name: "mask_pad" type: "Pooling" bottom: "data" top: "mask_pad_y" top: "mask_pad"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "global" type: "Pooling" bottom: "data" top: "global" pooling_param { pool: AVE global_pooling: true } }
layer { name: "spp" type: "SPP" bottom: "data" top: "spp" spp_param { pyramid_height: 2 pool: AVE } }
layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "within" type: "LRN" bottom: "data" top: "within"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" mvn_param { across_channels: true } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
layer { name: "param" type: "Parameter" top: "param" parameter_param { shape { dim: 2 dim: 5 } } }
layer { name: "bn2d" type: "BatchNorm" bottom: "flat" top: "bn2d" batch_norm_param { use_global_stats: true } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "argmax" type: "ArgMax" bottom: "flat" top: "argmax" argmax_param { top_k: 3 out_max_val: true } }
layer { name: "reshape" type: "Reshape" bottom: "data" top: "reshape"
        reshape_param { shape { dim: 0 dim: -1 dim: 9 } } }
layer { name: "red" type: "Reduction" bottom: "reshape" top: "red" reduction_param { operation: MEAN axis: 1 } }
layer { name: "power0" type: "Power" bottom: "data" top: "power0" power_param { power: 2 scale: 0 shift: 3 } }
layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: 0.5 max: -0.5 } }
layer { name: "flat_global" type: "Flatten" bottom: "global" top: "flat_global" }
layer { name: "scale" type: "Scale" bottom: "data" bottom: "flat_global" top: "scale" scale_param { axis: 0 } }
"""


def edge_net(tmp_path: Path, batch: int = 2) -> prototxt2py.backends.torch_runtime.CaffeNet:
    path = tmp_path / "edges.prototxt"
    path.write_text(EDGE_NET)
    net = prototxt2py.load(path, input_shapes={"data": [batch, 3, 7, 9]})
    recipe_weights(net, 7)
    return net


def edge_input(batch: int) -> dict[str, np.ndarray]:
    return {"data": np.random.default_rng(batch).standard_normal((batch, 3, 7, 9)).astype(np.float32)}


def test_clip_of_nan_is_min_as_in_caffe(tmp_path: Path) -> None:
    """Caffe's Clip is ``std::max(min, std::min(x, max))``: NaN fails both comparisons and gives ``min``, as the
    runtime does; onnxruntime's ``Clip``, ``Min`` and ``Max`` keep NaN, so the export needs its ``Where``."""
    path = tmp_path / "clip.prototxt"
    path.write_text('input: "x" input_shape { dim: 1 dim: 6 }\n'
                    'layer { name: "c" type: "Clip" bottom: "x" top: "c" clip_param { min: -0.5 max: 1 } }\n'
                    'layer { name: "d" type: "Clip" bottom: "x" top: "d" clip_param { min: 0.5 max: -0.5 } }\n')
    net = prototxt2py.load(path)
    x = np.array([[np.nan, -5, 0.25, 7, np.inf, -np.inf]], np.float32)
    got = run_onnx(to_onnx_model(net), {"x": x})
    np.testing.assert_array_equal(got["c"], [[-0.5, -0.5, 0.25, 1, 1, -0.5]])
    np.testing.assert_array_equal(got["d"], np.full((1, 6), 0.5, np.float32))
    want = net(torch.from_numpy(x))
    np.testing.assert_array_equal(got["c"], want["c"].numpy())
    np.testing.assert_array_equal(got["d"], want["d"].numpy())


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, newest_opset()])
def test_edges_match_the_runtime(tmp_path: Path, opset: int) -> None:
    net = edge_net(tmp_path)
    feed = edge_input(2)
    got = run_onnx(to_onnx_model(net, opset=opset), feed)
    want = runtime_blobs(net, feed)
    assert set(got) == set(net.output_names)
    for name, value in got.items():
        assert_close(value, want[name], 1e-5, 1e-5, f"ONNX output '{name}'")


def test_dynamic_batch_runs_at_batch_1_and_3(tmp_path: Path) -> None:
    model = to_onnx_model(edge_net(tmp_path), dynamic_batch=True)
    first_dims = {v.name: v.type.tensor_type.shape.dim[0] for v in (*model.graph.input, *model.graph.output)}
    assert first_dims["data"].dim_param == first_dims["bn2d"].dim_param == first_dims["argmax"].dim_param == "N"
    assert first_dims["param"].dim_value == 2  # a constant's first axis is not the batch, even of that size
    for batch in (1, 3):
        feed = edge_input(batch)
        got = run_onnx(model, feed)
        want = runtime_blobs(edge_net(tmp_path, batch), feed)
        for name, value in got.items():
            assert_close(value, want[name], 1e-5, 1e-5, f"batch {batch}: ONNX output '{name}'")


def test_dynamic_batch_golden_net(tmp_path: Path) -> None:
    """A real net (Softmax, InnerProduct after Flatten) exported with --dynamic-batch by the CLI."""
    case = next(p for p in (SHARED / "golden" / "nets").iterdir() if p.name == "mtcnn_det3_onet")
    m = meta(case)
    inputs = npz(case / "inputs.npz")
    out = tmp_path / "onet.onnx"
    args = ["convert", str(SHARED / m["prototxt"]), "--weights", str(SHARED / m["weights"]), "--to", "onnx",
            "-o", str(out), "--dynamic-batch"]
    code, output = cli(*args)
    assert code == 0, output
    want = npz(case / "outputs.npz")
    for batch in (1, 3):
        feed = {k: np.concatenate([v] * 3)[:batch] for k, v in inputs.items()}
        got = run_onnx(out, feed)
        expected = {k: np.concatenate([v] * 3)[:batch] for k, v in want.items() if k in got}
        compare(got, expected, m.get("rtol", 1e-5), m.get("atol", 1e-6))


# ---------------------------------------------------------------------------------------------------------
# Losses, Accuracy, Filter and recurrent layers beyond the golden cases: any batch size, against the runtime
# ---------------------------------------------------------------------------------------------------------
LOSS_NET = """
name: "losses"
layer { name: "data" type: "Input" top: "x" top: "label" top: "t" top: "lab1" top: "sel"
        input_param { shape { dim: {B} dim: 5 dim: 2 dim: 3 } shape { dim: {B} dim: 2 dim: 3 }
                      shape { dim: {B} dim: 30 } shape { dim: {B} } shape { dim: {B} dim: 1 } } }
layer { name: "flat" type: "Flatten" bottom: "x" top: "flat" }
layer { name: "sm_valid" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "sm_valid"
        loss_param { ignore_label: 2 } }
layer { name: "sm_batch" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "sm_batch"
        loss_param { normalization: BATCH_SIZE } }
layer { name: "sm_full" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "sm_full" loss_weight: 3
        loss_param { normalization: FULL ignore_label: 0 } }
layer { name: "sm_legacy" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "sm_legacy"
        loss_param { normalize: false } }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "per_class"
        accuracy_param { top_k: 2 ignore_label: 4 } }
layer { name: "sig" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "sig" loss_param { ignore_label: 1 } }
layer { name: "euclid" type: "EuclideanLoss" bottom: "flat" bottom: "t" top: "euclid" }
layer { name: "hinge" type: "HingeLoss" bottom: "flat" bottom: "lab1" top: "hinge" hinge_loss_param { norm: L2 } }
layer { name: "prob" type: "Softmax" bottom: "flat" top: "prob" }
layer { name: "mlog" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "lab1" top: "mlog" }
layer { name: "contrast" type: "ContrastiveLoss" bottom: "flat" bottom: "t" bottom: "lab1" top: "contrast"
        contrastive_loss_param { margin: 40 } }
layer { name: "pick" type: "Filter" bottom: "flat" bottom: "sel" top: "picked" }
layer { name: "picked_ip" type: "InnerProduct" bottom: "picked" top: "picked_ip" inner_product_param { num_output: 3 } }
"""
#: Time-major inputs (T, N, ...): static shapes only (--dynamic-batch makes axis 0 of every input the batch).
RECURRENT_PART = """
layer { name: "seq_data" type: "Input" top: "seq" top: "cont"
        input_param { shape { dim: 4 dim: {B} dim: 3 } shape { dim: 4 dim: {B} } } }
layer { name: "lstm" type: "LSTM" bottom: "seq" bottom: "cont" top: "h" recurrent_param { num_output: 4 } }
layer { name: "rnn" type: "RNN" bottom: "seq" bottom: "cont" top: "o" recurrent_param { num_output: 2 } }
"""


def loss_net(tmp_path: Path, batch: int, recurrent: bool) -> prototxt2py.backends.torch_runtime.CaffeNet:
    path = tmp_path / f"losses{batch}{recurrent}.prototxt"
    path.write_text((LOSS_NET + RECURRENT_PART * recurrent).replace("{B}", str(batch)))
    net = prototxt2py.load(path)
    recipe_weights(net, 5)
    return net


def loss_input(batch: int) -> dict[str, np.ndarray]:
    """Scores, labels 0..4 (so the ignore labels occur), float targets with some exact 1s, 0/1/2 pair flags
    (2 counts as similar: Caffe truncates and tests != 0), cont flags with restarts, a 0/1 selector."""
    rng = np.random.default_rng(100 + batch)
    f32 = np.float32
    t = rng.uniform(0, 1, (batch, 30)).astype(f32)
    t[:, ::7] = 1.0
    cont = (rng.uniform(size=(4, batch)) > 0.3).astype(f32)
    cont[0] = 0
    sel = np.zeros((batch, 1), f32)
    sel[::2] = 1
    return {"x": (3 * rng.standard_normal((batch, 5, 2, 3))).astype(f32),
            "label": rng.integers(0, 5, (batch, 2, 3)).astype(f32), "t": t,
            "lab1": rng.integers(0, 3, batch).astype(f32), "seq": rng.standard_normal((4, batch, 3)).astype(f32),
            "cont": cont, "sel": sel}


def test_losses_accuracy_filter_recurrent_match_the_runtime(tmp_path: Path) -> None:
    """Every normalization mode, top-k accuracy with per-class top, every loss, LSTM/RNN with restarts and a
    Filter whose items feed an InnerProduct: static, and with --dynamic-batch at batch sizes 1 and 3 (counts
    and normalizers then come from the runtime shapes). Loss tops are the plain losses (loss_weight 3 on
    sm_full scales only the objective)."""
    static = to_onnx_model(loss_net(tmp_path, 3, recurrent=True))
    declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in static.graph.output}
    assert declared["picked_ip"] == ["pick_items", 3] and declared["sm_full"] == []
    dynamic = to_onnx_model(loss_net(tmp_path, 2, recurrent=False), dynamic_batch=True)
    for model, batch, recurrent in ((static, 3, True), (dynamic, 1, False), (dynamic, 3, False)):
        feed = loss_input(batch)
        got = run_onnx(model, feed)
        want = runtime_blobs(loss_net(tmp_path, batch, recurrent), feed)
        assert got["picked_ip"].shape[0] == (batch + 1) // 2
        assert set(got) == {"sm_valid", "sm_batch", "sm_full", "sm_legacy", "acc", "per_class", "sig", "euclid",
                            "hinge", "mlog", "contrast", "picked_ip"} | ({"h", "o"} if recurrent else set())
        for name, value in got.items():
            assert_close(value, want[name], 1e-5, 1e-5, f"batch {batch}: ONNX output '{name}'")


def test_recurrent_dynamic_sequence_length(tmp_path: Path) -> None:
    """Time-major recurrent nets with --dynamic-batch: axis 0 of the inputs is T, so one model runs sequences
    of any length (the Scan takes its trip count from the input), with x_static and exposed states."""
    def net(steps: int) -> prototxt2py.backends.torch_runtime.CaffeNet:
        path = tmp_path / f"rec{steps}.prototxt"
        path.write_text(RECURRENT_PART.replace("{B}", "2").replace("dim: 4", f"dim: {steps}") + """
layer { name: "side" type: "Input" top: "xs" top: "h0" top: "c0"
        input_param { shape { dim: 2 dim: 5 } shape { dim: 1 dim: 2 dim: 3 } shape { dim: 1 dim: 2 dim: 3 } } }
layer { name: "lstm_x" type: "LSTM" bottom: "seq" bottom: "cont" bottom: "xs" bottom: "h0" bottom: "c0"
        top: "hx" top: "hT" top: "cT" recurrent_param { num_output: 3 expose_hidden: true } }
""")
        result = prototxt2py.load(path)
        recipe_weights(result, 9)
        return result

    model = to_onnx_model(net(4), dynamic_batch=True)
    rng = np.random.default_rng(3)
    for steps in (1, 6):
        feed = {"seq": rng.standard_normal((steps, 2, 3)), "cont": (rng.uniform(size=(steps, 2)) > 0.3) * 1.0,
                "xs": rng.standard_normal((2, 5)), "h0": rng.standard_normal((1, 2, 3)),
                "c0": rng.standard_normal((1, 2, 3))}
        feed = {k: v.astype(np.float32) for k, v in feed.items()}
        got = run_onnx(model, feed)
        want = runtime_blobs(net(steps), feed)
        assert set(got) == {"h", "o", "hx", "hT", "cT"}
        for name, value in got.items():
            assert_close(value, want[name], 1e-5, 1e-5, f"T = {steps}: ONNX output '{name}'")


def test_train_val_net_evaluates_like_caffe_test(tmp_path: Path) -> None:
    """LeNet's TEST-phase train_val net (Data layer tops as inputs) with the trained weights, converted by the
    CLI: onnxruntime gives the loss and accuracy that ``caffe test`` reports for the golden digits and their
    labels (computed from Caffe's own ip2 blob of the golden case) and the runtime's values."""
    case = SHARED / "golden" / "nets" / "lenet_v2"
    m = meta(case)
    train_val = SHARED / "corpus" / "BVLC__caffe" / "examples" / "mnist" / "lenet_train_test.prototxt"
    out = tmp_path / "lenet_train_val.onnx"
    code, output = cli("convert", str(train_val), "--weights", str(SHARED / m["weights"]), "--to", "onnx", "-o",
                       str(out), "--input", "data=10,1,28,28", "--input", "label=10")
    assert code == 0, output
    model = onnx.load(out)
    assert [i.name for i in model.graph.input] == ["data", "label"]
    assert sorted(o.name for o in model.graph.output) == ["accuracy", "loss"]
    labels = np.array(m["labels"])
    feed = {"data": npz(case / "inputs.npz")["data"], "label": labels.astype(np.float32)}
    got = run_onnx(out, feed)
    scores = npz(case / "outputs.npz")["ip2"].astype(np.float64)  # Caffe's own blob
    log_prob = scores - scores.max(axis=1, keepdims=True)
    log_prob -= np.log(np.exp(log_prob).sum(axis=1, keepdims=True))
    assert_close(got["loss"], -log_prob[np.arange(10), labels].mean(), 1e-5, 1e-6, "loss")
    hits = np.float32((scores.argmax(axis=1) == labels).sum())
    assert_close(got["accuracy"], hits / np.float32(10), 0, 0, "accuracy")
    net = prototxt2py.load(train_val, weights=SHARED / m["weights"], input_shapes={"data": [10, 1, 28, 28],
                                                                                 "label": [10]})
    want = runtime_blobs(net, feed)
    for name in ("loss", "accuracy"):
        assert_close(got[name], want[name], 1e-6, 1e-7, f"{name} vs the runtime")


def test_cifar10_train_val_net(tmp_path: Path) -> None:
    """CIFAR-10 quick's TEST-phase train_val net with its trained weights on the golden crops and random labels:
    loss and accuracy equal the runtime's, and the scores Caffe's."""
    case = SHARED / "golden" / "nets" / "cifar10_quick"
    m = meta(case)
    train_val = SHARED / "corpus" / "BVLC__caffe" / "examples" / "cifar10" / "cifar10_quick_train_test.prototxt"
    data = npz(case / "inputs.npz")["data"]
    net = prototxt2py.load(train_val, weights=SHARED / m["weights"],
                           input_shapes={"data": list(data.shape), "label": [data.shape[0]]})
    labels = np.random.default_rng(1).integers(0, 10, data.shape[0]).astype(np.float32)
    feed = {"data": data, "label": labels}
    got = run_onnx(to_onnx_model(net), feed)
    want = runtime_blobs(net, feed)
    assert sorted(got) == ["accuracy", "loss"]
    for name in got:
        assert_close(got[name], want[name], 1e-5, 1e-6, f"{name} vs the runtime")
    scores = npz(case / "outputs.npz")["ip2"]
    hits = np.float32((scores.argmax(axis=1) == labels).sum())
    assert_close(want["accuracy"], hits / np.float32(len(labels)), 0, 0, "accuracy vs Caffe's scores")


# ---------------------------------------------------------------------------------------------------------
# Command line, errors, opsets, external data
# ---------------------------------------------------------------------------------------------------------
def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


UNSUPPORTED_NET = """
name: "unsupported"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "save" type: "HDF5Output" bottom: "ip" bottom: "label" hdf5_output_param { file_name: "out.h5" } }
layer { name: "smooth" type: "SmoothL1Loss" bottom: "ip" bottom: "ip" top: "smooth" }
"""


def test_unsupported_layers_are_all_named_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(UNSUPPORTED_NET)
    out = tmp_path / "net.onnx"
    with pytest.raises(UnsupportedLayerError) as e:
        export_onnx(prototxt2py.load(path), out)
    message = str(e.value)
    for fragment in ("'HDF5Output' (layer 'save' at", f"{path}:5:", "'SmoothL1Loss' (layer 'smooth' at", f"{path}:6:"):
        assert fragment in message
    assert "'ip'" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]
    code, output = cli("convert", str(path), "--to", "onnx", "-o", str(out))
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert code == 1 and len(lines) == 1 and "'save'" in lines[0] and "'smooth'" in lines[0], output
    assert not out.exists()


@pytest.mark.parametrize("opset", [MIN_OPSET, newest_opset()])
def test_cli_opsets(tmp_path: Path, opset: int) -> None:
    case = SHARED / "golden" / "nets" / "cifar10_full"
    m = meta(case)
    out = tmp_path / "cifar.onnx"
    shape = ",".join(str(d) for d in npz(case / "inputs.npz")["data"].shape)
    code, output = cli("convert", str(SHARED / m["prototxt"]), "--weights", str(SHARED / m["weights"]), "--to", "onnx",
                       "-o", str(out), "--opset", str(opset), "--input", f"data={shape}")
    assert code == 0, output
    model = onnx.load(out)
    assert model.opset_import[0].version == opset
    onnx.checker.check_model(model, full_check=True)
    compare(run_onnx(out, npz(case / "inputs.npz")), npz(case / "outputs.npz"), m.get("rtol", 1e-5),
            m.get("atol", 1e-6))


def test_unsupported_opset_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(EDGE_NET)
    code, output = cli("convert", str(path), "--to", "onnx", "-o", str(tmp_path / "x.onnx"), "--opset",
                       str(MIN_OPSET - 1))
    assert code == 1 and f"choose {MIN_OPSET} to {newest_opset()}" in output, output
    assert not (tmp_path / "x.onnx").exists()


def test_names_follow_caffe(tmp_path: Path) -> None:
    """Graph inputs/outputs carry blob names, nodes layer names; in-place versions get unique names."""
    net = golden_net(SHARED / "golden" / "nets" / "lenet_v2")
    model = to_onnx_model(net)
    assert [i.name for i in model.graph.input] == net.input_names
    assert [o.name for o in model.graph.output] == net.output_names
    layer_names = {n.name for n in net.graph.nodes if n.type != "Input"}
    assert layer_names <= {n.name for n in model.graph.node}
    assert not {i.name for i in model.graph.initializer} & {i.name for i in model.graph.input}
    tensor_names = [o for n in model.graph.node for o in n.output]
    assert len(tensor_names) == len(set(tensor_names))


def test_shared_weights_are_stored_once(tmp_path: Path) -> None:
    net_text = """
    layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 6 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 4 } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
            inner_product_param { num_output: 4 } }
    """
    path = tmp_path / "siamese.prototxt"
    path.write_text(net_text)
    net = prototxt2py.load(path)
    recipe_weights(net, 3)
    model = to_onnx_model(net)
    assert len(model.graph.initializer) == 2
    feed = {"a": np.ones((2, 6), np.float32), "b": np.full((2, 6), 2.0, np.float32)}
    got, want = run_onnx(model, feed), runtime_blobs(net, feed)
    for name in ("fa", "fb"):
        assert_close(got[name], want[name], 1e-6, 1e-6, name)


PERMISSIVE = """
layer { name: "data" type: "Input" top: "a" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "data2" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 dim: 2 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" }
        inner_product_param { num_output: 4 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" share_mode: PERMISSIVE }
        inner_product_param { num_output: 12 bias_term: false axis: 2 } }
"""


def test_permissive_sharing_gives_each_layer_its_own_shape(tmp_path: Path) -> None:
    """Caffe's PERMISSIVE ``share_mode``: blobs of one size, each layer seeing the data in its own shape (the
    PyTorch runtime refuses such nets, ``test_runtime``; the export works from the files alone)."""
    path = tmp_path / "permissive.prototxt"
    path.write_text(PERMISSIVE)
    model = to_onnx_model(prototxt2py.graph(path))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    (w,) = [v for v in weights.values() if v.shape == (4, 6)]  # the owner's blob
    a, b = np.random.default_rng(0).standard_normal((2, 6)), np.random.default_rng(1).standard_normal((2, 3, 2))
    got = run_onnx(model, {"a": a.astype(np.float32), "b": b.astype(np.float32)})
    np.testing.assert_allclose(got["fa"], a @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["fb"], b @ w.reshape(12, 2).T, rtol=1e-5, atol=1e-5)


def test_external_data_for_big_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models over protobuf's 2 GB limit keep their weights in <output>.data (limit lowered for the test)."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_LIMIT", 1000)
    case = SHARED / "golden" / "nets" / "lenet_v2"
    m = meta(case)
    net = golden_net(case)
    out = tmp_path / "lenet.onnx"
    export_onnx(net, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.onnx", "lenet.onnx.data"]
    assert out.stat().st_size < 100_000 < (tmp_path / "lenet.onnx.data").stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    compare(run_onnx(out, npz(case / "inputs.npz")), npz(case / "outputs.npz"), m.get("rtol", 1e-5),
            m.get("atol", 1e-6))


def test_external_data_export_again_guards_and_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exporting over an earlier export was exit 3 (onnx looked for an existing data file in the working directory);
    the data file could replace an input (the weights) and was made 0600; write errors blamed standard output."""
    import os
    import resource
    import subprocess
    import sys

    from click.testing import CliRunner

    from prototxt2py.cli import main

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_LIMIT", 1000)
    net = tmp_path / "small.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 30 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
                   'num_output: 30 weight_filler { type: "gaussian" } } }\n')
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        for _ in range(2):
            result = CliRunner().invoke(main, ["convert", str(net), "--to", "onnx", "-o", "m.onnx"])
            assert result.exit_code == 0, result.stderr
    finally:
        os.umask(old)
    assert oct((tmp_path / "m.onnx.data").stat().st_mode & 0o777) == "0o644"
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    # the data file's name is the weights file read: refused, the weights untouched
    (tmp_path / "d").mkdir()
    assert CliRunner().invoke(main, ["convert", str(net), "--to", "caffemodel", "-o", "d/w.onnx.data"]).exit_code == 0
    before = (tmp_path / "d" / "w.onnx.data").read_bytes()
    result = CliRunner().invoke(main, ["convert", str(net), "--weights", "d/w.onnx.data", "--to", "onnx", "-o",
                                       "d/w.onnx"])
    assert result.exit_code == 1 and "d/w.onnx.data: refusing to overwrite an input file" in result.stderr
    assert (tmp_path / "d" / "w.onnx.data").read_bytes() == before and not (tmp_path / "d" / "w.onnx").exists()
    # a write that fails names the data file (a subprocess: the file-size limit is per process)
    script = ("import sys; from prototxt2py.backends import onnx_export; onnx_export.EXTERNAL_DATA_LIMIT = 1000; "
              "from prototxt2py.cli import main; sys.argv = ['prototxt2py'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", script, "convert", str(net), "--to", "onnx", "-o", "big.onnx"],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: big.onnx.data: cannot write the output: File too large"
    assert not list(tmp_path.glob("big.onnx*")) and not list(tmp_path.glob(".onnx.*"))
    # through a symbolic link, a reader opening the link would look for the data beside the link: refused
    (tmp_path / "store").mkdir()
    (tmp_path / "link.onnx").symlink_to(tmp_path / "store" / "real.onnx")
    (tmp_path / "old.onnx.data").symlink_to(tmp_path / "store" / "real.onnx.data")
    for out, what in (("link.onnx", "the output"), ("old.onnx", "old.onnx.data")):
        result = CliRunner().invoke(main, ["convert", str(net), "--to", "onnx", "-o", out])
        assert result.exit_code == 1 and f"{what} is a symbolic link: a model with external data" in result.stderr
    assert not list((tmp_path / "store").iterdir())
    # a name onnx's checker reads as a parent path ('..x.onnx.data'): one line (it was exit 3), nothing left
    result = CliRunner().invoke(main, ["convert", str(net), "--to", "onnx", "-o", "..x.onnx"])
    assert result.exit_code == 1 and "onnx's checker refuses the model written with external data" in result.stderr
    assert not list(tmp_path.glob("..x*")) and not list(tmp_path.glob(".onnx.*"))


def test_unknown_shapes_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" }\n'
                    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(Prototxt2pyError, match="ONNX export needs every blob shape.*'data'"):
        to_onnx_model(prototxt2py.load(path))


# ---------------------------------------------------------------------------------------------------------
# SSD DetectionOutput and R-FCN PSROIPooling: standard ops, against SSD's loops and the runtime
# ---------------------------------------------------------------------------------------------------------
SSD_PRIORS, SSD_CLASSES = 60, 5


def detection_net(tmp_path: Path, n: int, share: bool, code: str, keep_top_k: int, threshold: float | None,
                  nms: float = 0.45, eta: float = 1.0, top_k: int | None = None, background: int = 0,
                  encoded: bool = False) -> prototxt2py.backends.torch_runtime.CaffeNet:
    """A DetectionOutput fed by net inputs: loc, conf and priors of SSD_PRIORS boxes."""
    loc = SSD_PRIORS * (1 if share else SSD_CLASSES) * 4
    text = f"""
    layer {{ name: "in" type: "Input" top: "loc" top: "conf" top: "prior"
            input_param {{ shape {{ dim: {n} dim: {loc} }} shape {{ dim: {n} dim: {SSD_PRIORS * SSD_CLASSES} }}
                          shape {{ dim: 1 dim: 2 dim: {SSD_PRIORS * 4} }} }} }}
    layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
            detection_output_param {{ num_classes: {SSD_CLASSES} share_location: {str(share).lower()}
              background_label_id: {background} code_type: {code} keep_top_k: {keep_top_k}
              {'' if threshold is None else f'confidence_threshold: {threshold}'}
              variance_encoded_in_target: {str(encoded).lower()}
              nms_param {{ nms_threshold: {nms} eta: {eta} {'' if top_k is None else f'top_k: {top_k}'} }} }} }}
    """
    path = tmp_path / "det.prototxt"
    path.write_text(text)
    return prototxt2py.load(path)


def detection_inputs(n: int, share: bool, seed: int = 7, ties: bool = False) -> dict[str, np.ndarray]:
    """Random loc/conf (softmax-like rows; ``ties``: scores on a grid of quarters, so equal scores abound) and
    priors of random sizes with SSD's usual variances."""
    rng = np.random.default_rng(seed)
    loc = rng.standard_normal((n, SSD_PRIORS * (1 if share else SSD_CLASSES) * 4)) * 0.3
    conf = rng.random((n, SSD_PRIORS, SSD_CLASSES))
    if ties:
        conf = np.round(conf * 4) / 4 + 0.01
    conf = (conf / conf.sum(-1, keepdims=True)).reshape(n, -1)
    corner = rng.random((SSD_PRIORS, 2)).astype(np.float32) * 0.7
    size = rng.random((SSD_PRIORS, 2)).astype(np.float32) * 0.3 + 0.05
    prior = np.zeros((1, 2, SSD_PRIORS * 4), np.float32)
    prior[0, 0] = np.concatenate([corner, corner + size], 1).reshape(-1)
    prior[0, 1] = np.tile([0.1, 0.1, 0.2, 0.2], SSD_PRIORS)
    return {"loc": loc.astype(np.float32), "conf": conf.astype(np.float32), "prior": prior}


DETECTION_CASES = {
    # name: (batch, share_location, code_type, keep_top_k, confidence_threshold, nms, eta, top_k, background, encoded)
    "center_size": (1, True, "CENTER_SIZE", 30, 0.2, 0.45, 1.0, 50, 0, False),
    "corner_per_class_loc": (2, False, "CORNER", -1, 0.1, 0.45, 1.0, 20, 0, False),
    "corner_size_no_top_k": (2, True, "CORNER_SIZE", 5, 0.3, 0.45, 1.0, None, 0, False),
    "no_threshold": (1, True, "CENTER_SIZE", 100, None, 0.45, 1.0, 40, 0, False),
    "keep_top_k_per_image": (3, True, "CENTER_SIZE", 7, 0.05, 0.3, 1.0, None, 0, False),
    "eta_without_effect": (2, True, "CENTER_SIZE", 20, 0.1, 0.5, 0.8, 30, 0, False),
    "no_background": (1, False, "CENTER_SIZE", 25, 0.15, 0.45, 1.0, 30, -1, False),  # shared boxes: fatal in SSD
    "background_2_encoded": (2, False, "CENTER_SIZE", 40, 0.1, 0.6, 1.0, 25, 2, True),
    "nothing_detected": (2, True, "CENTER_SIZE", 10, 0.99, 0.45, 1.0, 10, 0, False),
    "keep_top_k_0": (2, False, "CENTER_SIZE", 0, 0.1, 0.45, 1.0, 20, 0, False),
    "top_k_0": (1, True, "CENTER_SIZE", 10, 0.1, 0.45, 1.0, 0, 0, False),
}


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", sorted(DETECTION_CASES))
def test_DetectionOutput_matches_ssd_and_the_runtime(case: str, ties: bool, tmp_path: Path) -> None:
    """onnxruntime gives the runtime's rows bit for bit (same boxes, same order, Caffe's -1 row per image when
    nothing is kept), and SSD's Forward_cpu written out loop by loop where that reference applies."""
    from test_layers_forks import ssd_detection_output

    n, share, code, keep, thr, nms, eta, top_k, background, encoded = DETECTION_CASES[case]
    net = detection_net(tmp_path, n, share, code, keep, thr, nms, eta, top_k, background, encoded)
    feed = detection_inputs(n, share, ties=ties)
    model = to_onnx_model(net)
    assert {node.domain for node in model.graph.node} == {""}
    (output,) = model.graph.output
    assert [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim] == [1, 1, "detections", 7]
    got = run_onnx(model, feed)["det"]
    want = runtime_blobs(net, feed)["det"]
    assert got.shape == want.shape and np.array_equal(got, want), (got.shape, want.shape)
    if case in ("nothing_detected", "keep_top_k_0", "top_k_0"):
        np.testing.assert_array_equal(got[0, 0], [[i, -1, -1, -1, -1, -1, -1] for i in range(n)])
    if background == 0 and not encoded:
        reference = ssd_detection_output(feed["loc"], feed["conf"], feed["prior"], SSD_CLASSES, share,
                                         ("CORNER", "CENTER_SIZE", "CORNER_SIZE").index(code) + 1, keep,
                                         -3.4e38 if thr is None else thr, nms, eta, -1 if top_k is None else top_k)
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-7)


@pytest.mark.parametrize("opset", [MIN_OPSET, newest_opset()])
def test_DetectionOutput_and_PSROIPooling_at_every_opset(opset: int, tmp_path: Path) -> None:
    net = detection_net(tmp_path, 2, False, "CENTER_SIZE", 9, 0.1, top_k=20)
    feed = detection_inputs(2, False)
    assert np.array_equal(run_onnx(to_onnx_model(net, opset=opset), feed)["det"], runtime_blobs(net, feed)["det"])
    path = tmp_path / "psroi.prototxt"
    path.write_text(PSROI_NET.format(c=18, d=2, g=3, scale=0.25, rois="dim: 2 dim: 5"))
    net = prototxt2py.load(path)
    feed = {"x": np.random.default_rng(0).standard_normal((2, 18, 11, 14)).astype(np.float32),
            "rois": np.array([[1, 3, 4, 30, 40], [0, 0.5, 9.5, 9.5, 55]], np.float32)}
    assert np.array_equal(run_onnx(to_onnx_model(net, opset=opset), feed)["y"], runtime_blobs(net, feed)["y"])


def test_DetectionOutput_dynamic_batch(tmp_path: Path) -> None:
    """Exported with a symbolic batch, the model keeps each image's own boxes (keep_top_k per image) at
    batch sizes other than the exported one."""
    net = detection_net(tmp_path, 2, True, "CENTER_SIZE", 6, 0.05, top_k=30)
    model = to_onnx_model(net, dynamic_batch=True)
    (output,) = model.graph.output
    assert [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim] == [1, 1, "detections", 7]
    for n in (1, 3):
        feed = detection_inputs(n, True, seed=n)
        resized = prototxt2py.load(tmp_path / "det.prototxt", input_shapes={"loc": list(feed["loc"].shape),
                                                                            "conf": list(feed["conf"].shape)})
        want = runtime_blobs(resized, feed)["det"]
        got = run_onnx(model, feed)["det"]
        assert got.shape == want.shape == (1, 1, 6 * n, 7) and np.array_equal(got, want)


def test_DetectionOutput_with_symbolic_sizes() -> None:
    """``--dynamic``: the prior count follows the input size; the mapping takes it from the prior blob at run
    time (it was refused until stop 44). YuFaceDetectNet with its real weights, one model, two image sizes: the
    runtime's detections in the runtime's order, faces found at both."""
    from test_opencv_crosscheck import face_image

    prototxt, weights = (CORPUS / p for p in SSD_NETS["yufacedetectnet_v2"])
    if not prototxt.exists():
        pytest.skip("corpus model not available")
    model = to_onnx_model(prototxt2py.load(prototxt, weights=weights), dynamic=True)
    image = face_image()
    for data in (image, np.ascontiguousarray(image[:, :, 13:, 29:])):
        net = prototxt2py.load(prototxt, weights=weights, input_shapes={"data": list(data.shape)})
        got = run_onnx(model, {"data": data})["detection_out"]
        want = runtime_blobs(net, {"data": data})["detection_out"]
        assert got.shape == want.shape and (want[0, 0, :, 1] >= 1).all(), (data.shape, got.shape, want.shape)
        assert_close(got, want, 0, 1e-4, f"detections at {data.shape}")


def test_DetectionOutput_adaptive_nms_is_refused(tmp_path: Path) -> None:
    net = detection_net(tmp_path, 1, True, "CENTER_SIZE", 10, 0.1, nms=0.6, eta=0.9)
    with pytest.raises(UnsupportedLayerError, match=r"layer 'det'.*adaptive NMS \(eta 0.9.* > 0.5\)"):
        to_onnx_model(net)


def test_DetectionOutput_top_feeding_a_layer_is_a_clear_error(tmp_path: Path) -> None:
    """Only a net output may have a data-dependent shape: a layer reading the detections is named."""
    net = detection_net(tmp_path, 1, True, "CENTER_SIZE", 10, 0.1)
    path = tmp_path / "det.prototxt"
    path.write_text(path.read_text() + 'layer { name: "twice" type: "Power" bottom: "det" top: "twice" '
                                       'power_param { scale: 2 } }\n')
    net = prototxt2py.load(path)
    with pytest.raises(Prototxt2pyError, match=r"'Power' \(layer 'twice'.*bottom 'det' has a data-dependent shape"):
        to_onnx_model(net)


#: Corpus SSD nets: real weights (libfacedetection) or the zoo recipe (MobileNet-SSD, whose conf is then
#: confident enough to keep 100 boxes on the face image; X2Paddle's copy of YuFaceDetectNet).
SSD_NETS = {
    "yufacedetectnet_v2": ("ShiqiYu__libfacedetection@96a7cc0/models/caffe/yufacedetectnet-open-v2.prototxt",
                           "ShiqiYu__libfacedetection@96a7cc0/models/caffe/yufacedetectnet-open-v2.caffemodel"),
    "mobilenet_ssd_voc": ("chuanqi305__MobileNet-SSD/voc/MobileNetSSD_deploy.prototxt", None),
    "x2paddle_face": ("PaddlePaddle__X2Paddle/test_benchmark/Caffe/FaceDetction/deploy.prototxt", None),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] * (n != "yufacedetectnet_v2"))
                                  for n in sorted(SSD_NETS)])
def test_DetectionOutput_ssd_nets_end_to_end_with_prior_boxes(name: str) -> None:
    """Whole SSD nets (PriorBox constants, Normalize, Permute, DetectionOutput) in onnxruntime: the same
    detections in the same order as the runtime, and at least one."""
    from test_opencv_crosscheck import face_image

    prototxt, weights = SSD_NETS[name]
    if not (CORPUS / prototxt).exists():
        pytest.skip("corpus model not available")
    data = face_image()
    net = prototxt2py.load(CORPUS / prototxt, weights=weights and CORPUS / weights,
                           input_shapes={"data": list(data.shape)})
    if weights is None:
        recipe_weights(net, 0)
    got = run_onnx(to_onnx_model(net), {"data": data})["detection_out"]
    want = runtime_blobs(net, {"data": data})["detection_out"]
    assert got.shape == want.shape and want.shape[2] >= 1 and (want[0, 0, :, 1] >= 1).all(), (got.shape, want.shape)
    assert_close(got, want, 0, 1e-4, f"{name}: detections")


PSROI_NET = """
layer {{ name: "in" type: "Input" top: "x" top: "rois"
        input_param {{ shape {{ dim: 2 dim: {c} dim: 11 dim: 14 }} shape {{ {rois} }} }} }}
layer {{ name: "psroi" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y"
        psroi_pooling_param {{ output_dim: {d} group_size: {g} spatial_scale: {scale} }} }}
"""


@pytest.mark.parametrize("d,g,scale,rois_4d", [(3, 3, 0.0625, False), (2, 7, 0.0625, True), (4, 2, 0.5, False)])
def test_PSROIPooling_matches_the_runtime(d: int, g: int, scale: float, rois_4d: bool, tmp_path: Path) -> None:
    """Bit for bit: corners rounded half away from zero, sub-pixel and clipped bins, empty bins 0, both images."""
    rois = np.array([[0, 0, 0, 100, 100], [1, 10.5, 20.5, 200, 150], [0, 150, 100, 160, 110], [1, -20, -20, 500, 400],
                     [0, 33.3, 47.9, 33.3, 47.9], [1, 2.5, -2.5, 21.5, 18.5], [0, 300, 300, 400, 400]], np.float32)
    rois_shape = "dim: 7 dim: 5" + (" dim: 1 dim: 1" if rois_4d else "")
    path = tmp_path / "psroi.prototxt"
    path.write_text(PSROI_NET.format(c=d * g * g, d=d, g=g, scale=scale, rois=rois_shape))
    net = prototxt2py.load(path)
    feed = {"x": np.random.default_rng(g).standard_normal((2, d * g * g, 11, 14)).astype(np.float32),
            "rois": rois.reshape(7, 5, *((1, 1) if rois_4d else ()))}
    got, want = run_onnx(to_onnx_model(net), feed)["y"], runtime_blobs(net, feed)["y"]
    assert got.shape == want.shape == (7, d, g, g)
    assert np.array_equal(got, want) and (want == 0).any() and np.abs(want).max() > 0.1
