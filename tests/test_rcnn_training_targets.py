"""py-faster-rcnn's training-target Python layers, built in: ``rpn.anchor_target_layer.AnchorTargetLayer`` and
``rpn.proposal_target_layer.ProposalTargetLayer``, against a numpy reading of the layers' code (labels before
sampling, regression targets, weights; sampling checked by its counts and by drawing only from the right
candidates), and the corpus ZF end-to-end training net run forward and backward with fed inputs."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from golden import CORPUS, generated_module

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.layers.forks.rcnn import rpn_anchors
from prototxt2py.layers.forks.rcnn_nn import AnchorTargetLayer, ProposalTargetLayer, _rpn_targets
from prototxt2py.reader import read_net_text

ZF_TRAIN = CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end/train.prototxt"
ANCHORS = rpn_anchors((8, 16, 32), (0.5, 1, 2))


def np_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """utils/bbox.pyx ``bbox_overlaps``, loop for loop."""
    out = np.zeros((len(boxes), len(query)))
    for k, q in enumerate(query.astype(np.float64)):
        area = (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
        for n, b in enumerate(boxes.astype(np.float64)):
            iw = min(b[2], q[2]) - max(b[0], q[0]) + 1
            if iw > 0:
                ih = min(b[3], q[3]) - max(b[1], q[1]) + 1
                if ih > 0:
                    out[n, k] = iw * ih / ((b[2] - b[0] + 1) * (b[3] - b[1] + 1) + area - iw * ih)
    return out


def np_transform(ex: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """fast_rcnn/bbox_transform.py ``bbox_transform`` (numpy's dtype rules decide the precision)."""
    ew, eh = ex[:, 2] - ex[:, 0] + 1.0, ex[:, 3] - ex[:, 1] + 1.0
    gw, gh = gt[:, 2] - gt[:, 0] + 1.0, gt[:, 3] - gt[:, 1] + 1.0
    ecx, ecy, gcx, gcy = ex[:, 0] + 0.5 * ew, ex[:, 1] + 0.5 * eh, gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.vstack(((gcx - ecx) / ew, (gcy - ecy) / eh, np.log(gw / ew), np.log(gh / eh))).transpose()


def anchor_reference(h: int, w: int, gt: np.ndarray, info: np.ndarray):
    """AnchorTargetLayer.forward up to the sampling: all anchors, the inside ones, their labels, targets."""
    shift_x, shift_y = np.meshgrid(np.arange(0, w) * 16, np.arange(0, h) * 16)
    shifts = np.vstack((shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel())).transpose()
    all_anchors = (np.array(ANCHORS).reshape((1, 9, 4)) + shifts.reshape((1, -1, 4)).transpose((1, 0, 2)))
    all_anchors = all_anchors.reshape((-1, 4))
    inside = np.where((all_anchors[:, 0] >= 0) & (all_anchors[:, 1] >= 0) & (all_anchors[:, 2] < info[1])
                      & (all_anchors[:, 3] < info[0]))[0]
    overlaps = np_overlaps(all_anchors[inside], gt)
    argmax = overlaps.argmax(axis=1)
    best = overlaps[np.arange(len(inside)), argmax]
    gt_best = overlaps[overlaps.argmax(axis=0), np.arange(overlaps.shape[1])]
    labels = np.full(len(inside), -1.0, np.float32)
    labels[best < 0.3] = 0
    labels[np.where(overlaps == gt_best)[0]] = 1
    labels[best >= 0.7] = 1
    targets = np_transform(all_anchors[inside], gt[argmax, :4]).astype(np.float32)
    return len(all_anchors), inside, labels, targets


def _per_anchor(top: torch.Tensor, h: int, w: int, per: int) -> np.ndarray:
    """A top ``(1, per*A, H, W)`` back to py-faster-rcnn's anchor order ``(H*W*A, per)``."""
    return top.numpy().reshape(1, 9 * per, h, w).transpose(0, 2, 3, 1).reshape(-1, per)


@pytest.mark.parametrize("case", ["few boxes", "a box no anchor meets"])
def test_anchor_targets_follow_the_layers_code(case: str) -> None:
    h, w = 14, 20
    info = np.array([224.0, 320.0, 1.0], np.float32)
    gt = np.array([[20, 30, 120, 150, 7], [150, 60, 300, 200, 15], [40, 160, 90, 215, 3]], np.float32)
    if case != "few boxes":  # the quirk: every anchor at overlap 0 ties that box's best overlap, so is positive
        gt = np.vstack([gt, [[330, 5, 340, 15, 2]]]).astype(np.float32)  # beyond the image's right edge
    total, inside, labels, targets = anchor_reference(h, w, gt, info)
    torch.manual_seed(0)
    layer = AnchorTargetLayer(16, ANCHORS)
    tops = layer(torch.zeros(1, 18, h, w), torch.from_numpy(gt), torch.from_numpy(info[None]))
    assert [tuple(t.shape) for t in tops] == [(1, 1, 9 * h, w)] + [(1, 36, h, w)] * 3
    got_labels = _per_anchor(tops[0].reshape(1, 9, h, w), h, w, 1)[:, 0]
    got_targets = _per_anchor(tops[1], h, w, 4)
    outside = np.setdiff1d(np.arange(total), inside)
    assert (got_labels[outside] == -1).all() and (got_targets[outside] == 0).all()
    np.testing.assert_array_equal(got_targets[inside], targets)
    mine = got_labels[inside]
    fg, bg = (labels == 1).sum(), (labels == 0).sum()
    assert (mine == 1).sum() == min(fg, 128) and (mine == 0).sum() == min(bg, 256 - min(fg, 128))
    assert ((mine != 1) | (labels == 1)).all() and ((mine != 0) | (labels == 0)).all()  # drawn from candidates
    if case != "few boxes":
        assert fg > 128  # the quirk made hundreds of positives, sampled down to 128
    inside_w, outside_w = _per_anchor(tops[2], h, w, 4)[inside], _per_anchor(tops[3], h, w, 4)[inside]
    np.testing.assert_array_equal(inside_w, np.repeat((mine == 1)[:, None], 4, 1).astype(np.float32))
    want_out = np.where((mine >= 0)[:, None], np.float32(1.0 / (mine >= 0).sum()), np.float32(0))
    np.testing.assert_array_equal(outside_w, np.repeat(want_out, 4, 1))


def test_box_targets_by_hand() -> None:
    """A 10x10 box at the origin to one moved by (5, 5) and twice as wide: centre offset 5 of a width of 10
    (0.5), log 2 for the width."""
    ex = torch.tensor([[0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)
    gt = torch.tensor([[0.0, 5.0, 19.0, 14.0]])
    np.testing.assert_allclose(_rpn_targets(ex, gt).numpy(), [[0.5, 0.5, np.log(2.0), 0.0]])


def test_proposal_targets_follow_the_layers_code() -> None:
    """Under both quotas (32 foreground, 128 in all) every candidate is kept, in a random order: compare ROI by
    ROI with the layer's code (labels, class-specific normalised targets, weights); the ground-truth boxes
    join the proposals (overlap 1: foreground)."""
    rng = np.random.default_rng(1)
    gt = np.array([[20, 30, 120, 150, 7], [150, 60, 300, 200, 15]], np.float32)
    corner = rng.uniform(0, 250, (40, 2))
    rois = np.hstack([np.zeros((40, 1)), corner, corner + rng.uniform(20, 150, (40, 2))]).astype(np.float32)
    all_rois = np.vstack([rois, np.hstack([np.zeros((2, 1), np.float32), gt[:, :4]])])
    overlaps = np_overlaps(all_rois[:, 1:5], gt[:, :4])
    best, assignment = overlaps.max(axis=1), overlaps.argmax(axis=1)
    fg, bg = np.where(best >= 0.5)[0], np.where((best < 0.5) & (best >= 0.0))[0]
    assert 2 <= len(fg) <= 32 and len(fg) + len(bg) <= 128
    torch.manual_seed(0)
    got = ProposalTargetLayer(21)(torch.from_numpy(rois), torch.from_numpy(gt))
    kept, labels, targets, inside_w, outside_w = (t.numpy() for t in got)
    assert len(kept) == len(fg) + len(bg) and labels.shape == (len(kept),)
    assert (labels[: len(fg)] > 0).all() and (labels[len(fg):] == 0).all()  # foreground first
    for row, label, target, w_in, w_out in zip(kept, labels, targets, inside_w, outside_w, strict=True):
        i = int(np.where((all_rois == row).all(axis=1))[0][0])
        g = assignment[i]
        want_label = gt[g, 4] if i in fg else 0
        assert label == want_label
        want = np.zeros(84, np.float32)
        if want_label:
            delta = np_transform(all_rois[i:i + 1, 1:5], gt[g:g + 1, :4])
            c = int(want_label)
            want[4 * c:4 * c + 4] = ((delta - 0.0) / np.array([0.1, 0.1, 0.2, 0.2])).astype(np.float32)
        np.testing.assert_array_equal(target, want)
        np.testing.assert_array_equal(w_in, (want != 0) | (np.arange(84) // 4 == int(want_label)) * bool(want_label))
        np.testing.assert_array_equal(w_out, w_in)


def _zf_train() -> tuple[prototxt2py.CaffeNet, tuple[torch.Tensor, ...]]:
    shapes = {"data": (1, 3, 224, 320), "im_info": (1, 3), "gt_boxes": (2, 5)}
    net = prototxt2py.load(str(ZF_TRAIN), phase="TRAIN", input_shapes=shapes)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    inputs = (torch.randn(1, 3, 224, 320, generator=gen), torch.tensor([[224.0, 320.0, 1.0]]),
              torch.tensor([[20.0, 30.0, 120.0, 150.0, 7.0], [150.0, 60.0, 300.0, 200.0, 15.0]]))
    return net, inputs


@pytest.mark.skipif(not ZF_TRAIN.is_file(), reason="needs the shared corpus")
def test_zf_end_to_end_training_net_runs_with_fed_inputs() -> None:
    """py-faster-rcnn's ZF end-to-end training net (its RoIDataLayer's tops fed as inputs, as a pycaffe script
    can): the four losses (RPN ~ log 2 and the head ~ log 21 at small random weights), gradients reaching
    conv1, and generated code giving the same losses under the same torch seed (the same random samples)."""
    net, inputs = _zf_train()
    torch.manual_seed(5)
    out = net(*inputs)
    losses = {k: float(v.detach()) for k, v in out.items()}
    assert set(losses) == {"rpn_cls_loss", "rpn_loss_bbox", "cls_loss", "bbox_loss"}
    assert losses["rpn_cls_loss"] == pytest.approx(np.log(2), rel=0.05)
    assert losses["cls_loss"] == pytest.approx(np.log(21), rel=0.05)
    sum(out.values()).backward()
    assert float(net.layer("conv1").weight.grad.abs().sum()) > 0
    module = generated_module(net).train()  # built first: building draws from the generator too
    torch.manual_seed(5)
    generated = module(*inputs)
    for name, value in losses.items():
        assert float(generated[name].detach()) == pytest.approx(value, rel=1e-5), name


NET = """
input: "rois" input_shape { dim: 3 dim: 5 }
input: "gt" input_shape { dim: 2 dim: 5 }
layer { name: "roi-data" type: "Python" bottom: "rois" bottom: "gt" top: "r" top: "l" top: "t" top: "i" top: "o"
  python_param { module: "rpn.proposal_target_layer" layer: "ProposalTargetLayer" param_str: "%s" } }
"""


@pytest.mark.parametrize(("param_str", "message"), [
    ("'feat_stride': 16", r"needs 'num_classes' \(1 to 65536\), got None"),
    ("'num_classes': 0", r"needs 'num_classes' \(1 to 65536\), got 0"),
])
def test_bad_settings_are_one_line_naming_the_layer(param_str: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError, match=f"roi-data.*{message}|{message}.*roi-data") as caught:
        prototxt2py.load(read_net_text(textwrap.dedent(NET % param_str), "net.prototxt"))
    assert "\n" not in str(caught.value)


def test_no_ground_truth_is_one_error() -> None:
    with pytest.raises(ValueError, match=r"needs ground-truth boxes \(G, 5\), got \(0, 5\)"):
        ProposalTargetLayer(21)(torch.zeros(3, 5), torch.zeros(0, 5))
    with pytest.raises(ValueError, match=r"needs ground-truth boxes \(G, 5\), got \(0, 5\)"):
        AnchorTargetLayer(16, ANCHORS)(torch.zeros(1, 18, 2, 2), torch.zeros(0, 5), torch.ones(1, 3))
