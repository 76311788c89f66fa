"""Runs generated modules where prototxt2py cannot be imported, on golden inputs, and reports per case.

Usage: ``python replay.py JOBS.json RESULT.json``. Each job names a generated ``.py``/``.pt`` pair, the inputs,
the expected outputs and gradients (Caffe's), and tolerances; the result maps each case to ``"ok"`` or the first
mismatch. Run by tests/test_codegen.py in a fresh interpreter (so nothing of the package is in memory).
"""

from __future__ import annotations

import importlib.util
import json
import sys

sys.modules["prototxt2py"] = None  # any import of the package now fails: the generated code must not need it

import numpy as np  # noqa: E402
import torch  # noqa: E402


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def close(got: torch.Tensor, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    g = got.detach().double().numpy()
    if g.shape != want.shape:
        raise AssertionError(f"{what}: shape {g.shape}, Caffe {want.shape}")
    if not np.allclose(g, want, rtol=rtol, atol=atol, equal_nan=True):
        err = float((np.abs(g - want) - rtol * np.abs(want)).max())
        raise AssertionError(f"{what}: max excess error {err:.3g} (rtol {rtol}, atol {atol})")


def run(job: dict) -> str:
    spec = importlib.util.spec_from_file_location(job["module"], job["py"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = getattr(mod, job["class"])()
    net.load_state_dict(torch.load(job["pt"], weights_only=True), strict=True)
    net.train(job["phase"] == "TRAIN")
    inputs = load(job["inputs"])
    feed = []
    for name in job["input_names"]:
        t = torch.from_numpy(inputs[name].copy())
        if f"blob/{name}" in job["grads"]:
            t.requires_grad_(True)
        feed.append(t)
    out = net(*feed)
    outs = out if isinstance(out, dict) else {job["output_names"][0]: out}
    expected = load(job["expected"])
    rtol, atol = job["rtol"], job["atol"]
    for name in job["output_names"]:
        if name in expected:
            close(outs[name], expected[name], rtol, atol, f"output '{name}'")
    if not job["grads"]:
        return "ok"
    loss = None
    for blob, w in job["loss_weights"].items():
        term = outs[blob].sum() * w
        loss = term if loss is None else loss + term
    diffs = load(job["top_diffs"]) if job["top_diffs"] else {}
    for blob, diff in diffs.items():
        term = (outs[blob] * torch.from_numpy(diff)).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    params = dict(net.named_parameters())
    want = load(job["grads_file"])
    for key, target in job["grads"].items():
        if key.startswith("blob/"):
            got = feed[job["input_names"].index(key[5:])].grad
        else:
            got = params[target].grad
        got = torch.zeros(want[key].shape) if got is None else got
        close(got, want[key], rtol, atol, f"gradient {key}")
    return "ok"


def main() -> None:
    jobs = json.loads(open(sys.argv[1]).read())
    results = {}
    for job in jobs:
        try:
            results[job["case"]] = run(job)
        except Exception as e:  # reported per case by the test
            results[job["case"]] = f"{type(e).__name__}: {e}"
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
