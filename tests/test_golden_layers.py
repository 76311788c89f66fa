"""Per-layer and mixed-net conformance against Caffe: every blob, parameter updates and gradients (on
``golden.DEVICE``: the CPU, or a GPU under ``PROTOTXT2PY_TEST_DEVICE=cuda``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from golden import DEVICE, assert_close, case_params, meta, npz, to_numpy

import prototxt2py

CASES = case_params("layers") + case_params("mixed")

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
    ).to(DEVICE)
    inputs = npz(case / "inputs.npz")
    grads = npz(case / "grads.npz") if m.get("backward") else {}
    feed = {}
    for name, arr in inputs.items():
        t = torch.from_numpy(arr.copy()).to(DEVICE)
        if f"blob/{name}" in grads:
            t.requires_grad_(True)
        feed[name] = t
    blobs = net(**feed, all_blobs=True)

    expected = npz(case / "outputs.npz")
    for name, want in expected.items():
        assert name in blobs, f"blob '{name}' missing from the runtime's blobs"
        assert_close(to_numpy(blobs[name]), want, rtol, atol, f"blob '{name}'")

    for key, want in npz(case / "params_after.npz").items():
        layer, i = key.rsplit("/", 1)
        module = net.layer(layer)
        assert_close(to_numpy(getattr(module, module.blob_names[int(i)])), want, rtol, atol, f"param {key}")

    if not grads:
        return
    loss = None
    for blob, w in m.get("loss_weights", {}).items():
        term = blobs[blob].sum() * w
        loss = term if loss is None else loss + term
    for blob, diff in npz(case / "top_diffs.npz").items():
        term = (blobs[blob] * torch.from_numpy(diff).to(DEVICE)).sum()
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
        got = np.zeros_like(want) if got is None else to_numpy(got)
        assert_close(got, want, rtol, atol, f"gradient {key}")


@pytest.mark.parametrize("case", CASES)
def test_layer_case(case: Path) -> None:
    run_golden_case(case)
