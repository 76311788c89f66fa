"""Half precision (on the CPU; the golden nets on ``golden.DEVICE``): a module converted with
``.to(torch.bfloat16)``/``.half()``, and ``torch.autocast``.

The inference plan's oneDNN calls are float32 only and have no autocast rule, so under autocast (and for other
dtypes) it must leave them for the layers' own torch ops; otherwise autocast would be silently ignored and every
chain computed in float32. Half-precision results are checked against Caffe's own float32 outputs within that
precision's rounding."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import DEVICE, GOLDEN, assert_close, npz, to_numpy, zoo_net_and_inputs
from test_fusion import NET, X
from test_runtime import build, randomise

from prototxt2py.backends import fusion

#: Relative to the largest output magnitude: float32 -> bfloat16 keeps 8 significant bits, float16 11.
TOLERANCE = {torch.bfloat16: 4e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_the_chains_in_its_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   dtype: torch.dtype) -> None:
    """Every chain of the test net would take oneDNN in float32 (size floor 0); under autocast the results
    come out in autocast's dtype and differ from float32 by its rounding (not by nothing)."""
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 0)
    net = build(tmp_path, NET)
    randomise(net)
    net.eval()
    with torch.no_grad():
        reference = net(X)
        with torch.autocast("cpu", dtype=dtype):
            got = net(X)
    for name in ("ip", "up"):  # an InnerProduct, and a deconvolution after the fused residual chain
        assert got[name].dtype == dtype, name
        scale = float(reference[name].abs().max())
        diff = float((got[name].float() - reference[name]).abs().max())
        assert 0 < diff <= TOLERANCE[dtype] * scale, (name, diff, scale)


ZOO = ["lenet_deploy", "cifar10_quick_deploy", "mtcnn_det1", "mtcnn_det3", "squeezenet_v1_1", "bvlc_googlenet"]


@pytest.mark.parametrize("how", ["autocast", "module"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ZOO)
def test_half_precision_against_caffe(name: str, dtype: torch.dtype, how: str) -> None:
    """Golden zoo nets in half precision (autocast over the float32 module, or the module and inputs converted)
    against real Caffe's float32 outputs, on ``golden.DEVICE``."""
    case = GOLDEN / "zoo" / name
    net, inputs = zoo_net_and_inputs(case)
    net = net.eval().to(DEVICE)
    feed = {k: torch.from_numpy(v).to(DEVICE) for k, v in inputs.items() if k in net.input_names}
    with torch.no_grad():
        if how == "autocast":
            with torch.autocast(DEVICE.type, dtype=dtype):
                blobs = net(**feed)
        else:
            blobs = copy.deepcopy(net).to(dtype)(**{k: v.to(dtype) for k, v in feed.items()})
    want = npz(case / "outputs.npz")
    compared = [blob for blob in blobs if blob in want]
    assert compared
    for blob in compared:
        assert blobs[blob].dtype == dtype
        scale = float(np.abs(want[blob]).max())
        assert_close(to_numpy(blobs[blob].float()), want[blob], 0.0, TOLERANCE[dtype] * scale, f"blob '{blob}'")
