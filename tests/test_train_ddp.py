"""Data-parallel training under torchrun (gloo on CPU): 2 processes of batch B give the weights 1 process of
batch 2B gives (Caffe's multi-GPU rules: rows interleaved over ranks, gradients summed and divided by the
number of ranks, rank 0 snapshots)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py")

from train_util import make_case  # noqa: E402

from prototxt2py.weights import read_caffemodel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _train(folder: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launcher, "-m", "prototxt2py", "train", "solver.prototxt", "--quiet"]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three Python processes importing torch: ~40 s on a 2-core machine, the training itself < 1 s
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path: Path) -> None:
    one = make_case(tmp_path / "one", batch=8, max_iter=12, test_interval=6).parent
    two = make_case(tmp_path / "two", batch=4, max_iter=12, test_interval=6).parent
    r1 = _train(one, 1)
    assert r1.returncode == 0, r1.stderr
    r2 = _train(two, 2)
    assert r2.returncode == 0, r2.stderr
    # rank 0 alone logs and tests: each test line once
    assert r2.stderr.count("Iteration 6, Testing net (#0)") == 1
    assert sorted(p.name for p in (two / "snaps").iterdir()) == ["tiny_iter_12.caffemodel", "tiny_iter_12.solverstate"]
    a = read_caffemodel(one / "snaps/tiny_iter_12.caffemodel")
    b = read_caffemodel(two / "snaps/tiny_iter_12.caffemodel")
    moved = 0.0
    for layer in ("ip1", "ip2"):
        for x, y in zip(a[layer], b[layer], strict=True):
            np.testing.assert_allclose(y.array, x.array, rtol=1e-5, atol=1e-6)
            moved = max(moved, float(np.abs(x.array).max()))
    assert moved > 0
