"""``convert --to onnx --dynamic``: symbolic batch, height and width, with Caffe's size arithmetic as ONNX ops.

MTCNN's P-Net (real weights) exported once runs in onnxruntime at the sizes of an image pyramid and matches
Caffe's golden blobs and the runtime; a hand-made fully convolutional net with CEIL pooling and padding (the
last-window drop rule), AVE divisors clipped at the padded border, global pooling, FCN-style Crop, Flatten,
Reshape and Slice along changing axes matches the runtime at odd and even sizes; nets that cannot have
symbolic sizes are refused with one error naming the layers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from golden import SHARED, assert_close, assert_same_detections, detection_rows, meta, npz, recipe_weights

import prototxt2py
from prototxt2py.backends.onnx_export import MIN_OPSET, newest_opset, to_onnx_model
from prototxt2py.cli import main
from prototxt2py.errors import ShapeError, UnsupportedLayerError
from prototxt2py.reader import read_net_text

PNET = SHARED / "golden" / "nets" / "mtcnn_det1_pnet"


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feed)), strict=True))


def runtime(prototxt: Path, weights: Path | None, feed: Mapping[str, np.ndarray], seed: int | None = None) -> dict:
    """Our runtime built for the feed's shapes (with ``seed``: the same recipe weights as the export)."""
    net = prototxt2py.load(prototxt, weights, input_shapes={k: v.shape for k, v in feed.items()})
    if seed is not None:
        fill(net, seed)
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in feed.items()}, all_blobs=True)
    return {k: v.numpy() for k, v in blobs.items()}


def fill(net: prototxt2py.backends.torch_runtime.CaffeNet, seed: int) -> None:
    """Deterministic weights that depend only on the layer and blob shapes (so nets built for different input
    sizes get the same ones), scaled by fan-in so that deep nets keep moderate values."""
    with torch.no_grad():
        for node in net.graph.nodes:
            module = net.layer(node.name)
            for i, name in enumerate(getattr(module, "blob_names", ())):
                blob = getattr(module, name)
                rng = np.random.default_rng([seed, i, sum(map(ord, node.name))])
                scale = 1.0 / np.sqrt(max(1, int(np.prod(blob.shape[1:])))) if blob.dim() > 1 else 0.5
                values = rng.uniform(-scale, scale, tuple(blob.shape)).astype(np.float32)
                blob.copy_(torch.from_numpy(values))


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


# ---------------------------------------------------------------------------------------------------------
# MTCNN P-Net on an image pyramid
# ---------------------------------------------------------------------------------------------------------
def test_pnet_pyramid_matches_caffe_and_runtime(tmp_path: Path) -> None:
    """Exported at the prototxt's 12x12 by the CLI (torch-free path), run at three pyramid scales: Caffe's
    own blobs at 40x36, and the runtime at 12x12 and at a large odd size (a crop of the same face image
    upscaled, as a pyramid's finer level is)."""
    m = meta(PNET)
    prototxt, weights = SHARED / m["prototxt"], SHARED / m["weights"]
    out = tmp_path / "pnet.onnx"
    code, output = cli("convert", str(prototxt), "--weights", str(weights), "--to", "onnx", "-o", str(out),
                       "--dynamic")
    assert code == 0, output
    model = onnx.load(out)
    assert dims(model.graph.input[0]) == ["N", 3, "H", "W"]
    outputs = {o.name: dims(o) for o in model.graph.output}
    assert outputs["prob1"][:2] == ["N", 2] and outputs["conv4-2"][:2] == ["N", 4]
    assert all(isinstance(d, str) and d not in ("N", "H", "W") for d in outputs["prob1"][2:])  # computed, unnamed sizes
    sess = session(out)

    image = npz(PNET / "inputs.npz")["data"]  # (1, 3, 40, 36), Caffe's input
    got = run(sess, {"data": image})
    want = npz(PNET / "outputs.npz")
    for name in ("prob1", "conv4-2"):
        assert_close(got[name], want[name], m["rtol"], m["atol"], f"40x36 vs Caffe: '{name}'")

    small = np.ascontiguousarray(image[:, :, 9:21, 11:23])
    large = np.repeat(np.repeat(image, 3, axis=2), 3, axis=3)[:, :, 5:106, 2:91]  # 101x89: odd, upscaled
    pair = np.concatenate([image[:, :, :33, :29], image[:, :, 7:, 7:]])  # a batch of 2 at 33x29
    for feed in (small, large, pair):
        got = run(sess, {"data": feed})
        want = runtime(prototxt, weights, {"data": feed})
        size = "x".join(map(str, feed.shape))
        for name in ("prob1", "conv4-2"):
            assert_close(got[name], want[name], 1e-5, 5e-5, f"{size} vs runtime: '{name}'")


# ---------------------------------------------------------------------------------------------------------
# Pooling with CEIL rounding and padding, Crop, Flatten, Reshape, Slice
# ---------------------------------------------------------------------------------------------------------
SIZED_NET = """
name: "sized"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "drop_max" type: "Pooling" bottom: "conv1" top: "drop_max"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "drop_ave" type: "Pooling" bottom: "conv1" top: "drop_ave"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "wide_ave" type: "Pooling" bottom: "conv1" top: "wide_ave"
        pooling_param { pool: AVE kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3 pad_h: 2 pad_w: 1 } }
layer { name: "wide_max" type: "Pooling" bottom: "conv1" top: "wide_max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 2 } }
layer { name: "sparse_max" type: "Pooling" bottom: "conv1" top: "sparse_max"
        pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
layer { name: "sparse_ave" type: "Pooling" bottom: "conv1" top: "sparse_ave"
        pooling_param { pool: AVE kernel_size: 2 stride: 3 } }
layer { name: "floor_ave" type: "Pooling" bottom: "conv1" top: "floor_ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }
layer { name: "relu" type: "ReLU" bottom: "conv1" top: "relu" }
layer { name: "stoch" type: "Pooling" bottom: "relu" top: "stoch"
        pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }
layer { name: "global" type: "Pooling" bottom: "conv1" top: "global"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "global" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "global_max" type: "Pooling" bottom: "conv1" top: "global_max"
        pooling_param { pool: MAX global_pooling: true } }
layer { name: "global_stoch" type: "Pooling" bottom: "relu" top: "global_stoch"
        pooling_param { pool: STOCHASTIC global_pooling: true } }
layer { name: "up" type: "Deconvolution" bottom: "drop_max" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "conv1" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "conv1" top: "sum" }
layer { name: "prob" type: "Softmax" bottom: "sum" top: "prob" }
layer { name: "flat" type: "Flatten" bottom: "prob" top: "flat" flatten_param { axis: 2 } }
layer { name: "rows" type: "Reshape" bottom: "flat" top: "rows" reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }
layer { name: "halves" type: "Slice" bottom: "rows" top: "first" top: "rest" slice_param { axis: 2 slice_point: 5 } }
layer { name: "twice" type: "Concat" bottom: "wide_max" bottom: "wide_max" top: "twice" concat_param { axis: 3 } }
layer { name: "split" type: "Slice" bottom: "twice" top: "left" top: "right" slice_param { axis: 3 } }
"""

#: Input sizes (height, width): odd and even, around and far from the export size; Caffe's pooling drop
#: rule fires for the 2x2/stride 2/pad 1 layers on odd sizes.
SIZES = [(12, 12), (7, 9), (13, 16), (31, 24), (50, 37)]


def caffe_pool_size(n: int, k: int, p: int, s: int, ceil: bool = True) -> int:
    """Caffe's ``PoolingLayer::Reshape`` output size, written out independently of the package."""
    out = (-(-(n + 2 * p - k) // s) if ceil else (n + 2 * p - k) // s) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


FORK_NET = """
name: "forks"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv1" top: "pool2" top: "mask2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "pool2" bottom: "mask2" top: "unpool" upsample_param { scale: 2 } }
layer { name: "nearest" type: "Upsample" bottom: "pool" top: "nearest" upsample_param { scale: 3 } }
layer { name: "zoom" type: "Interp" bottom: "pool" top: "zoom" interp_param { zoom_factor: 3 } }
layer { name: "shrink" type: "Interp" bottom: "conv1" top: "shrink"
        interp_param { shrink_factor: 2 zoom_factor: 3 pad_beg: -1 pad_end: -2 } }
layer { name: "fixed" type: "Interp" bottom: "conv1" top: "fixed" interp_param { height: 5 width: 7 } }
layer { name: "norm" type: "Normalize" bottom: "pool" top: "norm" norm_param { across_spatial: false } }
layer { name: "perm" type: "Permute" bottom: "norm" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc" type: "Flatten" bottom: "perm" top: "loc" }
layer { name: "priors" type: "PriorBox" bottom: "pool" bottom: "data" top: "priors"
        prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 flip: true clip: true
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "stepped" type: "PriorBox" bottom: "conv1" top: "stepped"
        prior_box_param { min_size: 3 aspect_ratio: 3 img_size: 40 step: 2.5 offset: 0.25 variance: 0.2 } }
"""


#: Bilinear Interp outputs: onnxruntime's Resize maps coordinates with other float rounding than torch (the
#: fixed-size export differs from the runtime as much; the dynamic one equals it).
INTERP, INTERP_TOL = {"zoom", "shrink", "fixed"}, 1e-4


@pytest.mark.parametrize("text", [SIZED_NET, FORK_NET], ids=["pooling-crop-reshape", "forks"])
def test_sized_net_matches_runtime_at_every_size(tmp_path: Path, text: str) -> None:
    """Every blob (intermediate ones made graph outputs) equals the runtime's at each size, with shapes from
    Caffe's own formulas where pooling decides them."""
    prototxt = tmp_path / "sized.prototxt"
    prototxt.write_text(text)
    net = prototxt2py.load(prototxt)
    fill(net, 3)
    model = to_onnx_model(net, dynamic=True)
    assert not [n for n in model.graph.node if any(a.name == "ceil_mode" for a in n.attribute)]
    declared = {o.name for o in model.graph.output}
    produced = {name for n in model.graph.node for name in n.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(blob, onnx.TensorProto.FLOAT, None)
                              for blob in net.graph.blob_shapes() if blob in produced and blob not in declared)
    sess = session(model)  # every blob an output, intermediate ones too
    for h, w in SIZES:
        feed = {"data": np.random.default_rng(h * w).standard_normal((2, 3, h, w)).astype(np.float32)}
        got = run(sess, feed)
        want = runtime(prototxt, None, feed, seed=3)
        fixed = prototxt2py.load(prototxt, input_shapes={"data": (2, 3, h, w)})
        fill(fixed, 3)
        static = run(session(to_onnx_model(fixed)), feed)  # the export at this very size
        for name, value in static.items():
            assert_close(got[name], value, 0, 1e-6, f"{h}x{w}: '{name}', dynamic vs fixed-size export")
        if "drop_max" in got:
            assert got["drop_max"].shape[2:] == (caffe_pool_size(h, 2, 1, 2), caffe_pool_size(w, 2, 1, 2))
            assert got["wide_ave"].shape[2:] == (caffe_pool_size(h, 3, 2, 2), caffe_pool_size(w, 5, 1, 3))
            assert got["floor_ave"].shape[2:] == (caffe_pool_size(h, 3, 1, 2, False),
                                                  caffe_pool_size(w, 3, 1, 2, False))
        for name, value in got.items():
            tol = INTERP_TOL if name in INTERP else 1e-5  # onnxruntime's Resize coordinates vs torch's
            assert_close(value, want[name], tol, tol, f"{h}x{w}: ONNX output '{name}'")
    assert set(net.graph.blob_shapes()) - {"data"} <= set(got)


@pytest.mark.parametrize("opset", [MIN_OPSET, newest_opset()])
def test_sized_nets_at_other_opsets(tmp_path: Path, opset: int) -> None:
    """Opset 13 (Split without sizes, Reduce* axes as attributes) and the newest (Split's num_outputs, axes as
    inputs) give the default opset's numbers at an odd size."""
    prototxt = tmp_path / "both.prototxt"
    for text in (SIZED_NET, FORK_NET):
        prototxt.write_text(text)
        net = prototxt2py.load(prototxt)
        fill(net, 3)
        feed = {"data": np.random.default_rng(5).standard_normal((1, 3, 13, 18)).astype(np.float32)}
        want = run(session(to_onnx_model(net, dynamic=True)), feed)
        got = run(session(to_onnx_model(net, dynamic=True, opset=opset)), feed)
        assert set(got) == set(want)
        for name, value in got.items():
            assert_close(value, want[name], 0, 1e-6, f"opset {opset}: '{name}'")


GOOGLENET = SHARED / "corpus" / "fzliu__style-transfer" / "models" / "googlenet" / "deploy.prototxt"


@pytest.mark.slow
def test_fully_convolutional_googlenet_at_three_sizes() -> None:
    """A real 57-convolution GoogLeNet without its classifier (style-transfer's): AVE pooling with pad 1,
    stride 2 and CEIL rounding throughout, 7x7 pool5 that becomes spatial above 224x224."""
    net = prototxt2py.load(GOOGLENET)
    fill(net, 5)
    sess = session(to_onnx_model(net, dynamic=True))
    for h, w in [(224, 224), (225, 263), (287, 241)]:
        feed = {"data": np.random.default_rng(h).standard_normal((1, 3, h, w)).astype(np.float32)}
        got = run(sess, feed)
        want = runtime(GOOGLENET, None, feed, seed=5)
        for name, value in got.items():
            scale = float(np.abs(want[name]).max())
            assert scale > 0
            assert_close(value / scale, want[name] / scale, 1e-4, 1e-5, f"{h}x{w}: '{name}'")


def test_googlenet_classifier_is_refused() -> None:
    """BVLC GoogLeNet's classifier follows a 7x7 (not global) pooling: its weights fix the input size."""
    graph = prototxt2py.graph(str(SHARED / "corpus" / "BVLC__caffe" / "models" / "bvlc_googlenet" / "deploy.prototxt"))
    with pytest.raises(UnsupportedLayerError, match=r"'InnerProduct' \(layer 'loss3/classifier'.*not fully conv"):
        to_onnx_model(graph, dynamic=True)


def test_drop_rule_differs_from_ceil_mode() -> None:
    """The sizes above really exercise Caffe's rule: ONNX's plain ceil_mode formula would be one larger."""
    h = 7
    assert caffe_pool_size(h, 2, 1, 2) == 4 != -(-(h + 2 - 2) // 2) + 1


# ---------------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------------
def test_not_fully_convolutional_net_is_refused_by_name() -> None:
    """MTCNN's R-Net ends in InnerProduct layers over spatial blobs: no symbolic sizes, one clear error."""
    m = meta(SHARED / "golden" / "nets" / "mtcnn_det2_rnet")
    graph = prototxt2py.graph(str(SHARED / m["prototxt"]))
    with pytest.raises(UnsupportedLayerError) as e:
        to_onnx_model(graph, dynamic=True)
    text = str(e.value)
    assert "--dynamic" in text and "layer 'conv4'" in text and "'InnerProduct'" in text
    assert "not fully convolutional" in text and "--dynamic-batch" in text
    assert text.count("\n") == 0


def test_cli_refusal_is_one_line(tmp_path: Path) -> None:
    m = meta(SHARED / "golden" / "nets" / "mtcnn_det2_rnet")
    code, output = cli("convert", str(SHARED / m["prototxt"]), "--to", "onnx", "-o", str(tmp_path / "r.onnx"),
                       "--dynamic")
    assert code == 1
    assert "layer 'conv4'" in output and "Traceback" not in output
    assert not (tmp_path / "r.onnx").exists()


def test_dynamic_probes_keep_the_other_inputs_as_given() -> None:
    """The probes at other sizes grow the image inputs and keep every other input as ``--input`` gave it: LeNet's
    label given as 2 stays 2, so the refusal names the real reason (ip1 is not fully convolutional), not 'data
    and label must have the same first dimension' from the file's batch of 64."""
    net = SHARED / "corpus" / "BVLC__caffe" / "examples" / "mnist" / "lenet_train_test.prototxt"
    if not net.exists():
        pytest.skip("corpus LeNet not available")
    graph = prototxt2py.graph(str(net), phase="TRAIN", input_shapes={"data": (2, 1, 28, 28), "label": (2,)})
    with pytest.raises(UnsupportedLayerError) as e:
        to_onnx_model(graph, dynamic=True)
    assert "'InnerProduct' (layer 'ip1'" in str(e.value) and "not fully convolutional" in str(e.value)


UNSIZED_NET = """
name: "unsized"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "tile" type: "Tile" bottom: "data" top: "tile" tile_param { axis: 3 tiles: 2 } }
layer { name: "am" type: "ArgMax" bottom: "tile" top: "am" argmax_param { axis: 1 } }
"""


def test_layers_without_sized_mapping_are_named(tmp_path: Path) -> None:
    path = tmp_path / "unsized.prototxt"
    path.write_text(UNSIZED_NET)
    with pytest.raises(UnsupportedLayerError) as e:
        to_onnx_model(prototxt2py.graph(str(path)), dynamic=True)
    text = str(e.value)
    assert "'Tile' (layer 'tile'" in text and "'ArgMax' (layer 'am'" in text
    assert "change with the input height/width" in text
    # the same net exports with fixed sizes and with a dynamic batch
    to_onnx_model(prototxt2py.graph(str(path)), dynamic_batch=True)


SEQUENCE_NET = """
name: "sequence"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 } } }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
"""


def test_mapping_that_reshapes_to_fixed_sizes_is_refused(tmp_path: Path) -> None:
    """MVN works on the 4-axis view of a 3-axis blob through a Reshape to fixed sizes: with the length axis
    symbolic, the exporter's reshape refuses instead of baking 8 in."""
    path = tmp_path / "sequence.prototxt"
    path.write_text(SEQUENCE_NET)
    with pytest.raises(UnsupportedLayerError, match=r"layer 'mvn'.*reshapes to sizes fixed at export"):
        to_onnx_model(prototxt2py.graph(str(path)), dynamic=True)


MISMATCHED_NET = """
name: "mismatched"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "fixed" type: "Input" top: "fixed" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "pool" bottom: "fixed" top: "sum" }
"""


def test_net_that_breaks_at_other_sizes_is_refused(tmp_path: Path) -> None:
    """Both inputs grow together, so the pooled branch no longer matches the other one: Caffe's own shape
    check fails at the probed size, and the error says so, naming the layer."""
    path = tmp_path / "mismatched.prototxt"
    path.write_text(MISMATCHED_NET)
    with pytest.raises(ShapeError) as e:
        to_onnx_model(prototxt2py.graph(str(path)), dynamic=True)
    assert "--dynamic" in str(e.value) and "layer 'sum'" in str(e.value)


FOLDED_BATCH = """name: "folded"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 5 } } }
layer { name: "flat" type: "Reshape" bottom: "data" top: "flat" reshape_param { shape { dim: 1 dim: -1 dim: 5 } } }
layer { name: "keep" type: "Reshape" bottom: "data" top: "keep" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "keep" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_dynamic_batch_reshape_to_a_literal_one_folds_the_batch_as_caffe(tmp_path: Path) -> None:
    """``dim: 1 dim: -1`` keeps axis 0 at 1 and folds the batch into axis 1 in Caffe (RFB-320's box heads); the
    dynamic-batch export once copied the batch into axis 0 instead, giving per-image rows."""
    path = tmp_path / "folded.prototxt"
    path.write_text(FOLDED_BATCH)
    net = prototxt2py.load(prototxt2py.graph(str(path)))
    model = to_onnx_model(net, dynamic_batch=True)
    declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert declared["flat"][0] == 1 and declared["flat"][2] == 5 and declared["ip"] == ["N", 2]
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32)
    got = run(session(model), {"data": x})
    with torch.no_grad():
        want = net(data=torch.from_numpy(x))
    assert got["flat"].shape == (1, 36, 5) == tuple(want["flat"].shape)
    for name in ("flat", "ip"):
        np.testing.assert_allclose(got[name], want[name].numpy(), rtol=1e-5, atol=1e-6)


def test_dynamic_batch_output_of_data_dependent_size_is_declared(tmp_path: Path) -> None:
    """ONNX shape inference gives MaxUnpool's output (sized from data) no shape; the declared output keeps its
    rank (the checker once refused the model: exit 3)."""
    path = tmp_path / "unpool.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 '
                    'dim: 8 } } }\nlayer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
                    'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\nlayer { name: "up" type: "Upsample" '
                    'bottom: "pool" bottom: "mask" top: "up" upsample_param { scale: 2 } }\n')
    net = prototxt2py.load(prototxt2py.graph(str(path)))
    model = to_onnx_model(net, dynamic_batch=True)
    assert len(model.graph.output[0].type.tensor_type.shape.dim) == 4
    x = np.random.default_rng(1).standard_normal((3, 2, 8, 8)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(run(session(model), {"data": x})["up"], net(data=torch.from_numpy(x))["up"])


BATCH_AXIS_LAYERS = {
    "reduction_mean": 'layer { name: "r" type: "Reduction" bottom: "data" top: "out" reduction_param { '
                      'operation: MEAN axis: 0 } }',
    "argmax": 'layer { name: "a" type: "ArgMax" bottom: "data" top: "out" argmax_param { axis: 0 } }',
    "slice": 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 0 '
             'slice_point: 1 } }',
    "reshape_before_batch": 'layer { name: "r" type: "Reshape" bottom: "data" top: "out" reshape_param { axis: 0 '
                            'num_axes: 0 shape { dim: 1 dim: -1 } } }',
}


@pytest.mark.parametrize("case", sorted(BATCH_AXIS_LAYERS))
def test_layers_over_the_batch_axis_follow_a_dynamic_batch(tmp_path: Path, case: str) -> None:
    """Caffe sizes these from the blob on every pass: exported at batch 2 with a symbolic batch, the graph at
    batch 3 gives the runtime's batch-3 result. Before, MEAN divided by 2 x 60, ArgMax flipped with 2 - 1 (index
    -1), Split kept the sizes (1, 1) and Reshape kept the old batch in its target."""
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 '
                   'dim: 5 } } }\n' + BATCH_AXIS_LAYERS[case] + "\n")
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32)
    got = run(session(to_onnx_model(prototxt2py.load(str(net)), dynamic_batch=True)), {"data": x})
    want = runtime(net, None, {"data": x})
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=f"{case}: {name}")


MOBILENET_SSD = SHARED / "corpus" / "chuanqi305__MobileNet-SSD" / "deploy.prototxt"


@pytest.mark.skipif(not MOBILENET_SSD.is_file(), reason="needs the shared corpus")
def test_ssd_detections_at_any_size() -> None:
    """MobileNet-SSD, whole, with symbolic sizes: PriorBox computes its boxes and DetectionOutput its number of
    priors at run time. Its last maps (1x1 at 300x300) keep their size under the small probes and change only
    at sizes far from the export's, which the far probe catches (without it the 240x400 pass fails in a
    Reshape). A low confidence threshold makes every size give detections (100, keep_top_k)."""
    text = MOBILENET_SSD.read_text().replace("confidence_threshold: 0.25", "confidence_threshold: 0.01")
    net = prototxt2py.load(read_net_text(text, "deploy.prototxt")).eval()
    recipe_weights(net, 0)
    sess = session(to_onnx_model(net, dynamic=True))
    for hw in ((300, 300), (240, 400), (512, 384)):
        x = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
        sized = prototxt2py.load(read_net_text(text, "deploy.prototxt"), input_shapes={"data": (1, 3, *hw)}).eval()
        recipe_weights(sized, 0)
        with torch.no_grad():
            want = detection_rows(sized(torch.from_numpy(x))["detection_out"].numpy(), False)
        got = detection_rows(run(sess, {"data": x})["detection_out"], False)
        assert len(want) == 100
        assert_same_detections(got, want, f"{hw}")
