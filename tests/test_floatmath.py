"""``powf`` is the C library's: Caffe's learning rates and Power constants match it bit for bit on every CPU."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from prototxt2py.floatmath import powf
from prototxt2py.train.lr_policy import LrParams, learning_rate


def _glibc_powf():
    try:
        fn = ctypes.CDLL("libm.so.6").powf
    except OSError:
        pytest.skip("no glibc libm here")
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float, ctypes.c_float]
    return fn


def test_powf_equals_glibc_on_random_inputs() -> None:
    # numpy's float32 power differs from glibc on about one input in five on AVX-512 CPUs
    libm = _glibc_powf()
    rng = np.random.default_rng(7)
    bases = rng.uniform(0, 3, 5000).astype(np.float32)
    exps = rng.uniform(-3, 3, 5000).astype(np.float32)
    bad = [(b, e) for b, e in zip(bases, exps, strict=True) if powf(b, e) != np.float32(libm(b, e))]
    assert not bad, f"{len(bad)} of 5000 differ from glibc, first {bad[0]}"


def test_powf_specials() -> None:
    assert np.isnan(powf(-2.0, 0.5))
    assert powf(10.0, 100.0) == np.inf
    assert powf(0.0, -1.0) == np.inf
    assert powf(float("nan"), 0.0) == 1.0


def test_inv_rate_at_iteration_2_is_caffes() -> None:
    # golden/solvers/adagrad_inv: Caffe 1.0 logged 0.08721958845853806 (an AVX-512 numpy gives ...59590911865)
    p = LrParams(base_lr=0.1, lr_policy="inv", gamma=0.1, power=0.75)
    assert learning_rate(p, 2, 0)[0] == 0.08721958845853806
