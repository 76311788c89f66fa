"""Training throughput: ``prototxt2py`` (Caffe's solver rules, HDF5Data reader included) vs the same nets
hand-written in PyTorch with a plain ``DataLoader`` and ``torch.optim.SGD``, in one run.

Run from the checkout: ``python benchmarks/training.py`` (``--rounds N``, ``--iters K``, ``--threads T``);
``--smoke`` runs a few iterations of each contender (``tests/test_benchmarks_smoke.py`` runs it). The nets are
the corpus ``lenet_train_test.prototxt`` and ``cifar10_quick_train_test.prototxt`` with their LMDB ``Data``
layers swapped for ``HDF5Data`` over synthetic files written to a temporary directory (MNIST-like 1x28x28 and
CIFAR-like 3x32x32 images, 10 classes; LeNet's ``scale`` is applied when writing, CIFAR's mean subtraction is
left out), trained with SGD (momentum 0.9, weight decay 5e-4, lr 0.01 fixed). Rounds interleave the two
contenders and the median images/s is reported, with the ratio ours / hand-written (the issue's goal: >= 0.95).
A third contender is the same solver through pycaffe's API (``caffe.SGDSolver(path).step(n)``), whose
``solver.net.blobs`` are filled after every forward pass; the last column is its rate over ours (the cost of
those persistent blobs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from google.protobuf import text_format  # noqa: E402

from prototxt2py.reader import read_net  # noqa: E402
from prototxt2py.train import get_solver  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "BVLC__caffe" / "examples"
NETS = {
    "LeNet": (CORPUS / "mnist/lenet_train_test.prototxt", (1, 28, 28)),
    "CIFAR-10 quick": (CORPUS / "cifar10/cifar10_quick_train_test.prototxt", (3, 32, 32)),
}
SOLVER = """train_net: "{net}"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
max_iter: 1000000
display: 0
snapshot_after_train: false
random_seed: 1
"""


def write_data(folder: Path, shape: tuple[int, ...], rows: int) -> Path:
    import h5py

    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, rows)
    data = rng.random((rows, *shape), dtype=np.float32)
    with h5py.File(folder / "data.h5", "w") as f:
        f["data"] = data
        f["label"] = label.astype(np.float32)
    (folder / "list.txt").write_text(str(folder / "data.h5") + "\n")
    return folder / "list.txt"


def hdf5_train_net(prototxt: Path, source: Path, folder: Path) -> tuple[Path, int]:
    """The TRAIN part of the corpus net with its Data layer replaced by HDF5Data; returns (path, batch)."""
    net = read_net(prototxt).net
    keep = []
    batch = 0
    for layer in net.layer:
        phases = {r.phase for r in layer.include}
        if phases and 0 not in phases:  # TEST-only layers (data, accuracy)
            continue
        if layer.type == "Data":
            batch = layer.data_param.batch_size
            layer.type = "HDF5Data"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.ClearField("include")
            layer.hdf5_data_param.source = str(source)
            layer.hdf5_data_param.batch_size = batch
        keep.append(layer)
    del net.layer[:]
    net.layer.extend(keep)
    path = folder / "train.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path, batch


def lenet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                         nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10))


def cifar_quick() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10))


HAND = {"LeNet": lenet, "CIFAR-10 quick": cifar_quick}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Ours:
    def __init__(self, folder: Path, prototxt: Path, shape: tuple[int, ...], rows: int, device: str,
                 pycaffe: bool = False):
        source = write_data(folder, shape, rows)
        net, self.batch = hdf5_train_net(prototxt, source, folder)
        (folder / "solver.prototxt").write_text(SOLVER.format(net=net))
        if pycaffe:
            from prototxt2py import caffe

            self.solver = caffe.get_solver(str(folder / "solver.prototxt"), device=device)
        else:
            self.solver = get_solver(str(folder / "solver.prototxt"), device=device)
        self.device = torch.device(device)

    def run(self, iters: int) -> float:
        t0 = time.perf_counter()
        self.solver.step(iters)
        _sync(self.device)
        return iters * self.batch / (time.perf_counter() - t0)


class Hand:
    def __init__(self, folder: Path, name: str, batch: int, device: str):
        import h5py

        with h5py.File(folder / "data.h5", "r") as f:
            data, label = torch.from_numpy(f["data"][()]), torch.from_numpy(f["label"][()]).long()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, label), batch_size=batch,
                                             shuffle=False, drop_last=True)
        self.loader, self.it = loader, iter(loader)
        self.batch = batch
        torch.manual_seed(1)
        self.device = torch.device(device)
        self.model = HAND[name]().to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.loss = nn.CrossEntropyLoss()

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def run(self, iters: int) -> float:
        t0 = time.perf_counter()
        for _ in range(iters):
            x, y = self._next()
            x, y = x.to(self.device), y.to(self.device)
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(x), y).backward()
            self.opt.step()
        _sync(self.device)
        return iters * self.batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50, help="iterations per round and contender")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="torch device for both contenders (cpu, cuda)")
    ap.add_argument("--smoke", action="store_true", help="1 round of 2 iterations on small data (for tests)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, iters, rows = (1, 2, 256) if args.smoke else (args.rounds, args.iters, 10_000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; {rounds} rounds x {iters} "
          "iterations")
    print(f"{'net':16} {'batch':>5} {'ours img/s':>11} {'PyTorch img/s':>14} {'ratio':>6} {'pycaffe img/s':>14} "
          f"{'pycaffe/ours':>12}")
    results = []
    for name, (prototxt, shape) in NETS.items():
        with tempfile.TemporaryDirectory() as tmp:
            ours = Ours(Path(tmp), prototxt, shape, rows, args.device)
            hand = Hand(Path(tmp), name, ours.batch, args.device)
            py = Ours(Path(tmp), prototxt, shape, rows, args.device, pycaffe=True)
            for contender in (ours, hand, py):
                contender.run(1)  # warm-up: allocations, oneDNN primitives
            a, b, c = [], [], []
            for _ in range(rounds):
                a.append(ours.run(iters))
                b.append(hand.run(iters))
                c.append(py.run(iters))
            mine, theirs, pyc = statistics.median(a), statistics.median(b), statistics.median(c)
            results.append((name, mine, theirs))
            print(f"{name:16} {ours.batch:>5} {mine:>11.0f} {theirs:>14.0f} {mine / theirs:>6.2f}x {pyc:>14.0f} "
                  f"{pyc / mine:>11.2f}x")
    return results


if __name__ == "__main__":
    main()
