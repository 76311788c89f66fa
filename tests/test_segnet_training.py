"""SegNet trains from its own files: the fork's class-weighted SoftmaxWithLoss (``weight_by_label_freqs`` +
``class_weighting``; checked against a loop-by-loop port of its Forward_cpu/Backward_cpu, in the runtime, the
generated code and ONNX) and its ``DenseImageData`` reader (image + label map pairs, the fork's mirror and crop
applied to both; checked against OpenCV directly); SegNet-Tutorial's own training net runs on them."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, generated_module

import prototxt2py
from prototxt2py.data import DataError
from prototxt2py.data.layers import data_layers
from prototxt2py.data.loader import open_reader
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.reader import read_net_text

cv2 = pytest.importorskip("cv2")

F32 = np.float32
FLT_MIN = np.finfo(F32).tiny
WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051)


# -- the fork's SoftmaxWithLoss, loop by loop (caffe-segnet softmax_loss_layer.cpp) -------------------------------
def fork_softmax_loss(x: np.ndarray, label: np.ndarray, weights: tuple[float, ...] | None, ignore: int | None,
                      normalize: bool) -> tuple[np.float32, np.ndarray]:
    """Forward_cpu's loss and Backward_cpu's bottom diff (loss weight 1), in float32 as the C++ runs them."""
    n, c = x.shape[:2]
    inner = int(np.prod(x.shape[2:]))
    x3 = x.reshape(n, c, inner).astype(F32)
    e = np.exp(x3 - x3.max(axis=1, keepdims=True))
    prob = (e / e.sum(axis=1, keepdims=True)).astype(F32)
    lab = label.reshape(n, inner)
    w = np.asarray(weights, dtype=F32) if weights is not None else None
    loss, count = F32(0), 0
    diff = prob.copy()
    for i in range(n):
        for j in range(inner):
            v = int(lab[i, j])
            if ignore is not None and v == ignore:
                diff[i, :, j] = 0
                continue
            term = -np.log(max(prob[i, v, j], FLT_MIN), dtype=F32)
            loss = F32(loss + (term * w[v] if w is not None else term))
            diff[i, v, j] -= 1
            if w is not None:
                diff[i, :, j] *= w[v]
            count += 1
    div = count if normalize else n
    return F32(loss / div), (diff * F32(1.0 / div)).reshape(x.shape)


def _loss_net(weights: tuple[float, ...] | None, ignore: int | None, normalize: bool, shape=(2, 5, 3, 4)) -> str:
    loss = [f"weight_by_label_freqs: {'true' if weights is not None else 'false'}"]
    loss += [f"class_weighting: {w}" for w in (weights or WEIGHTS)]  # (ignored unless weight_by_label_freqs)
    loss += [f"ignore_label: {ignore}"] * (ignore is not None) + [f"normalize: {str(normalize).lower()}"]
    n, c, h, w = shape
    return textwrap.dedent(f"""\
        layer {{ name: "in" type: "Input" top: "x" top: "label"
          input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }}
                         shape {{ dim: {n} dim: 1 dim: {h} dim: {w} }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss"
          loss_param {{ {' '.join(loss)} }} }}
        """)


def _inputs(seed: int, shape=(2, 5, 3, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal(shape)).astype(F32)
    x[0, :, 0, 0] = [80, -80, 0, 0, 0]  # a probability under FLT_MIN: the log's floor
    label = rng.integers(0, shape[1], (shape[0], 1, *shape[2:])).astype(F32)
    label[0, 0, 0, 0] = 1
    return x, label


@pytest.mark.parametrize("weights, ignore, normalize", [
    (WEIGHTS, None, True), (WEIGHTS, 2, True), (WEIGHTS, 4, False), (None, 2, True),
])
def test_weighted_softmax_loss_matches_the_fork(weights, ignore: int | None, normalize: bool) -> None:
    """Loss and gradient of the runtime and of the generated code equal the fork's loops."""
    net = prototxt2py.load(read_net_text(_loss_net(weights, ignore, normalize)))
    for seed in range(3):
        x, label = _inputs(seed)
        want_loss, want_diff = fork_softmax_loss(x, label, weights, ignore, normalize)
        xt = torch.tensor(x, requires_grad=True)
        loss = net(xt, torch.tensor(label))["loss"]
        loss.backward()
        np.testing.assert_allclose(loss.item(), want_loss, rtol=2e-6)
        np.testing.assert_allclose(xt.grad.numpy(), want_diff, rtol=1e-5, atol=1e-7)
        generated = generated_module(net)(torch.tensor(x), torch.tensor(label))
        torch.testing.assert_close(generated, loss.detach(), rtol=1e-6, atol=0)


def test_weighted_softmax_loss_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    net = prototxt2py.load(read_net_text(_loss_net(WEIGHTS, 2, True)))
    session = ort.InferenceSession(to_onnx_model(net).SerializeToString())
    x, label = _inputs(7)
    (got,) = session.run(None, {"x": x, "label": label})
    np.testing.assert_allclose(got, fork_softmax_loss(x, label, WEIGHTS, 2, True)[0], rtol=2e-6)


@pytest.mark.parametrize("text, message", [
    (_loss_net(WEIGHTS[:4], None, True), "4 class_weighting values for 5 classes"),
    (_loss_net(None, None, True).replace("normalize: true", "normalization: PRE_FIXED"),
     "normalization: PRE_FIXED (R-FCN's fork) is not supported"),
])
def test_refusals(text: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError) as e:
        prototxt2py.load(read_net_text(text))
    assert message in str(e.value)


# -- DenseImageData ------------------------------------------------------------------------------------------------
SIZES = [(24, 32), (20, 28), (24, 32), (18, 30)]


def make_pairs(root: Path, sizes=SIZES) -> Path:
    """Image/label PNG pairs (label = 1 where the blue channel is bright, 0 elsewhere, 11 = void on row 0) and
    their list in SegNet-Tutorial's format: 'image label' per line."""
    lines = []
    for i, (h, w) in enumerate(sizes):
        img = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = (img[..., 0] > 127).astype(np.uint8)
        label[0] = 11
        cv2.imwrite(str(root / f"img{i}.png"), img)
        cv2.imwrite(str(root / f"lab{i}.png"), label)
        lines.append(f"{root}/img{i}.png {root}/lab{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt"


def _data_layer(source: Path, param: str = "", transform: str = "", batch: int = 1) -> str:
    return (f'layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" '
            f'dense_image_data_param {{ source: "{source}" batch_size: {batch} {param} }} {transform} }}\n')


def _open(text: str, phase: str = "TRAIN"):
    (layer,) = data_layers(read_net_text(text).net, phase)
    return open_reader(layer, seed=0)


def test_pairs_read_as_the_fork(tmp_path: Path) -> None:
    """Image through transform_param (per-channel mean, scale), label map raw; resized bilinear / nearest."""
    source = make_pairs(tmp_path)
    src = _open(_data_layer(source, "new_height: 12 new_width: 20", 'transform_param { scale: 0.5 mean_value: 10 '
                                                                    "mean_value: 20 mean_value: 30 }", batch=2))
    data, label = src.next_batch()
    assert data.shape == (2, 3, 12, 20) and label.shape == (2, 1, 12, 20)
    for k in range(2):
        img = cv2.resize(cv2.imread(str(tmp_path / f"img{k}.png")), (20, 12))
        lab = cv2.resize(cv2.imread(str(tmp_path / f"lab{k}.png"), cv2.IMREAD_GRAYSCALE), (20, 12),
                         interpolation=cv2.INTER_NEAREST)
        want = (img.transpose(2, 0, 1).astype(F32) - np.array([10, 20, 30], F32)[:, None, None]) * F32(0.5)
        np.testing.assert_array_equal(data[k], want)
        np.testing.assert_array_equal(label[k, 0], lab.astype(F32))
    assert set(np.unique(label)) <= {0.0, 1.0, 11.0}  # ids stay ids


def test_mirror_and_crop_move_image_and_label_together(tmp_path: Path) -> None:
    """Whatever window and flip are drawn, the label still marks the bright-blue pixels of its image; both flips
    and several windows occur."""
    source = make_pairs(tmp_path)
    src = _open(_data_layer(source, "mirror: true crop_height: 10 crop_width: 12", batch=2))
    seen = set()
    for _ in range(12):
        data, label = src.next_batch()
        assert data.shape == (2, 3, 10, 12)
        for k in range(2):
            void = label[k, 0] == 11
            np.testing.assert_array_equal(label[k, 0][~void], (data[k, 0] > 127)[~void].astype(F32))
            seen.add(data[k].tobytes())
    assert len(seen) > 12


def test_batch_of_one_takes_each_size(tmp_path: Path) -> None:
    src = _open(_data_layer(make_pairs(tmp_path)))
    assert [src.next_batch()[1].shape[2:] for _ in SIZES] == SIZES


@pytest.mark.parametrize("param, transform, message", [
    ("", "", "image '{root}/img1.png' is 20x28, the batch 24x32"),
    ("", "transform_param { mirror: true }", "transform_param mirror and crop_size are refused"),
    ("crop_height: 22 crop_width: 40", "", "crop 22x40 is larger than image"),
])
def test_errors_give_one_line(tmp_path: Path, param: str, transform: str, message: str) -> None:
    text = _data_layer(make_pairs(tmp_path), param, transform, batch=2)
    with pytest.raises(DataError) as e:
        _open(text).next_batch()
    assert message.format(root=tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_label_of_another_size_is_refused(tmp_path: Path) -> None:
    source = make_pairs(tmp_path)
    cv2.imwrite(str(tmp_path / "lab0.png"), np.zeros((23, 32), np.uint8))
    with pytest.raises(DataError, match="is 23x32, its image .* 24x32: input and label heights and widths must"):
        _open(_data_layer(source))


def test_segnet_tutorial_net_trains(tmp_path: Path, monkeypatch) -> None:
    """SegNet-Tutorial's segnet_basic_train.prototxt as its README says to use it (the source path changed to
    the data): images of CamVid's 360x480, class-weighted loss over 11 classes (void 11 ignored). A few SGD steps
    from the file's own fillers lower the loss."""
    from prototxt2py import caffe

    model = CORPUS / "alexgkendall__SegNet-Tutorial" / "Models" / "segnet_basic_train.prototxt"
    source = make_pairs(tmp_path, [(360, 480)] * 2)
    text = model.read_text().replace("/SegNet/CamVid/train.txt", str(source))
    text = text.replace("batch_size: 4", "batch_size: 1")
    (tmp_path / "train.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
                                              "momentum: 0.9\nmax_iter: 100\nrandom_seed: 1\n")
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver("solver.prototxt")
    losses = []
    for _ in range(4):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    label = solver.net.blobs["label"].data
    assert label.shape == (1, 1, 360, 480) and set(np.unique(label)) <= {0.0, 1.0, 11.0}
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)


def test_accuracy_counts_void_labels_as_wrong(tmp_path: Path) -> None:
    """SegNet's training nets score every pixel with Accuracy (no ignore_label) while CamVid's void pixels carry
    label 11 of 11 classes: such a label is counted, never right, and in no class's accuracy; runtime and ONNX
    agree (Caffe's release build reads past the scores there)."""
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    text = _loss_net(None, None, True).replace(
        'type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss"',
        'type: "Accuracy" bottom: "x" bottom: "label" top: "loss" top: "per_class"').split("loss_param")[0] + "}\n"
    net = prototxt2py.load(read_net_text(text))
    x, label = _inputs(3)
    label[:, :, 0, :] = 5  # void: one past the classes
    pred = x.argmax(axis=1)[:, None]
    known = label < 5
    want = ((pred == label) & known).sum() / label.size
    want_per = [((pred == label) & (label == k)).sum() / max((label == k).sum(), 1) for k in range(5)]
    out = net(torch.tensor(x), torch.tensor(label))
    np.testing.assert_allclose(out["loss"].item(), want, rtol=1e-6)
    np.testing.assert_allclose(out["per_class"].numpy(), want_per, rtol=1e-6)
    session = ort.InferenceSession(to_onnx_model(net).SerializeToString())
    got = dict(zip(("loss", "per_class"), session.run(None, {"x": x, "label": label}), strict=True))
    np.testing.assert_allclose(got["loss"], want, rtol=1e-6)
    np.testing.assert_allclose(got["per_class"], want_per, rtol=1e-6)
