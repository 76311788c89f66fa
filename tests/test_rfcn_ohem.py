"""R-FCN's online hard example mining: SoftmaxWithLossOHEM, SmoothL1LossOHEM and BoxAnnotatorOHEM against
line-by-line numpy ports of the fork's CUDA code (daijifeng001/caffe-rfcn, Microsoft/caffe: it has no CPU code),
forward and backward; py-R-FCN's settings of py-faster-rcnn's Python layers in nets holding PSROIPooling (and
BoxAnnotatorOHEM); an R-FCN OHEM training net (py-R-FCN's head on a small backbone) trains from VOC files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, generated_module

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.layers.forks.rcnn import rpn_anchors
from prototxt2py.layers.forks.rcnn_nn import AnchorTargetLayer, ProposalLayer, ProposalTargetLayer
from prototxt2py.reader import read_net_text

FLT_MIN = np.float32(1.1754943508222875e-38)
ANCHORS = rpn_anchors((8, 16, 32), (0.5, 1, 2))


# -- the fork's kernels, on plain arrays ---------------------------------------------------------------------------
def softmax_ohem_reference(x, label, ignore, mode):
    """SoftmaxLossForwardGPU / SoftmaxLossBackwardGPU (class axis 1): loss, per-position loss, gradient."""
    outer, classes, inner = x.shape[0], x.shape[1], int(np.prod(x.shape[2:]))
    x3 = x.reshape(outer, classes, inner).astype(np.float64)
    prob = np.exp(x3 - x3.max(axis=1, keepdims=True))
    prob = (prob / prob.sum(axis=1, keepdims=True)).astype(np.float32)
    lab = label.reshape(outer, inner).astype(np.int64)
    per = np.zeros((outer, inner), np.float32)
    counts = 0
    grad = prob.copy()
    for n in range(outer):
        for s in range(inner):
            if ignore is not None and lab[n, s] == ignore:
                grad[n, :, s] = 0
                continue
            per[n, s] = -np.log(max(prob[n, lab[n, s], s], FLT_MIN))
            grad[n, lab[n, s], s] -= 1
            counts += 1
    valid = counts if (mode == "VALID" and ignore is not None) else -1
    norm = {"FULL": outer * inner, "VALID": outer * inner if valid == -1 else valid, "BATCH_SIZE": outer,
            "NONE": 1}[mode]
    norm = max(1.0, norm)
    return per.sum() / norm, per.reshape(label.shape), prob.reshape(x.shape), grad.reshape(x.shape) / norm


def smooth_l1_ohem_reference(a, b, w, mode, pre_fixed):
    """SmoothL1ForwardGPU, kernel_channel_sum and SmoothL1BackwardGPU on (N, C, H, W) blobs."""
    d = (a - b) if w is None else w * (a - b)
    d64 = d.astype(np.float64)
    err = np.where(np.abs(d64) < 1, 0.5 * d64 * d64, np.abs(d64) - 0.5).astype(np.float32)
    n, _, h, wd = a.shape
    norm = max(1.0, {"FULL": n * h * wd, "VALID": n * h * wd, "BATCH_SIZE": n, "PRE_FIXED": pre_fixed,
                     "NONE": 1}[mode])
    slope = np.where(np.abs(d) < 1, d, np.sign(d))
    return err.sum() / norm, err.sum(axis=1, keepdims=True), slope / norm


def box_annotator_reference(rois, loss, labels, weights, roi_per_img, ignore):
    """BoxAnnotatorOHEMLayer::Forward_gpu (which runs on the CPU) for (R, *, 1, 1) blobs and distinct losses."""
    rois = rois.reshape(len(rois), -1)
    num_imgs = int(rois[:, 0].max()) + 1
    top_labels = np.full(len(rois), ignore, np.float32)
    top_w = np.zeros_like(weights.reshape(len(rois), -1))
    left = [roi_per_img] * num_imgs
    for i in sorted(range(len(rois)), key=lambda k: -loss.reshape(-1)[k]):
        b = int(rois[i, 0])
        if left[b] > 0:
            left[b] -= 1
            top_labels[i] = labels.reshape(-1)[i]
            top_w[i] = weights.reshape(len(rois), -1)[i]
    return top_labels, top_w


# -- the layers in nets --------------------------------------------------------------------------------------------
def _net(body: str, inputs: dict[str, tuple[int, ...]]) -> prototxt2py.CaffeNet:
    head = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in v)} }} }} }}\n' for k, v in inputs.items())
    return prototxt2py.load(read_net_text(head + textwrap.dedent(body)), phase="TRAIN")


@pytest.mark.parametrize("mode, ignore", [("VALID", -1), ("VALID", None), ("FULL", -1), ("BATCH_SIZE", None),
                                          ("NONE", -1)])
def test_softmax_loss_ohem_follows_the_kernels(mode: str, ignore: int | None) -> None:
    """The loss, the probabilities and each ROI's loss (zero where ignored), and the gradient (probabilities
    minus one at the label, zero at ignored ROIs, over the normalizer) for every normalization."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (12, 5, 1, 1)).astype(np.float32)
    label = rng.integers(0, 5, (12, 1, 1, 1)).astype(np.float32)
    label[[2, 7]] = -1 if ignore is not None else label[[2, 7]]
    param = f"loss_param {{ normalization: {mode} {'' if ignore is None else f'ignore_label: {ignore}'} }}"
    net = _net(f"""
        layer {{ name: "ohem" type: "SoftmaxWithLossOHEM" bottom: "x" bottom: "label" top: "loss" top: "prob"
                top: "per_roi" loss_weight: 1 loss_weight: 0 loss_weight: 0 {param} }}
        """, {"x": x.shape, "label": label.shape})
    xt = torch.from_numpy(x).requires_grad_()
    out = net(x=xt, label=torch.from_numpy(label))
    loss, per, prob, grad = softmax_ohem_reference(x, label, ignore, mode)
    assert float(out["loss"].detach()) == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(out["per_roi"].detach().numpy(), per, rtol=1e-6, atol=1e-7)
    assert out["per_roi"].shape == label.shape and out["prob"].shape == x.shape
    np.testing.assert_allclose(out["prob"].detach().numpy(), prob, rtol=1e-6, atol=1e-8)
    (3.0 * out["loss"] + out["per_roi"].sum() + out["prob"].sum()).backward()  # only the loss's gradient counts
    np.testing.assert_allclose(xt.grad.numpy(), 3.0 * grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalization, weighted", [("PRE_FIXED", True), ("VALID", True), ("BATCH_SIZE", False),
                                                     ("NONE", True)])
def test_smooth_l1_loss_ohem_follows_the_kernels(normalization: str, weighted: bool) -> None:
    """Loss, each ROI's sum over its channels, and the fork's gradient: f'(w (a - b)), not multiplied by w (the
    weights here are not 0/1, so the chain rule's answer would differ), minus that for the targets."""
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1.5, (10, 8, 1, 1)).astype(np.float32)
    b = rng.normal(0, 1.5, (10, 8, 1, 1)).astype(np.float32)
    w = rng.choice([0.0, 0.5, 1.0, 3.0], (10, 8, 1, 1)).astype(np.float32)
    param = f"loss_param {{ normalization: {normalization} pre_fixed_normalizer: 6 }}"
    bottoms = 'bottom: "a" bottom: "b"' + (' bottom: "w"' if weighted else "")
    net = _net(f"""
        layer {{ name: "l1" type: "SmoothL1LossOHEM" {bottoms} top: "loss" top: "per_roi" loss_weight: 1
                loss_weight: 0 {param} }}
        """, {"a": a.shape, "b": b.shape, **({"w": w.shape} if weighted else {})})
    at, bt = torch.from_numpy(a).requires_grad_(), torch.from_numpy(b).requires_grad_()
    feeds = {"a": at, "b": bt, **({"w": torch.from_numpy(w)} if weighted else {})}
    out = net(**feeds)
    loss, per, slope = smooth_l1_ohem_reference(a, b, w if weighted else None, normalization, 6.0)
    assert float(out["loss"].detach()) == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(out["per_roi"].detach().numpy(), per, rtol=1e-6)
    (2.0 * out["loss"] + out["per_roi"].sum()).backward()
    np.testing.assert_allclose(at.grad.numpy(), 2.0 * slope, rtol=1e-6)
    np.testing.assert_allclose(bt.grad.numpy(), -2.0 * slope, rtol=1e-6)
    if weighted and normalization == "VALID":
        assert not np.allclose(at.grad.numpy(), 2.0 * w * slope)  # the chain rule would give this


@pytest.mark.parametrize("roi_per_img", [1, 3, 50])
def test_box_annotator_keeps_each_images_hardest_rois(roi_per_img: int) -> None:
    """Two images' ROIs interleaved: each image keeps its roi_per_img ROIs of highest loss, with their labels
    and box weights; the others get the ignore label (here 255) and zero weights."""
    rng = np.random.default_rng(2)
    r = 11
    rois = np.zeros((r, 5, 1, 1), np.float32)
    rois[:, 0, 0, 0] = rng.integers(0, 2, r)
    rois[:, 1:, 0, 0] = rng.uniform(0, 100, (r, 4))
    loss = rng.permutation(r).astype(np.float32).reshape(r, 1, 1, 1) / 3
    labels = rng.integers(0, 21, (r, 1, 1, 1)).astype(np.float32)
    weights = rng.uniform(0.5, 1, (r, 8, 1, 1)).astype(np.float32)
    net = _net(f"""
        layer {{ name: "ohem" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "loss" bottom: "labels"
                bottom: "w" top: "labels_ohem" top: "w_ohem"
                box_annotator_ohem_param {{ roi_per_img: {roi_per_img} ignore_label: 255 }} }}
        """, {"rois": rois.shape, "loss": loss.shape, "labels": labels.shape, "w": weights.shape})
    out = net(rois=torch.from_numpy(rois), loss=torch.from_numpy(loss), labels=torch.from_numpy(labels),
              w=torch.from_numpy(weights))
    want_labels, want_w = box_annotator_reference(rois, loss, labels, weights, roi_per_img, 255)
    assert out["labels_ohem"].shape == (r, 1, 1, 1) and out["w_ohem"].shape == (r, 8, 1, 1)
    np.testing.assert_array_equal(out["labels_ohem"].numpy().reshape(-1), want_labels)
    np.testing.assert_array_equal(out["w_ohem"].numpy().reshape(r, -1), want_w)
    kept = (want_labels != 255).sum()
    assert kept == sum(min(roi_per_img, int((rois[:, 0] == b).sum())) for b in (0, 1))


def test_generated_code_gives_the_same_ohem_outputs() -> None:
    """The three layers through generated code: same tops as the runtime."""
    rng = np.random.default_rng(3)
    r = 9
    feeds = {"score": rng.normal(0, 1, (r, 3, 1, 1)), "label": rng.integers(0, 3, (r, 1, 1, 1)),
             "pred": rng.normal(0, 1, (r, 8, 1, 1)), "target": rng.normal(0, 1, (r, 8, 1, 1)),
             "w": rng.integers(0, 2, (r, 8, 1, 1)),
             "rois": np.concatenate([np.zeros((r, 1, 1, 1)), rng.uniform(0, 50, (r, 4, 1, 1))], axis=1)}
    feeds = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in feeds.items()}
    net = _net("""
        layer { name: "cls" type: "SoftmaxWithLossOHEM" bottom: "score" bottom: "label" top: "l_cls" top: "p"
                top: "per_cls" loss_weight: 0 loss_weight: 0 loss_weight: 0 }
        layer { name: "box" type: "SmoothL1LossOHEM" bottom: "pred" bottom: "target" bottom: "w" top: "l_box"
                top: "per_box" loss_weight: 0 loss_weight: 0 }
        layer { name: "sum" type: "Eltwise" bottom: "per_cls" bottom: "per_box" top: "per" }
        layer { name: "ohem" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "per" bottom: "label" bottom: "w"
                top: "label_ohem" top: "w_ohem" box_annotator_ohem_param { roi_per_img: 4 } }
        layer { name: "loss" type: "SmoothL1LossOHEM" bottom: "pred" bottom: "target" bottom: "w_ohem"
                top: "loss" loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 4 } }
        """, {k: tuple(v.shape) for k, v in feeds.items()})
    out = net(**feeds)
    generated = generated_module(net)(**feeds)
    assert set(out) == set(generated)
    for name, value in out.items():
        torch.testing.assert_close(generated[name], value, rtol=0, atol=0)
    assert int((out["label_ohem"] != -1).sum()) == 4


@pytest.mark.parametrize("body, message", [
    ('layer { name: "o" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "loss" bottom: "label" bottom: "w" '
     'top: "a" top: "b" }', "roi_per_img must be set and greater than 0, got none"),
    ('layer { name: "o" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "w" bottom: "label" bottom: "w" '
     'top: "a" top: "b" box_annotator_ohem_param { roi_per_img: 2 } }', "loss (6, 8, 1, 1) must be one value"),
    ('layer { name: "o" type: "SoftmaxWithLossOHEM" bottom: "w" bottom: "label" top: "a" '
     'loss_param { normalization: PRE_FIXED } }', "normalization: PRE_FIXED (R-FCN's fork) is not supported"),
    ('layer { name: "o" type: "SmoothL1LossOHEM" bottom: "w" bottom: "label" top: "a" }',
     "bottom 1 (6, 1, 1, 1) does not match bottom 0 (6, 8, 1, 1)"),
])
def test_bad_ohem_layers_are_one_line_naming_the_layer(body: str, message: str) -> None:
    shapes = {"rois": (6, 5, 1, 1), "loss": (6, 1, 1, 1), "label": (6, 1, 1, 1), "w": (6, 8, 1, 1)}
    with pytest.raises(Prototxt2pyError) as e:
        _net(body, shapes)
    assert message in str(e.value) and "'o'" in str(e.value) and "\n" not in str(e.value)


# -- py-R-FCN's settings -------------------------------------------------------------------------------------------
TARGETS = """
layer { name: "proposal" type: "Python" bottom: "scores" bottom: "deltas" bottom: "im_info" top: "rpn_rois"
        python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
layer { name: "rpn-data" type: "Python" bottom: "scores" bottom: "gt_boxes" bottom: "im_info" top: "rpn_labels"
        top: "rpn_targets" top: "rpn_w_in" top: "rpn_w_out"
        python_param { module: "rpn.anchor_target_layer" layer: "AnchorTargetLayer" param_str: "'feat_stride': 16" } }
layer { name: "roi-data" type: "Python" bottom: "rpn_rois" bottom: "gt_boxes" top: "rois" top: "labels"
        top: "bbox_targets" top: "w_in" top: "w_out"
        python_param { module: "rpn.proposal_target_layer" layer: "ProposalTargetLayer"
                       param_str: "'num_classes': %d" } }
"""
MARKERS = {
    "": "",
    "rfcn": 'layer { name: "ps" type: "PSROIPooling" bottom: "feat" bottom: "rois" top: "ps" '
            'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 2 } }\n',
    "ohem": 'layer { name: "ps" type: "PSROIPooling" bottom: "feat" bottom: "rois" top: "ps" '
            'psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 2 } }\n'
            'layer { name: "ohem" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "labels" bottom: "labels" '
            'bottom: "w_in" top: "labels_ohem" top: "w_ohem" box_annotator_ohem_param { roi_per_img: 128 } }\n',
}


def _target_modules(marker: str, num_classes: int = 2) -> dict[str, torch.nn.Module]:
    shapes = {"scores": (1, 18, 14, 20), "deltas": (1, 36, 14, 20), "im_info": (1, 3), "gt_boxes": (2, 5),
              "feat": (1, 8, 14, 20)}
    net = _net(TARGETS % num_classes + MARKERS[marker], shapes)
    return {n: net.layer(n) for n in ("proposal", "rpn-data", "roi-data")}


def test_rfcn_nets_get_py_r_fcns_settings() -> None:
    """py-faster-rcnn's settings without R-FCN's layers; with PSROIPooling, rfcn_end2end.yml's; with
    BoxAnnotatorOHEM too, rfcn_end2end_ohem.yml's."""
    plain, rfcn, ohem = (_target_modules(m) for m in ("", "rfcn", "ohem"))
    assert plain["proposal"].pre_nms_top_n == 12000 and plain["proposal"].post_nms_top_n == 2000
    assert (plain["roi-data"].batch, plain["roi-data"].bg_lo, plain["roi-data"].agnostic) == (128, 0.0, False)
    assert plain["rpn-data"].target_stds is None and plain["proposal"].delta_stds is None
    assert (rfcn["proposal"].pre_nms_top_n, rfcn["proposal"].post_nms_top_n) == (6000, 300)
    assert (rfcn["roi-data"].batch, rfcn["roi-data"].bg_lo, rfcn["roi-data"].agnostic) == (128, 0.1, True)
    assert rfcn["roi-data"].legacy_4d and rfcn["rpn-data"].target_stds is None
    assert (ohem["roi-data"].batch, ohem["roi-data"].bg_lo) == (-1, 0.0)
    assert ohem["rpn-data"].target_stds == (0.1, 0.1, 0.2, 0.2) == ohem["proposal"].delta_stds
    assert not _target_modules("rfcn", 21)["roi-data"].agnostic  # a class-aware net (AGNOSTIC: False)


def test_ohem_recipe_normalises_rpn_targets_and_undoes_it_in_proposals() -> None:
    """The OHEM recipe's anchor targets are py-faster-rcnn's over the stds (same samples under the same seed);
    its training proposals from deltas d equal py-faster-rcnn's from d * stds."""
    rng = np.random.default_rng(4)
    scores = torch.from_numpy(rng.uniform(0, 1, (1, 18, 14, 20)).astype(np.float32))
    gt = torch.tensor([[20.0, 30.0, 120.0, 150.0, 7.0], [150.0, 60.0, 300.0, 200.0, 15.0]])
    info = torch.tensor([[224.0, 320.0, 1.0]])
    stds = (0.1, 0.1, 0.2, 0.2)
    torch.manual_seed(0)
    base = AnchorTargetLayer(16, ANCHORS)(scores, gt, info)
    torch.manual_seed(0)
    normed = AnchorTargetLayer(16, ANCHORS, target_means=(0.0,) * 4, target_stds=stds)(scores, gt, info)
    assert torch.equal(base[0], normed[0]) and torch.equal(base[2], normed[2])
    want = (base[1].reshape(1, 9, 4, 14, 20).double() / torch.tensor(stds, dtype=torch.float64).reshape(1, 1, 4, 1, 1))
    torch.testing.assert_close(normed[1].reshape(1, 9, 4, 14, 20), want.float(), rtol=0, atol=0)
    deltas = torch.from_numpy(rng.normal(0, 1, (1, 36, 14, 20)).astype(np.float32))
    scaled = (deltas.reshape(1, 9, 4, 14, 20).double() * torch.tensor(stds, dtype=torch.float64).reshape(
        1, 1, 4, 1, 1)).float().reshape(1, 36, 14, 20)
    got = ProposalLayer(16, ANCHORS, delta_means=(0.0,) * 4, delta_stds=stds)(scores, deltas, info)
    torch.testing.assert_close(got, ProposalLayer(16, ANCHORS)(scores, scaled, info), rtol=0, atol=0)


def test_rfcn_proposal_targets_keep_every_roi_class_agnostic() -> None:
    """The OHEM recipe keeps every ROI within the thresholds (42 proposals + 2 ground truths here, all of them at
    overlap >= 0), 4-axis tops, and each foreground target in columns 4-7 whatever its class."""
    rng = np.random.default_rng(1)
    gt = torch.tensor([[20, 30, 120, 150, 7], [150, 60, 300, 200, 15]], dtype=torch.float32)
    corner = rng.uniform(0, 250, (42, 2))
    rois = torch.from_numpy(np.hstack([np.zeros((42, 1)), corner, corner + rng.uniform(20, 150, (42, 2))])
                            .astype(np.float32))
    torch.manual_seed(0)
    kept, labels, targets, w_in, w_out = ProposalTargetLayer(2, batch=-1, agnostic=True, legacy_4d=True)(
        rois, gt.reshape(2, 5, 1, 1))
    assert kept.shape == (44, 5, 1, 1) and labels.shape == (44, 1, 1, 1) and targets.shape == (44, 8, 1, 1)
    fg = labels.reshape(-1) > 0
    assert int(fg.sum()) >= 2 and set(labels.reshape(-1).tolist()) <= {0.0, 7.0, 15.0}
    assert (w_in.reshape(44, 8)[fg] == torch.tensor([0.0] * 4 + [1.0] * 4)).all()
    assert (w_in.reshape(44, 8)[~fg] == 0).all() and torch.equal(w_out, w_in)
    torch.manual_seed(0)
    aware = ProposalTargetLayer(21)(rois, gt)  # py-faster-rcnn's layout: the same targets in the class's columns
    order = [int(np.where((aware[0].numpy() == k).all(axis=1))[0][0]) for k in kept.reshape(44, 5).numpy()]
    for i, j in enumerate(order):
        c = int(aware[1][j])
        torch.testing.assert_close(targets.reshape(44, 8)[i, 4:] if c else targets.reshape(44, 8)[i, :4],
                                   aware[2][j, 4 * c:4 * c + 4] if c else torch.zeros(4), rtol=0, atol=0)


def test_a_callers_mapping_wins_over_the_dialect() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self, param_str: str) -> None:
            super().__init__()

        def forward(self, rois, gt):
            return (rois, rois[:, :1], rois, rois, rois)

    shapes = {"scores": (1, 18, 14, 20), "deltas": (1, 36, 14, 20), "im_info": (1, 3), "gt_boxes": (2, 5),
              "feat": (1, 8, 14, 20)}
    net = prototxt2py.load(read_net_text(
        "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                f'{" ".join(f"dim: {d}" for d in v)} }} }} }}\n' for k, v in shapes.items())
        + TARGETS % 2 + MARKERS["rfcn"]), phase="TRAIN",
        python_layers={"rpn.proposal_target_layer.ProposalTargetLayer": Fixed})
    assert isinstance(net.layer("roi-data"), Fixed)


# -- an R-FCN OHEM training net trains from VOC files --------------------------------------------------------------
BACKBONE = """
layer { name: 'input-data' type: 'Python' top: 'data' top: 'im_info' top: 'gt_boxes'
        python_param { module: 'roi_data_layer.layer' layer: 'RoIDataLayer'
                       param_str: "'num_classes': 21, 'imdb': 'voc_2007_trainval', 'devkit': '%s'" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 4 stride: 4 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "feat"
        convolution_param { num_output: 16 kernel_size: 4 stride: 4 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu2" type: "ReLU" bottom: "feat" top: "feat" }
"""


def _rfcn_ohem_head() -> str:
    """py-R-FCN's RPN, R-FCN and OHEM layers of train_agnostic_ohem.prototxt (ResNet-50), on ``feat``, with
    3x3 position-sensitive bins."""
    return textwrap.dedent("""
    layer { name: "rpn_conv/3x3" type: "Convolution" bottom: "feat" top: "rpn/output"
            convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.01 } } }
    layer { name: "rpn_relu/3x3" type: "ReLU" bottom: "rpn/output" top: "rpn/output" }
    layer { name: "rpn_cls_score" type: "Convolution" bottom: "rpn/output" top: "rpn_cls_score"
            convolution_param { num_output: 18 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
    layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "rpn/output" top: "rpn_bbox_pred"
            convolution_param { num_output: 36 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
    layer { bottom: "rpn_cls_score" top: "rpn_cls_score_reshape" name: "rpn_cls_score_reshape" type: "Reshape"
            reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
    layer { name: 'rpn-data' type: 'Python' bottom: 'rpn_cls_score' bottom: 'gt_boxes' bottom: 'im_info'
            bottom: 'data' top: 'rpn_labels' top: 'rpn_bbox_targets' top: 'rpn_bbox_inside_weights'
            top: 'rpn_bbox_outside_weights'
            python_param { module: 'rpn.anchor_target_layer' layer: 'AnchorTargetLayer'
                           param_str: "'feat_stride': 16" } }
    layer { name: "rpn_loss_cls" type: "SoftmaxWithLoss" bottom: "rpn_cls_score_reshape" bottom: "rpn_labels"
            propagate_down: 1 propagate_down: 0 top: "rpn_cls_loss" loss_weight: 1
            loss_param { ignore_label: -1 normalize: true } }
    layer { name: "rpn_loss_bbox" type: "SmoothL1Loss" bottom: "rpn_bbox_pred" bottom: "rpn_bbox_targets"
            bottom: 'rpn_bbox_inside_weights' bottom: 'rpn_bbox_outside_weights' top: "rpn_loss_bbox"
            loss_weight: 1 smooth_l1_loss_param { sigma: 3.0 } }
    layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
    layer { name: 'rpn_cls_prob_reshape' type: 'Reshape' bottom: 'rpn_cls_prob' top: 'rpn_cls_prob_reshape'
            reshape_param { shape { dim: 0 dim: 18 dim: -1 dim: 0 } } }
    layer { name: 'proposal' type: 'Python' bottom: 'rpn_cls_prob_reshape' bottom: 'rpn_bbox_pred'
            bottom: 'im_info' top: 'rpn_rois'
            python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' param_str: "'feat_stride': 16" } }
    layer { name: 'roi-data' type: 'Python' bottom: 'rpn_rois' bottom: 'gt_boxes' top: 'rois' top: 'labels'
            top: 'bbox_targets' top: 'bbox_inside_weights' top: 'bbox_outside_weights'
            python_param { module: 'rpn.proposal_target_layer' layer: 'ProposalTargetLayer'
                           param_str: "'num_classes': 2" } }
    layer { bottom: "feat" top: "rfcn_cls" name: "rfcn_cls" type: "Convolution"
            convolution_param { num_output: 189 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
    layer { bottom: "feat" top: "rfcn_bbox" name: "rfcn_bbox" type: "Convolution"
            convolution_param { num_output: 72 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
    layer { bottom: "rfcn_cls" bottom: "rois" top: "psroipooled_cls_rois" name: "psroipooled_cls_rois"
            type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 3 } }
    layer { bottom: "psroipooled_cls_rois" top: "cls_score" name: "ave_cls_score_rois" type: "Pooling"
            pooling_param { pool: AVE kernel_size: 3 stride: 3 } }
    layer { bottom: "rfcn_bbox" bottom: "rois" top: "psroipooled_loc_rois" name: "psroipooled_loc_rois"
            type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 8 group_size: 3 } }
    layer { bottom: "psroipooled_loc_rois" top: "bbox_pred" name: "ave_bbox_pred_rois" type: "Pooling"
            pooling_param { pool: AVE kernel_size: 3 stride: 3 } }
    layer { name: "per_roi_loss_cls" type: "SoftmaxWithLossOHEM" bottom: "cls_score" bottom: "labels"
            top: "temp_loss_cls" top: "temp_prob_cls" top: "per_roi_loss_cls" loss_weight: 0 loss_weight: 0
            loss_weight: 0 propagate_down: false propagate_down: false }
    layer { name: "per_roi_loss_bbox" type: "SmoothL1LossOHEM" bottom: "bbox_pred" bottom: "bbox_targets"
            bottom: "bbox_inside_weights" top: "temp_loss_bbox" top: "per_roi_loss_bbox" loss_weight: 0
            loss_weight: 0 propagate_down: false propagate_down: false propagate_down: false }
    layer { name: "per_roi_loss" type: "Eltwise" bottom: "per_roi_loss_cls" bottom: "per_roi_loss_bbox"
            top: "per_roi_loss" propagate_down: false propagate_down: false }
    layer { bottom: "rois" bottom: "per_roi_loss" bottom: "labels" bottom: "bbox_inside_weights"
            top: "labels_ohem" top: "bbox_loss_weights_ohem" name: "annotator_detector" type: "BoxAnnotatorOHEM"
            box_annotator_ohem_param { roi_per_img: 8 ignore_label: -1 }
            propagate_down: false propagate_down: false propagate_down: false propagate_down: false }
    layer { name: "silence" type: "Silence" bottom: "bbox_outside_weights" bottom: "temp_loss_cls"
            bottom: "temp_prob_cls" bottom: "temp_loss_bbox" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels_ohem" top: "loss_cls"
            loss_weight: 1 loss_param { ignore_label: -1 } propagate_down: true propagate_down: false }
    layer { name: "accuarcy" type: "Accuracy" bottom: "cls_score" bottom: "labels_ohem" top: "accuarcy"
            accuracy_param { ignore_label: -1 } }
    layer { name: "loss_bbox" type: "SmoothL1LossOHEM" bottom: "bbox_pred" bottom: "bbox_targets"
            bottom: "bbox_loss_weights_ohem" top: "loss_bbox" loss_weight: 1
            loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 8 }
            propagate_down: true propagate_down: false propagate_down: false }
    """)


def test_rfcn_ohem_net_trains_from_voc_files(tmp_path: Path, monkeypatch) -> None:
    """py-R-FCN's end-to-end OHEM layers under a solver, reading VOC through the RoIDataLayer: each step keeps
    every proposal ROI (none dropped by a 128 quota), the 8 hardest keep their labels (the rest -1), box weights
    only in the agnostic foreground columns, the losses finite, and the weights move."""
    from test_roi_data import make_devkit

    from prototxt2py import caffe

    devkit = make_devkit(tmp_path)
    (tmp_path / "train.prototxt").write_text(BACKBONE % devkit + _rfcn_ohem_head())
    (tmp_path / "solver.prototxt").write_text('train_net: "train.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                              "momentum: 0.9\nrandom_seed: 2\n")
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver("solver.prototxt")
    before = solver.net.params["rfcn_cls"][0].data.copy()
    for _ in range(2):
        solver.step(1)
        blobs = solver.net.blobs
        rois, labels = blobs["rois"].data, blobs["labels"].data
        assert rois.shape[1:] == (5, 1, 1) and labels.shape == (len(rois), 1, 1, 1)
        gt = blobs["gt_boxes"].data
        assert len(rois) == len(blobs["rpn_rois"].data) + len(gt) <= 300 + len(gt)  # every overlap is >= 0
        kept = blobs["labels_ohem"].data.reshape(-1) != -1
        assert kept.sum() == min(8, len(rois))
        np.testing.assert_array_equal(blobs["labels_ohem"].data.reshape(-1)[kept], labels.reshape(-1)[kept])
        w = blobs["bbox_loss_weights_ohem"].data.reshape(len(rois), 8)
        assert (w[:, :4] == 0).all() and (w[~kept] == 0).all()
        assert ((w[:, 4:] == 1).all(axis=1) == (kept & (labels.reshape(-1) > 0))).all()
        losses = [float(blobs[b].data) for b in ("rpn_cls_loss", "rpn_loss_bbox", "loss_cls", "loss_bbox")]
        assert np.isfinite(losses).all() and losses[2] > 0
    assert not np.array_equal(solver.net.params["rfcn_cls"][0].data, before)


@pytest.mark.skipif(not (CORPUS / "rbgirshick__py-faster-rcnn").is_dir(), reason="needs the shared corpus")
def test_py_faster_rcnn_nets_keep_their_own_settings() -> None:
    """The ZF end-to-end net (no PSROIPooling): py-faster-rcnn's 2-axis targets and 2000 training proposals."""
    zf = CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end/train.prototxt"
    net = prototxt2py.load(str(zf), phase="TRAIN",
                           input_shapes={"data": (1, 3, 224, 320), "im_info": (1, 3), "gt_boxes": (2, 5)})
    assert net.layer("proposal").post_nms_top_n == 2000 and not net.layer("roi-data").legacy_4d
