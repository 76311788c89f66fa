"""Deploy nets derived from train_val nets equal the deploy files BVLC ships beside them (layers, blob shapes,
parameter shapes); the rules for heads, label branches and input shapes; the CLI's ``deploy`` and ``--deploy``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from golden import CORPUS

import prototxt2py
from prototxt2py.cli import main
from prototxt2py.deploy import deploy_source, deploy_text, derive_deploy
from prototxt2py.errors import GraphError
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net, read_net_text

BVLC = "BVLC__caffe/"
#: (train_val, shipped deploy) pairs of the corpus: CaffeNet, AlexNet, GoogLeNet, CIFAR-10, LeNet, Flickr style.
PAIRS = [
    ("models/bvlc_reference_caffenet/train_val.prototxt", "models/bvlc_reference_caffenet/deploy.prototxt"),
    ("models/bvlc_alexnet/train_val.prototxt", "models/bvlc_alexnet/deploy.prototxt"),
    ("models/bvlc_googlenet/train_val.prototxt", "models/bvlc_googlenet/deploy.prototxt"),
    ("examples/cifar10/cifar10_quick_train_test.prototxt", "examples/cifar10/cifar10_quick.prototxt"),
    ("examples/cifar10/cifar10_full_train_test.prototxt", "examples/cifar10/cifar10_full.prototxt"),
    ("examples/mnist/lenet_train_test.prototxt", "examples/mnist/lenet.prototxt"),
    ("models/finetune_flickr_style/train_val.prototxt", "models/finetune_flickr_style/deploy.prototxt"),
]


def corpus(rel: str) -> Path:
    path = CORPUS / BVLC / rel
    if not path.is_file():
        pytest.skip(f"corpus file missing: {path}")
    return path


def same_net(got: prototxt2py.Graph, want: prototxt2py.Graph) -> None:
    assert [(n.name, n.type) for n in got.nodes] == [(n.name, n.type) for n in want.nodes]
    assert got.blob_shapes() == want.blob_shapes()
    assert [n.param_shapes for n in got.nodes] == [n.param_shapes for n in want.nodes]
    assert [got.values[v].blob for v in got.outputs] == [want.values[v].blob for v in want.outputs]


@pytest.mark.parametrize("train_val,deploy", PAIRS, ids=[p[1].split("/")[-2] + "/" + p[1].split("/")[-1]
                                                         for p in PAIRS])
def test_derived_equals_shipped_deploy(train_val: str, deploy: str) -> None:
    shipped = prototxt2py.graph(corpus(deploy))
    data_shape = list(shipped.blob_shapes()["data"])
    derived = prototxt2py.graph(deploy_source(read_net(corpus(train_val)), {"data": data_shape}))
    same_net(derived, shipped)


@pytest.mark.parametrize("train_val,deploy", [PAIRS[2], PAIRS[6]], ids=["googlenet", "flickr_style"])
def test_shape_from_mean_values_or_is_color_needs_no_input(train_val: str, deploy: str) -> None:
    """GoogLeNet's three mean_values and ImageData's is_color give the channels, crop_size the size; the batch
    is the TEST data layer's (50) where the shipped file says 10."""
    shipped = prototxt2py.graph(corpus(deploy))
    derived = prototxt2py.graph(deploy_source(read_net(corpus(train_val))))
    assert derived.blob_shapes()["data"] == (50, *shipped.blob_shapes()["data"][1:])
    assert [(n.name, n.type) for n in derived.nodes] == [(n.name, n.type) for n in shipped.nodes]


def test_unknowable_shape_names_layer_and_input_to_give() -> None:
    path = corpus("examples/mnist/lenet_train_test.prototxt")
    with pytest.raises(GraphError) as e:
        derive_deploy(read_net(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}:19:7: layer 'mnist': Data layer: channels, height, width of 'data'")
    assert msg.endswith("give --input data=100,C,H,W")


def test_googlenet_drops_auxiliary_heads_and_labels() -> None:
    result = derive_deploy(read_net(corpus("models/bvlc_googlenet/train_val.prototxt")))
    names = [layer.name for layer in result.net.layer]
    assert not [n for n in names if n.startswith(("loss1/", "loss2/"))]
    assert names[0] == "data" and names[-1] == "prob" and "loss3/classifier" in names
    assert all(not len(layer.include) and not len(layer.exclude) for layer in result.net.layer)
    assert result.net.layer[0].top[:] == ["data"]
    assert result.net.state.phase == caffe_pb2.TEST
    assert result.notes == ["SoftmaxWithLoss 'loss3/loss3' -> Softmax 'prob' (loss3/classifier -> prob)"]


def test_train_only_loss_still_gives_the_softmax_head() -> None:
    """SqueezeNet v1.0 puts its SoftmaxWithLoss in TRAIN only; TEST has just accuracies."""
    path = CORPUS / "forresti__SqueezeNet/SqueezeNet_v1.0/train_val.prototxt"
    if not path.is_file():
        pytest.skip("corpus file missing")
    g = prototxt2py.graph(deploy_source(read_net(path), {"data": [1, 3, 227, 227]}))
    assert [g.values[v].blob for v in g.outputs] == ["prob"]
    assert g.blob_shapes()["prob"] == (1, 1000, 1, 1)  # global pooling keeps H, W


def test_net_without_losses_keeps_what_the_accuracy_measures() -> None:
    """A V0 test net (Softmax 'prob' -> accuracy, no loss anywhere) keeps prob as its output."""
    path = CORPUS / "BVLC__caffe@v0.99/examples/lenet/lenet_test.prototxt"
    if not path.is_file():
        pytest.skip("corpus file missing")
    g = prototxt2py.graph(deploy_source(read_net(path), {"data": [2, 1, 28, 28]}))
    assert [g.values[v].blob for v in g.outputs] == ["prob"]
    assert g.nodes[0].type == "Input" and "label" not in g.blob_shapes()


def test_ssd_train_net_keeps_every_multibox_input_but_the_label() -> None:
    path = CORPUS / "chuanqi305__MobileNet-SSD/voc/MobileNetSSD_train.prototxt"
    if not path.is_file():
        pytest.skip("corpus file missing")
    result = derive_deploy(read_net(path), {"data": [1, 3, 300, 300]})
    tops = {t for layer in result.net.layer for t in layer.top}
    assert {"mbox_loc", "mbox_conf", "mbox_priorbox"} <= tops and "label" not in tops
    assert not [layer for layer in result.net.layer if layer.type.endswith("Loss")]


NET = """name: "toy"
layer { name: "src" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 8 mean_file: "%s" } data_param { source: "train_lmdb" batch_size: 4 } }
layer { name: "src" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 8 mean_file: "%s" } data_param { source: "val_lmdb" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "lab" type: "Power" bottom: "label" top: "lab2" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "lab2" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" top: "probs"
  softmax_param { axis: 1 } }
"""


def mean_file(tmp_path: Path, channels: int) -> str:
    blob = caffe_pb2.BlobProto(num=1, channels=channels, height=10, width=10)
    blob.data.extend([0.0] * (channels * 100))
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    return str(path)


def test_channels_from_a_readable_mean_file_and_label_branch_dropped(tmp_path: Path) -> None:
    mean = mean_file(tmp_path, 4)
    result = derive_deploy(read_net_text(NET % (mean, mean), str(tmp_path / "toy.prototxt")))
    assert [(lay.name, lay.type) for lay in result.net.layer] == [("data", "Input"), ("ip", "InnerProduct"),
                                                                   ("prob", "Softmax")]
    assert list(result.net.layer[0].input_param.shape[0].dim) == [2, 4, 8, 8]
    soft = result.net.layer[2]
    assert soft.bottom[:] == ["ip"] and soft.top[:] == ["probs"] and soft.softmax_param.axis == 1  # 2nd top kept


def test_missing_mean_file_asks_for_input(tmp_path: Path) -> None:
    text = NET % ("nowhere/mean.binaryproto", "nowhere/mean.binaryproto")
    with pytest.raises(GraphError, match=r"layer 'src': Data layer: channels of 'data' .* --input data=2,C,8,8"):
        derive_deploy(read_net_text(text, str(tmp_path / "toy.prototxt")))
    result = derive_deploy(read_net_text(text, "toy.prototxt"), {"data": [1, 3, 8, 8]})
    assert list(result.net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_input_naming_no_input_is_an_error(tmp_path: Path) -> None:
    mean = mean_file(tmp_path, 3)
    with pytest.raises(GraphError, match="--input names label, which is not an input of the deploy net"):
        derive_deploy(read_net_text(NET % (mean, mean), str(tmp_path / "t.prototxt")), {"label": [2]})


def test_label_read_by_a_kept_layer_stays_an_input() -> None:
    text = """layer { name: "d" type: "ImageData" top: "data" top: "label"
      image_data_param { source: "list.txt" batch_size: 3 new_height: 6 new_width: 7 is_color: false } }
    layer { name: "cat" type: "Concat" bottom: "data" bottom: "data" top: "cat" }
    layer { name: "use" type: "Reshape" bottom: "label" top: "lab" reshape_param { shape { dim: 3 dim: 1 } } }
    layer { name: "silence" type: "Silence" bottom: "data" }
    layer { name: "side" type: "ReLU" bottom: "data" top: "side" }
    layer { name: "silence2" type: "Silence" bottom: "side" }
    """
    result = derive_deploy(read_net_text(text))
    inp = result.net.layer[0]
    assert inp.name == "d" and inp.top[:] == ["data", "label"]  # two tops: the data layer's own name
    assert [list(s.dim) for s in inp.input_param.shape] == [[3, 1, 6, 7], [3]]
    # a Silence keeps nothing alive ('side' goes with its silencer) and stays where what it silences does
    assert [lay.name for lay in result.net.layer] == ["d", "cat", "use", "silence"]


def test_cli_deploy_writes_a_file_that_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "deploy.prototxt"
    src = corpus("models/bvlc_alexnet/train_val.prototxt")
    r = CliRunner().invoke(main, ["deploy", str(src), "-o", str(out), "--input", "data=10,3,227,227"])
    assert r.exit_code == 0, r.output
    assert "SoftmaxWithLoss 'loss' -> Softmax 'prob' (fc8 -> prob)" in r.stdout
    again = read_net(out)
    assert again.format == "V2" and not again.warnings
    same_net(prototxt2py.graph(again), prototxt2py.graph(corpus("models/bvlc_alexnet/deploy.prototxt")))
    assert deploy_text(derive_deploy(again)) == out.read_text()  # deriving a deploy net changes nothing


def test_cli_deploy_error_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "deploy.prototxt"
    r = CliRunner().invoke(main, ["deploy", str(corpus("examples/mnist/lenet_train_test.prototxt")), "-o", str(out)])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "give --input data=100,C,H,W" in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_deploy_option_on_summary_draw_run(tmp_path: Path) -> None:
    lenet = str(corpus("examples/mnist/lenet_train_test.prototxt"))
    r = CliRunner().invoke(main, ["summary", "--deploy", lenet, "--input", "data=64,1,28,28", "--json"])
    assert r.exit_code == 0, r.output
    assert '"prob"' in r.stdout and '"label"' not in r.stdout and "accuracy" not in r.stdout
    dot = tmp_path / "d.dot"
    r = CliRunner().invoke(main, ["draw", "--deploy", lenet, str(dot)])
    assert r.exit_code == 0, r.output
    assert "Input" in dot.read_text() and "SoftmaxWithLoss" not in dot.read_text()
    np.savez(tmp_path / "in.npz", data=np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32))
    r = CliRunner().invoke(main, ["run", "--deploy", lenet, "--inputs", str(tmp_path / "in.npz"),
                                  "-o", str(tmp_path / "out.npz")])
    assert r.exit_code == 0, r.output
    prob = np.load(tmp_path / "out.npz")["prob"]
    assert prob.shape == (2, 10) and np.allclose(prob.sum(1), 1, atol=1e-6)


def test_deploy_command_does_not_import_torch(tmp_path: Path) -> None:
    """Deriving a deploy net is protobuf work: the command must not pay torch's import time."""
    code = ("import sys; from prototxt2py.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    src = corpus("models/bvlc_googlenet/train_val.prototxt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code, "deploy", str(src), "-o", str(tmp_path / "g.prototxt")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("is_color", "force", "channels"), [
    ("false", "force_color: true", 1), ("true", "force_gray: true", 3), ("true", "", 3), ("false", "", 1)])
def test_image_data_channels_ignore_force_color_and_gray(is_color: str, force: str, channels: int) -> None:
    """ImageData transforms a ``cv::Mat`` (``Transform(const cv::Mat&)``), which never reads the force flags: its
    channels are ``is_color``'s."""
    text = f"""layer {{ name: "d" type: "ImageData" top: "data" top: "label" transform_param {{ crop_size: 5 {force} }}
      image_data_param {{ source: "list.txt" batch_size: 10 is_color: {is_color} }} }}
    layer {{ name: "r" type: "ReLU" bottom: "data" top: "r" }}"""
    shape = derive_deploy(read_net_text(text)).net.layer[0].input_param.shape[0]
    assert list(shape.dim) == [10, channels, 5, 5]


def _outputs(text: str, **shapes: list[int]) -> tuple[list[str], list[str]]:
    g = prototxt2py.graph(deploy_source(read_net_text(text), shapes or None))
    return [g.values[v].blob for v in g.inputs], [g.values[v].blob for v in g.outputs]


#: a regression net whose EuclideanLoss target is computed from the label; its bottoms in the order given
TARGET_FROM_LABEL = """layer {{ name: "d" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 dim: 1 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "pred" inner_product_param {{ num_output: 1 }} }}
layer {{ name: "scaled" type: "Power" bottom: "label" top: "target" power_param {{ scale: 2 }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "{first}" bottom: "{second}" top: "loss" }}"""


def test_targets_a_net_computes_from_the_label_go_with_the_loss() -> None:
    """A loss's prediction is its bottom 0 (two for ContrastiveLoss, three for SSD's MultiBoxLoss: the specs'
    ``prediction_bottoms``). Every bottom not read straight from a data layer was kept: a target computed from
    the label (py-faster-rcnn's anchor targets, an autoencoder's flattened input) stayed an output, and made
    the label an input of the deploy net."""
    assert _outputs(TARGET_FROM_LABEL.format(first="pred", second="target")) == (["data"], ["pred"])
    siamese = """layer { name: "d" type: "Input" top: "a" top: "b" top: "sim"
      input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } shape { dim: 4 } } }
    layer { name: "fa" type: "InnerProduct" bottom: "a" top: "fa" inner_product_param { num_output: 2 } }
    layer { name: "fb" type: "InnerProduct" bottom: "b" top: "fb" inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "ContrastiveLoss" bottom: "fa" bottom: "fb" bottom: "sim" top: "loss" }"""
    assert _outputs(siamese) == (["a", "b"], ["fa", "fb"])


def test_the_nets_own_softmax_stays_the_probability_output() -> None:
    """Caffe's ``imagenet_val.prototxt`` computes ``prob = Softmax(fc8)`` for its Accuracy beside the
    SoftmaxWithLoss: ``prob`` was dropped with the accuracy and the loss became a Softmax named ``loss``."""
    text = """layer { name: "d" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 2 dim: 5 } shape { dim: 2 } } }
    layer { name: "fc8" type: "InnerProduct" bottom: "data" top: "fc8" inner_product_param { num_output: 3 } }
    layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
    layer { name: "accuracy" type: "Accuracy" bottom: "prob" bottom: "label" top: "accuracy" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }"""
    result = derive_deploy(read_net_text(text))
    assert [(lay.name, lay.type, list(lay.top)) for lay in result.net.layer] == [
        ("data", "Input", ["data"]), ("fc8", "InnerProduct", ["fc8"]), ("prob", "Softmax", ["prob"])]
    assert result.notes == ["SoftmaxWithLoss 'loss' dropped: the net's Softmax 'prob' gives its prediction "
                            "(fc8 -> prob)"]


def test_a_net_whose_outputs_are_all_silenced_keeps_them() -> None:
    """Silence(feat) at the end of a net (the colorization deploy net's Silence(class8_ab)): the derivation
    dropped every layer and wrote an empty net, exit 0. What only a Silence reads is then what the net is for;
    a net with nothing left is an error."""
    text = """layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "feat"
      convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "mute" type: "Silence" bottom: "feat" }"""
    result = derive_deploy(read_net_text(text))
    assert [lay.name for lay in result.net.layer] == ["data", "conv", "mute"]
    only_data = """layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
    layer { name: "mute" type: "Silence" bottom: "data" }"""
    with pytest.raises(GraphError, match="the deploy net would compute nothing: no layer of the TEST net leads to "
                                         "an output"):
        derive_deploy(read_net_text(only_data))


def test_a_loss_the_stage_excludes_stays_out() -> None:
    """Losses come back from other phases only when the TEST net has none by phase (SqueezeNet's TRAIN-only
    loss): a DIGITS net's ``exclude { stage: "deploy" }`` loss came back as a second Softmax under --stage
    deploy, which ``Net::FilterNet`` removes."""
    text = """layer { name: "d" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 1 dim: 5 } shape { dim: 1 } } }
    layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss"
      exclude { stage: "deploy" } }
    layer { name: "softmax" type: "Softmax" bottom: "ip2" top: "softmax" include { stage: "deploy" } }"""
    g = prototxt2py.graph(deploy_source(read_net_text(text), stages=["deploy"]))
    assert [n.name for n in g.nodes] == ["data", "ip2", "softmax"]
    assert [g.values[v].blob for v in g.outputs] == ["softmax"]


def test_run_names_the_array_that_matches_no_input(tmp_path: Path) -> None:
    """A train-set .npz usually holds the label too: the error named an ``--input`` option ``run`` lacks."""
    lenet = str(corpus("examples/mnist/lenet_train_test.prototxt"))
    np.savez(tmp_path / "in.npz", data=np.zeros((2, 1, 28, 28), np.float32), label=np.zeros(2, np.float32))
    r = CliRunner().invoke(main, ["run", "--deploy", lenet, "--inputs", str(tmp_path / "in.npz"),
                                  "-o", str(tmp_path / "out.npz")])
    assert r.exit_code == 1 and not (tmp_path / "out.npz").exists()
    assert r.stderr == (f"error: {tmp_path / 'in.npz'}: array 'label' matches no input blob (the net's inputs: "
                        "['data']): leave it out of the file\n")


def test_a_sigmoid_cross_entropy_head_becomes_a_sigmoid() -> None:
    """The loss's spec names its deploy head (``deploy_head``): SigmoidCrossEntropyLoss's prediction is the
    Sigmoid of its scores, as HED's and multi-label nets' own deploy files compute it; the logits were the
    output. Where the net has that Sigmoid already (the MNIST autoencoder's ``decode1neuron``, read by a
    0-weighted EuclideanLoss), it stays the output."""
    text = """layer { name: "d" type: "Input" top: "data" top: "label"
      input_param { shape { dim: 2 dim: 5 } shape { dim: 2 dim: 4 } } }
    layer { name: "score" type: "InnerProduct" bottom: "data" top: "score" inner_product_param { num_output: 4 } }
    layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "score" bottom: "label" top: "loss" }"""
    result = derive_deploy(read_net_text(text))
    assert [(lay.name, lay.type, list(lay.bottom), list(lay.top)) for lay in result.net.layer][1:] == [
        ("score", "InnerProduct", ["data"], ["score"]), ("prob", "Sigmoid", ["score"], ["prob"])]
    assert result.notes == ["SigmoidCrossEntropyLoss 'loss' -> Sigmoid 'prob' (score -> prob)"]
    path = corpus("examples/mnist/mnist_autoencoder.prototxt")
    g = prototxt2py.graph(deploy_source(read_net(path), {"data": [2, 1, 28, 28]}))
    assert [g.values[v].blob for v in g.outputs] == ["decode1neuron"]
    assert [n.name for n in g.nodes][-2:] == ["decode1", "decode1neuron"]


HEAD = """layer { name: "d" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 5 } shape { dim: 2 } } }
layer { name: "fc8" type: "InnerProduct" bottom: "data" top: "fc8" inner_product_param { num_output: 3 } }
"""


@pytest.mark.parametrize(("extra", "outputs"), [
    # the net's own Softmax read by a live layer: it stays as it is, the loss goes (no second Softmax)
    ("""layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
        layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "argmax" }""", ["argmax"]),
    # read by a 0-weighted loss, with softmax_param's default axis written out: the same Softmax
    ("""layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" softmax_param { axis: 1 } }
        layer { name: "mon" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label" top: "mon"
                loss_weight: 0 }""", ["prob"]),
])
def test_the_nets_own_softmax_is_found_whatever_reads_it(extra: str, outputs: list[str]) -> None:
    """A twin was recognised only when metrics alone read it: otherwise a second Softmax named after the loss
    appeared (py-faster-rcnn's end2end nets: ``rpn_cls_prob`` feeds the proposals) or ``prob`` was lost."""
    text = HEAD + extra + """
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }"""
    assert _outputs(text) == (["data"], outputs)
    assert "Softmax" not in [lay.type for lay in derive_deploy(read_net_text(text)).net.layer if lay.name == "loss"]


def test_a_softmax_with_loss_whose_probabilities_a_metric_reads_keeps_them() -> None:
    """SoftmaxWithLoss's second top is its probabilities (``softmax_loss_layer.cpp``: ShareData(prob_)); read by
    an Accuracy, the converted Softmax was pruned with the Accuracy, and the prediction vanished."""
    text = HEAD + """
    layer { name: "emb" type: "InnerProduct" bottom: "data" top: "embedding" inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" top: "prob"
            loss_weight: 1 loss_weight: 0 }
    layer { name: "acc" type: "Accuracy" bottom: "prob" bottom: "label" top: "acc" }"""
    assert _outputs(text) == (["data"], ["embedding", "prob"])


def test_losses_take_their_prediction_first_unless_their_bottoms_commute() -> None:
    """A loss type without a spec (a fork's L1Loss) predicts with bottom 0, as Caffe's LossLayer: the target it
    was given (a pooled ground truth) stayed an output and the ground truth an input. EuclideanLoss is
    commutative (``euclidean_loss_layer.hpp``): with the target first, the prediction is its other bottom."""
    flow = """layer { name: "d" type: "Input" top: "img" top: "flow_gt"
      input_param { shape { dim: 2 dim: 6 dim: 16 dim: 16 } shape { dim: 2 dim: 2 dim: 16 dim: 16 } } }
    layer { name: "pred" type: "Convolution" bottom: "img" top: "predict_flow"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "down" type: "Pooling" bottom: "flow_gt" top: "gt" pooling_param { pool: AVE kernel_size: 1 } }
    layer { name: "loss" type: "L1Loss" bottom: "predict_flow" bottom: "gt" top: "loss" }"""
    assert _outputs(flow) == (["img"], ["predict_flow"])
    assert _outputs(TARGET_FROM_LABEL.format(first="target", second="pred")) == (["data"], ["pred"])


def test_with_the_nets_own_head_beside_a_converted_one_neither_is_named_prob() -> None:
    """Two main heads keep their names (siftflow's ``loss``/``loss_geo``): where one of them is the net's own
    Softmax, the other was renamed ``prob`` beside ``prob_sem``."""
    text = HEAD + """
    layer { name: "geo" type: "InnerProduct" bottom: "data" top: "score_geo" inner_product_param { num_output: 4 } }
    layer { name: "prob_sem" type: "Softmax" bottom: "fc8" top: "prob_sem" }
    layer { name: "acc" type: "Accuracy" bottom: "prob_sem" bottom: "label" top: "acc" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
    layer { name: "loss_geo" type: "SoftmaxWithLoss" bottom: "score_geo" bottom: "label" top: "loss_geo" }"""
    assert _outputs(text) == (["data"], ["loss_geo", "prob_sem"])


def test_hed_side_outputs_become_named_sigmoids() -> None:
    """HED's six SigmoidCrossEntropyLoss heads (equal weights, no layer names): six Sigmoid outputs, as its
    own deploy file computes them, named after their tops (the logits were the only output)."""
    path = CORPUS / "s9xie__hed/examples/hed/train_val.prototxt"
    if not path.is_file():
        pytest.skip("corpus file missing")
    result = derive_deploy(read_net(path), {"data": [1, 3, 64, 64]})
    heads = [(lay.name, lay.type, lay.bottom[0]) for lay in result.net.layer if lay.type == "Sigmoid"]
    assert heads == [(f"dsn{k}_loss", "Sigmoid", f"upscore-dsn{k}") for k in range(1, 6)] + [
        ("fuse_loss", "Sigmoid", "upscore-fuse")]
    g = prototxt2py.graph(deploy_source(read_net(path), {"data": [1, 3, 64, 64]}))
    assert [g.values[v].blob for v in g.outputs] == [f"dsn{k}_loss" for k in range(1, 6)] + ["fuse_loss"]


def test_unnamed_losses_without_tops_get_free_names() -> None:
    """Caffe gives a loss without a top an automatic one (``LossLayer::AutoTopBlobs``): two such heads were an
    IndexError (exit 3). A head named after a top never takes another layer's name (Caffe copies weights by
    layer name)."""
    two = HEAD + """
    layer { name: "fc9" type: "InnerProduct" bottom: "data" top: "fc9" inner_product_param { num_output: 3 } }
    layer { type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" }
    layer { type: "SoftmaxWithLoss" bottom: "fc9" bottom: "label" }"""
    heads = [(lay.name, list(lay.top)) for lay in derive_deploy(read_net_text(two)).net.layer if lay.type == "Softmax"]
    assert heads == [("softmax", ["softmax"]), ("softmax_1", ["softmax_1"])]
    clash = HEAD + """
    layer { name: "fc9" type: "InnerProduct" bottom: "data" top: "fc9" inner_product_param { num_output: 3 } }
    layer { type: "SigmoidCrossEntropyLoss" bottom: "fc8" bottom: "label" top: "fc9_loss" }
    layer { name: "fc9_loss" type: "SigmoidCrossEntropyLoss" bottom: "fc9" bottom: "label" top: "l2" }"""
    names = [lay.name for lay in derive_deploy(read_net_text(clash)).net.layer]
    assert names == ["data", "fc8", "fc9", "fc9_loss_1", "fc9_loss"]


def test_a_euclidean_target_read_straight_from_a_data_layer_may_come_first() -> None:
    """A regression net reading its targets from a second data layer (two LMDBs): with the target as bottom 0
    the prediction branch was pruned ("would compute nothing")."""
    text = """layer { name: "d1" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "d2" type: "Input" top: "target" input_param { shape { dim: 4 dim: 1 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "pred" inner_product_param { num_output: 1 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "target" bottom: "pred" top: "loss" }"""
    assert _outputs(text) == (["data"], ["pred"])


ZF_END2END = CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end"


@pytest.mark.skipif(not ZF_END2END.is_dir(), reason="needs the shared corpus")
def test_faster_rcnn_train_net_deploys_to_its_test_net() -> None:
    """py-faster-rcnn's ZF end-to-end train.prototxt: the proposal-target layer (training only) stayed, so the
    deploy net needed gt_boxes and pooled sampled ROIs. Now the head pools the proposals, and the deploy net
    computes what the authors' test.prototxt does (same weights by layer name, same input): same inputs,
    class probabilities and box deltas."""
    shapes = {"data": [1, 3, 224, 320], "im_info": [1, 3]}
    result = derive_deploy(read_net(ZF_END2END / "train.prototxt"), shapes)
    assert "Python 'roi-data' dropped (training only): its readers of rois read rpn_rois" in result.notes
    derived = prototxt2py.load(prototxt2py.graph(deploy_source(read_net(ZF_END2END / "train.prototxt"), shapes)))
    own = prototxt2py.load(str(ZF_END2END / "test.prototxt"), input_shapes=shapes)
    assert [derived.graph.values[v].blob for v in derived.graph.inputs] == ["data", "im_info"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in own.state_dict().values():
            value.copy_(torch.randn(value.shape, generator=gen) * 0.02)
    derived.load_state_dict(own.state_dict(), strict=True)
    data = torch.randn(1, 3, 224, 320, generator=gen) * 50
    info = torch.tensor([[224.0, 320.0, 1.0]])
    with torch.no_grad():
        mine, theirs = derived(data, info), own(data, info)
    assert set(mine) == {"cls_loss", "bbox_pred"} and set(theirs) == {"cls_prob", "bbox_pred"}
    assert mine["bbox_pred"].shape[0] > 10
    torch.testing.assert_close(mine["cls_loss"], theirs["cls_prob"], rtol=0, atol=0)
    torch.testing.assert_close(mine["bbox_pred"], theirs["bbox_pred"], rtol=0, atol=0)
