"""A tiny training case written into a folder: HDF5 data, an MLP train_val net and a solver."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NET = """name: "tiny"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "train_list.txt" batch_size: {batch} }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "test_list.txt" batch_size: {batch} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
"""

SOLVER = """net: "train_val.prototxt"
test_iter: 2
test_interval: {test_interval}
base_lr: {base_lr}
momentum: 0.9
lr_policy: "fixed"
max_iter: {max_iter}
display: {display}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 7
"""


def write_h5(path: Path, rows: int, seed: int, labels: np.ndarray | None = None) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, rows) if labels is None else labels
    centers = np.eye(3, 8) * 3
    data = centers[label % 3] + rng.standard_normal((rows, 8))
    with h5py.File(path, "w") as f:
        f["data"] = data.astype(np.float32)
        f["label"] = label.astype(np.float32)


def make_case(folder: Path, *, batch: int = 4, base_lr: float = 0.05, max_iter: int = 20, display: int = 0,
              snapshot: int = 0, prefix: str = "snaps/tiny", test_interval: int = 10, rows: int = 32,
              labels: np.ndarray | None = None) -> Path:
    """Write the case; returns the solver path. Paths inside are relative to ``folder`` (run from there)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_h5(folder / "train.h5", rows, 1, labels)
    write_h5(folder / "test.h5", 16, 2)
    (folder / "train_list.txt").write_text("train.h5\n")
    (folder / "test_list.txt").write_text("test.h5\n")
    (folder / "train_val.prototxt").write_text(NET.format(batch=batch))
    (folder / "snaps").mkdir(exist_ok=True)
    solver = folder / "solver.prototxt"
    solver.write_text(SOLVER.format(base_lr=base_lr, max_iter=max_iter, display=display, snapshot=snapshot,
                                    prefix=prefix, test_interval=test_interval))
    return solver
