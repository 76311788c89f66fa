"""ONNX export against Caffe: golden layer cases, nets and zoo nets are exported, checked with the full ONNX
checker, run in onnxruntime and compared with Caffe's blobs; corpus deploy nets export and agree with the
PyTorch runtime; plus error reporting, opsets, a dynamic batch and external data."""

from __future__ import annotations

import dataclasses
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
    case_params,
    corpus_deploy_params,
    corpus_net_and_inputs,
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
from prototxt2py.layers import get_spec
from prototxt2py.reader import read_net

#: Golden layer cases that cannot be exported, and why; exporting each must fail with one error naming every
#: layer that has no mapping.
EXCLUDED = {
    **{case: "only a training-time loss/metric on the inputs: nothing is left for inference" for case in (
        "accuracy_axis2", "accuracy_ignore", "accuracy_per_class", "accuracy_top1", "accuracy_top3",
        "contrastive_2d_margin05", "contrastive_default", "contrastive_legacy_margin15", "euclidean_basic",
        "hinge_l1", "hinge_l1_scaled", "hinge_l2", "multinomial_logistic",
        "sigmoidce_default", "sigmoidce_ignore_valid", "sigmoidce_none_weight", "softmaxloss_axis2",
        "softmaxloss_batch_size_spatial", "softmaxloss_full_ignore_spatial", "softmaxloss_ignore_valid",
        "softmaxloss_none", "softmaxloss_valid_2d")},
    **{case: "LSTM/RNN/LSTMUnit have no ONNX mapping (Caffe's cont-gated recurrence is not ONNX's LSTM/RNN)"
       for case in ("lstm_basic", "lstm_expose_hidden", "lstm_reset_midseq", "lstmunit_basic", "rnn_basic",
                    "rnn_expose_hidden", "rnn_static")},
    "filter_basic": "Filter's output size depends on the selector's values (no static shape)",
}

#: Training-only layer types dropped before exporting a golden case, as a deploy net would not have them.
TRAINING_ONLY = {"Accuracy"}


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


def case_net(case: Path, m: dict, inference_only: bool = True) -> prototxt2py.backends.torch_runtime.CaffeNet:
    """The case's net with the case's weights; ``inference_only`` drops its losses and metrics (what a deploy
    net would not have)."""
    source = read_net(case / "net.prototxt")
    keep = [i for i, layer in enumerate(source.net.layer) if not inference_only
            or not ((spec := get_spec(layer.type)) is not None and spec.is_loss or layer.type in TRAINING_ONLY)]
    net = type(source.net)()
    net.CopyFrom(source.net)
    del net.layer[:]
    net.layer.extend(source.net.layer[i] for i in keep)
    stripped = dataclasses.replace(source, net=net, locations=[source.locations[i] for i in keep],
                                   dropped=[source.dropped[i] for i in keep] if source.dropped else [])
    g = prototxt2py.graph(stripped, phase=m.get("phase", "TEST"), stages=m.get("stages", ()), level=m.get("level", 0))
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
        net = case_net(case, m, inference_only=False)
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
    net, feed = corpus_net_and_inputs(rel)
    got = run_onnx(to_onnx_model(net), feed)
    want = runtime_blobs(net, feed)
    for name, value in got.items():
        assert np.isfinite(want[name]).all(), f"runtime output '{name}' is not finite: nothing to compare"
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
# Command line, errors, opsets, external data
# ---------------------------------------------------------------------------------------------------------
def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


UNSUPPORTED_NET = """
name: "unsupported"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
layer { name: "pick" type: "Filter" bottom: "ip" bottom: "label" top: "picked" }
"""


def test_unsupported_layers_are_all_named_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(UNSUPPORTED_NET)
    out = tmp_path / "net.onnx"
    with pytest.raises(UnsupportedLayerError) as e:
        export_onnx(prototxt2py.load(path), out)
    message = str(e.value)
    for fragment in ("'Accuracy' (layer 'acc' at", f"{path}:5:", "'Filter' (layer 'pick' at", f"{path}:6:"):
        assert fragment in message
    assert "'ip'" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]
    code, output = cli("convert", str(path), "--to", "onnx", "-o", str(out))
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert code == 1 and len(lines) == 1 and "'acc'" in lines[0] and "'pick'" in lines[0], output
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
    "no_background": (1, True, "CENTER_SIZE", 25, 0.15, 0.45, 1.0, 30, -1, False),
    "background_2_encoded": (2, False, "CENTER_SIZE", 40, 0.1, 0.6, 1.0, 25, 2, True),
    "nothing_detected": (2, True, "CENTER_SIZE", 10, 0.99, 0.45, 1.0, 10, 0, False),
    "keep_top_k_0": (2, False, "CENTER_SIZE", 0, 0.1, 0.45, 1.0, 20, 0, False),
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
    if case == "nothing_detected" or case == "keep_top_k_0":
        np.testing.assert_array_equal(got[0, 0], [[i, -1, -1, -1, -1, -1, -1] for i in range(n)])
    if background == 0 and not encoded:
        reference = ssd_detection_output(feed["loc"], feed["conf"], feed["prior"], SSD_CLASSES, share,
                                         ("CORNER", "CENTER_SIZE", "CORNER_SIZE").index(code) + 1, keep,
                                         -3.4e38 if thr is None else thr, nms, eta, -1 if top_k is None else top_k)
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-7)


def test_DetectionOutput_dynamic_batch(tmp_path: Path) -> None:
    """Exported with a symbolic batch, the model keeps each image's own boxes (keep_top_k per image) at
    batch sizes other than the exported one."""
    net = detection_net(tmp_path, 2, True, "CENTER_SIZE", 6, 0.05, top_k=30)
    model = to_onnx_model(net, dynamic_batch=True)
    for n in (1, 3):
        feed = detection_inputs(n, True, seed=n)
        resized = prototxt2py.load(tmp_path / "det.prototxt", input_shapes={"loc": list(feed["loc"].shape),
                                                                            "conf": list(feed["conf"].shape)})
        want = runtime_blobs(resized, feed)["det"]
        got = run_onnx(model, feed)["det"]
        assert got.shape == want.shape == (1, 1, 6 * n, 7) and np.array_equal(got, want)


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
