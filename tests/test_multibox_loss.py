"""SSD's MultiBoxLoss (weiliu89/caffe ``ssd``), against a reference written the way the fork's C++ is written
(``MultiBoxLossLayer::Forward_cpu``/``Backward_cpu`` and ``bbox_util.cpp``'s ``MatchBBox``, ``FindMatches``,
``MineHardExamples``, ``EncodeBBox``, ``EncodeLocPrediction``, ``EncodeConfPrediction``: per-prior loops, maps
keyed by label, float32 scalars) including its backward pass as the C++ computes it; a hand-worked case; the
MobileNet-SSD training net of the corpus, forward, backward and a few solver steps; the refusals.

Golden data from Caffe has no MultiBoxLoss case (the golden nets are BVLC Caffe's), so the reference is this
second, loop-by-loop reading of the fork's code: it pins the vectorised module to the C++'s order of
operations (bipartite tie order, which priors are mined, the fork's gradient quirks)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from golden import CORPUS, DEVICE, generated_module
from hypothesis import given, settings
from hypothesis import strategies as st

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.layers.forks.ssd_nn import MultiBoxLoss
from prototxt2py.reader import read_net_text

F32 = np.float32
FLT_MIN = 1.1754943508222875e-38


def _size(b) -> F32:
    if b[2] < b[0] or b[3] < b[1]:
        return F32(0)
    return F32(F32(b[2] - b[0]) * F32(b[3] - b[1]))


def _jaccard(a, b) -> F32:
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        inter = (F32(0),) * 4
    else:
        inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    w, h = F32(inter[2] - inter[0]), F32(inter[3] - inter[1])
    if w > 0 and h > 0:
        i = F32(w * h)
        return F32(i / F32(F32(_size(a) + _size(b)) - i))
    return F32(0)


def _match_bbox(gts, priors, match_type, threshold, ignore_cross):
    """``MatchBBox`` with label -1 (every ground truth), as the fork writes it."""
    n = len(priors)
    match, overlaps_out = [-1] * n, [F32(0)] * n
    overlaps: dict[int, dict[int, F32]] = {}
    for i in range(n):
        if ignore_cross and any(v < 0 or v > 1 for v in priors[i]):
            match[i] = -2
            continue
        for j, g in enumerate(gts):
            o = _jaccard(priors[i], g[3:7])
            if o > 1e-6:
                overlaps_out[i] = max(overlaps_out[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gts)))
    while pool:
        best_i, best_j, best = -1, -1, -1.0
        for i in sorted(overlaps):
            if match[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > best:
                    best_i, best_j, best = i, j, overlaps[i][j]
        if best_i == -1:
            break
        match[best_i], overlaps_out[best_i] = best_j, F32(best)
        pool.remove(best_j)
    if match_type == "PER_PREDICTION":
        for i in sorted(overlaps):
            if match[i] != -1:
                continue
            best_j, best = -1, -1.0
            for j in range(len(gts)):
                if j in overlaps[i] and overlaps[i][j] >= threshold and overlaps[i][j] > best:
                    best_j, best = j, overlaps[i][j]
            if best_j != -1:
                match[i], overlaps_out[i] = best_j, F32(best)
    return match, overlaps_out


def _encode(prior, var, box, code_type, in_target):
    if code_type == "CORNER":
        d = [F32(box[k] - prior[k]) for k in range(4)]
        return d if in_target else [F32(d[k] / var[k]) for k in range(4)]
    pw, ph = F32(prior[2] - prior[0]), F32(prior[3] - prior[1])
    if code_type == "CORNER_SIZE":
        d = [F32(F32(box[k] - prior[k]) / (pw, ph)[k % 2]) for k in range(4)]
        return d if in_target else [F32(d[k] / var[k]) for k in range(4)]
    pcx, pcy = F32((float(F32(prior[0] + prior[2]))) / 2.0), F32(float(F32(prior[1] + prior[3])) / 2.0)
    bw, bh = F32(box[2] - box[0]), F32(box[3] - box[1])
    bcx, bcy = F32(float(F32(box[0] + box[2])) / 2.0), F32(float(F32(box[1] + box[3])) / 2.0)
    d = [F32(F32(bcx - pcx) / pw), F32(F32(bcy - pcy) / ph), np.log(F32(bw / pw)), np.log(F32(bh / ph))]
    return d if in_target else [F32(d[k] / var[k]) for k in range(4)]


def _softmax_loss(row, label):
    m = max(row)
    e = [F32(np.exp(F32(v - m))) for v in row]
    p = F32(e[label] / F32(sum(e, F32(0))))
    return F32(-np.log(max(p, F32(FLT_MIN)))), [F32(v / F32(sum(e, F32(0)))) for v in e]


def _logistic(x, t):
    pos = F32(1.0 if x >= 0 else 0.0)
    return F32(-(x * (t - pos) - np.log1p(np.exp(F32(x - 2 * x * pos)))))


def reference(loc, conf, prior, gt, o: dict):
    """The fork's forward and backward for ``loc (N, P*L*4)``, ``conf (N, P*C)``, ``prior (1, 2, P*4)``,
    ``gt (G, 8)``: (loss, d loss / d loc, d loss / d conf) with top diff 1."""
    n, c = loc.shape[0], o["num_classes"]
    p = prior.shape[-1] // 4
    lc = 1 if o["share_location"] else c
    bg = o["background_label_id"]
    priors, variances = prior.reshape(2, p, 4)
    loc = loc.reshape(n, p, lc, 4)
    conf = conf.reshape(n, p, c)
    all_gt: dict[int, list] = {}
    for row in gt:
        if row[0] == -1:
            continue
        if not o["use_difficult_gt"] and row[7]:
            continue
        all_gt.setdefault(int(row[0]), []).append(row)
    mining = o["mining_type"] != "NONE"
    all_match, all_overlap, all_neg = [], [], []
    for i in range(n):
        if i not in all_gt:
            all_match.append({})
            all_overlap.append({})
            continue
        temp, temp_o = _match_bbox(all_gt[i], priors, o["match_type"], o["overlap_threshold"],
                                   o["ignore_cross_boundary_bbox"])
        if o["share_location"]:
            all_match.append({-1: temp})
            all_overlap.append({-1: temp_o})
        else:
            per = {}
            for k in range(c):
                if k == bg:
                    continue
                per[k] = [m if m > -1 and int(all_gt[i][m][1]) == k else -1 for m in temp]
            all_match.append(per)
            all_overlap.append({k: temp_o for k in per})
    num_matches = sum(1 for mi in all_match for v in mi.values() for m in v if m > -1)
    for i in range(n):
        neg = []
        if mining:
            for label, match in all_match[i].items():
                losses = [_softmax_loss(conf[i, j], bg)[0] if o["conf_loss_type"] == "SOFTMAX" else
                          F32(sum(_logistic(conf[i, j, k], F32(k == bg)) for k in range(c))) for j in range(p)]
                cand = [(losses[j], j) for j in range(p)
                        if match[j] == -1 and all_overlap[i][label][j] < o["neg_overlap"]]
                num_pos = sum(1 for m in match if m > -1)
                take = min(int(F32(num_pos) * F32(o["neg_pos_ratio"])), len(cand))
                order = sorted(range(len(cand)), key=lambda q: (-cand[q][0], cand[q][1]))
                chosen = {cand[q][1] for q in order[:take]}
                neg += [j for j in range(p) if match[j] == -1 and j in chosen]
        all_neg.append(neg)
    mode = o["normalization"]
    normalizer = max(1.0, {"FULL": n * p, "VALID": num_matches, "BATCH_SIZE": n, "NONE": 1}[mode])
    dloc, dconf = np.zeros_like(loc), np.zeros_like(conf)
    loss = 0.0
    # localisation
    for i in range(n):
        for label, match in all_match[i].items():
            col = 0 if o["share_location"] else label
            for j in range(p):
                if match[j] <= -1:
                    continue
                g = all_gt[i][match[j]]
                target = _encode(priors[j], variances[j], g[3:7], o["code_type"], o["encode_variance_in_target"])
                pred = list(loc[i, j, col])
                if o["encode_variance_in_target"]:
                    pred = [F32(pred[k] / variances[j][k]) for k in range(4)]
                    target = [F32(target[k] / variances[j][k]) for k in range(4)]
                for k in range(4):
                    d = F32(pred[k] - target[k])
                    if o["loc_loss_type"] == "SMOOTH_L1":
                        err, grad = (0.5 * d * d, d) if abs(d) < 1 else (abs(d) - 0.5, math.copysign(1.0, d))
                    else:
                        err, grad = 0.5 * d * d, d
                    loss += o["loc_weight"] * err / normalizer
                    dloc[i, j, col, k] = o["loc_weight"] * grad / normalizer  # copied back as is (the quirk)
    # confidence
    for i in range(n):
        rows = []  # (prior, label or None for background)
        if mining:
            if i in all_gt:
                for _, match in all_match[i].items():
                    rows += [(j, int(all_gt[i][match[j]][1])) for j in range(p) if match[j] > -1]
                rows += [(j, None) for j in all_neg[i]]
        else:
            labels = {j: int(all_gt[i][m[j]][1]) for m in all_match[i].values() for j in range(p) if m[j] > -1}
            rows = [(j, labels.get(j)) for j in range(p)]
        for j, label in rows:
            if o["map_object_to_agnostic"] and label is not None:
                label = bg + 1
            if o["conf_loss_type"] == "SOFTMAX":
                value, prob = _softmax_loss(conf[i, j], bg if label is None else label)
                loss += value / normalizer
                for k in range(c):
                    dconf[i, j, k] += (prob[k] - (k == (bg if label is None else label))) / normalizer
            else:
                target = [F32(bg)] * c
                if label is not None:
                    target[label] = F32(1)
                elif mining and 0 <= bg < c:
                    target[bg] = F32(1)
                for k in range(c):
                    x = conf[i, j, k]
                    loss += _logistic(x, target[k]) / normalizer
                    dconf[i, j, k] += (1 / (1 + math.exp(-x)) - target[k]) / normalizer
    return loss, dloc.reshape(n, -1), dconf.reshape(n, -1)


def _case(seed: int, n: int, p: int, c: int, lc: int):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.05, 0.95, (p, 2))
    size = rng.uniform(0.08, 0.5, (p, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)  # some cross the image border
    prior = np.stack([boxes, np.tile([0.1, 0.1, 0.2, 0.2], (p, 1))]).astype(F32).reshape(1, 2, -1)
    rows = []
    for i in range(n - 1):  # the last image has no ground truth
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.15, 0.85, 2)
            w, h = rng.uniform(0.1, 0.45, 2)
            rows.append([i, rng.integers(1, c), 0, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2,
                         float(rng.random() < 0.3)])
    if rows:
        rows.append(list(boxes[0] * 0 + [-1, -1, -1, -1]) + [0, 0, 0, 0])  # padding row
        rows[-1][0] = -1
        rows.append(rows[0][:3] + list(boxes[int(rng.integers(p))]) + [0])  # a box equal to a prior
        rows[-1][1] = 1
    gt = np.array(rows, F32).reshape(-1, 8)
    loc = (rng.standard_normal((n, p * lc * 4)) * 0.8).astype(F32)
    conf = (rng.standard_normal((n, p * c)) * 2).astype(F32)
    return loc, conf, prior, gt


DEFAULTS = dict(num_classes=5, share_location=True, background_label_id=0, loc_loss_type="SMOOTH_L1",
                conf_loss_type="SOFTMAX", loc_weight=1.0, match_type="PER_PREDICTION", overlap_threshold=0.5,
                use_difficult_gt=True, mining_type="MAX_NEGATIVE", neg_pos_ratio=3.0, neg_overlap=0.5,
                code_type="CENTER_SIZE", encode_variance_in_target=False, map_object_to_agnostic=False,
                ignore_cross_boundary_bbox=False, normalization="VALID")

VARIANTS = [
    {},
    {"match_type": "BIPARTITE", "overlap_threshold": 0.3},
    {"code_type": "CORNER", "loc_loss_type": "L2", "loc_weight": 2.5},
    {"code_type": "CORNER_SIZE", "encode_variance_in_target": True, "normalization": "BATCH_SIZE"},
    {"conf_loss_type": "LOGISTIC", "normalization": "FULL", "neg_pos_ratio": 1.5},
    {"share_location": False, "mining_type": "NONE", "normalization": "NONE"},
    {"mining_type": "NONE", "conf_loss_type": "LOGISTIC", "background_label_id": 2},
    {"use_difficult_gt": False, "ignore_cross_boundary_bbox": True, "neg_overlap": 0.3},
    {"map_object_to_agnostic": True, "num_classes": 2, "overlap_threshold": 0.35},
]


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_loss_and_gradients_equal_the_forks_loops(variant: int) -> None:
    o = {**DEFAULTS, **VARIANTS[variant]}
    c = o["num_classes"]
    lc = 1 if o["share_location"] else c
    for seed in range(3):
        loc, conf, prior, gt = _case(seed * 10 + variant, 3, 40, c, lc)
        if o["map_object_to_agnostic"] or o["background_label_id"] != 0:
            gt[:, 1] = np.where(gt[:, 1] == o["background_label_id"], (o["background_label_id"] + 1) % c, gt[:, 1])
        want, dloc, dconf = reference(loc, conf, prior, gt, o)
        module = MultiBoxLoss(**o)
        tloc, tconf = torch.from_numpy(loc).requires_grad_(), torch.from_numpy(conf).requires_grad_()
        got = module(tloc, tconf, torch.from_numpy(prior), torch.from_numpy(gt.reshape(1, 1, -1, 8)))
        got.backward()
        what = f"variant {variant} seed {seed}"
        assert want > 0, what
        np.testing.assert_allclose(float(got.detach()), want, rtol=2e-5, err_msg=what)
        np.testing.assert_allclose(tloc.grad.numpy(), dloc, rtol=1e-4, atol=1e-7, err_msg=what)
        np.testing.assert_allclose(tconf.grad.numpy(), dconf, rtol=1e-4, atol=1e-7, err_msg=what)


def test_hand_worked_match_and_mining() -> None:
    """Three priors, one ground truth [0.1, 0.1, 0.5, 0.5] (label 1): prior 0 is that box (overlap 1: the match),
    prior 1 [0.3, 0.3, 0.7, 0.7] overlaps it by 0.04 / 0.28 = 1/7 (under neg_overlap 0.5: a negative candidate),
    prior 2 is far (overlap 0). One match, so 3 negatives wanted, 2 eligible: both mined. Zero loc predictions
    against an exact prior encode to 0: no localisation loss. Conf rows are all zero, so each of the three
    rows costs log(2): the loss is 3 log 2 / 1 match."""
    prior = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.7, 0.7], [0.8, 0.8, 0.9, 0.95]])
    prior = torch.stack([prior, torch.full_like(prior, 0.1)]).reshape(1, 2, 12)
    gt = torch.tensor([[[[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0]]]])
    loc = torch.zeros(1, 12, requires_grad=True)
    conf = torch.zeros(1, 6, requires_grad=True)
    loss = MultiBoxLoss(2, code_type="CENTER_SIZE")(loc, conf, prior, gt)
    assert math.isclose(float(loss.detach()), 3 * math.log(2), rel_tol=1e-6)
    loss.backward()
    assert conf.grad.tolist() == [[0.5, -0.5, -0.5, 0.5, -0.5, 0.5]]  # softmax - one-hot per row
    assert loc.grad.abs().sum() == 0


SSD_TRAIN = CORPUS / "chuanqi305__MobileNet-SSD" / "train.prototxt"


@pytest.mark.skipif(not SSD_TRAIN.is_file(), reason="needs the shared corpus")
def test_mobilenet_ssd_training_net_trains() -> None:
    """The corpus MobileNet-SSD training net (its AnnotatedData tops given as inputs): generated code gives the
    runtime's loss, and SGD steps on one batch lower it (images 2 and 3 have no ground truth)."""
    torch.manual_seed(0)  # the fillers draw from torch's generator
    shapes = {"data": (4, 3, 160, 160), "label": (1, 1, 3, 8)}
    net = prototxt2py.load(str(SSD_TRAIN), phase="TRAIN", input_shapes=shapes)
    x = torch.randn(4, 3, 160, 160)
    label = torch.tensor([[[[0, 3, 0, 0.1, 0.1, 0.45, 0.6, 0], [0, 7, 0, 0.5, 0.3, 0.9, 0.9, 0],
                            [1, 12, 0, 0.2, 0.2, 0.8, 0.7, 0]]]])
    generated = generated_module(net).train()(x, label)  # the generated file computes the same loss
    torch.testing.assert_close(generated, net(x, label)["mbox_loss"], rtol=1e-6, atol=0)
    # small steps (BatchNorm on the last 1x1 maps of a random net makes large ones erratic)
    optimiser = torch.optim.SGD(net.parameters(), lr=1e-5)
    losses = []
    for _ in range(3):
        optimiser.zero_grad()
        loss = net(x, label)["mbox_loss"]
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[0] > losses[1] > losses[2], losses
    assert net.graph.node("mbox_loss").stop_gradient == (2, 3)  # the file's propagate_down


NET = """
input: "loc" input_shape {{ dim: 1 dim: 16 }}
input: "conf" input_shape {{ dim: 1 dim: 8 }}
input: "prior" input_shape {{ dim: 1 dim: 2 dim: 16 }}
input: "gt" input_shape {{ dim: 1 dim: 1 dim: 2 dim: 8 }}
layer {{ name: "loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "gt" top: "loss"
  multibox_loss_param {{ num_classes: 2 {param} }} }}
"""


@pytest.mark.parametrize(("param", "message"), [
    ("use_prior_for_matching: false", "use_prior_for_matching: false .* is not implemented"),
    ("mining_type: HARD_EXAMPLE", "mining_type: HARD_EXAMPLE is not implemented"),
    ("nms_param { nms_threshold: 0.5 }", r"nms_param \(NMS while mining\) is not implemented"),
    ("share_location: false", "negative mining needs share_location"),
    ("do_neg_mining: false", "do_neg_mining False contradicts mining_type MAX_NEGATIVE"),
    ("background_label_id: 2", r"background_label_id 2 must be in \[0, 2\)"),
])
def test_refusals_name_the_layer(param: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError, match=message) as caught:
        prototxt2py.load(read_net_text(textwrap.dedent(NET.format(param=param)), "net.prototxt"))
    assert "loss" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("label", "message"), [
    (0, "ground-truth box has the background label 0"),
    (2, r"ground-truth label 2 is not a class in \[0, 2\)"),
    (1.5, r"ground-truth label 1.5 is not a class"),
])
def test_bad_labels_in_the_data_are_one_error(label: float, message: str) -> None:
    net = prototxt2py.load(read_net_text(textwrap.dedent(NET.format(param="")), "net.prototxt"))
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.7, 0.7]]).repeat(2, 1)
    prior = torch.stack([boxes, torch.full_like(boxes, 0.1)]).reshape(1, 2, 16)
    gt = torch.tensor([[[[0, label, 0, 0.1, 0.1, 0.5, 0.5, 0], [-1] * 8]]])
    with pytest.raises(Prototxt2pyError, match=f"layer 'loss'.*{message}") as caught:
        net(torch.zeros(1, 16), torch.zeros(1, 8), prior, gt)
    assert "\n" not in str(caught.value)


VALUES = st.one_of(st.floats(-2, 2, width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, -1.0]))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from([-1, 0, 1, 2, 7]), st.sampled_from([1, 2, 3, 0, -3, 9]),
                               VALUES, VALUES, VALUES, VALUES, VALUES, st.sampled_from([0, 1])), max_size=6),
       variant=st.sampled_from(range(len(VARIANTS))))
def test_hostile_ground_truth_gives_a_loss_or_one_error(rows: list, variant: int) -> None:
    """Any ground-truth rows (NaN or infinite corners, unknown images, labels outside the classes, padding):
    a loss, or a ValueError of one line; never another exception."""
    o = {**DEFAULTS, **VARIANTS[variant]}
    c = o["num_classes"]
    loc, conf, prior, _ = _case(variant, 3, 12, c, 1 if o["share_location"] else c)
    gt = torch.tensor([list(row) for row in rows] or [[-1.0] * 8])
    try:
        loss = MultiBoxLoss(**o)(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior),
                                 gt.reshape(1, 1, -1, 8).float())
    except ValueError as e:
        assert "\n" not in str(e)
    else:
        assert loss.shape == ()


@pytest.mark.skipif(DEVICE.type == "cpu", reason="needs PROTOTXT2PY_TEST_DEVICE naming another device (a GPU)")
def test_loss_and_gradients_on_the_test_device_equal_the_cpus() -> None:
    """The module on a GPU (``scripts/gpu_checks.sh``): matching and mining run on the CPU from detached copies,
    the losses on the device; the same loss and gradients as on the CPU."""
    o = {**DEFAULTS, **VARIANTS[2]}
    loc, conf, prior, gt = _case(4, 3, 40, o["num_classes"], 1)
    results = []
    for device in (torch.device("cpu"), DEVICE):
        tloc = torch.from_numpy(loc).to(device).requires_grad_()
        tconf = torch.from_numpy(conf).to(device).requires_grad_()
        loss = MultiBoxLoss(**o)(tloc, tconf, torch.from_numpy(prior).to(device),
                                 torch.from_numpy(gt.reshape(1, 1, -1, 8)).to(device))
        loss.backward()
        assert loss.device.type == device.type
        results.append((loss.detach().cpu(), tloc.grad.cpu(), tconf.grad.cpu()))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
