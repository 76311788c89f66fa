"""Loss layers and Accuracy where the golden suite has no case: clamps below Caffe's log floors, the
gradient at exact kinks, legacy ``normalize``, ties in Accuracy, label truncation, rejected configurations,
and HingeLoss's gradient as Caffe's solver computes it (see ``test_hinge_gradient``).

Expected values are Caffe's Forward_cpu/Backward_cpu formulas written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import GraphError, UnsupportedLayerError
from prototxt2py.reader import read_net_text

FLT_MIN = np.float32(1.1754943508222875e-38)


def load(shapes: dict[str, tuple[int, ...]], layer: str) -> prototxt2py.CaffeNet:
    tops = " ".join(f'top: "{n}"' for n in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes.values())
    text = f'name: "t"\nlayer {{ name: "in" type: "Input" {tops} input_param {{ {dims} }} }}\n{layer}\n'
    return prototxt2py.load(read_net_text(text))


def loss_and_grad(layer: str, x: np.ndarray, label: np.ndarray, top: str = "loss") -> tuple[float, np.ndarray]:
    """Loss value and d(loss)/dx (top diff 1, Caffe's default loss weight)."""
    net = load({"x": x.shape, "label": label.shape}, layer)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = net(x=xt, label=torch.from_numpy(label.copy()), all_blobs=True)
    out[top].backward()
    return float(out[top].detach()), xt.grad.numpy()


def test_hinge_gradient() -> None:
    """Caffe's HingeLoss backward reads the margins its forward wrote into bottom[0]'s diff, so the gradient
    is the hinge subgradient (forward then backward, nothing cleared in between, as in Solver::Step); kinks
    included (margin exactly 0 gives sign(0) = 0)."""
    x = np.array([[1.0, -1.0, 0.3, -2.0], [-0.5, 0.2, 2.0, -1.5], [0.0, 0.7, -0.2, 3.0]], dtype=np.float32)
    label = np.array([0, 2, 3], dtype=np.float32)
    s = np.ones_like(x)
    s[np.arange(3), label.astype(int)] = -1
    margin = np.maximum(0, 1 + s * x)
    for norm, want_loss, want_grad in (
        ("L1", margin.sum() / 3, s * np.sign(margin) / 3),
        ("L2", (margin**2).sum() / 3, 2 * s * margin / 3),
    ):
        loss, grad = loss_and_grad(
            f'layer {{ name: "l" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" '
            f"hinge_loss_param {{ norm: {norm} }} }}",
            x,
            label,
        )
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)
    assert grad[0, 0] == 0 and grad[0, 1] == 0  # both on the kink


def test_softmax_loss_floor_and_legacy_normalize() -> None:
    """A probability that underflows to 0 costs -log(FLT_MIN) in the forward pass while the gradient stays
    p - onehot; ``normalize: false`` (no normalization field) divides by the batch size only."""
    x = np.array([[[0.0], [-200.0]], [[1.0], [2.0]]], dtype=np.float32).repeat(3, axis=2)  # (2, 2, 3)
    label = np.array([[1, 1, 1], [0, 1, 0]], dtype=np.float32)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.stack([label == 0, label == 1], axis=1).astype(np.float32)
    nll = -np.log(np.maximum((p * onehot).sum(axis=1), FLT_MIN))
    for param, divisor in (("normalize: false", 2), ("normalize: true", 6), ("normalization: NONE", 1)):
        loss, grad = loss_and_grad(
            f'layer {{ name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
            f"loss_param {{ {param} }} }}",
            x,
            label,
        )
        np.testing.assert_allclose(loss, nll.sum() / divisor, rtol=1e-6)
        np.testing.assert_allclose(grad, (p - onehot) / divisor, rtol=1e-6, atol=1e-7)
    assert nll[0, 0] == pytest.approx(87.33654, rel=1e-6)


def test_sigmoid_cross_entropy_at_zero_and_soft_targets() -> None:
    """At x == 0 Caffe's gradient is sigmoid(0) - t = 0.5 - t (autograd of its stable form would give 1 - t);
    targets are used as floats, the ignore test truncates them."""
    x = np.array([[0.0, 0.0, 1.5, -2.0], [0.0, -0.3, 4.0, 0.5]], dtype=np.float32)
    t = np.array([[1.0, 0.0, 0.3, -1.0], [0.25, 1.0, 0.0, -1.0]], dtype=np.float32)
    keep = t != -1
    per = -(x * (t - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
    loss, grad = loss_and_grad(
        'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "label" top: "loss" '
        "loss_param { ignore_label: -1 } }",
        x,
        t,
    )
    np.testing.assert_allclose(loss, (per * keep).sum() / 2, rtol=1e-6)  # BATCH_SIZE by default
    want = np.where(keep, 1 / (1 + np.exp(-x)) - t, 0) / 2
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)
    assert grad[0, 0] == pytest.approx(-0.25)


def test_multinomial_logistic_below_floor() -> None:
    """Probabilities under kLOG_THRESHOLD (1e-20) are clamped in the loss and in the gradient's divisor."""
    x = np.array([[0.0, 1.0], [0.25, 0.75]], dtype=np.float32)
    label = np.array([0, 1], dtype=np.float32)
    loss, grad = loss_and_grad(
        'layer { name: "l" type: "MultinomialLogisticLoss" bottom: "x" bottom: "label" top: "loss" }', x, label
    )
    np.testing.assert_allclose(loss, (-np.log(1e-20) - np.log(0.75)) / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, [[-0.5 / 1e-20, 0.0], [0.0, -0.5 / 0.75]], rtol=1e-6)


def test_contrastive_label_truncation() -> None:
    """Similarity is static_cast<int>(y) != 0: 0.5 is a dissimilar pair, -1 a similar one."""
    a = np.array([[0.5, 0.0], [1.0, 1.0], [0.2, 0.1]], dtype=np.float32)
    b = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    y = np.array([0.5, -1.0, 0.0], dtype=np.float32)
    net = load({"a": a.shape, "b": b.shape, "y": y.shape},
               'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "loss" }')
    at = torch.from_numpy(a).requires_grad_(True)
    loss = net(a=at, b=torch.from_numpy(b), y=torch.from_numpy(y))["loss"]
    loss.backward()
    d = np.sqrt(((a - b) ** 2).sum(axis=1))
    want = (max(1 - d[0], 0) ** 2 + d[1] ** 2 + max(1 - d[2], 0) ** 2) / 3 / 2
    np.testing.assert_allclose(float(loss.detach()), want, rtol=1e-6)
    coef = np.array([-(1 - d[0]) / (d[0] + 1e-4), 1.0, -(1 - d[2]) / (d[2] + 1e-4)])
    np.testing.assert_allclose(at.grad.numpy(), coef[:, None] * (a - b) / 3, rtol=1e-5)


def test_accuracy_ties_and_per_class() -> None:
    """A score tied with the true class's counts as better (Caffe's >=), so a tie at the top is a miss; a
    class with no (non-ignored) sample has per-class accuracy 0."""
    x = np.array([[1.0, 1.0, 0.0], [0.2, 0.9, 0.1], [0.5, 0.4, 0.3], [0.0, 0.0, 0.0]], dtype=np.float32)
    label = np.array([0, 1, 7, 1], dtype=np.float32)  # 7 is ignored
    layer = ('layer {{ name: "a" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "per" '
             "accuracy_param {{ ignore_label: 7 top_k: {k} }} }}")
    for k, acc, per in ((1, 1 / 3, [0.0, 0.5, 0.0]), (2, 2 / 3, [1.0, 0.5, 0.0]), (3, 1.0, [1.0, 1.0, 0.0])):
        out = load({"x": x.shape, "label": label.shape}, layer.format(k=k))(x=torch.from_numpy(x),
                                                                          label=torch.from_numpy(label))
        assert out["acc"].shape == () and float(out["acc"]) == np.float32(acc)
        np.testing.assert_array_equal(out["per"].numpy(), np.array(per, dtype=np.float32))
        assert not out["acc"].requires_grad


def test_infogain_prob_top() -> None:
    """The optional second top is the softmax; Caffe never reads its diff. Two loss weights are required."""
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    h = np.random.default_rng(2).uniform(0, 1, (4, 4)).astype(np.float32)
    label = np.array([3, 0, 2], dtype=np.float32)
    net = load({"x": x.shape, "label": label.shape, "H": h.shape},
               'layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" '
               'top: "prob" loss_weight: 1 loss_weight: 0 }')
    xt = torch.from_numpy(x).requires_grad_(True)
    out = net(x=xt, label=torch.from_numpy(label), H=torch.from_numpy(h))
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["prob"].numpy(), p, rtol=1e-6)
    rows = h[label.astype(int)]
    np.testing.assert_allclose(float(out["loss"].detach()), -(rows * np.log(p)).sum() / 3, rtol=1e-6)
    (out["loss"] + out["prob"].sum()).backward()
    np.testing.assert_allclose(xt.grad.numpy(), (p * rows.sum(axis=1, keepdims=True) - rows) / 3, rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize(
    ("layer", "error", "match"),
    [
        ('type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob"', GraphError, "second top"),
        ('type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss"', GraphError, "source"),
        ('type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss" infogain_loss_param { source: "h.bin" }',
         UnsupportedLayerError, "h.bin"),
        ('type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "x" top: "loss" loss_param { normalize: true }',
         GraphError, "deprecated"),
    ],
)
def test_rejected_configurations(layer: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        load({"x": (2, 2), "label": (2,)}, f'layer {{ name: "bad" {layer} }}')
    assert "bad" in str(info.value)
