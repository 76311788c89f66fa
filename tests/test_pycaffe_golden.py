"""The golden suites replayed through the pycaffe API exactly as a pycaffe user writes it: input ``.data``,
``forward()``, ``net.blobs``; seeded diffs, ``backward()``, input ``.diff`` and ``net.params[...][i].diff``."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from golden import SHARED, SLOW_PARAMS, assert_close, case_params, cases, meta, npz
from test_golden_nets import ATOL_MEASURED, SLOW_ZOO

from prototxt2py import caffe


def _phase(m: dict) -> int:
    return caffe.TRAIN if m.get("phase") == "TRAIN" else caffe.TEST


def _feed(net: caffe.Net, inputs: dict[str, np.ndarray]) -> None:
    """Write the inputs as pycaffe scripts do, reshaping blobs whose shape differs first."""
    reshaped = False
    for name, value in inputs.items():
        if tuple(net.blobs[name].shape) != value.shape:
            net.blobs[name].reshape(*value.shape)
            reshaped = True
    if reshaped:
        net.reshape()
    for name, value in inputs.items():
        net.blobs[name].data[...] = value


@pytest.mark.parametrize("case", case_params("layers") + case_params("mixed"))
def test_layer_case_through_pycaffe(case: Path) -> None:
    m = meta(case)
    rtol, atol = m.get("rtol", 1e-5), m.get("atol", 1e-6)
    weights = case / "weights.caffemodel"
    net = caffe.Net(str(case / "net.prototxt"), _phase(m), weights=str(weights) if weights.exists() else None,
                    stages=m.get("stages"), level=m.get("level", 0))
    _feed(net, npz(case / "inputs.npz"))
    net.forward()
    for name, want in npz(case / "outputs.npz").items():
        assert_close(net.blobs[name].data, want, rtol, atol, f"blob '{name}'")
    for key, want in npz(case / "params_after.npz").items():
        layer, i = key.rsplit("/", 1)
        assert_close(net.params[layer][int(i)].data, want, rtol, atol, f"param {key}")
    if not m.get("backward"):
        return
    # The golden backward protocol: diffs zeroed, loss tops seeded with their weight, outputs with top_diffs.
    for blob in net.blobs.values():
        blob.diff[...] = 0
    net.clear_param_diffs()
    for name, weight in m.get("loss_weights", {}).items():
        net.blobs[name].diff[...] = weight
    for name, diff in npz(case / "top_diffs.npz").items():
        net.blobs[name].diff[...] = diff
    net.backward()
    for key, want in npz(case / "grads.npz").items():
        kind, _, rest = key.partition("/")
        if kind == "blob":
            got = net.blobs[rest].diff
        else:
            layer, i = rest.rsplit("/", 1)
            got = net.params[layer][int(i)].diff
        assert_close(got, want, rtol, atol, f"gradient {key}")


@pytest.mark.parametrize("case", case_params("nets"))
def test_net_case_through_pycaffe(case: Path) -> None:
    m = meta(case)
    net = caffe.Net(str(SHARED / m["prototxt"]), caffe.TEST, weights=str(SHARED / m["weights"]))
    _feed(net, npz(case / "inputs.npz"))
    net.forward()
    for name, want in npz(case / "outputs.npz").items():
        assert_close(net.blobs[name].data, want, m.get("rtol", 1e-5), m.get("atol", 1e-6), f"blob '{name}'")


def _zoo_weights(net: caffe.Net, seed: int) -> None:
    """The golden README's ``zoo-recipe-1``, written against ``net.params`` as the README states it."""
    seen: set[int] = set()
    for layer_name, blobs in net.params.items():
        layer_type = net.layer_dict[layer_name].type
        for i, blob in enumerate(blobs):
            if id(blob) in seen:  # shared with an earlier layer through param { name }
                continue
            seen.add(id(blob))
            shape = tuple(blob.shape)
            rng = np.random.default_rng([seed, zlib.crc32(layer_name.encode()), i])
            if layer_type == "BatchNorm" and i == 2:
                value = np.ones(shape)
            elif len(shape) >= 2:
                value = rng.standard_normal(shape) * math.sqrt(1.0 / int(np.prod(shape[1:])))
            else:
                value = rng.uniform(0.5, 1.5, shape)
            blob.data[...] = value.astype(np.float32)


# Beyond the runtime's slow zoo nets: building a pycaffe Net fills every blob before the recipe overwrites it, so
# nets with many parameters (AlexNet-sized) are slow here too.
SLOW_PYCAFFE_ZOO = SLOW_ZOO | {c.name for c in cases("zoo") if meta(c).get("total_params", 0) > SLOW_PARAMS}


@pytest.mark.parametrize("case", case_params("zoo", slow=SLOW_PYCAFFE_ZOO))
def test_zoo_case_through_pycaffe(case: Path) -> None:
    m = meta(case)
    net = caffe.Net(str(SHARED / m["prototxt"]), caffe.TEST)
    _zoo_weights(net, m["seed"])
    inputs = npz(case / "inputs.npz")
    if not inputs:
        shapes = {**m.get("declared_input_shapes", {}), **m.get("run_input_shapes", {})}
        rng = np.random.default_rng(m["seed"])
        inputs = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in m["inputs"]}
    _feed(net, inputs)
    net.forward()
    atol = ATOL_MEASURED.get(case.name, m.get("atol", 1e-6))
    for name, want in npz(case / "outputs.npz").items():
        assert_close(net.blobs[name].data, want, m.get("rtol", 1e-5), atol, f"blob '{name}'")
