"""Per-layer and mixed-net conformance against Caffe: every blob, parameter updates and gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from golden import assert_close, case_params, meta, npz

import prototxt2py

CASES = case_params("layers") + case_params("mixed")

# Gradients deliberately not compared (forward still is). HingeLoss's Caffe backward reads margins that its
# forward pass stores in the bottom's diff buffer; the golden protocol zeroes all diffs between forward and
# backward, which erases them, so the recorded gradient is 0. Caffe's own solver (forward then backward
# without clearing) and its gradient checker use the true hinge subgradient, which we reproduce and test in
# tests/test_layers_losses.py.
GRADIENT_EXCLUDED = {
    "hinge_l1": "golden diff erased by the protocol (see above)",
    "hinge_l1_scaled": "golden diff erased by the protocol (see above)",
    "hinge_l2": "golden diff erased by the protocol (see above)",
}


def run_golden_case(case: Path) -> None:
    m = meta(case)
    rtol, atol = m.get("rtol", 1e-5), m.get("atol", 1e-6)
    weights = case / "weights.caffemodel"
    net = prototxt2py.load(
        case / "net.prototxt",
        weights=weights if weights.exists() else None,
        phase=m.get("phase", "TEST"),
        stages=m.get("stages", ()),
        level=m.get("level", 0),
    )
    inputs = npz(case / "inputs.npz")
    grads = npz(case / "grads.npz") if m.get("backward") and case.name not in GRADIENT_EXCLUDED else {}
    feed = {}
    for name, arr in inputs.items():
        t = torch.from_numpy(arr.copy())
        if f"blob/{name}" in grads:
            t.requires_grad_(True)
        feed[name] = t
    blobs = net(**feed, all_blobs=True)

    expected = npz(case / "outputs.npz")
    for name, want in expected.items():
        assert name in blobs, f"blob '{name}' missing from the runtime's blobs"
        assert_close(blobs[name].detach().numpy(), want, rtol, atol, f"blob '{name}'")

    for key, want in npz(case / "params_after.npz").items():
        layer, i = key.rsplit("/", 1)
        module = net.layer(layer)
        assert_close(getattr(module, module.blob_names[int(i)]).detach().numpy(), want, rtol, atol, f"param {key}")

    if not grads:
        return
    loss = None
    for blob, w in m.get("loss_weights", {}).items():
        term = blobs[blob].sum() * w
        loss = term if loss is None else loss + term
    for blob, diff in npz(case / "top_diffs.npz").items():
        term = (blobs[blob] * torch.from_numpy(diff)).sum()
        loss = term if loss is None else loss + term
    assert loss is not None, "backward case without loss weights or top diffs"
    loss.backward()
    for key, want in grads.items():
        kind, _, rest = key.partition("/")
        if kind == "blob":
            got = feed[rest].grad
        else:
            layer, i = rest.rsplit("/", 1)
            module = net.layer(layer)
            got = getattr(module, module.blob_names[int(i)]).grad
        got = np.zeros_like(want) if got is None else got.detach().numpy()
        assert_close(got, want, rtol, atol, f"gradient {key}")


@pytest.mark.parametrize("case", CASES)
def test_layer_case(case: Path) -> None:
    run_golden_case(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in GRADIENT_EXCLUDED])
def test_excluded_gradients_are_the_protocol_artifact_and_ours_are_dl_dx(case: Path) -> None:
    """For each case whose gradient is not compared: the stored gradient is all zeros (the erased diff), while
    the README defines it as dL/dx with L = sum of the loss blobs; ours equals dL/dx measured by central
    differences in float64 on the case's own inputs."""
    m = meta(case)
    stored = npz(case / "grads.npz")
    assert stored and all(not g.any() for g in stored.values()), "the golden gradient is no longer all zeros"
    net = prototxt2py.load(case / "net.prototxt", phase=m.get("phase", "TEST")).double()
    inputs = {k: torch.from_numpy(v.astype(np.float64)) for k, v in npz(case / "inputs.npz").items()}
    weights = m["loss_weights"]

    def loss(**feed: torch.Tensor) -> torch.Tensor:
        blobs = net(**feed, all_blobs=True)
        return sum(blobs[b].sum() * w for b, w in weights.items())

    for key in stored:
        name = key.removeprefix("blob/")
        x = inputs[name].clone().requires_grad_(True)
        loss(**{**inputs, name: x}).backward()
        numeric, h = torch.zeros_like(x), 1e-6
        for i in range(x.numel()):
            step = torch.zeros(x.numel(), dtype=x.dtype)
            step[i] = h
            plus = float(loss(**{**inputs, name: inputs[name] + step.view_as(x)}))
            minus = float(loss(**{**inputs, name: inputs[name] - step.view_as(x)}))
            numeric.view(-1)[i] = (plus - minus) / (2 * h)
        assert x.grad.abs().max() > 0.01  # a real, non-zero gradient
        torch.testing.assert_close(x.grad, numeric, rtol=1e-5, atol=1e-7)
