"""The README's end-to-end demo (examples/digits/run.py), short: 20 iterations on 200 training digits.

The same script and commands as the README's full run (convert-imageset -> compute-image-mean -> train -> test
-> deploy -> convert --to onnx -> onnxruntime), checked against what each step must have produced: the LMDB
records against the PNG files resized by OpenCV, the mean file against numpy's mean of those images, a test
accuracy far above chance, the ONNX file's outputs against the PyTorch runtime's and its accuracy against
`prototxt2py test`'s on the same digits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn")
pytest.importorskip("lmdb")
pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")


def _demo():
    spec = importlib.util.spec_from_file_location("digits_demo", ROOT / "examples" / "digits" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(db: Path) -> list[tuple[bytes, bytes]]:
    import lmdb

    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


def _resized(images: Path, items: list[tuple[str, int]]) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(cv2.imread(str(images / p), cv2.IMREAD_GRAYSCALE), (28, 28),
                                interpolation=cv2.INTER_LINEAR) for p, _ in items])


def test_digits_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prototxt2py.data.datum import read_mean
    from prototxt2py.proto import caffe_pb2

    demo = _demo()
    r = demo.run(tmp_path, iterations=20, train_images=200, test_images=120)
    out = capsys.readouterr().out
    train, test = r["train"], r["test"]
    assert len(train) == 200 and len(test) == 120
    assert {label for _, label in train} == set(range(10))

    # convert-imageset: one Datum per listed image, Caffe's keys, 1x28x28 pixels = OpenCV's resize of the PNG
    records = _records(tmp_path / "digits_train_lmdb")
    assert len(records) == len(train)
    assert len(_records(tmp_path / "digits_test_lmdb")) == len(test)
    by_path = dict(train)
    pixels = _resized(tmp_path / "images", train)
    index = {p: i for i, (p, _) in enumerate(train)}
    for key, value in records[:10]:
        path = key.decode()[9:]  # %08d_path
        d = caffe_pb2.Datum.FromString(value)
        assert (d.channels, d.height, d.width, d.label) == (1, 28, 28, by_path[path])
        assert np.array_equal(np.frombuffer(d.data, np.uint8).reshape(28, 28), pixels[index[path]])
    assert [k.decode()[9:] for k, _ in records] != [p for p, _ in train]  # --shuffle changed the order

    # compute-image-mean: the training images' mean, 1x28x28
    mean = read_mean(str(tmp_path / "digits_mean.binaryproto"))
    assert mean.shape == (1, 28, 28)
    np.testing.assert_allclose(mean[0], pixels.astype(np.float64).mean(axis=0), rtol=0, atol=1e-4)

    # train + test: a snapshot of the last iteration, an accuracy far above chance (0.1)
    assert r["weights"].is_file() and r["weights"].name == "lenet_digits_iter_20.caffemodel"
    assert r["weights"].with_suffix(".solverstate").is_file()
    assert r["accuracy"] > 0.5, out

    # ONNX in onnxruntime = the PyTorch runtime; the same accuracy as `prototxt2py test` on the same digits
    assert r["onnx_prob"].shape == (120, 10)
    np.testing.assert_allclose(r["onnx_prob"].sum(axis=1), 1.0, atol=1e-5)
    assert r["max_diff"] < 1e-5
    np.testing.assert_allclose(r["onnx_prob"], r["runtime_prob"], rtol=0, atol=1e-5)
    assert abs(r["onnx_accuracy"] - r["accuracy"]) < 1e-6
    commands = [line[2:] for line in out.splitlines() if line.startswith("$ prototxt2py ")]
    assert [c.split()[1] for c in commands] == ["convert-imageset", "convert-imageset", "compute-image-mean", "train",
                                               "test", "deploy", "convert"]
    # the README shows these commands as the full run gives them (1000 iterations, 3 test batches)
    readme = (ROOT / "README.md").read_text()
    for command in commands:
        full = command.replace(" --iterations 20", "").replace("_iter_20.", "_iter_1000.")
        full = full.replace("--iterations 1", "--iterations 3")
        assert full in readme, f"README lacks: {full}"
