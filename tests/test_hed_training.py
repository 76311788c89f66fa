"""HED trains from its own files: ``ImageLabelmapData`` (image + edge map pairs; edge maps thresholded as OpenCV's
``map / 255`` rounds; flips and crops shared) and the fork's class-balanced ``SigmoidCrossEntropyLoss``, which a net
with an ``ImageLabelmapData`` layer gets (checked against a loop-by-loop port of the fork's Forward_cpu and
Backward_cpu); HED's corpus train_val runs on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, generated_module

import prototxt2py
from prototxt2py.data import DataError
from prototxt2py.data.layers import data_layers
from prototxt2py.data.loader import open_reader
from prototxt2py.reader import read_net_text

cv2 = pytest.importorskip("cv2")

F32 = np.float32


def fork_balanced_loss(x: np.ndarray, t: np.ndarray) -> tuple[np.float32, np.ndarray]:
    """s9xie/hed sigmoid_cross_entropy_loss_layer.cpp, loop by loop in float32 (loss weight 1)."""
    num = x.shape[0]
    xs, ts = x.reshape(num, -1).astype(F32), t.reshape(num, -1).astype(F32)
    loss_pos = loss_neg = F32(0)
    diff = (F32(1) / (F32(1) + np.exp(-xs)) - ts).astype(F32)
    for i in range(num):
        tp = tn = F32(0)
        cp = cn = F32(0)
        for j in range(xs.shape[1]):
            v, target = xs[i, j], ts[i, j]
            term = F32(v * (target - (v >= 0)) - np.log(F32(1) + np.exp(F32(v - 2 * v * (v >= 0)))))
            if target == 1:
                cp += 1
                tp = F32(tp - term)
            elif target == 0:
                cn += 1
                tn = F32(tn - term)
        loss_pos = F32(loss_pos + tp * cn / (cp + cn))
        loss_neg = F32(loss_neg + tn * cp / (cp + cn))
        diff[i][ts[i] == 1] *= cn / (cp + cn)
        diff[i][ts[i] == 0] *= cp / (cp + cn)
    return F32((loss_pos + loss_neg) / num), (diff * F32(1.0 / num)).reshape(x.shape)


def _net(with_reader: bool, source: str = "list.txt") -> str:
    head = (f'layer {{ name: "data" type: "ImageLabelmapData" top: "img" top: "label0" image_data_param {{ '
            f'source: "{source}" batch_size: 1 }} }}\n') if with_reader else ""
    return head + """
layer { name: "in" type: "Input" top: "x" top: "label"
  input_param { shape { dim: 2 dim: 1 dim: 4 dim: 5 } shape { dim: 2 dim: 1 dim: 4 dim: 5 } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "label" top: "loss" }
"""


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((2, 1, 4, 5))).astype(F32)
    t = (rng.uniform(size=x.shape) < 0.2).astype(F32)
    t[1, 0, 0, :2] = 0.5  # neither edge nor background: no loss, an unweighted gradient
    return x, t


def test_balanced_loss_matches_the_fork() -> None:
    """In a HED net (an ImageLabelmapData layer present): loss and gradient equal the fork's loops, the generated
    code gives the same loss; the same layer in any other net keeps BVLC's loss."""
    shapes = {"img": [1, 3, 4, 5], "label0": [1, 1, 4, 5]}
    hed = prototxt2py.load(read_net_text(_net(True)), input_shapes=shapes)
    bvlc = prototxt2py.load(read_net_text(_net(False)))
    for seed in range(3):
        x, t = _inputs(seed)
        want_loss, want_diff = fork_balanced_loss(x, t)
        xt = torch.tensor(x, requires_grad=True)
        feed = {"x": xt, "label": torch.tensor(t), "img": torch.zeros(1, 3, 4, 5), "label0": torch.zeros(1, 1, 4, 5)}
        loss = hed(**feed)["loss"]
        loss.backward()
        np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-5)
        np.testing.assert_allclose(xt.grad.numpy(), want_diff, rtol=1e-5, atol=1e-7)
        generated = generated_module(hed)(**{k: v.detach() for k, v in feed.items()})["loss"]
        torch.testing.assert_close(generated, loss.detach(), rtol=1e-6, atol=0)
        plain = bvlc(torch.tensor(x), torch.tensor(t))["loss"]
        assert abs(plain.item() - want_loss) > 1e-3 * abs(want_loss)


def test_balanced_loss_exports_to_onnx() -> None:
    """The ONNX graph (static and with a dynamic batch) gives the fork's loss too."""
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    net = prototxt2py.load(read_net_text(_net(True)), input_shapes={"img": [1, 3, 4, 5], "label0": [1, 1, 4, 5]})
    x, t = _inputs(5)
    for dynamic in (False, True):
        session = ort.InferenceSession(to_onnx_model(net, dynamic_batch=dynamic).SerializeToString())
        feed = {"x": x, "label": t, "img": np.zeros((1, 3, 4, 5), F32), "label0": np.zeros((1, 1, 4, 5), F32)}
        names = [i.name for i in session.get_inputs()]
        (got,) = session.run(["loss"], {k: v for k, v in feed.items() if k in names})
        np.testing.assert_allclose(got, fork_balanced_loss(x, t)[0], rtol=1e-5)


# -- ImageLabelmapData ---------------------------------------------------------------------------------------------
def make_pairs(root: Path, sizes=((24, 32), (24, 32), (20, 28)), grey: bool = True) -> Path:
    """Images and edge maps (255 where the blue channel is at least 128, with grey levels around 128) listed as
    HED's train_pair.lst: 'image edges' per line, relative to the root folder."""
    lines = []
    for i, (h, w) in enumerate(sizes):
        img = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        edges = np.where(img[..., 0] >= 128, 255, 0).astype(np.uint8)
        if grey:
            edges[0, :4] = [127, 128, 129, 126]
        cv2.imwrite(str(root / f"img{i}.png"), img)
        cv2.imwrite(str(root / f"gt{i}.png"), edges)
        lines.append(f"img{i}.png gt{i}.png")
    (root / "list.lst").write_text("\n".join(lines) + "\n")
    return root / "list.lst"


def _open(root: Path, param: str = "", transform: str = ""):
    text = (f'layer {{ name: "data" type: "ImageLabelmapData" top: "data" top: "label" image_data_param {{ '
            f'root_folder: "{root}/" source: "{root}/list.lst" batch_size: 2 {param} }} {transform} }}\n')
    (layer,) = data_layers(read_net_text(text).net, "TRAIN")
    return open_reader(layer, seed=0)


@pytest.mark.parametrize("size", [(12, 16), None])
def test_edges_read_as_the_fork(tmp_path: Path, size) -> None:
    """Image minus the mean values; edge map resized bilinearly with its image (or not), then map / 255 as OpenCV
    rounds it (OpenCV itself is the reference here: 127 -> 0, 128 -> 1)."""
    make_pairs(tmp_path)
    resize = f"new_height: {size[0]} new_width: {size[1]}" if size else ""
    src = _open(tmp_path, resize, "transform_param { mean_value: 104 mean_value: 117 mean_value: 123 }")
    data, label = src.next_batch()
    h, w = size or (24, 32)
    assert data.shape == (2, 3, h, w) and label.shape == (2, 1, h, w)
    for k in range(2):
        img, gt = cv2.imread(str(tmp_path / f"img{k}.png")), cv2.imread(str(tmp_path / f"gt{k}.png"), 0)
        if size:
            img, gt = cv2.resize(img, (w, h)), cv2.resize(gt, (w, h))
        np.testing.assert_array_equal(data[k], img.transpose(2, 0, 1) - np.array([104, 117, 123], F32)[:, None, None])
        np.testing.assert_array_equal(label[k, 0], cv2.convertScaleAbs(gt, alpha=1 / 255).astype(F32))
    assert set(np.unique(label)) == {0.0, 1.0}
    if not size:
        assert label[0, 0, 0, :4].tolist() == [0, 1, 1, 0]  # 127, 128, 129, 126


def test_flips_and_crops_move_the_edges(tmp_path: Path) -> None:
    """Whatever flip and window are drawn, each edge map still marks its image's bright-blue pixels; both flips
    and several windows occur."""
    make_pairs(tmp_path, grey=False)
    src = _open(tmp_path, "", "transform_param { mirror: true crop_size: 10 }")
    seen = set()
    for _ in range(10):
        data, label = src.next_batch()
        for k in range(2):
            np.testing.assert_array_equal(label[k, 0], (data[k, 0] >= 128).astype(F32))
            seen.add(data[k].tobytes())
    assert len(seen) > 10


def test_batch_of_several_sizes_is_refused(tmp_path: Path) -> None:
    make_pairs(tmp_path, ((24, 32), (20, 28)))
    with pytest.raises(DataError, match=r"img1.png' is 20x28, the batch 24x32 \(HED sizes a batch by its first"):
        _open(tmp_path).next_batch()


def test_corpus_train_val_runs(tmp_path: Path, monkeypatch) -> None:
    """HED's own train_val (its relative root folder, VGG-16 with five side outputs and a fused one): each side
    loss equals the fork's balanced loss of its score map against the edge map."""
    from prototxt2py import caffe

    work = tmp_path / "hed" / "examples" / "hed"
    work.mkdir(parents=True)
    shutil.copy(CORPUS / "s9xie__hed" / "examples" / "hed" / "train_val.prototxt", work)
    bsds = tmp_path / "hed" / "data" / "HED-BSDS"
    bsds.mkdir(parents=True)
    make_pairs(bsds, ((40, 48), (36, 52)))
    (bsds / "train_pair.lst").write_text((bsds / "list.lst").read_text())
    (bsds / "test.lst").write_text((bsds / "list.lst").read_text())
    monkeypatch.chdir(work)
    caffe.set_random_seed(0)
    net = caffe.Net("train_val.prototxt", caffe.TRAIN)
    net.forward()
    label = net.blobs["label"].data
    assert label.shape[2:] == net.blobs["data"].data.shape[2:] and set(np.unique(label)) <= {0.0, 1.0}
    for k in (1, 2, 3, 4, 5):
        want, _ = fork_balanced_loss(net.blobs[f"upscore-dsn{k}"].data, label)
        np.testing.assert_allclose(float(net.blobs[f"dsn{k}_loss"].data), want, rtol=1e-4)
