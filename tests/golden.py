"""Helpers to run the shared golden cases (computed by real Caffe 1.0) against prototxt2py."""

from __future__ import annotations

import csv
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import Prototxt2pyError

#: The shared corpus and golden data: ``../shared`` beside the checkout, or where ``PROTOTXT2PY_SHARED`` says (a
#: GPU machine gets a copy inside the checkout: scripts/gpu_checks.sh).
SHARED = Path(os.environ.get("PROTOTXT2PY_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
#: Where the golden cases run: ``PROTOTXT2PY_TEST_DEVICE=cuda`` runs them on a GPU, inputs and blobs moved there
#: and results compared on the CPU.
DEVICE = torch.device(os.environ.get("PROTOTXT2PY_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":  # TensorFloat-32 convolutions (cuDNN's default) round to 10 bits: not Caffe's float32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
GOLDEN = SHARED / "golden"
CORPUS = SHARED / "corpus"


def cases(suite: str) -> list[Path]:
    """Case folders of a golden suite (folders holding a case.json), sorted; [] if the suite is absent."""
    root = GOLDEN / suite
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob("*/case.json"))


def case_params(suite: str, slow: set[str] = frozenset()) -> list:
    """pytest params for a suite, with ids = case names and the ``slow`` mark on the named cases."""
    out = []
    for path in cases(suite):
        marks = [pytest.mark.slow] if path.name in slow else []
        out.append(pytest.param(path, id=path.name, marks=marks))
    return out


def meta(case: Path) -> dict:
    return json.loads((case / "case.json").read_text())


def npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A result, wherever it was computed, as a NumPy array."""
    return t.detach().cpu().numpy()


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, Caffe has {want.shape}"
    if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        err = np.abs(got - want) - rtol * np.abs(want)
        i = np.unravel_index(np.argmax(err), err.shape) if err.ndim else ()
        raise AssertionError(
            f"{what}: max excess error {float(err.max()):.3g} at {i}: got {got[i]!r}, Caffe {want[i]!r} "
            f"(rtol {rtol}, atol {atol})"
        )


def detection_rows(out: np.ndarray, opencv: bool) -> np.ndarray:
    """The detections of a DetectionOutput top as ``(K, 7)`` rows, without the filler rows: Caffe (and we)
    write one ``[i, -1, ..., -1]`` row per image when nothing is detected, OpenCV pads with zero rows."""
    rows = out.reshape(-1, 7)
    if opencv:
        return rows[(rows[:, 1:] != 0).any(axis=1)]
    return rows[~(rows[:, 1:] == -1).all(axis=1)]


def assert_same_detections(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Every row of ``got`` matches its own row of ``want`` (same image and label, values within 1e-4). Rows are
    paired, not compared in order: OpenCV orders rows by score where Caffe orders them by label, and two
    implementations may swap boxes whose scores differ in the last bit."""
    assert len(got) == len(want), f"{what}: {len(got)} detections, the reference has {len(want)}"
    free = list(range(len(want)))
    for row in got:
        same = [j for j in free if want[j, 0] == row[0] and want[j, 1] == row[1]]
        err = [float(np.abs(want[j, 2:] - row[2:]).max()) for j in same]
        assert err and min(err) <= 1e-4, f"{what}: no reference detection matches {row.tolist()}"
        free.remove(same[int(np.argmin(err))])


def recipe_weights(net, seed: int) -> None:
    """The golden README's ``zoo-recipe-1``: seeded per (layer, blob index), float64 then float32."""
    with torch.no_grad():
        for node in net.graph.nodes:
            module = net.layer(node.name)
            for i, name in enumerate(getattr(module, "blob_names", ())):
                if i < len(node.params) and node.params[i].owner is not None:
                    continue
                blob = getattr(module, name)
                shape = tuple(blob.shape)
                rng = np.random.default_rng([seed, zlib.crc32(node.name.encode()), i])
                if node.type == "BatchNorm" and i == 2:
                    value = np.ones(shape)
                elif len(shape) >= 2:
                    value = rng.standard_normal(shape) * math.sqrt(1.0 / int(np.prod(shape[1:])))
                else:
                    value = rng.uniform(0.5, 1.5, shape)
                blob.copy_(torch.from_numpy(value.astype(np.float32)))


def zoo_net_and_inputs(case: Path):
    """A zoo case's net with the recipe weights, and its recipe input (``inputs.npz`` where stored)."""
    m = meta(case)
    inputs = npz(case / "inputs.npz")
    if not inputs:
        shapes = {**m.get("declared_input_shapes", {}), **m.get("run_input_shapes", {})}
        rng = np.random.default_rng(m["seed"])
        inputs = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in m["inputs"]}
    net = prototxt2py.load(SHARED / m["prototxt"], input_shapes={k: list(v.shape) for k, v in inputs.items()})
    recipe_weights(net, m["seed"])
    return net, inputs


# -- corpus deploy nets (no golden outputs: backends are compared with each other) ---------------------------
_ROWS = list(csv.DictReader((CORPUS / "MANIFEST.tsv").open(), delimiter="\t")) if CORPUS.is_dir() else []
DEPLOY = [r["file"] for r in _ROWS if r["kind"] == "deploy" and r["format"] in ("V0", "V1", "V2")]
#: A corpus net with more multiply-accumulates or parameters than this is `slow` (weights are drawn, the net
#: run more than once).
SLOW_MACS, SLOW_PARAMS = 300_000_000, 10_000_000


def corpus_deploy_params() -> list:
    """pytest params: every corpus deploy prototxt, the big ones marked ``slow``."""
    out = []
    for rel in DEPLOY:
        try:
            g = prototxt2py.graph(CORPUS / rel)
            big = g.total_macs > SLOW_MACS or g.total_params > SLOW_PARAMS
        except Prototxt2pyError:
            big = False
        out.append(pytest.param(rel, id=rel, marks=[pytest.mark.slow] if big else []))
    return out


def random_inputs(graph: prototxt2py.Graph) -> dict[str, np.ndarray]:
    """N(0, 1) inputs, except ROI lists (bottom 1 of an ROI pooling layer): image 0, corners in [0, 64)."""
    rng = np.random.default_rng(0)
    roi_inputs = {n.inputs[1] for n in graph.nodes if n.type in ("ROIPooling", "PSROIPooling")}
    feed = {}
    for vid in graph.inputs:
        shape = graph.values[vid].shape
        if vid in roi_inputs:
            corners = np.sort(rng.uniform(0, 64, (shape[0], 2, 2)), axis=1).reshape(shape[0], 4)
            value = np.concatenate([np.zeros((shape[0], 1)), corners], axis=1).reshape(shape)
        else:
            value = rng.standard_normal(shape)
        feed[graph.values[vid].blob] = value.astype(np.float32)
    return feed


#: Corpus nets whose blobs together exceed this many bytes run at batch 1: the tests compare every blob of
#: two implementations, and some files declare batch 10 at 480x480 (UNet: 14 GB, more than the CI machine has).
BIG_NET_BYTES = 1 << 30


def _batch_one_if_big(rel: str, g: prototxt2py.Graph) -> prototxt2py.Graph:
    total = sum(4 * math.prod(v.shape) for v in g.values.values() if v.shape is not None)
    shapes = {g.values[vid].blob: g.values[vid].shape for vid in g.inputs}
    if total <= BIG_NET_BYTES or not all(s and s[0] > 1 for s in shapes.values()):
        return g
    try:
        return prototxt2py.graph(CORPUS / rel, input_shapes={b: (1, *s[1:]) for b, s in shapes.items()})
    except Prototxt2pyError:  # the batch is baked into the net (TSM's Reshape to (8, ...)): keep the file's
        return g


def corpus_net_and_inputs(rel: str, data_dependent_outputs: bool = False):
    """A corpus deploy net on the PyTorch runtime with the recipe weights (seed 0) and random inputs; skips the
    test where the file alone does not give an IR, shapes or a runtime module. ``data_dependent_outputs``:
    accept net outputs whose shape depends on the data where the layer's ONNX mapping computes them
    (DetectionOutput)."""
    try:
        g = prototxt2py.graph(CORPUS / rel)
        g = _batch_one_if_big(rel, g)
    except Prototxt2pyError as e:
        pytest.skip(f"no IR: {e}")
    unresolved = {name: note for name, note in g.unresolved().items()
                  if not (data_dependent_outputs and g.node(name).spec.onnx_top_shapes(g.node(name)) is not None)}
    if unresolved:
        pytest.skip(f"shapes not inferable from the file alone: {unresolved}")
    try:
        net = prototxt2py.load(g)
    except Prototxt2pyError as e:
        pytest.skip(f"the PyTorch runtime cannot build it: {e}")
    recipe_weights(net, 0)
    with torch.no_grad():  # the recipe draws fork BN statistics (1, C, 1, 1) like weights: keep variances valid
        for name, blob in net.named_buffers():
            if name.endswith(".variance"):
                blob.abs_()
    return net, random_inputs(net.graph)


def generated_module(net) -> torch.nn.Module:
    """``net``'s generated Python source, executed, with ``net``'s weights loaded (strict), in eval mode."""
    from prototxt2py.backends.codegen import generate

    code = generate(net.graph)
    namespace: dict = {}
    exec(compile(code.source, "<generated>", "exec"), namespace)  # noqa: S102 - our own generated code, in a test
    module = namespace[code.class_name]().eval()
    state = net.state_dict()
    module.load_state_dict({new: state[old] for old, new in code.keys.items()}, strict=True)
    return module
