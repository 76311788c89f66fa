"""End-to-end demo: scikit-learn's bundled digits -> PNG files + list files -> ``prototxt2py convert-imageset`` ->
``compute-image-mean`` -> ``train`` a LeNet -> ``test`` -> ``deploy`` + ``convert --to onnx`` -> onnxruntime.

    python examples/digits/run.py [--workdir out/digits] [--iterations N] [--train-images N] [--test-images N]

Needs ``pip install 'prototxt2py[train,onnx]' scikit-learn``. Every step is a ``prototxt2py`` command, printed
as ``$ prototxt2py ...`` before it runs; they run in this process through the same entry point as the installed
command (``prototxt2py.cli:main``), so the demo pays for the torch import once. As in Caffe, the paths inside the
prototxt files are relative to the working directory: the script works inside ``--workdir``. A failing step
stops the script with that command's exit code and its one-line error.

The digits (1797 8x8 images, values 0..16) are split once with a fixed seed into 1437 training and 360 test
images, written as 8-bit greyscale PNGs (value * 255 / 16, rounded), and resized to LeNet's 28x28 by
convert-imageset (OpenCV's bilinear resize, as Caffe's tool). The tests run a short version of this script
(tests/test_demo_digits.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
NET = "lenet_train_val.prototxt"
SOLVER = "lenet_solver.prototxt"
SNAPSHOT_PREFIX = "lenet_digits"  # the solver's snapshot_prefix
TEST_BATCH = 120  # the TEST data layer's batch_size
SCALE = 0.00390625  # the data layers' transform_param.scale
SIZE = 28  # LeNet's input size: convert-imageset resizes the 8x8 digits to it
TEST_IMAGES = 360


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy (to read a command's printed figures)."""

    def __init__(self, stream: Any):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def prototxt2py(*args: str) -> str:
    """Run one ``prototxt2py`` command (printed first); its standard output is returned. Exits like the command
    when it fails."""
    from prototxt2py.cli import main

    print("$ prototxt2py " + " ".join(args), flush=True)
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        try:
            main.main(list(args), prog_name="prototxt2py", standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
    return tee.copy.getvalue()


def write_images(root: Path, train_images: int | None = None, test_images: int | None = None,
                 seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The digits as PNG files under ``root``: ``(path, label)`` lists of the training and the test split (the
    first ``train_images``/``test_images`` of each, all by default)."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    test_idx, train_idx = order[:TEST_IMAGES][:test_images], order[TEST_IMAGES:][:train_images]
    splits = []
    for name, idx in (("train", train_idx), ("test", test_idx)):
        (root / name).mkdir(parents=True, exist_ok=True)
        items = []
        for i in idx:
            pixels = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            path = f"{name}/{i:04d}.png"
            if not cv2.imwrite(str(root / path), pixels):
                raise SystemExit(f"error: cannot write {root / path}")
            items.append((path, int(digits.target[i])))
        splits.append(items)
    return splits[0], splits[1]


def write_list(path: Path, items: list[tuple[str, int]]) -> None:
    path.write_text("".join(f"{p} {label}\n" for p, label in items))


def load_test_images(root: Path, items: list[tuple[str, int]], mean: np.ndarray) -> np.ndarray:
    """The test PNGs as the TEST data layer gives them to the net: resized as convert-imageset does, then
    Caffe's transform ``(pixel - mean) * scale``; ``(n, 1, 28, 28)`` float32."""
    import cv2

    images = [cv2.resize(cv2.imread(str(root / p), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
              for p, _ in items]
    pixels = np.stack(images)[:, None].astype(np.float32)
    return ((pixels - mean[None]) * np.float32(SCALE)).astype(np.float32)


def figure(output: str, name: str) -> float:
    """A ``name = value`` figure from a command's output (``prototxt2py test`` prints ``accuracy = 0.97``)."""
    found = re.findall(rf"^{re.escape(name)} = ([-+0-9.eE]+)", output, re.MULTILINE)
    if not found:
        raise SystemExit(f"error: no '{name} = ...' in the output")
    return float(found[-1])


def run(workdir: Path, iterations: int | None = None, train_images: int | None = None,
        test_images: int | None = None) -> dict[str, Any]:
    """The whole demo inside ``workdir``; returns its figures (what the tests check)."""
    import onnxruntime as ort

    import prototxt2py as p2p
    from prototxt2py.data.datum import read_mean

    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(workdir):
        for name in ("images", "digits_train_lmdb", "digits_test_lmdb"):  # a rerun starts afresh
            shutil.rmtree(name, ignore_errors=True)
        train, test = write_images(Path("images"), train_images, test_images)
        write_list(Path("train.txt"), train)
        write_list(Path("test.txt"), test)
        for name in (NET, SOLVER):
            shutil.copyfile(HERE / name, name)
        print(f"wrote {len(train)} training and {len(test)} test digits as PNG files under {workdir}/images/")

        resize = ["--resize-height", str(SIZE), "--resize-width", str(SIZE), "--gray"]
        prototxt2py("convert-imageset", "images/", "train.txt", "digits_train_lmdb", *resize, "--shuffle",
                    "--seed", "1")
        prototxt2py("convert-imageset", "images/", "test.txt", "digits_test_lmdb", *resize)
        prototxt2py("compute-image-mean", "digits_train_lmdb", "digits_mean.binaryproto")

        iters = ["--iterations", str(iterations)] if iterations is not None else []
        prototxt2py("train", SOLVER, *iters)
        last = iterations if iterations is not None else 1000  # the solver's max_iter
        weights = f"{SNAPSHOT_PREFIX}_iter_{last}.caffemodel"

        batches = math.ceil(len(test) / TEST_BATCH)
        scores = prototxt2py("test", NET, "--weights", weights, "--iterations", str(batches))
        accuracy = figure(scores, "accuracy")

        prototxt2py("deploy", NET, "-o", "lenet_deploy.prototxt")
        prototxt2py("convert", "lenet_deploy.prototxt", "--weights", weights, "--to", "onnx", "-o",
                    "lenet_digits.onnx", "--dynamic-batch")

        # The ONNX file in onnxruntime, on the test PNGs transformed as the TEST data layer does, against the
        # PyTorch runtime on the same inputs.
        mean = read_mean("digits_mean.binaryproto")
        x = load_test_images(Path("images"), test, mean)
        labels = np.array([label for _, label in test])
        session = ort.InferenceSession("lenet_digits.onnx", providers=["CPUExecutionProvider"])
        onnx_prob = session.run(None, {session.get_inputs()[0].name: x})[0]
        net = p2p.load("lenet_deploy.prototxt", weights=weights, input_shapes={"data": list(x.shape)}).eval()
        import torch

        with torch.no_grad():
            runtime_prob = next(iter(net(torch.from_numpy(x)).values())).numpy()
        onnx_accuracy = float(np.mean(onnx_prob.argmax(axis=1) == labels))
        diff = float(np.max(np.abs(onnx_prob - runtime_prob)))
        print(f"test accuracy: prototxt2py test {accuracy:.4f}, ONNX in onnxruntime {onnx_accuracy:.4f} "
              f"({len(test)} test digits); max |ONNX - PyTorch runtime| = {diff:.2e}")
        return {
            "workdir": workdir, "train": train, "test": test, "weights": workdir / weights, "accuracy": accuracy,
            "onnx_accuracy": onnx_accuracy, "onnx_prob": onnx_prob, "runtime_prob": runtime_prob, "max_diff": diff,
        }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("out/digits"), help="Work folder (default: out/digits).")
    ap.add_argument("--iterations", type=int, default=None, help="Train iterations (default: the solver's 1000).")
    ap.add_argument("--train-images", type=int, default=None, help="Use only the first N training digits.")
    ap.add_argument("--test-images", type=int, default=None, help="Use only the first N test digits.")
    a = ap.parse_args(argv)
    run(a.workdir.resolve(), a.iterations, a.train_images, a.test_images)


if __name__ == "__main__":
    main()
