"""benchmarks/training.py --smoke: both contenders train LeNet and CIFAR-10 quick from HDF5 data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("h5py")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "training.py"
CORPUS_NET = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "BVLC__caffe" / "examples" / "mnist"


@pytest.mark.slow  # torch.optim imports torch._dynamo (seconds) and both contenders build and train two nets
@pytest.mark.skipif(not CORPUS_NET.is_dir(), reason="shared corpus absent")
def test_training_benchmark_smoke(capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("training_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--smoke"])
    assert [name for name, _, _ in results] == ["LeNet", "CIFAR-10 quick"]
    assert all(ours > 0 and hand > 0 for _, ours, hand in results)
    out = capsys.readouterr().out
    assert "ours img/s" in out and "ratio" in out
