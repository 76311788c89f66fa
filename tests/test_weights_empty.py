"""A ``.caffemodel`` without layers is a valid weights file (Caffe copies nothing from it): fine for a net
without parameters, a clear error for a net that needs blobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prototxt2py.cli import main
from prototxt2py.proto import caffe_pb2

NO_PARAMS = """name: "noparams"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }
layer { name: "pool" type: "Pooling" bottom: "r" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""
WITH_PARAMS = NO_PARAMS + (
    'layer { name: "ip" type: "InnerProduct" bottom: "p" top: "ip" inner_product_param { num_output: 4 } }\n'
)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "noparams.prototxt").write_text(NO_PARAMS)
    (tmp_path / "params.prototxt").write_text(WITH_PARAMS)
    (tmp_path / "named.caffemodel").write_bytes(caffe_pb2.NetParameter(name="noparams").SerializeToString())
    (tmp_path / "zero.caffemodel").write_bytes(b"")  # a NetParameter with no field set serialises to nothing
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", data=x)
    return tmp_path


@pytest.mark.parametrize("weights", ["named.caffemodel", "zero.caffemodel"])
def test_run_net_without_parameters_with_empty_caffemodel(files: Path, weights: str) -> None:
    out = files / "out.npz"
    r = CliRunner().invoke(main, ["run", str(files / "noparams.prototxt"), "--weights", str(files / weights),
                                  "--inputs", str(files / "in.npz"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    x = np.load(files / "in.npz")["data"]
    p = np.load(out)["p"]
    assert p.shape == (2, 3, 4, 4)  # Caffe's ceil((8 - 3) / 2) + 1 windows, the last one clipped
    assert np.allclose(p[:, :, 0, 0], np.maximum(x, 0)[:, :, :3, :3].max(axis=(2, 3)))
    assert np.allclose(p[:, :, 3, 3], np.maximum(x, 0)[:, :, 6:, 6:].max(axis=(2, 3)))


@pytest.mark.parametrize("weights", ["named.caffemodel", "zero.caffemodel"])
def test_empty_caffemodel_for_a_net_with_parameters_is_one_clear_error(files: Path, weights: str) -> None:
    out = files / "out.npz"
    r = CliRunner().invoke(main, ["run", str(files / "params.prototxt"), "--weights", str(files / weights),
                                  "--inputs", str(files / "in.npz"), "-o", str(out)])
    assert r.exit_code == 1
    assert r.stderr == (f"error: {files / weights}: the weights file holds no blobs (valid only for a net without "
                        "parameters, which Caffe would leave to its fillers): the net needs 'ip'\n")
    assert not out.exists()
